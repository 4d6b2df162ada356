"""The ``spacrd`` command, run in-process through ``main([...])`` on small real inputs.

The pretrained ``her2st`` model was trained on all six shipped HER2ST sections, so predicting one of
them (A1 here) checks that the command runs end to end, not how well the model generalises.
"""

import ast
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA
from PIL import Image

import spacrd
from spacrd import _cli, _demo
from spacrd._cli import main

SPACERANGER = SHARED_DATA / "visium_spaceranger_tiny"
#: Few epochs and genes, so that a training through the command takes seconds.
QUICK_TRAIN = ["--fuse-epochs", "1", "--classify-epochs", "2", "--n-top-genes", "100"]


@pytest.fixture(scope="module")
def her2st():
    return spacrd.datasets.her2st_ctr()


@pytest.fixture
def a1_h5ad(her2st, tmp_path):
    """The shipped A1 (a training section of the pretrained model), without its labels."""
    a1 = her2st[her2st.obs["section"] == "A1"].copy()
    a1.obs = a1.obs.drop(columns=["label", "cancer"])
    path = tmp_path / "A1.h5ad"
    a1.write_h5ad(path)
    return path


def _png(path) -> np.ndarray:
    png = np.asarray(Image.open(path).convert("RGB"))
    assert png.shape[0] > 200 and png.std() > 20  # spots drawn, not an empty figure
    return png


def _one_line_error(capsys, code_expected: int, argv: list[str], match: str) -> str:
    assert main(argv) == code_expected
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("spacrd ") and match in last, err
    return last


# ------------------------------------------------------------------------------------------- help, usage


def test_help_describes_commands_examples_and_exit_codes(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("predict", "train", "demo", "examples:", "exit codes"))
    assert main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    assert "her2st" in out and "spots.csv" in out and "--min-gene-overlap" in out and "examples:" in out
    assert main(["train", "--help"]) == 0
    assert "--classify-epochs" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert "choose a command" in capsys.readouterr().err
    assert main(["predict", "x.h5ad"]) == 2  # --out is required
    assert "--out" in capsys.readouterr().err
    assert main(["frobnicate"]) == 2


def test_demo_alias_is_the_same_command(capsys):
    assert _cli.demo(["--help"]) == 0
    assert "--held-out" in capsys.readouterr().out
    _one_line_error(capsys, 2, ["demo", "--held-out", "Z9"], "--held-out must be one of")


def test_demo_does_not_import_the_command():
    """``_cli`` runs the demo; ``_demo`` importing ``_cli`` back would tie the two in a loop."""
    tree = ast.parse(Path(_demo.__file__).read_text())
    modules = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not [m for m in modules if m.split(".")[-1].startswith("_cli")]


# ------------------------------------------------------------------------------------------- bad input


def test_missing_input_unknown_model_and_wrong_format_exit_2(capsys, tmp_path, a1_h5ad):
    out = str(tmp_path / "out")
    _one_line_error(capsys, 2, ["predict", str(tmp_path / "nope.h5ad"), "--out", out], "no such file")
    last = _one_line_error(capsys, 2, ["predict", str(a1_h5ad), "--model", "mouse", "--out", out], "mouse")
    assert "her2st" in last  # the error lists what is available
    text = tmp_path / "counts.csv"
    text.write_text("spot,ERBB2\nA,1\n")
    _one_line_error(capsys, 2, ["predict", str(text), "--out", out], "not a .h5ad file")
    broken = tmp_path / "broken.h5ad"
    broken.write_bytes(b"not hdf5")
    _one_line_error(capsys, 2, ["predict", str(broken), "--out", out], "could not be read")
    _one_line_error(capsys, 2, ["predict", str(tmp_path), "--out", out], "not a .h5ad file")
    args = ["predict", str(a1_h5ad), "--out", out, "--threshold", "high"]
    _one_line_error(capsys, 2, args, "--threshold")
    args = ["predict", str(a1_h5ad), "--out", out, "--section-key", "slide"]
    _one_line_error(capsys, 2, args, "--section-key 'slide'")
    assert not (tmp_path / "out").exists()  # nothing written for bad input


def test_debug_shows_the_traceback_and_unexpected_errors_exit_1(capsys, tmp_path, a1_h5ad, monkeypatch):
    assert main(["predict", str(tmp_path / "nope.h5ad"), "--out", str(tmp_path), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_cli, "_predict", broken)
    assert main(["predict", str(a1_h5ad), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert (
        err == "spacrd predict: unexpected error (RuntimeError): disk on fire (--debug shows the traceback)"
    )


# ------------------------------------------------------------------------------------------- .h5ad


def test_predict_pretrained_on_h5ad_writes_table_data_and_figure(capsys, tmp_path, a1_h5ad, her2st):
    out = tmp_path / "out"
    assert main(["predict", "--model", "her2st", str(a1_h5ad), "--out", str(out)]) == 0
    assert "346 spots" in capsys.readouterr().out
    spots = pd.read_csv(out / "spots.csv", index_col="spot")
    assert list(spots.columns) == ["section", "ctr_prob", "ctr"] and len(spots) == 346
    assert (spots["section"] == "A1").all() and spots["ctr_prob"].between(0, 1).all()
    assert set(spots["ctr"]) <= {"cancer", "non-cancer"}
    annotated = ad.read_h5ad(out / "annotated.h5ad")
    np.testing.assert_allclose(annotated.obs.loc[spots.index, "ctr_prob"], spots["ctr_prob"], rtol=1e-6)
    assert annotated.uns["spacrd"]["prob_key"] == "ctr_prob" and annotated.n_vars == 2000
    # A1 is a training section of this model: a sanity check of the pipeline, not a generalisation claim
    from sklearn.metrics import roc_auc_score

    truth = her2st.obs.loc[spots.index, "cancer"].astype(bool)
    assert roc_auc_score(truth, spots["ctr_prob"]) > 0.8
    _png(out / "ctr.png")


def test_train_then_predict_with_the_model_folder(capsys, tmp_path, her2st):
    source, target = tmp_path / "B1_D1.h5ad", tmp_path / "C1.h5ad"
    her2st[her2st.obs["section"].isin(["B1", "D1"])].copy().write_h5ad(source)
    c1 = her2st[her2st.obs["section"] == "C1"].copy()
    c1.obs = c1.obs[["section"]]
    c1.write_h5ad(target)
    model_dir = tmp_path / "model"
    argv = ["train", str(source), "--labels-key", "label", "--out", str(model_dir), *QUICK_TRAIN]
    argv += ["--cancer-categories", "invasive cancer", "--seed", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Stage III: classifier (2 epochs)" in captured.err  # progress on stderr
    assert "model.pt" in captured.out
    model = spacrd.model.SpaCRD.load(str(model_dir))
    assert model.is_trained_ and len(model.gene_names) == 100 and model.setup_args["batch_key"] == "section"
    _one_line_error(capsys, 2, argv, "--overwrite")  # the folder exists

    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_dir), str(target), "--out", str(out), "--no-plot"]) == 0
    spots = pd.read_csv(out / "spots.csv", index_col="spot")
    assert len(spots) == c1.n_obs and np.isfinite(spots["ctr_prob"]).all()
    assert not (out / "ctr.png").exists()
    bad = ["train", str(source), "--labels-key", "pathology", "--out", str(tmp_path / "m2")]
    _one_line_error(capsys, 2, bad, "--labels-key 'pathology'")

    # a model on unscaled expression orders the spots; the first keeps its probabilities
    ranker_dir = tmp_path / "ranker"
    ranker_argv = [*argv[:5], str(ranker_dir), *argv[6:], "--section-scaling", "none"]
    assert main(ranker_argv) == 0
    assert spacrd.model.SpaCRD.load(str(ranker_dir)).section_scaling_ == "none"
    ranked_out = tmp_path / "ranked"
    predict = ["predict", "--model", str(model_dir), str(target), "--no-plot"]
    assert main([*predict, "--out", str(ranked_out), "--ranking-model", str(ranker_dir)]) == 0
    ranked = pd.read_csv(ranked_out / "spots.csv", index_col="spot").loc[spots.index]
    np.testing.assert_allclose(np.sort(ranked["ctr_prob"]), np.sort(spots["ctr_prob"]), atol=0.01)
    assert not np.allclose(ranked["ctr_prob"], spots["ctr_prob"])


def _label_geojson(section, path):
    """The pathologist's spot labels of one section as QuPath annotations, one per label."""
    import geopandas as gpd

    parts = [
        spacrd.tl.ctr_regions(section, call_key="label", category=label, class_name=label, min_tiles=0)
        for label in section.obs["label"].unique()
    ]
    spacrd.io.write_geojson(gpd.GeoDataFrame(pd.concat(parts, ignore_index=True)), path)
    return path


def test_train_from_annotations_and_predict_regions(capsys, tmp_path, her2st, a1_h5ad):
    import geopandas as gpd
    import shapely

    geojson = _label_geojson(her2st[her2st.obs["section"] == "A1"].copy(), tmp_path / "A1.geojson")
    model_dir = tmp_path / "model"
    classes = "invasive cancer=cancer,cancer in situ=cancer,undetermined=none"
    argv = ["train", str(a1_h5ad), "--annotations", str(geojson), "--out", str(model_dir), *QUICK_TRAIN]
    _one_line_error(capsys, 2, [*argv, "--classes", classes], "'connective tissue'")  # unmapped classes
    _one_line_error(capsys, 2, [*argv, "--classes", "Tumor:cancer"], "NAME=cancer")
    _one_line_error(capsys, 2, argv, "--classes")
    others = ",immune infiltrate=non-cancer,connective tissue=non-cancer,adipose tissue=non-cancer"
    assert main([*argv, "--classes", classes + others]) == 0
    assert "303 cancer, 38 non-cancer, 5 unlabelled" in capsys.readouterr().err
    assert spacrd.model.SpaCRD.load(str(model_dir)).setup_args["labels_key"] == "cancer"

    out = tmp_path / "out"
    assert main(["predict", str(a1_h5ad), "--out", str(out), "--regions", "--no-plot"]) == 0
    regions = gpd.read_file(out / "regions.geojson")
    assert list(regions["name"]) == ["A1"] and regions.is_valid.all()
    assert (regions["objectType"] == "annotation").all()
    annotated = ad.read_h5ad(out / "annotated.h5ad")
    xy = annotated.obsm["spatial"]
    inside = shapely.intersects_xy(regions.geometry.iloc[0], xy[:, 0], xy[:, 1])
    called = (annotated.obs["ctr"] == "cancer").to_numpy()
    assert not (inside & ~called).any() and inside.sum() > 0.9 * called.sum()


def test_layer_option_reads_counts_from_a_layer(tmp_path, a1_h5ad):
    adata = ad.read_h5ad(a1_h5ad)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()  # a log-transformed X, as after scanpy's preprocessing
    path = tmp_path / "layered.h5ad"
    adata.write_h5ad(path)
    for name, extra in (("x", []), ("layer", ["--layer", "counts"])):
        assert main(["predict", str(path), "--out", str(tmp_path / name), "--no-plot", *extra]) == 0
    ref_dir = tmp_path / "ref"
    assert main(["predict", str(a1_h5ad), "--out", str(ref_dir), "--no-plot"]) == 0
    ref = pd.read_csv(ref_dir / "spots.csv", index_col="spot")["ctr_prob"]
    layered = pd.read_csv(tmp_path / "layer" / "spots.csv", index_col="spot")["ctr_prob"]
    np.testing.assert_allclose(layered, ref, rtol=1e-5)
    from_x = pd.read_csv(tmp_path / "x" / "spots.csv", index_col="spot")["ctr_prob"]
    assert np.abs(from_x - ref).max() > 0.01  # X was not the counts
    assert "ctr_prob" in ad.read_h5ad(tmp_path / "layer" / "annotated.h5ad").obs


# ------------------------------------------------------------------------------------------- Space Ranger


@pytest.mark.data("visium_spaceranger_tiny")
def test_spaceranger_folder_train_predict_plot(capsys, tmp_path):
    """The real Space Ranger layout through squidpy's reader: labels from a CSV, histology from lowres."""
    import squidpy as sq

    spots = sq.read.visium(SPACERANGER).obs
    labels = pd.DataFrame(
        {"Pathology": np.where(spots["array_row"] < spots["array_row"].median(), "Tumor", "Stroma")},
        index=pd.Index(spots.index, name="Barcode"),
    )  # synthetic labels, only to have a model (a Loupe Browser export has this layout)
    labels.iloc[:5] = np.nan
    labels.to_csv(tmp_path / "pathology.csv")
    model_dir = tmp_path / "model"
    argv = ["train", str(SPACERANGER), "--labels-file", str(tmp_path / "pathology.csv")]
    argv += ["--labels-key", "Pathology", "--cancer-categories", "Tumor", "--histology"]
    argv += ["--out", str(model_dir), "--align-epochs", "1", *QUICK_TRAIN]
    assert main(argv) == 0
    assert "Stage I: modality alignment (1 epochs)" in capsys.readouterr().err
    assert spacrd.model.SpaCRD.load(str(model_dir)).module.image_encoder is not None

    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_dir), str(SPACERANGER), "--out", str(out)]) == 0
    table = pd.read_csv(out / "spots.csv", index_col="spot")
    assert len(table) == 100 and (table["section"] == "custom").all()
    annotated = ad.read_h5ad(out / "annotated.h5ad")
    assert "X_histology" in annotated.obsm  # the image model's features computed from the lowres H&E
    _png(out / "ctr.png")


@pytest.mark.data("visium_spaceranger_tiny")
def test_spaceranger_folder_with_the_her2st_model_is_a_gene_mismatch(capsys, tmp_path):
    last = _one_line_error(
        capsys, 2, ["predict", str(SPACERANGER), "--out", str(tmp_path / "o")], "of the model's 2000 genes"
    )
    assert "min_gene_overlap" in last


# ------------------------------------------------------------------------------------------- SpatialData


def _a1_sdata(her2st, path):
    """A1 as a SpatialData zarr: circles in full-resolution pixels, a table annotating them, the H&E."""
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Scale

    a1 = her2st[her2st.obs["section"] == "A1"].copy()
    library = a1.uns["spatial"]["A1"]
    scale = library["scalefactors"]["tissue_hires_scalef"]
    circles = ShapesModel.parse(
        np.asarray(a1.obsm["spatial"], dtype=float),
        geometry=0,
        radius=np.full(a1.n_obs, library["scalefactors"]["spot_diameter_fullres"] / 2),
        index=pd.RangeIndex(a1.n_obs),
    )
    image = Image2DModel.parse(
        np.moveaxis(library["images"]["hires"], -1, 0),
        dims=("c", "y", "x"),
        transformations={"global": Scale([1 / scale, 1 / scale], axes=("y", "x"))},
    )
    table = ad.AnnData(X=a1.X, obs=pd.DataFrame(index=a1.obs_names), var=a1.var)
    table.obs["region"] = pd.Categorical(["A1_spots"] * a1.n_obs)
    table.obs["spot_id"] = np.arange(a1.n_obs)
    table = TableModel.parse(table, region="A1_spots", region_key="region", instance_key="spot_id")
    SpatialData(images={"A1_he": image}, shapes={"A1_spots": circles}, tables={"table": table}).write(path)


def test_predict_spatialdata_zarr_writes_the_table_back(capsys, tmp_path, her2st):
    from spatialdata import read_zarr
    from spatialdata.transformations import get_transformation

    zarr = tmp_path / "A1.zarr"
    _a1_sdata(her2st, zarr)
    out = tmp_path / "out"
    assert main(["predict", str(zarr), "--out", str(out), "--regions"]) == 0
    stored = read_zarr(zarr)
    assert "ctr_regions" in stored.shapes and (out / "regions.geojson").is_file()
    assert set(get_transformation(stored.shapes["ctr_regions"], get_all=True)) == set(
        get_transformation(stored.shapes["A1_spots"], get_all=True)
    )
    table = read_zarr(zarr).tables["table"]
    assert {"ctr_prob", "ctr"} <= set(table.obs) and table.uns["spacrd"]["call_key"] == "ctr"
    assert list(read_zarr(zarr).tables) == ["table"]  # the temporary copy is gone
    spots = pd.read_csv(out / "spots.csv", index_col="spot")
    assert len(spots) == 346 and (spots["section"] == "A1_spots").all()
    np.testing.assert_allclose(spots["ctr_prob"], table.obs["ctr_prob"].to_numpy(), rtol=1e-6)
    assert not (out / "annotated.h5ad").exists()  # the zarr itself holds the annotated table
    _png(out / "ctr.png")
    _one_line_error(
        capsys,
        2,
        ["predict", str(zarr), "--table", "cells", "--out", str(tmp_path / "o2")],
        "no table 'cells'",
    )


# ------------------------------------------------------------------------------------------- demo


def test_demo_reports_modalities_and_baselines(capsys, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--fuse-epochs", "1", "--classify-epochs", "1"]) == 0
    captured = capsys.readouterr()
    assert "Modalities: expression only" in captured.out and "held-out D1 has none" in captured.out
    assert "baseline" in captured.out and "Stage II: fusion VAE (1 epochs)" in captured.err
    assert "GPU available" not in captured.err + captured.out  # Lightning's banners are hidden
    metrics = pd.read_csv(out / "metrics.csv").iloc[0]
    p = 139 / 306  # D1's cancer share
    assert metrics["held_out"] == "D1" and metrics["cancer_share"] == pytest.approx(p)
    assert metrics["baseline_average_precision"] == pytest.approx(p)
    assert metrics["baseline_f1_all_cancer"] == pytest.approx(2 * p / (1 + p))
    spots = pd.read_csv(out / "spots.csv")
    assert spots.columns[0] == "spot" and len(spots) == 306
    _png(out / "ctr.png")


def test_demo_note_says_why_expression_only():
    assert "no image to learn" in _demo.modalities_note([], "A1", True)
    assert "held-out D1 has none" in _demo.modalities_note(["A1"], "D1", False)
