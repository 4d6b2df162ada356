"""Small synthetic SpatialData objects in the layouts spatialdata-io's readers write.

spatialdata-io is not a dependency, so its element names, coordinate systems, transformations, table
annotations, ``obs`` columns and index dtypes are reproduced here by hand. Each builder follows the
reader's code step by step (the same ``ShapesModel``/``TableModel``/``Image2DModel`` calls with the same
arguments) and feeds it synthetic "files". Matched against spatialdata-io commit ``a63ca08`` (tag
``v0.7.0`` + 3 commits, 2026-05-15; version ``0.7.1.dev3+ga63ca08``), files
``src/spatialdata_io/readers/visium_hd.py``, ``xenium.py`` and ``_constants/_constants.py``. Parsed with
the installed spatialdata (0.7.3), as the reader would be.

Both objects hold a spatially coherent synthetic tumour: a lobed disc whose bins/cells over-express
:data:`MARKERS` by ``marker_fold`` and which the H&E draws darker and more purple (denser nuclei) than
the pink stroma, so that a model can learn it from either modality. ``obs[truth_key]`` (bool, default
``"cancer"``) holds that ground truth; it is the one column no reader writes (``truth_key=None`` drops it).

:func:`visium_hd_sdata` matches
``visium_hd(path, dataset_id=..., load_segmentations_only=False, bin_size=[...], bins_as_squares=True,
annotate_table_by_labels=False)`` (``bins_as_squares=False`` is offered too) on a Space Ranger 3 folder with a microscope image:

- images ``{dataset_id}_full_image`` (multiscale, scale factors ``[2, 2, 2, 2]``, ``Identity`` to
  ``{dataset_id}``), ``{dataset_id}_hires_image`` and ``{dataset_id}_lowres_image`` (single scale;
  ``Identity`` to ``{dataset_id}_downscaled_hires`` / ``_lowres`` and ``Scale(1 / tissue_*_scalef)``
  to ``{dataset_id}``);
- shapes ``{dataset_id}_square_{bin:03d}um``: axis-aligned square Polygons of side
  ``spot_diameter_fullres = bin_size_um / microns_per_pixel`` in full-resolution pixels, index
  ``location_id`` (int64, ``0..n-1``), with all three transformations (``Identity`` to
  ``{dataset_id}``, ``Scale(tissue_hires_scalef)``, ``Scale(tissue_lowres_scalef)``);
- tables ``square_{bin:03d}um`` (CSR float32 counts of the filtered matrix, obs names
  ``s_{bin:03d}um_{row:05d}_{col:05d}-1``; ``obs``: ``in_tissue``, ``array_row``, ``array_col``,
  ``location_id``, ``region`` (categorical); ``obsm["spatial"]``: ``(pxl_col, pxl_row)`` in
  full-resolution pixels; ``var``: ``gene_ids``, ``feature_types``, ``genome``), each annotating its
  shapes with ``region_key="region"``, ``instance_key="location_id"``.

Simplified: the bin grid is aligned with the image axes (real slides are slightly rotated against the
microscope image, which the reader ignores too: squares stay axis-aligned); a few dozen genes instead
of a transcriptome; no CytAssist image, cell segmentation or labels; counts of 8 and 16 µm bins are
sums of the 2 µm bins, as in Space Ranger; bin sizes must divide the capture area.

:func:`xenium_sdata` matches
``xenium(path, cells_as_circles=True, cells_labels=False, nucleus_labels=False, transcripts=False)`` on
an XOA 2.x output folder with a post-Xenium H&E (``he_image.ome.tif`` + ``he_imagealignment.csv``):

- shapes ``cell_circles`` (Points with ``radius = sqrt(cell_area / π)``, index ``cell_id``),
  ``cell_boundaries`` (Polygons, index ``cell_id``, strings like ``"aaaaficg-1"``) and
  ``nucleus_boundaries`` (Polygons, unnamed int64 index = label index ``1..n``, column ``cell_id``), all
  in µm with ``Scale(1 / pixel_size)`` to ``global`` (``pixel_size = 0.2125`` µm);
- ``table`` annotating ``cell_circles`` (``region_key="region"``, ``instance_key="cell_id"``):
  CSR float32 counts of a targeted panel, ``obs`` the ``cells.parquet`` columns without the centroids
  (``cell_id``, ``transcript_counts``, ``control_probe_counts``, ``control_codeword_counts``,
  ``unassigned_codeword_counts``, ``deprecated_codeword_counts``, ``total_counts``, ``cell_area``,
  ``nucleus_area``, ``nucleus_count``, ``segmentation_method``) then ``region`` and ``z_level`` (float,
  from ``cells.zarr.zip``, which also overwrites ``nucleus_count`` as float); ``obsm["spatial"]`` the
  centroids in µm;
- images ``morphology_focus`` (uint16, channels ``DAPI``, ``ATP1A1/CD45/E-Cadherin``, ``18S``,
  ``AlphaSMA/Vimentin`` or ``DAPI`` only; ``Identity`` to ``global``) and ``he_image`` (uint8, channels
  ``r, g, b``; ``Affine`` = the alignment matrix, H&E pixels -> morphology pixels, to ``global``), both
  multiscale with scale factors ``[2, 2, 2, 2]`` and chunks ``(1, 4096, 4096)``.

Since spatialdata-io 0.7 the reader's default is ``cells_as_circles=False`` (``True`` up to 0.6),
with the table annotating the ``cell_labels`` raster instead; the circles layout is built here
because it is the one spacrd's SpatialData route reads (with ``cells_labels=True`` the reader would
also add an ``obs["cell_labels"]`` column). Simplified: no transcripts, labels or
``morphology_mip``; the whole Xenium region is tissue; one nucleus per cell; no
``genomic_control_counts`` (Xenium Prime only); the H&E is a rotation + scale + shift of the
morphology frame (no flip or shear).

:func:`visium_sdata` reads a real Space Ranger 1.x folder as ``spatialdata_io.visium`` does.

``sdata.attrs`` carries the provenance keys the reader sets (``spatialdata_io_reader``,
``spatialdata_io_software_version``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from geopandas import GeoDataFrame
from PIL import Image, ImageDraw
from scipy import sparse
from shapely.geometry import Polygon
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Affine, Identity, Scale, set_transformation
from xarray import DataArray

#: The spatialdata-io source these layouts were read from.
SPATIALDATA_IO_COMMIT = "a63ca08a421f74cc06c4aa7019d53bbaa4c74449"
SPATIALDATA_IO_VERSION = "0.7.1.dev3+ga63ca08"

#: Genes the tumour over-expresses (first in ``var``), in both builders.
MARKERS = ("ERBB2", "EPCAM", "KRT8", "KRT18", "CDH1")

#: Microns per morphology-image pixel of every Xenium instrument (``experiment.xenium`` ``pixel_size``).
XENIUM_PIXEL_SIZE = 0.2125
XENIUM_CHANNELS = ("DAPI", "ATP1A1/CD45/E-Cadherin", "18S", "AlphaSMA/Vimentin")
XENIUM_SEGMENTATION = "Segmented by boundary stain (ATP1A1+CD45+E-Cadherin)"

# H&E colours (RGB): glass, stroma (eosin pink), tumour (denser haematoxylin, darker purple), nuclei.
_GLASS = np.array([243, 241, 244])
_STROMA = np.array([232, 168, 200])
_TUMOUR = np.array([150, 88, 168])
_NUCLEUS = (78, 40, 118)


# --------------------------------------------------------------------------------------------------
# shared pieces
# --------------------------------------------------------------------------------------------------


def _tumour(x_um: np.ndarray, y_um: np.ndarray, extent_um: float) -> np.ndarray:
    """The synthetic tumour: a three-lobed disc off the centre of a square of ``extent_um`` µm."""
    dx, dy = x_um - 0.58 * extent_um, y_um - 0.44 * extent_um
    radius = 0.24 * extent_um * (1 + 0.15 * np.sin(3 * np.arctan2(dy, dx) + 0.7))
    return np.hypot(dx, dy) < radius


def _gene_names(n_genes: int) -> list[str]:
    if n_genes < len(MARKERS):
        raise ValueError(f"n_genes must be at least {len(MARKERS)} (the markers).")
    return [*MARKERS, *(f"GENE{i:04d}" for i in range(n_genes - len(MARKERS)))]


def _var(names: list[str], genome: str) -> pd.DataFrame:
    """``var`` as :func:`scanpy.read_10x_h5` writes it for a 10x HDF5 matrix."""
    return pd.DataFrame(
        {
            "gene_ids": [f"ENSG{i:011d}" for i in range(1, len(names) + 1)],
            "feature_types": "Gene Expression",
            "genome": genome,
        },
        index=pd.Index(names),
    )


def _paint_he(tumour: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(h, w, 3)`` uint8 H&E background from per-pixel tissue and tumour masks, with stain noise."""
    rgb = np.where(tissue[..., None], _STROMA, _GLASS).astype(np.float32)
    rgb[tumour & tissue] = _TUMOUR
    rgb += rng.normal(0, 6, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _draw_nuclei(he: np.ndarray, xy_px: np.ndarray, radius_px: np.ndarray) -> np.ndarray:
    image = Image.fromarray(he)
    draw = ImageDraw.Draw(image)
    for (x, y), r in zip(xy_px, radius_px, strict=True):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=_NUCLEUS)
    return np.asarray(image)


def _reader_attrs(sdata: SpatialData, reader: str) -> SpatialData:
    # what spatialdata_io.readers._utils._utils._set_reader_metadata writes
    sdata.attrs["spatialdata_io_software_version"] = SPATIALDATA_IO_VERSION
    sdata.attrs["spatialdata_io_reader"] = reader
    return sdata


# --------------------------------------------------------------------------------------------------
# Visium HD
# --------------------------------------------------------------------------------------------------


def visium_hd_sdata(
    extent_um: float = 128.0,
    bin_sizes: Sequence[int] = (2, 8, 16),
    *,
    dataset_id: str = "visium_hd",
    n_genes: int = 40,
    microns_per_pixel: float = 0.2738,
    margin_px: int = 40,
    tissue_hires_scalef: float = 0.4,
    tissue_lowres_scalef: float = 0.1,
    images: Sequence[str] = ("full", "hires", "lowres"),
    bins_as_squares: bool = True,
    umis_per_2um: float = 3.0,
    marker_fold: float = 4.0,
    truth_key: str | None = "cancer",
    seed: int = 0,
) -> SpatialData:
    """A Visium HD slide as ``spatialdata_io.visium_hd`` returns it (see the module docstring).

    Parameters
    ----------
    extent_um
        Side of the square capture area in µm; a multiple of every bin size. 128 µm gives 4,096 2 µm,
        256 8 µm and 64 16 µm grid positions, of which the in-tissue ones (about 80%) are kept.
    bin_sizes
        Bin sizes in µm (2, 8 and 16 are the ones Space Ranger writes).
    dataset_id
        Prefix of the element and coordinate system names.
    n_genes
        Genes; the first ones are :data:`MARKERS`.
    microns_per_pixel
        µm per full-resolution image pixel (0.2738 is typical of a 40x scan).
    margin_px
        Glass around the capture area in the full-resolution image, in pixels.
    tissue_hires_scalef, tissue_lowres_scalef
        Scale factors of the hires and lowres PNGs relative to the full-resolution image.
    images
        Which of ``"full"``, ``"hires"``, ``"lowres"`` to include (a folder without the microscope
        image yields no ``_full_image``).
    bins_as_squares
        The reader's argument: square Polygons (default) or circles of diameter ``bin_size_um``.
    umis_per_2um
        Mean UMIs of a stroma 2 µm bin (real slides: a few).
    marker_fold
        Fold over-expression of :data:`MARKERS` in tumour bins.
    truth_key
        ``obs`` column for the tumour ground truth (bool); ``None`` to leave it out.
    seed
        Random seed.
    """
    bin_sizes = sorted({int(b) for b in bin_sizes})
    n2 = extent_um / 2
    if not bin_sizes or any((extent_um / b) % 1 or b % 2 for b in bin_sizes) or n2 % 1:
        raise ValueError(
            f"extent_um={extent_um} must be a multiple of every bin size in {bin_sizes} (even µm)."
        )
    unknown = set(images) - {"full", "hires", "lowres"}
    if unknown:
        raise ValueError(f"Unknown images {sorted(unknown)}; choose from 'full', 'hires', 'lowres'.")
    rng = np.random.default_rng(seed)
    n2 = int(n2)
    genes = _gene_names(n_genes)
    px_per_um = 1.0 / microns_per_pixel

    def centres_um(bin_um: int) -> tuple[np.ndarray, np.ndarray]:
        n = int(extent_um // bin_um)
        rows, cols = np.mgrid[0:n, 0:n]
        return (cols.ravel() + 0.5) * bin_um, (rows.ravel() + 0.5) * bin_um

    def in_tissue(x_um, y_um):
        # the tissue edge cuts the corners of the capture area off, so the filtered matrix drops bins
        u, v = x_um / extent_um - 0.5, y_um / extent_um - 0.5
        return (u / 0.56) ** 2 + (v / 0.52) ** 2 < 1

    # 2 µm counts on the whole grid; larger bins sum them, as Space Ranger does
    x2, y2 = centres_um(2)
    base = rng.gamma(1.5, 1.0, n_genes)
    base *= umis_per_2um / base.sum()
    rates = np.tile(base, (n2 * n2, 1)) * rng.lognormal(0, 0.3, (n2 * n2, 1))
    rates[np.ix_(_tumour(x2, y2, extent_um), np.arange(len(MARKERS)))] *= marker_fold
    counts2 = rng.poisson(rates).astype(np.float32).reshape(n2, n2, n_genes)

    scalefactors = {"tissue_hires_scalef": tissue_hires_scalef, "tissue_lowres_scalef": tissue_lowres_scalef}
    transform_hires = Scale(np.array([tissue_hires_scalef] * 2), axes=("x", "y"))
    transform_lowres = Scale(np.array([tissue_lowres_scalef] * 2), axes=("x", "y"))
    transformations = {
        dataset_id: Identity(),
        f"{dataset_id}_downscaled_hires": transform_hires,
        f"{dataset_id}_downscaled_lowres": transform_lowres,
    }

    tables, shapes = {}, {}
    for bin_um in bin_sizes:
        bin_name = f"square_{bin_um:03d}um"
        k = bin_um // 2
        n = n2 // k
        counts = counts2.reshape(n, k, n, k, n_genes).sum(axis=(1, 3)).reshape(n * n, n_genes)
        x_um, y_um = centres_um(bin_um)
        rows, cols = np.divmod(np.arange(n * n), n)
        keep = in_tissue(x_um, y_um)
        # tissue_positions.parquet: barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres
        barcodes = [
            f"s_{bin_um:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows[keep], cols[keep], strict=True)
        ]
        obs = pd.DataFrame(
            {"in_tissue": 1, "array_row": rows[keep], "array_col": cols[keep]},
            index=pd.Index(barcodes),
        )
        adata = AnnData(sparse.csr_matrix(counts[keep]), obs=obs, var=_var(genes, "GRCh38"))
        pxl_col = margin_px + x_um[keep] * px_per_um
        pxl_row = margin_px + y_um[keep] * px_per_um
        adata.obsm["spatial"] = np.column_stack([pxl_col, pxl_row])
        adata.obs["location_id"] = np.arange(len(adata))

        shapes_name = f"{dataset_id}_{bin_name}"
        radius = bin_um * px_per_um / 2.0  # spot_diameter_fullres / 2
        circles = ShapesModel.parse(
            adata.obsm["spatial"],
            geometry=0,
            radius=radius,
            index=adata.obs["location_id"].copy(),
            transformations=transformations,
        )
        if not bins_as_squares:
            shapes[shapes_name] = circles
        else:
            squares_series = circles.buffer(radius, cap_style=3)
            shapes[shapes_name] = ShapesModel.parse(
                GeoDataFrame(geometry=squares_series), transformations=transformations
            )

        adata.obs["region"] = shapes_name
        adata.obs["region"] = adata.obs["region"].astype("category")
        if truth_key is not None:
            adata.obs[truth_key] = _tumour(x_um[keep], y_um[keep], extent_um)
        tables[bin_name] = TableModel.parse(
            adata, region=shapes_name, region_key="region", instance_key="location_id"
        )
        tables[bin_name].var_names_make_unique()

    side = int(np.ceil(extent_um * px_per_um)) + 2 * margin_px
    parsed = {}
    if images:
        yy, xx = np.mgrid[0:side, 0:side]
        x_um, y_um = (xx + 0.5 - margin_px) * microns_per_pixel, (yy + 0.5 - margin_px) * microns_per_pixel
        he = _paint_he(_tumour(x_um, y_um, extent_um), in_tissue(x_um, y_um), rng)
        # nuclei: about one per 40 µm² of stroma, three times as dense in the tumour
        n_nuclei = int(extent_um**2 / 40)
        nx, ny = rng.uniform(0, extent_um, (2, n_nuclei))
        tumour = _tumour(nx, ny, extent_um)
        keep = in_tissue(nx, ny) & (tumour | (rng.random(n_nuclei) < 1 / 3))
        radius = rng.uniform(1.6, 2.6, n_nuclei)[keep] * px_per_um * np.where(tumour[keep], 1.3, 1.0)
        xy = margin_px + np.column_stack([nx, ny])[keep] * px_per_um
        full = _draw_nuclei(he, xy, radius)
        files = {"full": full}
        for res in ("hires", "lowres"):
            scale = scalefactors[f"tissue_{res}_scalef"]
            size = max(1, round(side * scale))
            files[res] = np.asarray(Image.fromarray(full).resize((size, size), Image.Resampling.BOX))
        for res in images:
            # _load_image: (y, x, 3) -> (c, y, x) DataArray, Identity to the dataset's coordinate system
            image = DataArray(files[res].transpose(2, 0, 1), dims=("c", "y", "x"))
            suffix = {"full": "_full_image", "hires": "_hires_image", "lowres": "_lowres_image"}[res]
            parsed[dataset_id + suffix] = Image2DModel.parse(
                image,
                scale_factors=[2, 2, 2, 2] if res == "full" else None,
                rgb=None,
                transformations={dataset_id: Identity()},
            )
        for res, transform in (("hires", transform_hires), ("lowres", transform_lowres)):
            if res in images:
                set_transformation(
                    parsed[f"{dataset_id}_{res}_image"],
                    {f"{dataset_id}_downscaled_{res}": Identity(), dataset_id: transform.inverse()},
                    set_all=True,
                )

    sdata = SpatialData(tables=tables, images=parsed, shapes=shapes)
    return _reader_attrs(sdata, "visium_hd")


# --------------------------------------------------------------------------------------------------
# Xenium
# --------------------------------------------------------------------------------------------------


def xenium_cell_ids(prefixes: np.ndarray, suffix: int = 1) -> np.ndarray:
    """Xenium's string cell ids: the uint32 prefix as 8 hex digits written ``a``-``p``, then ``-suffix``."""
    shift = str.maketrans("0123456789abcdef", "abcdefghijklmnop")
    return np.array([f"{int(p):08x}".translate(shift) + f"-{suffix}" for p in prefixes], dtype=object)


def _blob(centre: np.ndarray, radius: float, n_vertices: int, rng: np.random.Generator) -> Polygon:
    # evenly spread angles keep the polygon star-shaped around its centre
    angles = (np.arange(n_vertices) + rng.uniform(-0.3, 0.3, n_vertices)) * 2 * np.pi / n_vertices
    radii = radius * rng.uniform(0.8, 1.15, n_vertices)
    return Polygon(np.column_stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)]))


def xenium_sdata(
    n_cells: int = 600,
    *,
    n_genes: int = 300,
    cells_per_mm2: float = 6000.0,
    he_pixel_size: float = 0.36,
    he_rotation_deg: float = 4.0,
    he_margin_um: float = 20.0,
    morphology_channels: int = 4,
    marker_fold: float = 4.0,
    transcripts_per_cell: float = 120.0,
    truth_key: str | None = "cancer",
    seed: int = 0,
) -> SpatialData:
    """A Xenium region with its post-Xenium H&E, as ``spatialdata_io.xenium`` returns it (module docstring).

    Parameters
    ----------
    n_cells
        Cells in the table and in every shapes element.
    n_genes
        Genes of the targeted panel; the first ones are :data:`MARKERS`.
    cells_per_mm2
        Cell density, which sets the side of the (square) region: 600 cells at 6,000 per mm² take
        about 320 µm, i.e. a 1,500 px morphology image.
    he_pixel_size
        µm per H&E pixel.
    he_rotation_deg
        Rotation of the H&E against the morphology image, in degrees (the alignment is this rotation,
        the ratio of pixel sizes and a shift).
    he_margin_um
        Tissue shown around the Xenium region in the H&E, in µm.
    morphology_channels
        4 (XOA 2.x with the multimodal segmentation kit) or 1 (DAPI only).
    marker_fold
        Fold over-expression of :data:`MARKERS` in tumour cells.
    transcripts_per_cell
        Mean panel transcripts of a stroma cell.
    truth_key
        ``obs`` column for the tumour ground truth (bool); ``None`` to leave it out.
    seed
        Random seed.
    """
    if morphology_channels not in (1, 4):
        raise ValueError("morphology_channels must be 1 (DAPI) or 4 (segmentation kit).")
    rng = np.random.default_rng(seed)
    genes = _gene_names(n_genes)
    pixel_size = XENIUM_PIXEL_SIZE

    # cells on a jittered square lattice, surplus positions dropped at random
    spacing = 1000.0 / np.sqrt(cells_per_mm2)
    k = int(np.ceil(np.sqrt(n_cells)))
    extent_um = k * spacing
    gy, gx = np.mgrid[0:k, 0:k]
    lattice = np.column_stack([gx.ravel(), gy.ravel()]) * spacing + spacing / 2
    lattice = lattice[np.sort(rng.choice(len(lattice), n_cells, replace=False))]
    centroids = lattice + rng.uniform(-0.2, 0.2, lattice.shape) * spacing
    tumour = _tumour(centroids[:, 0], centroids[:, 1], extent_um)
    cell_radius = 0.42 * spacing * rng.uniform(0.85, 1.1, n_cells)
    nucleus_radius = cell_radius * np.where(tumour, 0.55, 0.42)
    cells = [_blob(c, r, 12, rng) for c, r in zip(centroids, cell_radius, strict=True)]
    nuclei = [_blob(c, r, 9, rng) for c, r in zip(centroids, nucleus_radius, strict=True)]

    prefixes = np.sort(rng.choice(2**31, n_cells, replace=False))
    cell_id = xenium_cell_ids(prefixes)

    # counts of the targeted panel (cell_feature_matrix.h5, gex_only=True)
    base = rng.gamma(1.2, 1.0, n_genes)
    base *= transcripts_per_cell / base.sum()
    rates = np.tile(base, (n_cells, 1)) * rng.lognormal(0, 0.3, (n_cells, 1))
    rates[np.ix_(tumour, np.arange(len(MARKERS)))] *= marker_fold
    counts = rng.poisson(rates).astype(np.float32)
    adata = AnnData(
        sparse.csr_matrix(counts),
        obs=pd.DataFrame(index=pd.Index(cell_id)),
        var=_var(genes, "Unknown"),
    )

    # cells.parquet, as _get_tables_and_circles turns it into obs
    control_probe = rng.poisson(0.2, n_cells)
    control_codeword = rng.poisson(0.1, n_cells)
    unassigned = rng.poisson(0.3, n_cells)
    transcripts = counts.sum(1).astype(np.int64)
    metadata = pd.DataFrame(
        {
            "cell_id": cell_id,
            "x_centroid": centroids[:, 0],
            "y_centroid": centroids[:, 1],
            "transcript_counts": transcripts,
            "control_probe_counts": control_probe,
            "control_codeword_counts": control_codeword,
            "unassigned_codeword_counts": unassigned,
            "deprecated_codeword_counts": np.zeros(n_cells, dtype=np.int64),
            "total_counts": transcripts + control_probe + control_codeword + unassigned,
            "cell_area": np.array([p.area for p in cells]),
            "nucleus_area": np.array([p.area for p in nuclei]),
            "nucleus_count": np.ones(n_cells, dtype=np.int64),
            "segmentation_method": XENIUM_SEGMENTATION,
        }
    )
    circ = metadata[["x_centroid", "y_centroid"]].to_numpy()
    adata.obsm["spatial"] = circ
    metadata = metadata.drop(["x_centroid", "y_centroid"], axis=1)
    metadata.index = adata.obs_names
    adata.obs = metadata
    adata.obs["region"] = "cell_circles"
    adata.obs["region"] = adata.obs["region"].astype("category")
    table = TableModel.parse(adata, region="cell_circles", region_key="region", instance_key="cell_id")
    to_global = Scale([1.0 / pixel_size, 1.0 / pixel_size], axes=("x", "y"))
    radii = np.sqrt(adata.obs["cell_area"].to_numpy() / np.pi)
    circles = ShapesModel.parse(
        circ,
        geometry=0,
        radius=radii,
        transformations={"global": to_global},
        index=adata.obs["cell_id"].copy(),
    )
    # cells.zarr.zip cell_summary (float64): z_level is added, nucleus_count replaced
    table.obs["z_level"] = rng.integers(0, 3, n_cells).astype(np.float64)
    table.obs["nucleus_count"] = np.ones(n_cells, dtype=np.float64)
    if truth_key is not None:
        table.obs[truth_key] = tumour

    # _get_polygons (XOA >= 2.0 with label_id in the parquet)
    cell_boundaries = GeoDataFrame({"geometry": cells}, index=cell_id.copy())
    cell_boundaries.index.name = "cell_id"
    label_index = np.arange(1, n_cells + 1, dtype=np.int64)
    nucleus_boundaries = GeoDataFrame({"geometry": nuclei, "cell_id": cell_id.copy()}, index=label_index)
    shapes = {
        "nucleus_boundaries": ShapesModel.parse(nucleus_boundaries, transformations={"global": to_global}),
        "cell_boundaries": ShapesModel.parse(cell_boundaries, transformations={"global": to_global}),
        "cell_circles": circles,
    }

    raster_kwargs = {"chunks": (1, 4096, 4096), "scale_factors": [2, 2, 2, 2]}
    images = {
        "morphology_focus": Image2DModel.parse(
            _morphology(cells, nuclei, extent_um, morphology_channels, tumour, rng),
            transformations={"global": Identity()},
            dims=("c", "y", "x"),
            rgb=None,
            c_coords=list(XENIUM_CHANNELS[:morphology_channels]),
            **raster_kwargs,
        )
    }
    he, alignment = _post_xenium_he(
        centroids, nucleus_radius, extent_um, he_pixel_size, he_rotation_deg, he_margin_um, rng
    )
    # xenium_aligned_image: a (1, y, x, 3) OME-TIFF squeezed to (y, x, c), the CSV matrix as an Affine
    images["he_image"] = Image2DModel.parse(
        he,
        dims=("y", "x", "c"),
        transformations={"global": Affine(alignment, input_axes=("x", "y"), output_axes=("x", "y"))},
        c_coords=["r", "g", "b"],
        **raster_kwargs,
    )
    sdata = SpatialData(images=images, tables={"table": table}, shapes=shapes)
    return _reader_attrs(sdata, "xenium")


def _morphology(cells, nuclei, extent_um, n_channels, tumour, rng) -> np.ndarray:
    """``(c, y, x)`` uint16 morphology image in ``global`` pixels: nuclei, membranes, cytoplasm, stroma."""
    side = int(np.ceil(extent_um / XENIUM_PIXEL_SIZE))
    layers = [Image.new("L", (side, side), 8) for _ in range(4)]
    draws = [ImageDraw.Draw(layer) for layer in layers]
    for cell, nucleus, is_tumour in zip(cells, nuclei, tumour, strict=True):
        cell_px = [(x / XENIUM_PIXEL_SIZE, y / XENIUM_PIXEL_SIZE) for x, y in cell.exterior.coords]
        nucleus_px = [(x / XENIUM_PIXEL_SIZE, y / XENIUM_PIXEL_SIZE) for x, y in nucleus.exterior.coords]
        draws[0].polygon(nucleus_px, fill=200)
        draws[1].line(cell_px, fill=160, width=2)
        draws[2].polygon(cell_px, fill=90)
        if not is_tumour:
            draws[3].polygon(cell_px, fill=60)
    stack = np.stack([np.asarray(layer) for layer in layers[:n_channels]]).astype(np.float32) * 16
    stack += rng.normal(0, 20, stack.shape)
    return np.clip(stack, 0, 4095).astype(np.uint16)


def _post_xenium_he(centroids, nucleus_radius, extent_um, he_pixel_size, rotation_deg, margin_um, rng):
    """A rotated, rescaled H&E of the region and its 3 × 3 alignment (H&E pixels -> morphology pixels)."""
    theta = np.deg2rad(rotation_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    span = extent_um * (abs(np.cos(theta)) + abs(np.sin(theta))) + 2 * margin_um
    side = int(np.ceil(span / he_pixel_size))
    centre_he = np.array([side / 2, side / 2])
    centre_um = np.array([extent_um / 2, extent_um / 2])
    # µm = centre_um + R · he_pixel_size · (p - centre_he); morphology px = µm / pixel_size
    linear_um = rotation * he_pixel_size
    alignment = np.eye(3)
    alignment[:2, :2] = linear_um / XENIUM_PIXEL_SIZE
    alignment[:2, 2] = (centre_um - linear_um @ centre_he) / XENIUM_PIXEL_SIZE

    yy, xx = np.mgrid[0:side, 0:side]
    pixels = np.column_stack([xx.ravel() + 0.5, yy.ravel() + 0.5])
    um = centre_um + (pixels - centre_he) @ linear_um.T
    x_um, y_um = um[:, 0].reshape(side, side), um[:, 1].reshape(side, side)
    he = _paint_he(_tumour(x_um, y_um, extent_um), np.ones((side, side), dtype=bool), rng)
    centroids_he = centre_he + (centroids - centre_um) @ np.linalg.inv(linear_um).T
    return _draw_nuclei(he, centroids_he, nucleus_radius / he_pixel_size), alignment


# --------------------------------------------------------------------------------------------------
# Visium (a real Space Ranger folder)
# --------------------------------------------------------------------------------------------------


def visium_sdata(path, dataset_id: str) -> SpatialData:
    """``spatialdata_io.visium(path, dataset_id=dataset_id)`` on a Space Ranger 1.x folder without a full image.

    Reads the real files (``filtered_feature_bc_matrix.h5``, ``spatial/tissue_positions_list.csv``,
    ``spatial/scalefactors_json.json``, the two PNGs) and builds what the reader builds: circles
    ``{dataset_id}`` (index ``spot_id``, radius ``spot_diameter_fullres / 2``, full-resolution pixels,
    with ``Identity`` to ``{dataset_id}`` and ``Scale(tissue_*_scalef)`` to
    ``{dataset_id}_downscaled_hires`` / ``_lowres``), images ``{dataset_id}_hires_image`` and
    ``_lowres_image`` (``Identity`` to their downscaled system, ``Scale(1 / tissue_*_scalef)`` to
    ``{dataset_id}``) and ``table`` annotating the circles (``region_key="region"``,
    ``instance_key="spot_id"``; ``obs``: ``in_tissue``, ``array_row``, ``array_col``, ``spot_id``,
    ``region``). PNGs are read with Pillow instead of dask-image (same pixels, held in memory).
    """
    import json
    from pathlib import Path

    import scanpy as sc

    path = Path(path)
    adata = sc.read_10x_h5(path / "filtered_feature_bc_matrix.h5")
    adata.uns["spatial"] = {dataset_id: {"metadata": {}}}
    coords = pd.read_csv(path / "spatial" / "tissue_positions_list.csv", header=None, index_col=0)
    coords.columns = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
    adata.obs = pd.merge(adata.obs, coords, how="left", left_index=True, right_index=True)
    xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].values
    adata.obsm["spatial"] = xy
    adata.obs = adata.obs.drop(columns=["pxl_col_in_fullres", "pxl_row_in_fullres"])
    adata.obs["spot_id"] = np.arange(len(adata))
    adata.var_names_make_unique()
    scalefactors = json.loads((path / "spatial" / "scalefactors_json.json").read_bytes())
    scales = {
        res: Scale(np.array([scalefactors[f"tissue_{res}_scalef"]] * 2), axes=("y", "x"))
        for res in ("hires", "lowres")
    }
    circles = ShapesModel.parse(
        xy,
        geometry=0,
        radius=scalefactors["spot_diameter_fullres"] / 2.0,
        index=adata.obs["spot_id"].copy(),
        transformations={
            dataset_id: Identity(),
            f"{dataset_id}_downscaled_hires": scales["hires"],
            f"{dataset_id}_downscaled_lowres": scales["lowres"],
        },
    )
    adata.obs["region"] = dataset_id
    table = TableModel.parse(adata, region=dataset_id, region_key="region", instance_key="spot_id")
    images = {}
    for res in ("hires", "lowres"):
        pixels = np.asarray(Image.open(path / "spatial" / f"tissue_{res}_image.png"))
        images[f"{dataset_id}_{res}_image"] = Image2DModel.parse(
            DataArray(pixels.transpose(2, 0, 1), dims=("c", "y", "x")),
            transformations={f"{dataset_id}_downscaled_{res}": Identity(), dataset_id: scales[res].inverse()},
            rgb=None,
        )
    sdata = SpatialData(images=images, shapes={dataset_id: circles}, tables={"table": table})
    return _reader_attrs(sdata, "visium")
