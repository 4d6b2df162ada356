from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.colors import Colormap, Normalize

from spacrd import _spatial
from spacrd._constants import SCANPY_IMAGE_KEYS
from spacrd._optional import import_optional

from ._call import call_legend_handle, call_mask
from ._utils import as_class_labels, as_list, check_obs_key, check_prob_key, class_palette, new_axes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from spatialdata import SpatialData


def _pick_image(sdata: SpatialData, cs: str, image_key: str | None) -> str:
    if image_key is not None:
        if image_key not in sdata.images:
            raise KeyError(f"No image {image_key!r} in the SpatialData object; images: {list(sdata.images)}.")
        return image_key
    candidates = _spatial.images_in(sdata, cs)
    if not candidates:
        raise ValueError(f"No image is registered in coordinate system {cs!r}; pass the H&E as `image_key=`.")
    # A Visium reader registers the hires and lowres images side by side; the hires one shows more.
    hires = [name for name in candidates if SCANPY_IMAGE_KEYS.HIRES in name]
    return (hires or candidates)[0]


def ctr_spatialdata(
    sdata: SpatialData,
    *,
    prob_key: str,
    call_key: str,
    labels_key: str | None,
    library_id: str | Sequence[str] | None,
    show_call: bool,
    cmap: str | Colormap,
    call_color: str,
    call_linewidth: float,
    call_style: str,
    islands: dict[str, Any],
    uns_key: str,
    table_name: str | None,
    image_key: str | None,
    ax: Axes | Sequence[Axes] | None,
    **kwargs: Any,
) -> list[Axes]:
    """:func:`spacrd.pl.ctr` for a :class:`~spatialdata.SpatialData` object, drawn with spatialdata-plot.

    The sections are the coordinate systems that the spots (the shapes the table annotates) live in.
    A light SpatialData is assembled from the user's elements (no pixel or geometry data is copied) so
    that nothing is written back into the user's object.
    """
    import_optional("spatialdata_plot", "spacrd.pl.ctr on a SpatialData")  # registers the ``.pl`` accessor
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    table_name = _spatial.resolve_table_key(sdata, table_name, argument="table_name")
    table = sdata.tables[table_name]
    prob = check_prob_key(table.obs, prob_key)
    called = call_mask(table.obs, call_key) if show_call else None
    keys = _spatial.table_keys(table, table_name)
    regions, region_key, instance_key = list(keys.regions), keys.region_key, keys.instance_key
    not_shapes = [r for r in regions if r not in sdata.shapes]
    if not_shapes:
        raise ValueError(
            f"Table {table_name!r} annotates {not_shapes}, which are not shapes (spots) elements."
        )

    systems = _spatial.library_ids(sdata, regions, image_key)
    if library_id is not None:
        wanted = [str(x) for x in as_list(library_id)]
        available = {cs for r in regions for cs in _spatial.coordinate_systems(sdata.shapes[r])}
        unknown = [cs for cs in wanted if cs not in available]
        if unknown:
            raise ValueError(
                f"`library_id` {unknown} is not a coordinate system of the spots; available: {sorted(available)}."
            )
        systems = wanted

    obs = pd.DataFrame(
        {
            prob_key: prob.to_numpy(),
            region_key: pd.Categorical(table.obs[region_key].astype(str).to_numpy()),
            instance_key: table.obs[instance_key].to_numpy(),
        },
        index=table.obs_names.copy(),
    )
    uns: dict[str, Any] = {}
    palette = None
    if labels_key is not None:
        check_obs_key(table.obs, labels_key, "ground-truth labels")
        labels = as_class_labels(table.obs[labels_key], labels_key)
        obs[labels_key] = labels
        palette = class_palette(list(labels.categories))
    thin = TableModel.parse(
        AnnData(obs=obs, uns=uns), region=regions, region_key=region_key, instance_key=instance_key
    )

    shapes = {r: sdata.shapes[r] for r in regions}
    called_names = []
    if called is not None and call_style == "region":
        from spatialdata.transformations import get_transformation

        from spacrd.tl._regions import ctr_regions

        # the polygons tl.ctr_regions exports, in each spots element's coordinates and transformations
        outlines = ctr_regions(sdata, call_key=call_key, prob_key=prob_key, table_key=table_name, **islands)
        for r, own in outlines.groupby("section", sort=False):
            name = f"{r}__called"
            own = own.reset_index(drop=True)[["geometry"]]
            transformations = dict(get_transformation(sdata.shapes[r], get_all=True))
            shapes[name] = ShapesModel.parse(own, transformations=transformations)
            called_names.append(name)
    elif called is not None:
        for r in regions:
            in_region = np.asarray(table.obs[region_key].astype(str) == str(r))
            ids = table.obs.loc[in_region & called, instance_key].to_numpy()
            if len(ids) == 0:
                continue
            spots = sdata.shapes[r]
            name = f"{r}__called"
            # The row subset keeps the element's transformations in ``attrs``.
            shapes[name] = ShapesModel.parse(spots.loc[spots.index.isin(ids)].copy())
            called_names.append(name)
    images = {_pick_image(sdata, cs, image_key) for cs in systems}
    light = SpatialData(images={k: sdata.images[k] for k in images}, shapes=shapes, tables={table_name: thin})

    n_cols = 1 if labels_key is None else 2
    # spatialdata-plot draws the colour bar outside the panel, so leave room for it between columns.
    axes = new_axes(
        ax, n_cols * len(systems), ncols=n_cols if n_cols > 1 else 4, panel_size=(5.5, 4.5), wspace=0.55
    )
    prob_axes, label_axes = axes[::n_cols], axes[1::n_cols]

    def with_images() -> Any:
        plot = light
        for name in sorted(images):
            plot = plot.pl.render_images(name)
        return plot

    kwargs.setdefault("norm", Normalize(vmin=0.0, vmax=1.0))
    colorbar_params = {"label": f"{prob_key} (cancer probability)", **kwargs.pop("colorbar_params", {})}
    plot = with_images()
    for r in regions:
        plot = plot.pl.render_shapes(
            r, color=prob_key, cmap=cmap, table_name=table_name, colorbar_params=colorbar_params, **kwargs
        )
    for name in called_names:
        plot = plot.pl.render_shapes(
            name, fill_alpha=0.0, outline_alpha=1.0, outline_color=call_color, outline_width=call_linewidth
        )
    plot.pl.show(
        coordinate_systems=systems,
        ax=prob_axes,
        title=[f"{cs}: cancer probability ({prob_key})" for cs in systems],
    )

    if called is not None:
        handle = call_legend_handle(table, prob_key, call_key, call_color, uns_key, style=call_style)
        for prob_ax in prob_axes:
            prob_ax.legend(handles=[handle], loc="lower right", fontsize="small", framealpha=0.8)

    if labels_key is not None:
        plot = with_images()
        groups = list(obs[labels_key].cat.categories)
        for r in regions:
            plot = plot.pl.render_shapes(
                r,
                color=labels_key,
                table_name=table_name,
                groups=groups,
                palette=palette,
                na_color="lightgrey",
            )
        plot.pl.show(
            coordinate_systems=systems,
            ax=label_axes,
            title=[f"{cs}: ground truth ({labels_key})" for cs in systems],
        )
    return axes
