from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.colors import Colormap, Normalize

from spacrd._constants import OBS_KEYS, OBSM_KEYS, SCANPY_IMAGE_KEYS, UNS_KEYS
from spacrd._optional import import_optional
from spacrd._spatial import is_spatialdata
from spacrd._tiles import DEFAULT_MIN_TILES

from ._call import annotation_outlines, call_legend_handle, call_mask, call_region, library_region, spot_rings
from ._docs import d
from ._scale import add_scale_bars, spot_extents
from ._utils import (
    as_axes_list,
    as_class_labels,
    as_list,
    check_obs_key,
    check_prob_key,
    class_palette,
    finish,
    per_library,
)

if TYPE_CHECKING:
    from geopandas import GeoDataFrame
    from matplotlib.axes import Axes
    from spatialdata import SpatialData

#: Colour of the outline drawn around spots the model called cancer; matches the "cancer" label colour.
CALL_COLOR = "#e41a1c"


@d.dedent
def ctr(
    data: AnnData | SpatialData,
    prob_key: str = OBS_KEYS.PROB,
    call_key: str = OBS_KEYS.CALL,
    labels_key: str | None = None,
    library_key: str | None = OBS_KEYS.SECTION,
    library_id: str | Sequence[str] | None = None,
    show_call: bool = True,
    cmap: str | Colormap = "viridis",
    call_color: str = CALL_COLOR,
    call_linewidth: float = 1.5,
    *,
    call_style: str = "region",
    min_area: float | None = None,
    min_tiles: float = DEFAULT_MIN_TILES,
    outlines: GeoDataFrame | None = None,
    outline_color: str = "white",
    scale_bar: bool = True,
    spot_diameter_um: float | None = None,
    crop: bool = True,
    uns_key: str = UNS_KEYS.PREDICTION,
    table_name: str | None = None,
    image_key: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    return_ax: bool = False,
    show: bool | None = None,
    save: str | Path | None = None,
    **kwargs: Any,
) -> Axes | list[Axes] | None:
    """Plot the cancer-region probability of every spot on the H&E image.

    Spots are filled by ``obs[prob_key]`` on a fixed 0–1 colour scale (so panels and sections can be
    compared), with a thin white edge so that low probabilities stay visible on the haematoxylin and,
    with ``show_call``, the region the model called cancer is outlined in ``call_color``. With
    ``labels_key``, every section gets a second panel with the ground-truth labels, so that the
    prediction (left) can be read against the annotation (right). Each panel is cropped to its spots
    (leaving out, e.g., a thumbnail in a corner of the scan) and gets a scale bar in µm where the pixel
    size is known.

    Parameters
    ----------
    data
        Either an :class:`~anndata.AnnData` with ``obsm["spatial"]`` in full-resolution pixels and the
        images in ``uns["spatial"][library_id]`` (the squidpy/scanpy Visium convention: ``images``,
        ``scalefactors["tissue_hires_scalef"]``, ``scalefactors["spot_diameter_fullres"]``), or a
        :class:`~spatialdata.SpatialData` whose table annotates a shapes element (the spots) and shares
        a coordinate system with an image element.
    %(prob_key)s
    call_key
        Column of ``obs`` with the label-free call: categorical with a ``"cancer"`` category, or boolean
        (True = cancer). Only read when ``show_call`` is true.
    labels_key
        Column of ``obs`` with ground-truth labels to show in a second panel per section: boolean
        (True = cancer, missing = unlabelled) or categorical (e.g. the pathologist's region names).
    library_key
        Column of ``obs`` naming the section of each spot; one panel (or pair of panels) is drawn per
        section. If the column is absent but ``uns["spatial"]`` holds a single library, that one is
        used. For :class:`~spatialdata.SpatialData` the sections are the coordinate systems instead.
    library_id
        Section(s) to plot (default: all). For :class:`~spatialdata.SpatialData`, coordinate system(s).
    show_call
        Outline the spots where ``obs[call_key] == "cancer"``.
    cmap
        Colour map for the probability; keep it perceptually uniform so equal steps in colour are equal
        steps in probability.
    call_color
        Edge colour of the outline around spots called cancer.
    call_linewidth
        Width of that outline, in points.
    call_style
        ``"region"``: the outline of the called region of :func:`spacrd.tl.ctr_regions` (the union of the
        called spots' tiles: it runs half-way to their uncalled neighbours, keeps holes and drops islands
        below ``min_area`` / ``min_tiles``), the polygons an export of the regions holds; ``"spots"``: a
        ring around each called spot.
    min_area, min_tiles
        Smallest island of the region outline, as in :func:`spacrd.tl.ctr_regions` (µm², or tiles).
    outlines, outline_color
        AnnData: polygons (e.g. :func:`spacrd.io.read_annotations`) in ``obsm["spatial"]`` units, dashed
        on the probability panels; a ``section`` column puts each on its own section's panel.
    scale_bar
        Draw a scale bar (AnnData only). The pixel size comes from ``microns_per_pixel`` in
        ``uns["spatial"][library]["scalefactors"]`` (written by Space Ranger for Visium HD) or
        ``["metadata"]`` (written by :func:`spacrd.datasets.her2st`), else from ``spot_diameter_um``;
        without either, no bar is drawn.
    spot_diameter_um
        Physical spot diameter in µm (55 for Visium, 100 for legacy ST), for the scale bar when the
        scale factors give no pixel size.
    crop
        Crop each panel to its spots plus a margin of two spot diameters (AnnData only; a ``crop_coord``
        passed on to squidpy wins).
    %(uns_key)s
    table_name
        :class:`~spatialdata.SpatialData` only: the table holding ``prob_key`` (default: the only table).
    image_key
        :class:`~spatialdata.SpatialData` only: the H&E image element (default: the image in the same
        coordinate system as the spots).
    ax
        Axes to draw into, one per panel (``2 × n_sections`` panels when ``labels_key`` is given).
    return_ax
        Return the axes (a single :class:`~matplotlib.axes.Axes` for a single panel, else a list).
    %(show_save)s
    **kwargs
        Passed on to :func:`squidpy.pl.spatial_scatter` (e.g. ``img_res_key``, ``size``, ``crop_coord``,
        ``alpha``, ``img_alpha``, ``shape``, ``ncols``, ``figsize``, ``title``) for
        :class:`~anndata.AnnData`, or to :meth:`spatialdata_plot.pl.basic.PlotAccessor.render_shapes` for
        :class:`~spatialdata.SpatialData`.

    Returns
    -------
    The axes if ``return_ax``, else `None`. Reads ``obs[prob_key]``, ``obs[call_key]``,
    ``obs[labels_key]`` and ``uns[uns_key]["threshold"]`` (only for the legend); writes nothing.

    Examples
    --------
    >>> model.predict(target)  # doctest: +SKIP
    >>> spacrd.pl.ctr(target, labels_key="cancer")  # doctest: +SKIP

    """
    if call_style not in ("region", "spots"):
        raise ValueError(f"`call_style` must be 'region' or 'spots', got {call_style!r}.")
    islands = {"min_area": min_area, "min_tiles": min_tiles}
    if isinstance(data, AnnData):
        kwargs |= {"outlines": outlines, "outline_color": outline_color}
        axes = _ctr_anndata(
            data,
            prob_key=prob_key,
            call_key=call_key,
            labels_key=labels_key,
            library_key=library_key,
            library_id=library_id,
            show_call=show_call,
            cmap=cmap,
            call_color=call_color,
            call_linewidth=call_linewidth,
            call_style=call_style,
            islands=islands,
            scale_bar=scale_bar,
            spot_diameter_um=spot_diameter_um,
            crop=crop,
            uns_key=uns_key,
            ax=ax,
            **kwargs,
        )
    else:
        if not is_spatialdata(data):
            raise TypeError(f"`data` must be an AnnData or a SpatialData object, got {type(data).__name__}.")
        if outlines is not None:
            raise ValueError(
                "outlines= is for AnnData; add them to the SpatialData as shapes and render them."
            )
        from ._ctr_spatialdata import ctr_spatialdata  # draws with spatialdata-plot: import it only here

        axes = ctr_spatialdata(
            data,
            prob_key=prob_key,
            call_key=call_key,
            labels_key=labels_key,
            library_id=library_id,
            show_call=show_call,
            cmap=cmap,
            call_color=call_color,
            call_linewidth=call_linewidth,
            call_style=call_style,
            islands=islands,
            uns_key=uns_key,
            table_name=table_name,
            image_key=image_key,
            ax=ax,
            **kwargs,
        )
    return finish(axes[0].figure, axes, return_ax=return_ax, show=show, save=save)


def _resolve_libraries(
    adata: AnnData, library_key: str | None, library_id: str | Sequence[str] | None
) -> tuple[str | None, list[str]]:
    spatial = adata.uns.get(UNS_KEYS.SPATIAL)
    if not isinstance(spatial, Mapping) or not len(spatial):
        raise KeyError(
            "`adata.uns['spatial']` is missing or empty; it must hold one entry per section with "
            "`images` and `scalefactors` (the squidpy/scanpy Visium convention)."
        )
    if library_key is None or library_key not in adata.obs:
        if len(spatial) != 1:
            raise KeyError(
                f"`adata.uns['spatial']` holds {len(spatial)} sections ({', '.join(map(str, spatial))}) but "
                f"there is no column {library_key!r} in `adata.obs` saying which spot belongs to which; "
                f"pass the column as `library_key=`."
            )
        libraries, library_key = [str(next(iter(spatial)))], None
    else:
        sections = adata.obs[library_key]
        if isinstance(sections.dtype, pd.CategoricalDtype):
            libraries = [str(s) for s in sections.cat.remove_unused_categories().cat.categories]
        else:
            libraries = [str(s) for s in pd.unique(sections.dropna())]
        missing = [lib for lib in libraries if lib not in spatial]
        if missing:
            raise KeyError(
                f"Sections {missing} of `adata.obs[{library_key!r}]` have no entry in `adata.uns['spatial']` "
                f"(which holds {list(spatial)})."
            )
    if library_id is not None:
        wanted = [str(lib) for lib in as_list(library_id)]
        unknown = [lib for lib in wanted if lib not in libraries]
        if unknown:
            raise ValueError(f"`library_id` {unknown} not found; available sections: {libraries}.")
        libraries = wanted
    return library_key, libraries


def _plot_adata(
    adata: AnnData,
    prob_key: str,
    prob: pd.Series,
    labels_key: str | None,
    library_key: str | None,
    spatial_key: str,
) -> AnnData:
    """A light copy holding only what squidpy needs, so the user's object is never modified."""
    obs = pd.DataFrame({prob_key: prob.to_numpy()}, index=adata.obs_names.copy())
    uns: dict[str, Any] = {UNS_KEYS.SPATIAL: adata.uns[UNS_KEYS.SPATIAL]}
    if library_key is not None:
        obs[library_key] = pd.Categorical(adata.obs[library_key].astype(str).to_numpy())
    if labels_key is not None:
        check_obs_key(adata.obs, labels_key, "ground-truth labels")
        labels = as_class_labels(adata.obs[labels_key], labels_key)
        obs[labels_key] = labels
        palette = class_palette(list(labels.categories))
        if palette is not None:
            uns[f"{labels_key}_colors"] = palette
    if spatial_key not in adata.obsm:
        raise KeyError(f"No spot coordinates in `adata.obsm[{spatial_key!r}]`.")
    return AnnData(obs=obs, obsm={spatial_key: np.asarray(adata.obsm[spatial_key], dtype=float)}, uns=uns)


def spot_geometry(
    adata: AnnData,
    libraries: list[str],
    library_key: str | None,
    *,
    spatial_key: str = OBSM_KEYS.SPATIAL,
    img_res_key: str = SCANPY_IMAGE_KEYS.HIRES,
    size_key: str = SCANPY_IMAGE_KEYS.SPOT_DIAMETER,
    size: float | list[float] | None = None,
    scale_factor: float | list[float] | None = None,
    crop_coord: tuple[float, float, float, float] | list[tuple[float, float, float, float]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, float, float, np.ndarray]]:
    """Spot centres and radius in the axes coordinates :func:`squidpy.pl.spatial_scatter` draws in.

    Returns, per library, ``(mask, centres, radius, scale, origin)``: which rows of ``adata`` are in the
    panel (``(n_obs,)`` bool), their centres (``(n, 2)``, image pixels at ``img_res_key`` resolution,
    shifted by the crop), the spot radius in the same pixels, and the map from ``obsm`` units to axes
    units, ``xy * scale - origin``.
    """
    spatial = adata.uns[UNS_KEYS.SPATIAL]
    n = len(libraries)
    keys = sorted(set.intersection(*(set(spatial[lib][SCANPY_IMAGE_KEYS.SCALEFACTORS]) for lib in libraries)))
    out = []
    for i, lib in enumerate(libraries):
        factors = spatial[lib][SCANPY_IMAGE_KEYS.SCALEFACTORS]
        sf = per_library(scale_factor, i, n, "scale_factor")
        if sf is None:
            matching = [k for k in keys if img_res_key in k]
            if not matching:
                raise KeyError(f"No scale factor matching `img_res_key={img_res_key!r}` for section {lib!r}.")
            sf = factors[matching[0]]
        s = per_library(size, i, n, "size")
        radius = float(factors[size_key]) * (1.0 if s is None else float(s)) * float(sf) * 0.5
        mask = np.ones(adata.n_obs, dtype=bool)
        if library_key is not None:
            mask &= np.asarray(adata.obs[library_key].astype(str) == lib)
        centres = np.asarray(adata.obsm[spatial_key], dtype=float)[:, :2] * float(sf)
        crop = per_library(crop_coord, i, n, "crop_coord")
        origin = np.zeros(2)
        if crop is not None:
            x0, y0, x1, y1 = (float(c) * float(sf) for c in crop)
            mask &= (
                (centres[:, 0] >= x0) & (centres[:, 0] <= x1) & (centres[:, 1] >= y0) & (centres[:, 1] <= y1)
            )
            origin = np.array([x0, y0])
            centres = centres - origin
        out.append((mask, centres[mask], radius, float(sf), origin))
    return out


def _ctr_anndata(
    adata: AnnData,
    *,
    prob_key: str,
    call_key: str,
    labels_key: str | None,
    library_key: str | None,
    library_id: str | Sequence[str] | None,
    show_call: bool,
    cmap: str | Colormap,
    call_color: str,
    call_linewidth: float,
    call_style: str,
    islands: dict[str, Any],
    outlines: GeoDataFrame | None,
    outline_color: str,
    scale_bar: bool,
    spot_diameter_um: float | None,
    crop: bool,
    uns_key: str,
    ax: Axes | Sequence[Axes] | None,
    **kwargs: Any,
) -> list[Axes]:
    sq = import_optional("squidpy", "spacrd.pl.ctr on an AnnData")

    prob = check_prob_key(adata.obs, prob_key)
    called = call_mask(adata.obs, call_key) if show_call else None
    library_key, libraries = _resolve_libraries(adata, library_key, library_id)
    spatial_key = kwargs.pop("spatial_key", OBSM_KEYS.SPATIAL)
    plot_adata = _plot_adata(adata, prob_key, prob, labels_key, library_key, spatial_key)

    colors = [prob_key] if labels_key is None else [prob_key, labels_key]
    kwargs.setdefault("shape", "circle")
    if kwargs["shape"] is not None:  # a white rim keeps dark (low-probability) spots visible on the H&E
        kwargs.setdefault("edgecolor", "white")
        kwargs.setdefault("linewidth", 0.4)
    if crop and "crop_coord" not in kwargs:
        kwargs["crop_coord"] = spot_extents(adata, libraries, library_key, spatial_key)
    kwargs.setdefault("norm", Normalize(vmin=0.0, vmax=1.0))
    kwargs.setdefault("ncols", len(colors) if len(colors) > 1 else 4)
    titles = {prob_key: f"cancer probability ({prob_key})"}
    if labels_key is not None:
        titles[labels_key] = f"ground truth ({labels_key})"
    kwargs.setdefault("title", [f"{lib}: {titles[key]}" for lib in libraries for key in colors])
    kwargs.setdefault("na_color", "lightgrey")
    if "library_first" in kwargs:
        raise TypeError("`library_first` is fixed so that each section's panels sit side by side.")
    geometry_args = {
        k: kwargs[k] for k in ("img_res_key", "size_key", "size", "scale_factor", "crop_coord") if k in kwargs
    }

    if ax is not None:
        kwargs.setdefault("fig", as_axes_list(ax)[0].figure)  # squidpy needs it with a list of axes
    if kwargs.get("img", True) is True:
        img_res_key = kwargs.get("img_res_key", SCANPY_IMAGE_KEYS.HIRES)
        no_image = [
            lib
            for lib in libraries
            if img_res_key not in adata.uns[UNS_KEYS.SPATIAL][lib].get(SCANPY_IMAGE_KEYS.IMAGES, {})
        ]
        if no_image:
            raise KeyError(
                f"Sections {no_image} have no {img_res_key!r} image in `adata.uns['spatial'][...]['images']`; "
                f"pass `img=False` to draw the spots without the H&E, or `library_id=` to leave them out."
            )
    returned = sq.pl.spatial_scatter(
        plot_adata,
        color=colors,
        library_key=library_key,
        library_id=libraries,
        spatial_key=spatial_key,
        cmap=cmap,
        ax=ax,
        return_ax=True,
        **kwargs,
    )
    axes = as_axes_list(returned)
    prob_axes = axes[:: len(colors)]

    for prob_ax in prob_axes:
        for collection in prob_ax.collections:
            colorbar = getattr(collection, "colorbar", None)
            if colorbar is not None:
                colorbar.set_label(f"{prob_key} (cancer probability)")

    geometry_args.setdefault("crop_coord", kwargs.get("crop_coord"))
    geometry = spot_geometry(plot_adata, libraries, library_key, spatial_key=spatial_key, **geometry_args)
    handle = (
        call_legend_handle(adata, prob_key, call_key, call_color, uns_key, style=call_style)
        if called is not None
        else None
    )
    for lib, prob_ax, (mask, centres, radius, scale, origin) in zip(
        libraries, prob_axes, geometry, strict=True
    ):
        legend = [] if handle is None else [handle]
        if called is None or handle is None:
            pass
        elif call_style == "region":
            region = library_region(adata, lib, library_key, spatial_key, called, **islands)
            call_region(prob_ax, region, scale, origin, call_color, call_linewidth)
        else:
            spot_rings(prob_ax, centres[called[mask]], radius, kwargs["shape"], call_color, call_linewidth)
        if outlines is not None:
            legend += annotation_outlines(
                prob_ax, outlines, lib, scale, origin, outline_color, call_linewidth
            )
        if legend:  # inside the panel: below it the legend would collide with the axis label or the next row
            prob_ax.legend(handles=legend, loc="lower right", fontsize="small", framealpha=0.8)
    if scale_bar:
        for i, lib in enumerate(libraries):
            radius = geometry[i][2]
            panels = axes[i * len(colors) : (i + 1) * len(colors)]
            add_scale_bars(panels, adata.uns[UNS_KEYS.SPATIAL][lib], 2 * radius, spot_diameter_um)
    return axes
