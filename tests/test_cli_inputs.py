"""Odd inputs and options of the command: one line naming the option, the value and the fix, or the right result."""

import hashlib
import shutil

import anndata as ad
import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

import spacrd
from spacrd._cli import main

SPACERANGER = SHARED_DATA / "visium_spaceranger_tiny"


@pytest.fixture(scope="module")
def a1(tmp_path_factory):
    her2st = spacrd.datasets.her2st_ctr()
    a1 = her2st[her2st.obs["section"] == "A1"].copy()
    a1.obs = a1.obs[["section"]]
    path = tmp_path_factory.mktemp("input") / "A1.h5ad"
    a1.write_h5ad(path)
    return path


def _sha(path):
    return hashlib.sha1(path.read_bytes()).hexdigest()


def one_line_error(capsys, argv, *fragments, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("spacrd "), err
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_layer_option_writes_every_column_uns_names(tmp_path, a1):
    adata = ad.read_h5ad(a1)
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X.log1p()
    path = tmp_path / "layered.h5ad"
    adata.write_h5ad(path)
    before = _sha(path)
    assert main(["predict", str(path), "--layer", "counts", "--out", str(tmp_path / "out"), "--no-plot"]) == 0
    annotated = ad.read_h5ad(tmp_path / "out" / "annotated.h5ad")
    prediction = annotated.uns["spacrd"]
    named = [prediction[k] for k in ("prob_key", "call_key", "uncertainty_key") if prediction[k] is not None]
    assert "ctr_uncertainty" in named and set(named) <= set(annotated.obs)
    assert annotated.obs["ctr_uncertainty"].between(0, 0.5).all()
    assert _sha(path) == before


def test_an_upper_case_suffix_is_a_h5ad(capsys, tmp_path, a1):
    upper = tmp_path / "A1.H5AD"
    shutil.copy(a1, upper)
    assert main(["predict", str(upper), "--out", str(tmp_path / "out"), "--no-plot"]) == 0
    assert "346 spots" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_without_a_gpu_is_exit_2(capsys, tmp_path, a1):
    argv = ["predict", str(a1), "--out", str(tmp_path / "out"), "--accelerator", "gpu"]
    one_line_error(capsys, argv, "--accelerator gpu", "no CUDA GPU", "accelerator='cpu'")
    one_line_error(capsys, [*argv[:-1], "tpu"], "--accelerator must be one of auto, cpu, gpu")
    assert not (tmp_path / "out").exists()


def test_a_negative_seed_is_named(capsys, tmp_path, a1):
    argv = ["train", str(a1), "--labels-key", "section", "--out", str(tmp_path / "m"), "--seed", "-1"]
    one_line_error(capsys, argv, "--seed must be an integer from 0 to 4294967295, got -1")
    assert not (tmp_path / "m").exists()


def test_a_zarr_group_without_tables_says_so(capsys, tmp_path):
    import zarr

    group = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    group.create_array("x", shape=(3,), dtype="f4")
    argv = ["predict", str(tmp_path / "plain.zarr"), "--out", str(tmp_path / "out")]
    last = one_line_error(capsys, argv, "holds no SpatialData table")
    assert "several" not in last


def test_a_ranking_model_that_does_not_fit_is_blamed_on_ranking_model(capsys, tmp_path, a1):
    from _synthetic import source_of, tiny_sections

    source = source_of(tiny_sections())
    spacrd.model.SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    model = spacrd.model.SpaCRD(source, n_top_genes=20, n_embed=8, n_heads=2, n_latent=2)
    model.train(fuse_epochs=1, classify_epochs=1, enable_progress_bar=False)
    model.save(str(tmp_path / "ranker"))
    argv = ["predict", str(a1), "--out", str(tmp_path / "out"), "--ranking-model", str(tmp_path / "ranker")]
    last = one_line_error(capsys, argv, f"where --ranking-model {tmp_path / 'ranker'} reads raw counts")
    assert "--model" not in last
    last = one_line_error(
        capsys, [*argv, "--layer", "X"], f"--ranking-model {tmp_path / 'ranker'} does not fit"
    )
    assert "Only 0 of the model's 20 genes" in last and not (tmp_path / "out").exists()


@pytest.mark.data("visium_spaceranger_tiny")
def test_an_expression_only_run_does_not_need_the_hires_png(capsys, tmp_path, a1):
    folder = tmp_path / "spaceranger"
    shutil.copytree(SPACERANGER, folder)
    (folder / "spatial" / "tissue_hires_image.png").unlink()
    before = {p.name: _sha(p) for p in folder.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--out", str(out), "--min-gene-overlap", "0"]) == 0
    err = capsys.readouterr().err
    assert "lacks tissue_hires_image.png; read without it" in err
    annotated = ad.read_h5ad(out / "annotated.h5ad")
    import squidpy as sq

    full = sq.read.visium(SPACERANGER)
    np.testing.assert_allclose(annotated.obsm["spatial"], full.obsm["spatial"])
    assert (out / "ctr.png").is_file()  # drawn on the lowres image that is there
    assert {p.name: _sha(p) for p in folder.rglob("*") if p.is_file()} == before


def test_predict_on_a_zarr_names_the_image_to_embed_for_a_histology_model():
    """The library embeds only a named image; the command names the store's only one, as before."""
    from types import SimpleNamespace

    from spacrd._cli_io import InputError
    from spacrd._cli_model import _zarr_image

    def case(encoder, obsm, images):
        model = SimpleNamespace(
            setup_args={"image_key": "X_histology"}, module=SimpleNamespace(image_encoder=encoder)
        )
        loaded = SimpleNamespace(table=SimpleNamespace(obsm=obsm), data=SimpleNamespace(images=images))
        return model, loaded

    assert _zarr_image(*case(object(), {}, {"he": 1}), None) == "he"
    assert _zarr_image(*case(object(), {}, {"he": 1, "other": 2}), "other") == "other"  # --image
    assert _zarr_image(*case(object(), {"X_histology": 1}, {"he": 1}), None) is None  # already there
    assert _zarr_image(*case(None, {}, {"he": 1}), None) is None  # an expression-only model
    assert _zarr_image(*case(object(), {}, {}), None) is None  # no image: expression alone
    with pytest.raises(InputError, match=r"name the H&E image with --image \(one of \['he', 'other'\]\)"):
        _zarr_image(*case(object(), {}, {"he": 1, "other": 2}), None)
