"""HER2-positive breast tumours profiled with legacy Spatial Transcriptomics (Andersson et al. 2021)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from spacrd.pp._image_io import read_rgb, read_rgb_reduced

from ._her2st_files import (
    _A2_NOTE,
    _IMAGES,
    LABELLED_SECTIONS,
    SECTIONS,
    _check_sections,
    _counts_file,
    _files_for,
    _label_file,
    _resolve_files,
    _sections_at,
    _spot_file,
)
from ._tsv_counts import read_count_tsv

LABEL_CATEGORIES: tuple[str, ...] = (
    "invasive cancer",
    "cancer in situ",
    "immune infiltrate",
    "breast glands",
    "connective tissue",
    "adipose tissue",
    "undetermined",
)
CANCER_LABELS = frozenset({"invasive cancer", "cancer in situ"})

SPOT_DIAMETER_UM = 100.0
SPOT_PITCH_UM = 200.0  # distance between neighbouring array positions


def her2st(
    sections: str | Sequence[str] | None = None,
    path: str | Path | None = None,
    *,
    load_images: bool = True,
    hires_size: int = 2000,
    progressbar: bool = False,
) -> AnnData:
    """HER2-positive breast tumour sections (legacy ST, patients A–H) with H&E images and pathologist labels.

    Reads the public ``almaan/her2st`` repository layout (Andersson et al., *Nat Commun* 12, 6012,
    2021): 36 sections of 8 patients, raw UMI counts ``data/ST-cnts/<S>.tsv.gz``, spot positions
    ``data/ST-spotfiles/<S>_selection.tsv``, pathologist labels
    ``data/ST-pat/lbl/<S>_labeled_coordinates.tsv`` (A1, B1, C1, D1, E1, F1, G2, H1) and H&E images
    (full-resolution JPEGs ``data/ST-imgs/<P>/<S>/*.jpg`` for B4 and C2–C6; the reduced PNG
    ``app/www/imgs/A1_HE_image_dark.png`` for A1, background blacked out).

    Parameters
    ----------
    sections
        Section name(s) such as ``"A1"`` or ``["A1", "C2"]`` among A1–A6, B1–B6, C1–C6, D1–D6, E1–E3,
        F1–F3, G1–G3 and H1–H3. Sections are concatenated in the order given. ``None``: every section
        whose count file is under ``path`` (in the order above), or all 36 when downloading.
    path
        Root of a local copy of the repository (the folder holding ``data/`` and ``app/``). ``None``
        downloads the needed files with :mod:`pooch` into ``pooch.os_cache("spacrd") / "her2st"`` (or
        the folder named by the environment variable ``SPACRD_DATA_DIR``) and checks their SHA-256.
        No checksum is known for the count and spot files of G1, G3, H2 and H3: they are downloaded
        without verification and a :class:`UserWarning` names each file with the SHA-256 of the copy
        read (every time such a file is used, downloaded or cached). To load these sections from a copy
        you have checked, pass ``path`` to it.
    load_images
        Whether to read the H&E images. ``False`` skips them (and their download); the scale factors and
        spot diameters are still set.
    hires_size
        Minimum length in pixels of the longer side of the plotting copy of a full-resolution JPEG. The
        copy is decoded directly at 1/2, 1/4 or 1/8 of the full size (JPEG DCT scaling): the smallest
        such copy that is at least this large is kept (about 2,300 × 2,500 px for the default).
    progressbar
        Show download progress bars.

    Returns
    -------
    One :class:`~anndata.AnnData` with all requested sections, ``n_obs`` spots × ``n_vars`` genes:

    ``X``, ``layers["counts"]``
        Raw UMI counts, :class:`scipy.sparse.csr_matrix` of float32 (exact integers; two separate
        copies, so normalising ``X`` in place keeps ``layers["counts"]``). Genes are the union over the
        loaded sections, ordered by first appearance; a gene missing from a section's count file has
        zero counts there (the files list only genes detected in that section; the assay is
        whole-transcriptome).
    ``var["n_sections"]``
        Number of loaded sections whose count file lists the gene; keep
        ``var["n_sections"] == obs["section"].nunique()`` for the intersection of genes.
    ``obs_names``
        ``"<section>_<x>x<y>"``, e.g. ``"A1_10x13"``, with ``<x>x<y>`` the spot id of the count file.
    ``obs["section"]``, ``obs["patient"]``
        Categorical section (``"A1"``) and patient (``"A"``).
    ``obs["array_x"]``, ``obs["array_y"]``
        Integer array coordinates (one step = 200 µm).
    ``obs["label"]``
        Categorical pathologist label (invasive cancer, cancer in situ, immune infiltrate, breast
        glands, connective tissue, adipose tissue, undetermined; any other label found is appended, with
        a warning); NaN in sections without labels and for spots the label file does not list. Labels
        join to spots by rounding the label file's refined array coordinates ``x``, ``y`` to integers
        (``"<x>x<y>"``); label rows without coordinates are dropped.
    ``obs["cancer"]``
        Nullable ``"boolean"``: True for invasive cancer or cancer in situ, False for every other label
        (``"undetermined"`` included), ``<NA>`` where ``label`` is missing. Plotting functions do not
        take nullable booleans as colours: plot ``adata.obs["cancer"].astype("category")`` instead.
    ``obsm["spatial"]``
        ``(n_obs, 2)`` float64 spot centres ``(x, y)`` in **full-resolution pixels** of the section's
        original scan, the spot files' ``pixel_x``, ``pixel_y`` unchanged. For B4 and C2–C6 these are
        the pixels of the stored JPEG. For A1 the full-resolution scan (6,954 × 7,435 px) is not
        published; the stored PNG is that scan reduced by ``tissue_hires_scalef = 2000 / 6954``, so PNG
        pixel = ``obsm["spatial"] * tissue_hires_scalef``. Sections without an image keep the scan's
        pixel coordinates. Pixel size differs between sections (about 0.92 µm for patient A, 0.69 µm
        for B–F; see ``metadata["microns_per_pixel"]``).
    ``uns["spatial"][section]``
        The scanpy/squidpy Visium layout, one entry per loaded section, in the order of ``sections``:

        - ``"images"``, only for a section with an image: ``{"hires": (h, w, 3) uint8 RGB}`` — the A1
          PNG as stored, or the reduced copy of a JPEG. Sections without an image (and every section
          with ``load_images=False``) have no ``"images"`` key, as scanpy's Visium reader writes them
          without images.
        - ``"scalefactors"``, for every section: ``"tissue_hires_scalef"`` (hires pixels per
          full-resolution pixel; 1.0 without an image, so coordinates stay unchanged while squidpy,
          which looks this factor up for ``img_res_key="hires"`` even with ``img=False``, can draw
          imaged and image-less sections together) and ``"spot_diameter_fullres"`` (100 µm spot
          diameter in full-resolution pixels, estimated per section as half the fitted pixels per
          array step).
        - ``"metadata"``: ``"patient"``, ``"source"``, ``"px_per_array_step"`` (full-resolution pixels
          per 200 µm), ``"microns_per_pixel"`` (per full-resolution pixel), ``"image_path"`` (stored
          image file) and, for JPEG sections, ``"fullres_image_path"``: the full-resolution image that
          :func:`spacrd.pp.image_features` crops from, decoded when it runs.

    Notes
    -----
    Plotting with squidpy and scanpy:

    - ``squidpy.pl.spatial_scatter(adata, library_key="section", color=...)`` draws one panel per entry
      of ``uns["spatial"]`` (not per category of ``obs["section"]``) and, with the default
      ``img=True``, needs ``images["hires"]`` in every panel's entry. Sections without an image therefore
      need ``img=False`` (spots are then drawn in full-resolution pixels, or in A1's PNG pixels for A1),
      or ``library_id=`` naming only the imaged sections.
    - ``scanpy.pl.spatial`` draws one library: pass ``library_id=`` when ``uns["spatial"]`` holds several,
      and ``img_key=None`` for a section without an image.
    - Subsetting an AnnData keeps every entry of ``uns["spatial"]``. After
      ``adata[adata.obs["section"].isin([...])].copy()``, call
      :func:`spacrd.datasets.remove_unused_libraries` (or pass ``library_id=``): squidpy otherwise tries
      to draw the sections left out and fails on them (no spots, or no image).

    About the data:

    - Images are attached only where their match to the spot coordinates was checked (A1, B4, C2–C6).
      A2 loads without an image: the authors' ``A2_HE_image_dark.png`` was warped onto A1 for their
      Shiny app, and A2's spot coordinates do not map onto it by a scale factor (``metadata["note"]``).
      Other sections, G and H included, load without an image even if ``path`` holds their JPEGs.
    - The A1 PNG carries the authors' small annotated thumbnail in its top-right corner, away from all
      spots.
    - The A1, C1 and D1 label files list a few positions absent from the count matrix, and F1's has a
      row without coordinates; those rows are ignored, so the labelled counts are A1 346, B1 295,
      C1 176, D1 306, E1 587, F1 691 (every spot of these sections).

    Raises
    ------
    ValueError
        Unknown or repeated section names, or ``hires_size`` not a positive integer.
    TypeError
        ``sections`` neither a name, a sequence of names nor ``None``.
    FileNotFoundError
        ``path`` lacks files needed for the requested sections (or, with ``sections=None``, holds no
        count file at all).

    Examples
    --------
    >>> import spacrd
    >>> import squidpy as sq
    >>> adata = spacrd.datasets.her2st(["A1", "C1", "C2"], path="shared/data/her2st")  # doctest: +SKIP
    >>> adata.obs.groupby("section", observed=True)["cancer"].mean()  # doctest: +SKIP
    >>> sq.pl.spatial_scatter(adata, library_key="section", color="ERBB2", img=False)  # doctest: +SKIP
    >>> imaged = adata[adata.obs["section"].isin(["A1", "C2"])].copy()  # doctest: +SKIP
    >>> spacrd.datasets.remove_unused_libraries(imaged)  # doctest: +SKIP
    >>> sq.pl.spatial_scatter(imaged, library_key="section", color="ERBB2")  # doctest: +SKIP

    """
    sections = _check_sections(sections)
    if isinstance(hires_size, bool) or not isinstance(hires_size, int | np.integer) or hires_size < 1:
        raise ValueError(f"`hires_size` must be a positive whole number of pixels, got {hires_size!r}.")
    if sections is None:
        sections = list(SECTIONS) if path is None else _sections_at(Path(path).expanduser())
    files = {s: _files_for(s, load_images) for s in sections}
    local = _resolve_files(files, path, progressbar)

    counts, var_lists, obs_parts, coords, spatial = [], [], [], [], {}
    for section in sections:
        spot_ids, genes, x = read_count_tsv(local[_counts_file(section)])
        if len(set(genes)) != len(genes):
            raise ValueError(
                f"{local[_counts_file(section)]}: gene names repeat; cannot align genes across sections."
            )
        spots = _read_spot_file(local[_spot_file(section)], spot_ids, section)
        obs = _section_obs(section, spot_ids)
        if section in LABELLED_SECTIONS:
            obs["label"] = _read_labels(local[_label_file(section)], spot_ids)
        counts.append(x)
        var_lists.append(genes)
        obs_parts.append(obs)
        coords.append(spots[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64))
        spatial[section] = _section_spatial(section, spots, local, load_images, hires_size)

    genes, x = _union_genes(counts, var_lists)
    obs = pd.concat(obs_parts)
    obs["section"] = pd.Categorical(obs["section"], categories=list(sections))
    obs["patient"] = pd.Categorical(obs["patient"], categories=sorted({s[0] for s in sections}))
    labels = obs["label"].astype(object)
    extra = sorted(set(labels.dropna()) - set(LABEL_CATEGORIES))
    if extra:
        where = sorted(set(obs.loc[labels.isin(extra), "section"]), key=list(sections).index)
        warnings.warn(
            f"HER2ST label(s) {extra} in section(s) {where} are not among the known categories "
            f"{list(LABEL_CATEGORIES)}; they are kept in obs['label'] and count as non-cancer in obs['cancer'].",
            UserWarning,
            stacklevel=2,
        )
    obs["label"] = pd.Categorical(labels, categories=list(LABEL_CATEGORIES) + extra)
    obs["cancer"] = pd.array(
        [pd.NA if pd.isna(v) else v in CANCER_LABELS for v in labels],
        dtype="boolean",
    )
    var = pd.DataFrame(index=pd.Index(genes, name=None))
    var["n_sections"] = np.zeros(len(genes), dtype=np.int64)
    gene_pos = pd.Index(genes)
    for g in var_lists:
        var.iloc[gene_pos.get_indexer(g), 0] += 1

    adata = AnnData(X=x, obs=obs, var=var)
    adata.layers["counts"] = x.copy()
    adata.obsm["spatial"] = np.concatenate(coords)
    adata.uns["spatial"] = spatial
    return adata


def _read_spot_file(path: Path, spot_ids: list[str], section: str) -> pd.DataFrame:
    spots = pd.read_csv(path, sep="\t", engine="c")
    required = {"x", "y", "new_x", "new_y", "pixel_x", "pixel_y"}
    if not required.issubset(spots.columns):
        raise ValueError(f"{path}: expected columns {sorted(required)}, found {list(spots.columns)}.")
    spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
    if spots.index.duplicated().any():
        raise ValueError(f"{path}: array positions {spots.index[spots.index.duplicated()].tolist()} repeat.")
    missing = pd.Index(spot_ids).difference(spots.index)
    if len(missing):
        raise ValueError(
            f"Section {section}: spots {missing.tolist()[:5]} of the count file are not in {path}."
        )
    return spots.loc[spot_ids]


def _section_obs(section: str, spot_ids: list[str]) -> pd.DataFrame:
    xy = pd.Series(spot_ids).str.split("x", n=1, expand=True)
    return pd.DataFrame(
        {
            "section": section,
            "patient": section[0],
            "array_x": xy[0].astype(np.int64).to_numpy(),
            "array_y": xy[1].astype(np.int64).to_numpy(),
            "label": pd.Series([np.nan] * len(spot_ids), dtype=object).to_numpy(),
        },
        index=[f"{section}_{s}" for s in spot_ids],
    )


def _read_labels(path: Path, spot_ids: list[str]) -> np.ndarray:
    lab = pd.read_csv(path, sep="\t", engine="c")
    lab = lab.dropna(subset=["x", "y", "label"])
    key = lab["x"].round().astype(int).astype(str) + "x" + lab["y"].round().astype(int).astype(str)
    lab = lab.set_index(key)
    conflicting = lab.index[lab.index.duplicated()]
    if len(conflicting):
        raise ValueError(f"{path}: several labels round to the same spot(s) {conflicting.tolist()[:5]}.")
    return lab["label"].reindex(spot_ids).to_numpy(dtype=object)


def _pixels_per_step(spots: pd.DataFrame) -> float:
    # Least-squares slope of pixel position on refined array position, averaged over both axes.
    slope_x = np.polyfit(spots["new_x"].to_numpy(float), spots["pixel_x"].to_numpy(float), 1)[0]
    slope_y = np.polyfit(spots["new_y"].to_numpy(float), spots["pixel_y"].to_numpy(float), 1)[0]
    return float((abs(slope_x) + abs(slope_y)) / 2)


def _section_spatial(
    section: str, spots: pd.DataFrame, local: dict[str, Path], load_images: bool, hires_size: int
) -> dict:
    px_per_step = _pixels_per_step(spots)
    metadata: dict = {
        "source": "almaan/her2st",
        "patient": section[0],
        "px_per_array_step": px_per_step,
        "microns_per_pixel": SPOT_PITCH_UM / px_per_step,
    }
    images: dict[str, np.ndarray] = {}
    scalef = 1.0  # without an image the scale factor only has to leave coordinates unchanged
    if section == "A2":
        metadata["note"] = _A2_NOTE
    if load_images and section in _IMAGES:
        relative, stored_scale = _IMAGES[section]
        image_path = local[relative]
        metadata["image_path"] = str(image_path)
        if stored_scale is None:
            # A full-resolution JPEG: keep a reduced copy for plotting; features crop from the file itself.
            images["hires"], scalef = read_rgb_reduced(image_path, hires_size)
            metadata["fullres_image_path"] = str(image_path)
        else:
            images["hires"], scalef = read_rgb(image_path), stored_scale
    entry: dict = {"images": images} if images else {}  # no "images" key without an image, as scanpy writes
    entry["scalefactors"] = {
        "tissue_hires_scalef": float(scalef),
        "spot_diameter_fullres": px_per_step * SPOT_DIAMETER_UM / SPOT_PITCH_UM,
    }
    entry["metadata"] = metadata
    return entry


def _union_genes(
    counts: list[sparse.csr_matrix], var_lists: list[list[str]]
) -> tuple[list[str], sparse.csr_matrix]:
    genes = pd.Index(pd.unique(np.concatenate([np.asarray(g, dtype=object) for g in var_lists])))
    blocks = []
    for x, g in zip(counts, var_lists, strict=True):
        columns = genes.get_indexer(g)
        remapped = sparse.csr_matrix((x.data, columns[x.indices], x.indptr), shape=(x.shape[0], len(genes)))
        remapped.sort_indices()
        blocks.append(remapped)
    return genes.tolist(), sparse.vstack(blocks, format="csr", dtype=np.float32)
