"""Inputs and outputs of the ``spacrd`` command: reading the three formats, writing results and the figure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from spacrd._constants import OBS_KEYS, SCANPY_IMAGE_KEYS, SPATIALDATA_KEYS, UNS_KEYS
from spacrd._spatial import is_spatialdata

if TYPE_CHECKING:
    from anndata import AnnData

    from spacrd._atomic import AtomicFiles

#: Index column of the spot table the command writes.
SPOT_COLUMN = "spot"
#: Column of the spot table with each spot's section.
SECTION_COLUMN = OBS_KEYS.SECTION
#: The Space Ranger files that make a folder a Space Ranger output.
SPACERANGER_COUNTS = "filtered_feature_bc_matrix.h5"
FORMATS_HELP = (
    "a .h5ad file, a SpatialData .zarr folder or a Space Ranger output folder "
    f"(with {SPACERANGER_COUNTS} and spatial/)"
)


class InputError(Exception):
    """Bad usage or input: the command prints the message on one line and exits with code 2."""


@dataclass
class Loaded:
    """What INPUT held: an AnnData, or a SpatialData with the table the command works on."""

    data: Any
    kind: Literal["h5ad", "zarr", "spaceranger"]
    path: Path
    table_key: str | None = None

    @property
    def table(self) -> AnnData:
        """The spot table: the AnnData itself, or ``sdata.tables[table_key]``."""
        return self.data.tables[self.table_key] if self.kind == "zarr" else self.data


def _is_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or any((path / name).exists() for name in ("zarr.json", ".zgroup"))


def _spaceranger_root(path: Path) -> Path | None:
    """``path`` or its ``outs/`` folder when it holds the Space Ranger counts and ``spatial/``."""
    for root in (path, path / "outs"):
        if (root / SPACERANGER_COUNTS).is_file() and (root / "spatial").is_dir():
            return root
    return None


def input_kind(path: str | Path) -> Literal["h5ad", "zarr", "spaceranger"]:
    """What INPUT is, from its name and layout alone (nothing is read): checked before any work starts."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder.")
    if path.is_file() and path.suffix.lower() == ".h5ad":
        return "h5ad"
    if path.is_dir() and _is_zarr(path):
        return "zarr"
    if path.is_dir() and _spaceranger_root(path) is not None:
        return "spaceranger"
    raise InputError(f"{path}: not {FORMATS_HELP}.")


def read_input(path: str | Path, table_key: str | None = None) -> Loaded:
    """Read INPUT by what it is: ``.h5ad`` (anndata), ``.zarr`` (spatialdata) or a Space Ranger folder (squidpy).

    Space Ranger gene symbols are made unique (``var_names_make_unique``), as the model requires.
    ``table_key`` picks a SpatialData table (default ``"table"``, or the only table).
    """
    path = Path(path)
    kind = input_kind(path)
    try:
        if kind == "h5ad":
            import anndata

            return Loaded(anndata.read_h5ad(path), "h5ad", path)
        if kind == "zarr":
            from spatialdata import read_zarr

            sdata = read_zarr(path)
            return Loaded(sdata, "zarr", path, _table_key(sdata, table_key, path))
        root = _spaceranger_root(path)
        assert root is not None  # the kind was found by it
        adata = read_spaceranger(root)
        adata.var_names_make_unique()
        return Loaded(adata, "spaceranger", root)
    except InputError:
        raise
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"{path}: could not be read ({type(err).__name__}: {_first_line(err)}).") from err


def input_stem(path: Path) -> str:
    """INPUT's name without ``.h5ad`` or ``.zarr`` (any case): the section name of a one-section input."""
    name = Path(path).name
    for suffix in (".h5ad", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


#: The H&E images of a Space Ranger ``spatial/`` folder; squidpy's reader needs both.
SPACERANGER_IMAGES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}
#: Columns of Space Ranger's spot positions (``tissue_positions.csv`` has them as a header from 2.0).
POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def read_spaceranger(root: Path) -> AnnData:
    """``squidpy.read.visium(root)``, also when an H&E PNG is missing (a model without histology needs none).

    squidpy reads the spot positions only together with both images; without one of them the counts
    are read alone and the positions, scale factors and the image that is there are added as squidpy
    would (``obsm["spatial"]`` in full-resolution pixels, ``uns["spatial"][library]``), with a warning.
    """
    import squidpy as sq

    spatial = root / "spatial"
    missing = [name for name in SPACERANGER_IMAGES.values() if not (spatial / name).is_file()]
    if not missing:
        return sq.read.visium(root)
    import json
    import warnings

    from PIL import Image

    adata = sq.read.visium(root, load_images=False)
    positions = spatial / "tissue_positions.csv"
    if positions.is_file():
        frame = pd.read_csv(positions, index_col=0)
    else:
        frame = pd.read_csv(spatial / "tissue_positions_list.csv", header=None, index_col=0)
    frame.columns = POSITION_COLUMNS
    frame = frame.reindex(adata.obs_names)
    if frame.isna().any(axis=None):
        raise InputError(
            f"{spatial}: the spot positions lack {int(frame.isna().any(axis=1).sum())} barcodes."
        )
    for column in POSITION_COLUMNS[:3]:
        adata.obs[column] = frame[column].to_numpy()
    xy = ["pxl_col_in_fullres", "pxl_row_in_fullres"]  # (x, y), as squidpy stores them
    adata.obsm[UNS_KEYS.SPATIAL] = frame[xy].to_numpy(dtype=np.float64)
    spatial_uns = adata.uns.setdefault(UNS_KEYS.SPATIAL, {})
    library = spatial_uns.setdefault(next(iter(spatial_uns), root.parent.name or "1"), {})
    library[SCANPY_IMAGE_KEYS.SCALEFACTORS] = json.loads((spatial / "scalefactors_json.json").read_text())
    library[SCANPY_IMAGE_KEYS.IMAGES] = {
        key: np.asarray(Image.open(spatial / name))
        for key, name in SPACERANGER_IMAGES.items()
        if (spatial / name).is_file()
    }
    warnings.warn(
        f"{spatial} lacks {', '.join(missing)}; read without it (a model with histology and the figure use the "
        "images that are there).",
        UserWarning,
        stacklevel=2,
    )
    return adata


def _table_key(sdata, table_key: str | None, path: Path) -> str:
    from spacrd._atomic import is_spare_table

    tables = [name for name in sdata.tables if not is_spare_table(name)]
    spares = [name for name in sdata.tables if is_spare_table(name)]
    if table_key is not None and is_spare_table(table_key):
        raise InputError(
            f"--table {table_key!r} is a temporary copy that an interrupted spacrd run left in {path}, not a "
            "table of spots; name the original table."
        )
    if table_key is not None and table_key in tables:
        return table_key
    if table_key is None and SPATIALDATA_KEYS.TABLE in tables:
        return SPATIALDATA_KEYS.TABLE
    if table_key is None and len(tables) == 1:
        return tables[0]
    if not tables:
        left = f" (only {spares}, temporary copies an interrupted spacrd run left)" if spares else ""
        raise InputError(
            f"{path} holds no SpatialData table{left}; spacrd needs a table of spot counts annotating the "
            "spot shapes (spatialdata.models.TableModel)."
        )
    wanted = f"has no table {table_key!r}" if table_key is not None else "has several tables"
    raise InputError(f"{path} {wanted}; its tables: {tables}. Choose one with --table.")


def _first_line(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


def with_counts_in(adata: AnnData, layer: str | None, *model_layers: str | None) -> AnnData:
    """``adata`` with the counts of ``layer`` (``None``: ``X``) where the models read them (``model_layers``).

    Returns ``adata`` itself when nothing moves; otherwise a light AnnData sharing ``obs``, ``obsm`` and
    ``uns`` (the prediction's columns are copied back by :func:`copy_prediction`). Several layers serve
    a model and its ranking model set up on different layers.
    """
    if layer == "X" and "X" not in adata.layers:  # --layer X: the counts are adata.X
        layer = None
    if all(model_layer == layer for model_layer in model_layers):
        return adata
    from anndata import AnnData

    if layer is not None and layer not in adata.layers:
        raise InputError(f"--layer {layer!r} is not a layer of the input; it has {list(adata.layers)}.")
    counts = adata.X if layer is None else adata.layers[layer]
    light = AnnData(
        X=counts, obs=adata.obs.copy(), var=adata.var[[]], obsm=dict(adata.obsm), uns=dict(adata.uns)
    )
    for model_layer in {m for m in model_layers if m is not None}:
        light.layers[model_layer] = counts
    return light


def copy_prediction(light: AnnData, adata: AnnData, prob_key: str, call_key: str, uns_key: str) -> None:
    """Copy what :meth:`~spacrd.model.SpaCRD.predict` wrote into ``light`` over to ``adata``."""
    if light is adata:
        return
    adata.obs[prob_key] = light.obs[prob_key].to_numpy()
    adata.obs[call_key] = light.obs[call_key].values  # keeps the categories
    adata.uns[uns_key] = light.uns[uns_key]
    uncertainty_key = light.uns[uns_key].get("uncertainty_key")
    if uncertainty_key is not None:  # every column uns names is copied, the uncertainty too
        adata.obs[uncertainty_key] = light.obs[uncertainty_key].to_numpy()


def spot_table(table: AnnData, section_key: str | None, default_section: str) -> pd.DataFrame:
    """One row per spot: index ``spot`` (the obs names), ``section``, probability and call.

    ``section`` is ``obs[section_key]``, else the only library of ``uns["spatial"]``, else
    ``default_section`` (the input's name).
    """
    prediction = table.uns[UNS_KEYS.PREDICTION]
    prob_key, call_key = prediction["prob_key"], prediction["call_key"]
    if section_key is not None and section_key in table.obs:
        sections = table.obs[section_key].astype(str).to_numpy()
    else:
        spatial = table.uns.get(UNS_KEYS.SPATIAL)
        single = isinstance(spatial, Mapping) and len(spatial) == 1
        sections = np.full(table.n_obs, str(next(iter(spatial))) if single else default_section)
    frame = pd.DataFrame(
        {
            SECTION_COLUMN: sections,
            prob_key: table.obs[prob_key].to_numpy(),
            call_key: table.obs[call_key].astype(str).to_numpy(),
        },
        index=pd.Index(table.obs_names.astype(str), name=SPOT_COLUMN),
    )
    return frame


def _usable(image: Any) -> bool:
    """An image that shows something: not a single-colour placeholder (Space Ranger fixtures have them)."""
    array = np.asarray(image)
    return array.size > 0 and bool(np.ptp(array[..., :3]) > 0)


def image_options(table: AnnData, section_key: str | None) -> dict[str, Any]:
    """``img``/``img_res_key`` for :func:`spacrd.pl.ctr`: hires if every section has a usable one, else lowres."""
    spatial = table.uns.get(UNS_KEYS.SPATIAL, {})
    if section_key is not None and section_key in table.obs:
        libraries = [str(s) for s in pd.unique(table.obs[section_key].astype(str))]
    else:
        libraries = list(spatial)
    for key in (SCANPY_IMAGE_KEYS.HIRES, "lowres"):
        images = [spatial.get(lib, {}).get(SCANPY_IMAGE_KEYS.IMAGES, {}).get(key) for lib in libraries]
        if libraries and all(image is not None and _usable(image) for image in images):
            return {"img": True, "img_res_key": key}
    return {"img": False}


def draw(loaded: Loaded, section_key: str | None, path: Path) -> None:
    """Save :func:`spacrd.pl.ctr` of the prediction as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import spacrd

    try:
        if is_spatialdata(loaded.data):
            spacrd.pl.ctr(loaded.data, table_name=loaded.table_key, show=False)
        else:
            key = section_key if section_key is not None and section_key in loaded.table.obs else None
            spacrd.pl.ctr(loaded.table, library_key=key, show=False, **image_options(loaded.table, key))
        plt.savefig(path, dpi=150, bbox_inches="tight")
    finally:
        plt.close("all")


def write_annotated(loaded: Loaded, files: AtomicFiles, out: Path) -> Path:
    """Write the annotated data: ``OUT/annotated.h5ad`` for AnnData inputs, through ``files``.

    A SpatialData zarr gets its table rewritten in place instead (:func:`spacrd._atomic.replace_table`),
    so images and shapes are not copied; call that last, after the other outputs are written.
    """
    from spacrd._atomic import write_h5ad

    return files.write(out / "annotated.h5ad", lambda tmp: write_h5ad(loaded.data, tmp))


#: Name of the shapes element(s) that ``spacrd predict --regions`` writes into a ``.zarr``.
REGIONS_ELEMENT = "ctr_regions"
#: File of the called regions under ``--out``.
REGIONS_FILE = "regions.geojson"


def called_regions(loaded: Loaded, section_key: str | None):
    """The called region of each section (:func:`spacrd.tl.ctr_regions`), one named feature per section.

    For a ``.zarr`` the regions are also added, in memory, as shapes element(s) ``ctr_regions`` (or
    ``ctr_regions_<element>`` per spots element) with each spots element's transformations;
    :func:`write_regions_shapes` writes them into the store.
    """
    from spacrd.tl import ctr_regions

    if loaded.kind == "zarr":
        regions = ctr_regions(loaded.data, table_key=loaded.table_key, key_added=REGIONS_ELEMENT)
    else:
        key = section_key if section_key is not None and section_key in loaded.table.obs else None
        regions = ctr_regions(loaded.table, library_key=key)
    regions["name"] = regions["section"].astype(str)
    print(f"{len(regions)} section(s) with a called region.")
    return regions


def write_regions_file(regions, files: AtomicFiles, out: Path) -> Path:
    """``OUT/regions.geojson`` (QuPath annotations, :func:`spacrd.io.write_geojson`), through ``files``."""
    from spacrd.io import write_geojson

    return files.write(out / REGIONS_FILE, lambda tmp: write_geojson(regions, tmp))


def write_regions_shapes(loaded: Loaded) -> None:
    """Write the shapes :func:`called_regions` added to a ``.zarr``, replacing an earlier run's."""
    from spacrd._spatial import table_keys
    from spacrd.tl._regions import shapes_key

    sdata = loaded.data
    assert loaded.table_key is not None  # set for every zarr input
    elements = table_keys(loaded.table, loaded.table_key).regions
    on_disk = set(sdata.elements_paths_on_disk())
    for element in elements:
        name = shapes_key(REGIONS_ELEMENT, element, len(elements))
        if f"shapes/{name}" in on_disk:  # an earlier run's regions
            sdata.delete_element_from_disk(name)
        if name in sdata.shapes:
            sdata.write_element(name)
