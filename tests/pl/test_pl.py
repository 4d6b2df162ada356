import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib import pyplot as plt
from matplotlib.collections import PatchCollection

import spacrd

SECTIONS = ("S1", "S2")
#: Different hires scale factors per section, so a mix-up of sections shows as misplaced spots.
SCALE_FACTORS = (0.2, 0.1)
HIRES_SHAPE = (240, 320)
#: Tumour disc in hires image fractions: centre x, centre y, radius (of the width).
TUMOUR = (0.35, 0.4, 0.18)


def _section(name: str, sf: float, rng: np.random.Generator):
    """A Visium-like section: pink tissue ellipse, purple tumour disc, spots on a grid over the tissue.

    Spot probabilities fall off across the tumour edge, so high scores sit on the purple disc.
    """
    h, w = HIRES_SHAPE
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.ones((h, w, 3))
    tissue = ((xx / w - 0.5) / 0.4) ** 2 + ((yy / h - 0.5) / 0.38) ** 2 <= 1
    image[tissue] = (0.93, 0.72, 0.82)
    cx, cy, r = TUMOUR
    image[tissue & ((xx / w - cx) ** 2 + (yy / h - cy) ** 2 <= r**2)] = (0.45, 0.25, 0.6)

    step = 0.06 * w / sf  # full-resolution pixels between spots
    gx, gy = np.meshgrid(np.arange(step / 2, w / sf, step), np.arange(step / 2, h / sf, step))
    xy = np.c_[gx.ravel(), gy.ravel()]
    xy = xy[tissue[(xy[:, 1] * sf).astype(int), (xy[:, 0] * sf).astype(int)]]
    dist = np.hypot(xy[:, 0] * sf / w - cx, xy[:, 1] * sf / h - cy)
    prob = np.clip(1 / (1 + np.exp((dist - r) / 0.04)) + rng.normal(0, 0.05, len(dist)), 0, 1)
    obs = pd.DataFrame(
        {"section": name, "ctr_prob": prob, "cancer": dist <= r},
        index=[f"{name}_{i}" for i in range(len(dist))],
    )
    spatial = {
        "images": {"hires": image},
        "scalefactors": {"tissue_hires_scalef": sf, "spot_diameter_fullres": 0.8 * step},
    }
    return obs, xy, spatial


def make_adata(sections=SECTIONS, scale_factors=SCALE_FACTORS, threshold=0.5, seed=0) -> AnnData:
    rng = np.random.default_rng(seed)
    parts = [_section(name, sf, rng) for name, sf in zip(sections, scale_factors, strict=True)]
    obs = pd.concat([p[0] for p in parts])
    obs["section"] = pd.Categorical(obs["section"], categories=list(sections))
    obs["cancer"] = obs["cancer"].astype("boolean")
    obs["ctr"] = pd.Categorical(
        np.where(obs["ctr_prob"] >= threshold, "cancer", "non-cancer"), categories=["non-cancer", "cancer"]
    )
    adata = AnnData(
        X=rng.poisson(1.0, (len(obs), 4)).astype(np.float32),
        obs=obs,
        obsm={"spatial": np.vstack([p[1] for p in parts])},
        uns={"spatial": {name: p[2] for name, p in zip(sections, parts, strict=True)}},
    )
    adata.uns["spacrd"] = {
        "threshold": threshold,
        "threshold_method": "gmm",
        "prob_key": "ctr_prob",
        "call_key": "ctr",
        "version": "0.1.0",
    }
    return adata


def make_sdata(sections=SECTIONS, scale_factors=SCALE_FACTORS):
    """The same sections as a SpatialData: one coordinate system per section, as spatialdata-io writes."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale

    adata = make_adata(sections, scale_factors)
    images, shapes = {}, {}
    instance = np.zeros(adata.n_obs, dtype=int)
    for name in sections:
        info = adata.uns["spatial"][name]
        sf = info["scalefactors"]["tissue_hires_scalef"]
        pixels = (np.moveaxis(info["images"]["hires"], -1, 0) * 255).astype(np.uint8)
        images[f"{name}_hires_image"] = Image2DModel.parse(
            pixels,
            dims=("c", "y", "x"),
            c_coords=["r", "g", "b"],
            transformations={name: Scale([1 / sf, 1 / sf], axes=("x", "y"))},
        )
        in_section = (adata.obs["section"] == name).to_numpy()
        instance[in_section] = np.arange(in_section.sum())
        shapes[f"{name}_spots"] = ShapesModel.parse(
            adata.obsm["spatial"][in_section],
            geometry=0,
            radius=np.full(in_section.sum(), info["scalefactors"]["spot_diameter_fullres"] / 2),
            index=np.arange(in_section.sum()),
            transformations={name: Identity()},
        )
    table = adata.copy()
    del table.uns["spatial"]
    table.obs["region"] = pd.Categorical([f"{s}_spots" for s in table.obs["section"]])
    table.obs["spot_id"] = instance
    table = TableModel.parse(
        table, region=[f"{s}_spots" for s in sections], region_key="region", instance_key="spot_id"
    )
    return sd.SpatialData(images=images, shapes=shapes, tables={"table": table})


@pytest.fixture
def adata() -> AnnData:
    return make_adata()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _filled(ax) -> PatchCollection:
    """squidpy's spot collection coloured by a continuous value."""
    found = [c for c in ax.collections if isinstance(c, PatchCollection) and c.get_array() is not None]
    assert len(found) == 1
    return found[0]


def _outline(ax) -> PatchCollection:
    found = [c for c in ax.collections if c.get_label() == "_call_outline"]
    assert len(found) == 1
    return found[0]


def _centres_radii(collection) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.array([[p.vertices.min(0), p.vertices.max(0)] for p in collection.get_paths()])
    return boxes.mean(1), (boxes[:, 1, 0] - boxes[:, 0, 0]) / 2


# ---------------------------------------------------------------------------------------------- ctr
def test_ctr_one_panel_per_section_with_fixed_colour_scale(adata):
    axes = spacrd.pl.ctr(adata, return_ax=True)
    assert len(axes) == len(SECTIONS)
    for ax, name in zip(axes, SECTIONS, strict=True):
        assert name in ax.get_title()
        assert len(ax.get_images()) == 1  # the H&E
        colorbar = _filled(ax).colorbar
        assert colorbar is not None
        assert (colorbar.norm.vmin, colorbar.norm.vmax) == (0.0, 1.0)
        assert "ctr_prob" in colorbar.ax.get_ylabel()


def test_ctr_outline_marks_exactly_the_called_spots(adata):
    axes = spacrd.pl.ctr(adata, call_style="spots", return_ax=True)
    for ax, name in zip(axes, SECTIONS, strict=True):
        obs = adata.obs[adata.obs["section"] == name]
        called = (obs["ctr"] == "cancer").to_numpy()
        assert 0 < called.sum() < len(obs)
        filled_centres, filled_radii = _centres_radii(_filled(ax))
        outline_centres, outline_radii = _centres_radii(_outline(ax))
        # The outline must sit on squidpy's own spots (same pixels, same size), one per called spot.
        np.testing.assert_allclose(outline_centres, filled_centres[called], atol=1e-6)
        np.testing.assert_allclose(outline_radii, filled_radii[called], rtol=1e-6)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ctr = cancer (ctr_prob ≥ 0.50, gmm)"]


def test_ctr_spots_land_on_the_tumour_in_the_image(adata):
    """High-probability spots must be drawn over the purple tumour pixels of their own section's image."""
    axes = spacrd.pl.ctr(adata, return_ax=True, show_call=False)
    for ax, name in zip(axes, SECTIONS, strict=True):
        image = ax.get_images()[0].get_array()
        centres, _ = _centres_radii(_filled(ax))
        prob = adata.obs.loc[adata.obs["section"] == name, "ctr_prob"].to_numpy()
        pixels = image[centres[:, 1].astype(int), centres[:, 0].astype(int)]
        on_tumour = np.isclose(pixels[:, 0], 0.45, atol=0.02)
        assert prob[on_tumour].mean() > 0.7
        assert prob[~on_tumour].mean() < 0.3


def _region(ax):
    found = [c for c in ax.collections if c.get_label() == "_call_region"]
    assert len(found) == 1
    return found[0]


def test_ctr_region_encloses_the_called_spots_and_no_other(adata):
    axes = spacrd.pl.ctr(adata, return_ax=True)
    for ax, name in zip(axes, SECTIONS, strict=True):
        called = (adata.obs.loc[adata.obs["section"] == name, "ctr"] == "cancer").to_numpy()
        centres, _ = _centres_radii(_filled(ax))
        paths = _region(ax).get_paths()
        inside = np.array([any(p.contains_point(c) for p in paths) for c in centres])
        # a closed contour around every called spot centre, none around an uncalled one
        np.testing.assert_array_equal(inside, called)
        assert not [c for c in ax.collections if c.get_label() == "_call_outline"]
        assert ax.get_legend().get_lines()[0].get_linestyle() == "-"


def test_ctr_draws_the_regions_that_ctr_regions_exports(adata):
    """Figure and export agree: the outline is tl.ctr_regions' polygons, mapped to the hires pixels."""
    import shapely

    # a lone called spot far from the tumour: one tile, an island the default leaves out
    in_s1 = (adata.obs["section"] == "S1").to_numpy()
    lone = in_s1 & (adata.obsm["spatial"][:, 0] == adata.obsm["spatial"][in_s1, 0].max())
    lone[np.flatnonzero(lone)[1:]] = False
    assert (adata.obs["ctr"][lone] == "non-cancer").all()
    adata.obs.loc[lone, "ctr"] = "cancer"
    for min_tiles in (2.5, 0):
        regions = spacrd.tl.ctr_regions(adata, min_tiles=min_tiles).set_index("section")
        axes = spacrd.pl.ctr(adata, crop=False, min_tiles=min_tiles, return_ax=True)
        for ax, name, sf in zip(axes, SECTIONS, SCALE_FACTORS, strict=True):
            drawn = np.vstack([p.vertices for p in _region(ax).get_paths()])
            region = shapely.orient_polygons(regions.loc[name, "geometry"])
            np.testing.assert_allclose(drawn, shapely.get_coordinates(region) * sf)
        centre = adata.obsm["spatial"][lone][0] * SCALE_FACTORS[0]
        on_lone = any(p.contains_point(centre) for p in _region(axes[0]).get_paths())
        assert on_lone == (min_tiles == 0)


def test_ctr_rejects_an_unknown_call_style(adata):
    with pytest.raises(ValueError, match="call_style"):
        spacrd.pl.ctr(adata, call_style="ring", show=False)


def _scale_bars(ax) -> list:
    return [a for a in ax.artists if type(a).__name__ == "AnchoredSizeBar"]


def test_ctr_scale_bar_from_the_spot_diameter(adata):
    axes = spacrd.pl.ctr(adata, return_ax=True)
    assert not any(_scale_bars(ax) for ax in axes)  # no pixel size known: no bar rather than a wrong one
    axes = spacrd.pl.ctr(adata, spot_diameter_um=100, return_ax=True)
    for ax in axes:
        (bar,) = _scale_bars(ax)
        um = float(bar.txt_label.get_text().split()[0])
        # the bar's length in data units, against the drawn spot diameter of 100 µm
        bar_units = bar.size_bar.get_children()[0].get_width()
        _, radii = _centres_radii(_filled(ax))
        assert bar_units / (2 * radii[0]) == pytest.approx(um / 100, rel=1e-6)
    axes = spacrd.pl.ctr(adata, spot_diameter_um=100, scale_bar=False, return_ax=True)
    assert not any(_scale_bars(ax) for ax in axes)


def test_ctr_crops_each_panel_to_its_spots(adata):
    axes = spacrd.pl.ctr(adata, return_ax=True)
    uncropped = spacrd.pl.ctr(adata, crop=False, return_ax=True)
    for ax, full in zip(axes, uncropped, strict=True):
        centres, radii = _centres_radii(_filled(ax))
        (x0, x1), (y1, y0) = ax.get_xlim(), ax.get_ylim()
        assert x0 <= centres[:, 0].min() - radii[0] and x1 >= centres[:, 0].max() + radii[0]
        assert y0 <= centres[:, 1].min() - radii[0] and y1 >= centres[:, 1].max() + radii[0]
        assert abs(x1 - x0) <= abs(np.diff(full.get_xlim())[0]) + 1e-6


def test_ctr_outline_follows_crop_and_size(adata):
    crop = (300.0, 300.0, 1200.0, 1000.0)  # full-resolution pixels, applied to both sections
    axes = spacrd.pl.ctr(adata, return_ax=True, crop_coord=crop, size=0.5, call_style="spots")
    for ax, name in zip(axes, SECTIONS, strict=True):
        obs = adata.obs[adata.obs["section"] == name]
        xy = adata.obsm["spatial"][(adata.obs["section"] == name).to_numpy()]
        inside = (xy[:, 0] >= crop[0]) & (xy[:, 0] <= crop[2]) & (xy[:, 1] >= crop[1]) & (xy[:, 1] <= crop[3])
        called = (obs["ctr"] == "cancer").to_numpy()[inside]
        filled_centres, filled_radii = _centres_radii(_filled(ax))
        assert len(filled_centres) == inside.sum()
        outline_centres, outline_radii = _centres_radii(_outline(ax))
        np.testing.assert_allclose(outline_centres, filled_centres[called], atol=1e-6)
        np.testing.assert_allclose(outline_radii, filled_radii[called], rtol=1e-6)


def test_ctr_labels_add_a_truth_panel_per_section(adata):
    axes = spacrd.pl.ctr(adata, labels_key="cancer", return_ax=True)
    assert len(axes) == 2 * len(SECTIONS)
    assert [ax.get_title() for ax in axes] == [
        f"{lib}: {what}"
        for lib in ("S1", "S2")
        for what in ("cancer probability (ctr_prob)", "ground truth (cancer)")
    ]
    legend = [t.get_text().strip() for t in axes[1].get_legend().get_texts()]
    assert legend == ["non-cancer", "cancer"]
    # the truth panel carries no probability colour bar and no call outline
    assert not [c for c in axes[1].collections if c.get_label() == "_call_outline"]


def test_ctr_categorical_labels_keep_their_categories(adata):
    adata.obs["region"] = pd.Categorical(np.where(adata.obs["cancer"], "invasive cancer", "stroma"))
    axes = spacrd.pl.ctr(adata, labels_key="region", library_id="S1", return_ax=True)
    legend = {t.get_text().strip() for t in axes[1].get_legend().get_texts()}
    assert legend == {"invasive cancer", "stroma"}


def test_ctr_library_id_selects_sections(adata):
    ax = spacrd.pl.ctr(adata, library_id="S2", return_ax=True)
    assert ax.get_title() == "S2: cancer probability (ctr_prob)"
    assert len(_filled(ax).get_paths()) == (adata.obs["section"] == "S2").sum()


def test_ctr_single_library_needs_no_library_key():
    adata = make_adata(sections=("A1",), scale_factors=(0.2,))
    del adata.obs["section"]
    ax = spacrd.pl.ctr(adata, return_ax=True)
    assert len(_filled(ax).get_paths()) == adata.n_obs


def test_ctr_leaves_the_input_untouched(adata):
    obs, uns_keys = adata.obs.copy(), set(adata.uns)
    spacrd.pl.ctr(adata, labels_key="cancer", show=False)
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert set(adata.uns) == uns_keys


def test_ctr_without_call(adata):
    del adata.obs["ctr"]
    axes = spacrd.pl.ctr(adata, show_call=False, return_ax=True)
    assert all(ax.get_legend() is None for ax in axes)
    with pytest.raises(KeyError, match="show_call=False"):
        spacrd.pl.ctr(adata)


def test_ctr_saves_a_figure(adata, tmp_path):
    path = tmp_path / "ctr.png"
    assert spacrd.pl.ctr(adata, labels_key="cancer", save=path, show=False) is None
    assert path.stat().st_size > 10_000
    assert plt.imread(path).shape[1] > plt.imread(path).shape[0]  # two panels side by side


def test_ctr_into_given_axes(adata):
    _, given = plt.subplots(1, 2)
    axes = spacrd.pl.ctr(adata, ax=list(given), return_ax=True)
    assert axes[0] is given[0] and axes[1] is given[1]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: a.obs.drop(columns="ctr_prob", inplace=True), KeyError, r"model\.predict"),
        (lambda a: a.obs.__setitem__("ctr_prob", a.obs["ctr_prob"] * 5), ValueError, r"\[0, 1\]"),
        (lambda a: a.obs.drop(columns="section", inplace=True), KeyError, "library_key"),
        (lambda a: a.uns.pop("spatial"), KeyError, "uns\\['spatial'\\]"),
        (lambda a: a.uns["spatial"].pop("S2"), KeyError, "S2"),
    ],
)
def test_ctr_errors_are_clear(adata, change, error, match):
    change(adata)
    with pytest.raises(error, match=match):
        spacrd.pl.ctr(adata, show=False)


def test_ctr_section_without_image(adata):
    adata.uns["spatial"]["S2"]["images"] = {}
    with pytest.raises(KeyError, match="img=False"):
        spacrd.pl.ctr(adata, show=False)
    axes = spacrd.pl.ctr(adata, img=False, call_style="spots", return_ax=True)
    assert all(not ax.get_images() for ax in axes)
    # without the image the outline still sits on the spots
    outline_centres, _ = _centres_radii(_outline(axes[1]))
    filled_centres, _ = _centres_radii(_filled(axes[1]))
    called = (adata.obs.loc[adata.obs["section"] == "S2", "ctr"] == "cancer").to_numpy()
    np.testing.assert_allclose(outline_centres, filled_centres[called], atol=1e-6)


def test_ctr_rejects_unknown_sections_and_labels(adata):
    with pytest.raises(ValueError, match="available sections"):
        spacrd.pl.ctr(adata, library_id="B9", show=False)
    with pytest.raises(KeyError, match="ground-truth"):
        spacrd.pl.ctr(adata, labels_key="no_such_column", show=False)
    adata.obs["score"] = np.arange(adata.n_obs)
    with pytest.raises(ValueError, match="boolean"):
        spacrd.pl.ctr(adata, labels_key="score", show=False)
    with pytest.raises(TypeError, match="AnnData or a SpatialData"):
        spacrd.pl.ctr(adata.obs, show=False)


# ------------------------------------------------------------------------------ ctr on SpatialData
def test_ctr_spatialdata_panels_scale_and_outline():
    sdata = make_sdata()
    table = sdata.tables["table"]
    axes = spacrd.pl.ctr(sdata, labels_key="cancer", return_ax=True)
    assert [ax.get_title() for ax in axes] == [
        f"{lib}: {what}"
        for lib in ("S1", "S2")
        for what in ("cancer probability (ctr_prob)", "ground truth (cancer)")
    ]
    for ax in axes[::2]:
        assert len(ax.get_images()) == 1
        colorbars = [c.colorbar for c in ax.collections if getattr(c, "colorbar", None) is not None]
        assert len(colorbars) == 1
        assert (colorbars[0].norm.vmin, colorbars[0].norm.vmax) == (0.0, 1.0)
        assert "ctr = cancer" in ax.get_legend().get_texts()[0].get_text()
    # the light copy used for plotting must not leak back into the user's object
    assert set(sdata.shapes) == {"S1_spots", "S2_spots"}
    assert "cancer_colors" not in table.uns


def test_ctr_spatialdata_needs_a_table_name_when_ambiguous():
    sdata = make_sdata(sections=("S1",), scale_factors=(0.2,))
    sdata.tables["other"] = sdata.tables["table"].copy()
    with pytest.raises(ValueError, match="table_name"):
        spacrd.pl.ctr(sdata, show=False)
    ax = spacrd.pl.ctr(sdata, table_name="table", return_ax=True)
    assert ax.get_title() == "S1: cancer probability (ctr_prob)"
    with pytest.raises(ValueError, match="coordinate system"):
        spacrd.pl.ctr(sdata, table_name="table", library_id="S7", show=False)


# ------------------------------------------------------------------------------ score_distribution
def test_score_distribution_by_class_with_threshold(adata):
    ax = spacrd.pl.score_distribution(adata, labels_key="cancer", return_ax=True)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    n_cancer = int(adata.obs["cancer"].sum())
    assert legend == [
        f"non-cancer (n={adata.n_obs - n_cancer})",
        f"cancer (n={n_cancer})",
        "threshold (gmm) = 0.50",
    ]
    line = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(line) == 1 and line[0].get_xdata()[0] == pytest.approx(0.5)
    # unit area per class: heights × bin width sum to one
    for patch in ax.patches:
        xy = patch.get_path().vertices
        assert xy[:, 0].min() >= 0.0 and xy[:, 0].max() <= 1.0
    assert ax.get_xlim() == (0.0, 1.0)


def test_score_distribution_densities_integrate_to_one(adata):
    ax = spacrd.pl.score_distribution(adata, labels_key="cancer", return_ax=True, histtype="bar", bins=20)
    heights = np.array([p.get_height() for p in ax.patches]).reshape(2, 20)
    np.testing.assert_allclose(heights.sum(1) * (1 / 20), 1.0)


def test_score_distribution_unlabelled_and_explicit_threshold(adata):
    adata.obs.loc[adata.obs_names[:5], "cancer"] = pd.NA
    del adata.uns["spacrd"]
    ax = spacrd.pl.score_distribution(adata, labels_key="cancer", threshold=0.3, return_ax=True)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "unlabelled (n=5)" in legend
    assert "threshold = 0.30" in legend
    ax = spacrd.pl.score_distribution(adata, return_ax=True, density=False)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"all spots (n={adata.n_obs})"]
    assert ax.get_ylabel() == "spots"


def test_empty_anndata_is_reported(adata):
    with pytest.raises(ValueError, match="no spots"):
        spacrd.pl.score_distribution(adata[:0].copy(), show=False)
    with pytest.raises(ValueError, match="no spots"):
        spacrd.pl.ctr(adata[:0].copy(), show=False)


def test_score_distribution_needs_scores(adata):
    with pytest.raises(KeyError, match=r"model\.predict"):
        spacrd.pl.score_distribution(adata, prob_key="nope", show=False)


# ------------------------------------------------------------------- keys that predict(uns_key=...) wrote
def _rename_prediction(adata, uns_key="run1", threshold=0.37):
    """As ``predict(uns_key=uns_key, prob_key="run1_prob", call_key="run1_ctr")`` would have written it."""
    adata.obs["run1_prob"] = adata.obs.pop("ctr_prob")
    adata.obs["run1_ctr"] = pd.Categorical(
        np.where(adata.obs["run1_prob"] >= threshold, "cancer", "non-cancer"),
        categories=["non-cancer", "cancer"],
    )
    del adata.obs["ctr"]
    adata.uns[uns_key] = {
        **adata.uns.pop("spacrd"),
        "threshold": threshold,
        "prob_key": "run1_prob",
        "call_key": "run1_ctr",
    }
    return adata


@pytest.mark.parametrize("uns_key", [None, "run1"], ids=["found-by-prob_key", "named"])
def test_plots_read_the_threshold_under_a_renamed_uns_key(adata, uns_key):
    adata = _rename_prediction(adata)
    keys = {"prob_key": "run1_prob"} | ({} if uns_key is None else {"uns_key": uns_key})
    axes = spacrd.pl.ctr(adata, call_key="run1_ctr", return_ax=True, **keys)
    for ax in axes:
        assert ax.get_legend().get_texts()[0].get_text() == "run1_ctr = cancer (run1_prob ≥ 0.37, gmm)"
    ax = spacrd.pl.score_distribution(adata, return_ax=True, **keys)
    line = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(line) == 1 and line[0].get_xdata()[0] == pytest.approx(0.37)
    assert "threshold (gmm) = 0.37" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_threshold_of_another_prob_key_or_an_ambiguous_one_is_not_shown(adata):
    adata = _rename_prediction(adata)
    adata.obs["ctr_prob"] = adata.obs["run1_prob"]  # a column no record claims
    ax = spacrd.pl.score_distribution(adata, return_ax=True)
    assert not [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    adata.uns["run2"] = dict(adata.uns["run1"], threshold=0.6)  # two records claim run1_prob
    ax = spacrd.pl.score_distribution(adata, prob_key="run1_prob", return_ax=True)
    assert not [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    ax = spacrd.pl.score_distribution(adata, prob_key="run1_prob", uns_key="run2", return_ax=True)
    assert [ln.get_xdata()[0] for ln in ax.get_lines()] == [pytest.approx(0.6)]


def test_ctr_spatialdata_reads_a_renamed_uns_key():
    sdata = make_sdata(sections=("S1",), scale_factors=(0.2,))
    table = sdata.tables["table"]
    table.uns["run1"] = dict(table.uns.pop("spacrd"), threshold=0.42)
    ax = spacrd.pl.ctr(sdata, return_ax=True)
    assert "ctr_prob ≥ 0.42" in ax.get_legend().get_texts()[0].get_text()


def test_pl_modules_do_not_import_each_other():
    """_ctr may hand SpatialData to _ctr_spatialdata; _ctr_spatialdata must not import _ctr back."""
    import ast
    from pathlib import Path

    folder = Path(spacrd.pl.__file__).parent

    def imported(name):
        tree = ast.parse((folder / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found.add(("." * node.level) + (node.module or ""))
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        return found

    ctr, ctr_sdata, call = imported("_ctr"), imported("_ctr_spatialdata"), imported("_call")
    assert "._ctr_spatialdata" in ctr and "._call" in ctr_sdata  # the code this test is about
    assert not ({"._ctr", "spacrd.pl._ctr"} & (ctr_sdata | call))
    assert not ({"._ctr_spatialdata", "spacrd.pl._ctr_spatialdata"} & call)


# -------------------------------------------------------------------------------- training_history
def _curve(key: str, values) -> pd.DataFrame:
    return pd.DataFrame({key: values}, index=pd.RangeIndex(len(values), name="epoch"))


@pytest.fixture
def history() -> dict[str, pd.DataFrame]:
    keys = {
        "stage1_train_loss": np.linspace(5, 1, 10),
        "stage1_validation_loss": np.linspace(5.5, 1.5, 10),
        "stage2_train_loss": np.linspace(3, 2, 6),
        "stage3_train_loss": np.linspace(0.7, 0.2, 6),
        "stage3_validation_loss": np.linspace(0.8, 0.4, 6),
        "stage3_validation_auc": np.linspace(0.6, 0.9, 6),
    }
    return {k: _curve(k, v) for k, v in keys.items()}


def test_training_history_one_panel_per_stage(history):
    axes = spacrd.pl.training_history(history, return_ax=True)
    assert [ax.get_title() for ax in axes] == [
        "Stage I: modality alignment",
        "Stage II: fusion VAE",
        "Stage III: classifier",
    ]
    assert [len(ax.get_lines()) for ax in axes] == [2, 1, 2]  # no validation split in stage II
    np.testing.assert_allclose(
        axes[0].get_lines()[1].get_ydata(), history["stage1_validation_loss"].iloc[:, 0]
    )


def test_training_history_from_model_with_metrics(history):
    class Trained:
        pass

    model = Trained()
    model.history = {k: v for k, v in history.items() if not k.startswith("stage2")}
    axes = spacrd.pl.training_history(model, metrics=["validation_auc"], return_ax=True)
    assert len(axes) == 2
    twins = [ax for ax in axes[1].figure.axes if ax not in axes]
    assert len(twins) == 1 and twins[0].get_ylabel() == "validation_auc"
    # one legend for the losses and the metric, on the axes drawn last
    assert [t.get_text() for t in twins[0].get_legend().get_texts()] == [
        "train loss",
        "validation loss",
        "validation_auc",
    ]


def test_training_history_reads_per_epoch_keys_of_step_logging(history):
    renamed = {k.replace("_loss", "_loss_epoch"): v for k, v in history.items() if k.endswith("_loss")}
    axes = spacrd.pl.training_history(renamed, return_ax=True)
    assert [len(ax.get_lines()) for ax in axes] == [2, 1, 2]


def test_training_history_errors():
    class Untrained:
        history = None

    with pytest.raises(ValueError, match="train"):
        spacrd.pl.training_history(Untrained(), show=False)
    with pytest.raises(ValueError, match="stage1_train_loss"):
        spacrd.pl.training_history({"elbo_train": _curve("elbo_train", [1.0, 0.5])}, show=False)
    with pytest.raises(TypeError, match="history"):
        spacrd.pl.training_history([1, 2, 3], show=False)


# ------------------------------------------------------------------------------------ real HER2ST A1
def test_ctr_on_her2st_a1_spots_sit_on_the_tissue(her2st_root):
    """On the real A1 section every spot must be drawn on tissue, not on the blacked-out background."""
    adata = spacrd.datasets.her2st("A1", path=her2st_root)
    # the pathologist's annotation stands in for a score: this test is about where spots are drawn
    adata.obs["ctr_prob"] = adata.obs["cancer"].astype(float)
    adata.obs["ctr"] = pd.Categorical(
        np.where(adata.obs["cancer"], "cancer", "non-cancer"), categories=["non-cancer", "cancer"]
    )
    prob_ax, label_ax = spacrd.pl.ctr(adata, labels_key="label", call_style="spots", return_ax=True)
    assert prob_ax.get_title() == "A1: cancer probability (ctr_prob)"
    assert label_ax.get_title() == "A1: ground truth (label)"

    image = np.asarray(prob_ax.get_images()[0].get_array(), dtype=float)
    image = image / 255.0 if image.max() > 1 else image
    centres, radii = _centres_radii(_filled(prob_ax))
    assert len(centres) == adata.n_obs
    pixels = image[centres[:, 1].round().astype(int), centres[:, 0].round().astype(int), :3]
    on_tissue = pixels.max(axis=1) > 0.15
    assert on_tissue.mean() > 0.97
    # ST spots are 100 µm wide on a 200 µm grid: the drawn diameter is about half the spot pitch
    pitch = np.median(np.sort(np.linalg.norm(centres[:, None] - centres[None], axis=-1), axis=1)[:, 1])
    assert 2 * np.median(radii) / pitch == pytest.approx(0.5, abs=0.05)
    outline_centres, _ = _centres_radii(_outline(prob_ax))
    assert len(outline_centres) == int(adata.obs["cancer"].sum())


# ------------------------------------------------------------------------- with a trained SpaCRD model
def test_plots_read_what_a_trained_model_writes():
    """Train a tiny model one epoch per stage and plot its history and its predictions."""
    import scvi

    scvi.settings.seed = 0
    adata = make_adata()
    rng = np.random.default_rng(1)
    adata.layers["counts"] = rng.poisson(2.0, adata.shape).astype(np.float32)
    adata.obsm["X_histology"] = rng.normal(size=(adata.n_obs, 8)).astype(np.float32)
    # start from what the model will write, not from the synthetic stand-ins
    adata.obs = adata.obs.drop(columns=["ctr_prob", "ctr"])
    del adata.uns["spacrd"]
    truth = adata.obs["cancer"].copy()

    spacrd.model.SpaCRD.setup_anndata(
        adata, layer="counts", labels_key="cancer", batch_key="section", image_key="X_histology"
    )
    model = spacrd.model.SpaCRD(adata, n_top_genes=4)
    model.train(
        align_epochs=1, fuse_epochs=1, classify_epochs=1, accelerator="cpu", enable_progress_bar=False
    )
    model.predict(adata)

    axes = spacrd.pl.training_history(model, return_ax=True)
    assert len(axes) == 3
    assert all(len(ax.get_lines()) == 2 for ax in axes)  # train and validation in every stage

    axes = spacrd.pl.ctr(adata, labels_key="cancer", call_style="spots", return_ax=True)
    assert len(axes) == 4
    threshold = adata.uns["spacrd"]["threshold"]
    for ax, name in zip(axes[::2], SECTIONS, strict=True):
        in_section = (adata.obs["section"] == name).to_numpy()
        called = int((adata.obs.loc[in_section, "ctr"] == "cancer").sum())
        assert len(_outline(ax).get_paths()) == called
        assert f"{threshold:.2f}" in ax.get_legend().get_texts()[0].get_text()

    ax = spacrd.pl.score_distribution(adata, labels_key="cancer", return_ax=True)
    assert [ln.get_xdata()[0] for ln in ax.get_lines()] == [pytest.approx(threshold)]
    pd.testing.assert_series_equal(adata.obs["cancer"], truth)


def test_calibration_plot_and_reliability_table(tmp_path):
    from spacrd.pl._calibration import reliability

    rng = np.random.default_rng(0)
    prob = rng.uniform(0, 1, 4000)
    truth = rng.uniform(0, 1, 4000) < prob  # calibrated by construction
    table = reliability(prob, truth)
    assert len(table) == 10 and table["spots"].sum() == 4000 and table.attrs["ece"] < 0.03
    over = reliability(prob, rng.uniform(0, 1, 4000) < prob**3)  # over-confident for cancer
    assert over.attrs["ece"] > 0.1 and (over["cancer_share"] <= over["mean_probability"] + 0.05).all()
    adata = AnnData(
        obs=pd.DataFrame(
            {"ctr_prob": prob, "cancer": truth, "section": np.repeat(["S1", "S2"], 2000)},
            index=[str(i) for i in range(4000)],
        )
    )
    ax = spacrd.pl.calibration(adata, "cancer", library_key="section", return_ax=True, show=False)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "calibrated" and labels[1].startswith("S1: ECE 0.0") and "(2000 spots)" in labels[1]
    plt.close(ax.figure)
    adata.obs["region"] = pd.Categorical(np.where(truth, "tumour", "stroma"))
    with pytest.raises(ValueError, match="must be boolean or the categories 'cancer'/'non-cancer'"):
        spacrd.pl.calibration(adata, "region", show=False)


def test_shared_parameter_descriptions_reach_every_plot():
    import inspect

    from spacrd.pl import _docs

    for plot in (
        spacrd.pl.ctr,
        spacrd.pl.calibration,
        spacrd.pl.score_distribution,
        spacrd.pl.training_history,
    ):
        doc = plot.__doc__
        assert "%(" not in doc, plot.__name__
        params = set(inspect.signature(plot).parameters)
        for block in (_docs._prob_key, _docs._uns_key, _docs._ax, _docs._show_save):
            name = block.split("\n", 1)[0]
            # ctr and training_history draw several panels and describe their axes themselves
            if name in params and (name != "ax" or plot.__name__ in ("calibration", "score_distribution")):
                assert block in doc, (plot.__name__, name)
