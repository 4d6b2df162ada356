"""What spacrd.datasets returns goes straight into squidpy and scanpy: plots, subsets, spatial graphs.

The spatial calls here are the ones a notebook makes right after loading. ``ctr_prob`` and ``ctr`` are a
synthetic stand-in for :meth:`spacrd.model.SpaCRD.predict`'s output, ranked from ERBB2 expression, so no
model is trained.
"""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import squidpy as sq
from matplotlib.collections import PatchCollection
from PIL import Image
from sklearn.metrics import roc_auc_score

import spacrd
from spacrd._constants import CALL_CATEGORIES, CANCER, NON_CANCER, OBS_KEYS

matplotlib.use("Agg")

# A1: labelled, with its PNG; C1: labelled, no image; C2: the smallest section with a JPEG (187 spots).
SECTIONS = ["A1", "C1", "C2"]
IMAGED = ["A1", "C2"]


def _synthetic_ctr(adata):
    """Write ``obs["ctr_prob"]`` (per-section percentile of normalised ERBB2) and ``obs["ctr"]``."""
    counts = adata.layers["counts"]
    erbb2 = counts[:, adata.var_names.get_loc("ERBB2")].toarray().ravel()
    expression = pd.Series(np.log1p(1e4 * erbb2 / counts.sum(axis=1).A1), index=adata.obs_names)
    prob = expression.groupby(adata.obs["section"], observed=True).rank(pct=True)
    adata.obs[OBS_KEYS.PROB] = prob.to_numpy()
    adata.obs[OBS_KEYS.CALL] = pd.Categorical(
        np.where(prob > 0.5, CANCER, NON_CANCER), categories=list(CALL_CATEGORIES)
    )


@pytest.fixture(scope="module")
def adata(her2st_root):
    adata = spacrd.datasets.her2st(SECTIONS, path=her2st_root)
    _synthetic_ctr(adata)
    return adata


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _spots(ax):
    """Centres and diameters of the circles drawn on ``ax``, sorted by centre."""
    paths = [p for c in ax.collections if isinstance(c, PatchCollection) for p in c.get_paths()]
    assert paths, "no spots drawn"
    lo = np.array([p.vertices.min(0) for p in paths])
    hi = np.array([p.vertices.max(0) for p in paths])
    centres, diameters = (lo + hi) / 2, (hi - lo).mean(1)
    order = np.lexsort(centres.T[::-1])
    return centres[order], diameters[order]


def _assert_panel(ax, adata, section, *, image):
    """``ax`` shows ``section``'s spots where squidpy/scanpy put them, on its H&E if ``image``."""
    lib = adata.uns["spatial"][section]
    scale = lib["scalefactors"]["tissue_hires_scalef"]
    centres, diameters = _spots(ax)
    expected = adata.obsm["spatial"][np.asarray(adata.obs["section"] == section)] * scale
    expected = expected[np.lexsort(expected.T[::-1])]
    np.testing.assert_allclose(centres, expected, atol=1e-3)
    np.testing.assert_allclose(diameters, lib["scalefactors"]["spot_diameter_fullres"] * scale, rtol=1e-3)
    if image:
        assert [im.get_array().shape for im in ax.get_images()] == [lib["images"]["hires"].shape]
    else:
        assert not ax.get_images()


# ----------------------------------------------------------------------------------------- squidpy


@pytest.mark.data
def test_spatial_scatter_one_section(her2st_root):
    a1 = spacrd.datasets.her2st("A1", path=her2st_root)
    _synthetic_ctr(a1)
    ax = sq.pl.spatial_scatter(a1, color=OBS_KEYS.PROB, return_ax=True)
    _assert_panel(ax, a1, "A1", image=True)

    c1 = spacrd.datasets.her2st("C1", path=her2st_root)
    _synthetic_ctr(c1)
    assert "images" not in c1.uns["spatial"]["C1"]
    ax = sq.pl.spatial_scatter(c1, color=OBS_KEYS.CALL, img=False, return_ax=True)
    _assert_panel(ax, c1, "C1", image=False)


@pytest.mark.data
def test_spatial_scatter_several_sections(adata):
    # image-less C1 among them: img=False, one panel per section, each in its own pixel frame
    axes = sq.pl.spatial_scatter(adata, color=OBS_KEYS.PROB, library_key="section", img=False, return_ax=True)
    assert len(axes) == len(SECTIONS)
    for ax, section in zip(axes, SECTIONS, strict=True):
        _assert_panel(ax, adata, section, image=False)

    # the imaged sections on their H&E, chosen with library_id
    axes = sq.pl.spatial_scatter(
        adata, color=OBS_KEYS.CALL, library_key="section", library_id=IMAGED, return_ax=True
    )
    for ax, section in zip(axes, IMAGED, strict=True):
        _assert_panel(ax, adata, section, image=True)


@pytest.mark.data
def test_spatial_scatter_after_subsetting(adata, tmp_path):
    sub = adata[adata.obs["section"].isin(IMAGED)].copy()
    # subsetting keeps every library; anndata drops the unused category
    assert list(sub.uns["spatial"]) == SECTIONS
    assert list(sub.obs["section"].cat.categories) == IMAGED

    # either name the libraries left ...
    axes = sq.pl.spatial_scatter(
        sub,
        color=OBS_KEYS.PROB,
        library_key="section",
        library_id=list(sub.obs["section"].cat.categories),
        return_ax=True,
    )
    assert len(axes) == 2

    # ... or drop the others once, after which the defaults work
    spacrd.datasets.remove_unused_libraries(sub)
    assert list(sub.uns["spatial"]) == IMAGED
    axes = sq.pl.spatial_scatter(
        sub, color=[OBS_KEYS.PROB, OBS_KEYS.CALL], library_key="section", return_ax=True
    )
    assert len(axes) == 4  # two colours for each section, one section after the other
    for ax, section in zip(axes, [s for s in IMAGED for _ in range(2)], strict=True):
        _assert_panel(ax, sub, section, image=True)
    out = tmp_path / "subset.png"
    axes[0].figure.savefig(out, dpi=60)
    assert Image.open(out).size[0] > 100

    # one section left: a one-entry uns, as a single-section loader call gives
    one = adata[adata.obs["section"] == "C2"].copy()
    spacrd.datasets.remove_unused_libraries(one)
    ax = sq.pl.spatial_scatter(one, color=OBS_KEYS.CALL, return_ax=True)
    _assert_panel(ax, one, "C2", image=True)


# ------------------------------------------------------------------------------------------ scanpy


@pytest.mark.data
def test_scanpy_spatial(adata, her2st_root):
    # one section, as loaded: its only library is found, with its image
    a1 = spacrd.datasets.her2st("A1", path=her2st_root)
    _synthetic_ctr(a1)
    ax = sc.pl.spatial(a1, color=OBS_KEYS.PROB, show=False)[0]
    _assert_panel(ax, a1, "A1", image=True)

    # several sections: one call per library; img_key=None for the one without an image
    for section in SECTIONS:
        image = section in IMAGED
        part = adata[adata.obs["section"] == section]
        ax = sc.pl.spatial(
            part, color=OBS_KEYS.CALL, library_id=section, img_key="hires" if image else None, show=False
        )[0]
        _assert_panel(ax, part, section, image=image)

    # after subsetting and remove_unused_libraries, no library_id is needed
    c1 = adata[adata.obs["section"] == "C1"].copy()
    spacrd.datasets.remove_unused_libraries(c1)
    ax = sc.pl.spatial(c1, color=OBS_KEYS.PROB, img_key=None, show=False)[0]
    _assert_panel(ax, c1, "C1", image=False)


# -------------------------------------------------------------------------------- squidpy graphs


@pytest.mark.data
def test_spatial_neighbors_and_nhood_enrichment(adata):
    adata = adata.copy()
    labelled = adata.obs["cancer"].notna().to_numpy()
    # the stand-in tracks the pathologist's cancer regions, as ERBB2 does in HER2+ tumours
    assert (
        roc_auc_score(adata.obs["cancer"][labelled].astype(bool), adata.obs[OBS_KEYS.PROB][labelled]) > 0.65
    )

    sq.gr.spatial_neighbors(adata, library_key="section", coord_type="generic", n_neighs=4)
    graph = adata.obsp["spatial_connectivities"].tocoo()
    section = adata.obs["section"].cat.codes.to_numpy()
    assert (section[graph.row] == section[graph.col]).all()  # no edge between sections
    # on the ST grid the 4 nearest spots of almost every spot are one 200 µm array step away
    steps = adata.obsp["spatial_distances"].tocoo()
    px_per_step = np.array([adata.uns["spatial"][s]["metadata"]["px_per_array_step"] for s in SECTIONS])
    ratio = steps.data / px_per_step[section[steps.row]]
    assert np.median(ratio) == pytest.approx(1, abs=0.05)

    sq.gr.nhood_enrichment(
        adata, cluster_key=OBS_KEYS.CALL, n_perms=200, seed=0, n_jobs=1, show_progress_bar=False
    )
    result = adata.uns[f"{OBS_KEYS.CALL}_nhood_enrichment"]
    zscore = result["zscore"]
    assert zscore.shape == (2, 2)
    # ERBB2-high spots neighbour each other more than under permutation, and so do ERBB2-low spots
    assert np.diag(zscore).min() > 3
    assert zscore[0, 1] < 0


# ------------------------------------------------------------------------- the shipped subset


def test_her2st_ctr_chains():
    small = spacrd.datasets.her2st_ctr()
    assert [s for s, lib in small.uns["spatial"].items() if "images" in lib] == ["A1"]
    axes = sq.pl.spatial_scatter(small, color="label", library_key="section", img=False, return_ax=True)
    assert len(axes) == 6
    a1 = small[small.obs["section"] == "A1"].copy()
    spacrd.datasets.remove_unused_libraries(a1)
    ax = sq.pl.spatial_scatter(a1, color="label", return_ax=True)
    _assert_panel(ax, a1, "A1", image=True)
