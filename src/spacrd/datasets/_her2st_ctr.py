"""The compact HER2ST subset shipped inside the package."""

from __future__ import annotations

from importlib.resources import files

import anndata as ad


def her2st_ctr() -> ad.AnnData:
    """Six pathologist-labelled HER2ST sections, small enough to ship with spacrd (2.7 MB).

    A real subset of :func:`spacrd.datasets.her2st`: sections A1, B1, C1, D1, E1 and F1 (one per patient,
    2,401 legacy-ST spots), raw counts of 2,000 genes chosen without labels (batch-aware ``seurat_v3``
    variability over these spots, among genes measured in all six), and A1's H&E image downscaled to
    1,000 px. Built by ``scripts/build_default_dataset.py`` in the spacrd repository.

    Source: ``almaan/her2st``; Andersson et al., "Spatial deconvolution of HER2-positive breast cancer
    delineates tumor-associated cell type interactions", Nat Commun 12, 6012 (2021). Cite the paper
    when you use the data.

    Returns
    -------
    AnnData with raw integer counts in ``X``; ``obs``: ``section`` (categorical), ``patient``,
    ``array_x``, ``array_y``, ``label`` (pathologist label), ``cancer`` (nullable boolean: invasive
    cancer or cancer in situ); ``obsm["spatial"]`` in full-resolution image pixels; ``uns["spatial"]`` in
    the squidpy/scanpy Visium layout, as :func:`spacrd.datasets.her2st` writes it: only A1 has
    ``images["hires"]`` (the other five entries have no ``"images"`` key), so plot all six sections with
    ``squidpy.pl.spatial_scatter(adata, library_key="section", img=False)``, or A1 on its H&E.

    """
    return ad.read_h5ad(files("spacrd.datasets") / "data" / "her2st_ctr.h5ad")
