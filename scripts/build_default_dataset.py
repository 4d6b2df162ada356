"""Build the compact HER2ST subset shipped with spacrd (``spacrd.datasets.her2st_ctr``).

Source: the public ``almaan/her2st`` repository (Andersson et al., Nat Commun 12, 6012 (2021)). Run from
the repository root with the snapshot laid out as in that repository::

    python scripts/build_default_dataset.py --data ../shared/data/her2st

The subset keeps the six pathologist-labelled sections (A1, B1, C1, D1, E1, F1; 2,401 spots), raw counts
of the 2,000 genes with the highest batch-aware ``seurat_v3`` variability over those spots (chosen
without labels), the labels, the spot coordinates and A1's H&E image downscaled to 1,000 px.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scanpy as sc
from PIL import Image

import spacrd

SECTIONS = ["A1", "B1", "C1", "D1", "E1", "F1"]
OUT = Path(__file__).resolve().parents[1] / "src" / "spacrd" / "datasets" / "data" / "her2st_ctr.h5ad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/her2st", help="HER2ST root (holds data/ and app/)")
    parser.add_argument("--n-genes", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=1000, help="longest side of A1's stored image, px")
    args = parser.parse_args()

    root = Path(args.data).resolve()
    adata = spacrd.datasets.her2st(SECTIONS, path=root)
    adata = adata[:, adata.var["n_sections"] == len(SECTIONS)].copy()
    sc.pp.highly_variable_genes(
        adata, layer="counts", flavor="seurat_v3", n_top_genes=args.n_genes, batch_key="section", subset=True
    )
    adata.X = adata.layers["counts"].astype(np.int32)
    del adata.layers["counts"]
    adata.var = adata.var[[]]
    adata.obs = adata.obs[["section", "patient", "array_x", "array_y", "label", "cancer"]]

    for entry in adata.uns["spatial"].values():
        metadata = entry["metadata"]
        metadata.pop("fullres_image_path", None)
        if "image_path" in metadata:
            # the builder's local path means nothing to users: record the file within almaan/her2st
            metadata["image_path"] = Path(metadata["image_path"]).resolve().relative_to(root).as_posix()
        if "images" not in entry:
            continue  # no "images" key without an image, so squidpy and scanpy see the same layout
        image = entry["images"]["hires"]
        scale = args.image_size / max(image.shape[:2])
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        entry["images"] = {"hires": np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))}
        entry["scalefactors"]["tissue_hires_scalef"] *= scale
    adata.uns.pop("hvg", None)
    adata.uns["source"] = (
        "HER2-positive breast cancer legacy ST, almaan/her2st (Andersson et al., Nat Commun 12, 6012 (2021)); "
        "subset built by scripts/build_default_dataset.py"
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(OUT, compression="gzip")
    print(adata)
    print(f"{OUT}: {OUT.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
