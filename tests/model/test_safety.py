"""Nothing lost, nothing touched: input AnnData, views and backed files, reproducibility, model files and
interrupted training.

``test_model.py`` already covers the save/load round trip of a larger model, truncated weights, a
foreign ``model.json`` and a pickled payload in ``model.pt``; the tests here add what those leave open.
"""

import copy
import json
import pickle
import signal

import anndata as ad
import lightning.pytorch as pl
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from _synthetic import source_of, target_of, tiny_sections
from anndata import ImplicitModificationWarning
from matplotlib import pyplot as plt
from scipy import sparse

import spacrd
from spacrd.model import SpaCRD

matplotlib.use("Agg")

NET = {"n_top_genes": 50, "n_hidden": (32,), "n_embed": 16, "n_heads": 2, "n_latent": 4}
EPOCHS = {"align_epochs": 1, "fuse_epochs": 1, "classify_epochs": 2, "enable_progress_bar": False}
SETUP = {"layer": "counts", "labels_key": "cancer", "batch_key": "section", "image_key": "X_histology"}
#: What ``setup_anndata`` adds, as listed in its docstring: scvi-tools' registry and the spatial graph.
SETUP_OBS = {"_scvi_batch"}
SETUP_OBSM = {"spacrd_neighbors"}
SETUP_UNS = {"_scvi_uuid", "_scvi_manager_uuid", "spacrd_neighbors"}


@pytest.fixture(scope="module")
def data():
    return tiny_sections()


def _fit(source, seed=0, **train_kwargs):
    scvi.settings.seed = seed
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    model.train(**EPOCHS, **train_kwargs)
    return model


@pytest.fixture(scope="module")
def trained(data):
    return _fit(source_of(data))


def _with_images(adata):
    """A 200 × 200 px 'hires' image per section (scale 0.25); spot centres fall inside it."""
    adata.obsm["spatial"] = adata.obsm["spatial"] + 50
    rng = np.random.default_rng(0)
    adata.uns["spatial"] = {
        str(s): {
            "images": {"hires": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)},
            "scalefactors": {"tissue_hires_scalef": 0.25, "spot_diameter_fullres": 50.0},
            "metadata": {"source": "synthetic"},
        }
        for s in adata.obs["section"].cat.categories
    }
    return adata


# ------------------------------------------------------------------------------ deep before/after
def _matrix(x):
    return (type(x), x.dtype, x.toarray() if sparse.issparse(x) else np.array(x, copy=True))


def _snapshot(adata):
    return {
        "X": _matrix(adata.X),
        "layers": {k: _matrix(v) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }


def _assert_same(before, now, where):
    if isinstance(before, dict):
        assert isinstance(now, dict) and set(now) == set(before), where
        for key in before:
            _assert_same(before[key], now[key], f"{where}[{key!r}]")
    elif isinstance(before, np.ndarray):
        assert now.dtype == before.dtype, where
        np.testing.assert_array_equal(now, before, err_msg=where)
    else:
        assert now == before, where


def _assert_only_added(before, adata, obs=(), obsm=(), uns=()):
    """``adata`` equals its snapshot ``before`` deeply, except for the new keys ``obs``, ``obsm``, ``uns``."""
    now = _snapshot(adata)
    assert set(now["layers"]) == set(before["layers"])
    for name, (kind, dtype, values) in [("X", before["X"]), *before["layers"].items()]:
        now_kind, now_dtype, now_values = now["X"] if name == "X" else now["layers"][name]
        assert (now_kind, now_dtype) == (kind, dtype), name
        np.testing.assert_array_equal(now_values, values, err_msg=name)
    pd.testing.assert_frame_equal(now["var"], before["var"])
    assert set(now["obs"].columns) - set(before["obs"].columns) == set(obs)
    pd.testing.assert_frame_equal(now["obs"][before["obs"].columns], before["obs"])
    assert set(now["obsm"]) - set(before["obsm"]) == set(obsm)
    _assert_same(before["obsm"], {k: now["obsm"][k] for k in before["obsm"]}, "obsm")
    assert set(now["uns"]) - set(before["uns"]) == set(uns)
    _assert_same(before["uns"], {k: now["uns"][k] for k in before["uns"]}, "uns")


def test_snapshot_comparison_catches_changes(data):
    """The helper the guarantees rest on must notice an edit anywhere."""
    edits = [
        lambda a: a.layers["counts"].data.__setitem__(0, 99.0),
        lambda a: a.obs.__setitem__("section", "S0"),
        lambda a: a.obsm["spatial"].__setitem__((0, 0), -1.0),
        lambda a: a.uns["spatial"]["S0"]["images"]["hires"].__setitem__((0, 0, 0), 7),
        lambda a: a.uns["spatial"]["S1"]["scalefactors"].__setitem__("tissue_hires_scalef", 1.0),
        lambda a: a.obs.__setitem__("extra", 1),
    ]
    for edit in edits:
        adata = _with_images(data.copy())
        before = _snapshot(adata)
        edit(adata)
        with pytest.raises(AssertionError):
            _assert_only_added(before, adata)


# ------------------------------------------------------------------------ documented outputs only
@pytest.mark.parametrize("obs_dtypes", ["categorical", "strings"])
def test_setup_anndata_writes_only_documented_keys(data, obs_dtypes):
    source = source_of(data)
    kwargs = dict(SETUP)
    if obs_dtypes == "strings":  # object columns must not be turned into categoricals in place
        source.obs["section"] = source.obs["section"].astype(str).astype(object)
        source.obs["region"] = np.where(source.obs["cancer"], "tumour", "stroma").astype(object)
        kwargs.update(labels_key="region", cancer_categories=["tumour"])
    before = _snapshot(source)
    SpaCRD.setup_anndata(source, **kwargs)
    _assert_only_added(before, source, obs=SETUP_OBS, obsm=SETUP_OBSM, uns=SETUP_UNS)
    for key in SETUP_OBS | SETUP_OBSM | SETUP_UNS:
        assert f'"{key}"' in SpaCRD.setup_anndata.__doc__


def test_predict_writes_only_documented_keys(data, trained):
    target = _with_images(target_of(data))
    before, source_before = _snapshot(target), _snapshot(trained.adata)
    trained.predict(target)
    _assert_only_added(before, target, obs={"ctr_prob", "ctr", "ctr_uncertainty"}, uns={"spacrd"})
    _assert_only_added(source_before, trained.adata)  # the training data are not touched
    custom = target_of(data)
    before = _snapshot(custom)
    trained.predict(custom, prob_key="p", call_key="c", uncertainty_key="u", uns_key="run")
    _assert_only_added(before, custom, obs={"p", "c", "u"}, uns={"run"})


def test_image_features_writes_only_documented_keys(data):
    adata = _with_images(data.copy())
    before = _snapshot(adata)
    out = spacrd.pp.image_features(adata, key_added="X_img", copy=True)
    _assert_only_added(before, adata)
    assert "X_img" in out.obsm
    spacrd.pp.image_features(adata, key_added="X_img")
    _assert_only_added(before, adata, obsm={"X_img"}, uns={"X_img"})
    np.testing.assert_array_equal(adata.obsm["X_img"], out.obsm["X_img"])


def test_ctr_changes_nothing(data):
    adata = _with_images(data.copy())
    adata.obs["ctr_prob"] = np.linspace(0, 1, adata.n_obs)
    adata.obs["ctr"] = pd.Categorical(np.where(adata.obs["ctr_prob"] >= 0.5, "cancer", "non-cancer"))
    adata.uns["spacrd"] = {"threshold": 0.5, "prob_key": "ctr_prob", "call_key": "ctr"}
    before = _snapshot(adata)
    spacrd.pl.ctr(adata, labels_key="cancer", show=False)
    spacrd.pl.ctr(adata[adata.obs["section"] == "S1"], show=False)
    plt.close("all")
    _assert_only_added(before, adata)


# ----------------------------------------------------------------------------------- views, backed
def test_setup_anndata_refuses_a_view(data):
    parent = source_of(data)
    before = _snapshot(parent)
    view = parent[parent.obs["section"] == "S0"]
    with pytest.raises(ValueError, match=r"view of another AnnData.*`adata = adata\[mask\]\.copy\(\)`"):
        SpaCRD.setup_anndata(view, **SETUP)
    assert view.is_view
    _assert_only_added(before, parent)


def test_predict_on_a_view_warns_and_leaves_the_parent_alone(data, trained):
    parent = data.copy()
    before = _snapshot(parent)
    view = parent[parent.obs["section"] == "S2"]
    with pytest.warns(
        UserWarning, match=r"adata is a view.*makes it a copy.*sliced from is not changed"
    ) as caught:
        prob = trained.predict(view)
    assert not any(issubclass(w.category, ImplicitModificationWarning) for w in caught)
    _assert_only_added(before, parent)
    assert not view.is_view
    np.testing.assert_array_equal(view.obs["ctr_prob"].to_numpy(), prob)
    np.testing.assert_array_equal(prob, trained.predict(target_of(data)))


def test_image_features_on_a_view_leaves_the_parent_alone(data):
    """As scanpy functions do: anndata turns the view into a copy with its own warning."""
    parent = _with_images(data.copy())
    before = _snapshot(parent)
    view = parent[parent.obs["section"] == "S1"]
    with pytest.warns(ImplicitModificationWarning, match="initializing view as actual"):
        spacrd.pp.image_features(view, key_added="X_img")
    _assert_only_added(before, parent)
    assert view.obsm["X_img"].shape == (64, len(spacrd.pp.HISTOLOGY_STATS_FEATURES))


def test_predict_on_a_backed_anndata(data, trained, tmp_path):
    """Backed mode keeps X on disk; the counts layer is in memory, so prediction works unchanged."""
    target_of(data).write_h5ad(tmp_path / "t.h5ad")
    backed = ad.read_h5ad(tmp_path / "t.h5ad", backed="r")
    try:
        np.testing.assert_array_equal(trained.predict(backed), trained.predict(target_of(data)))
        assert "ctr_prob" in backed.obs
    finally:
        backed.file.close()
    assert "ctr_prob" not in ad.read_h5ad(tmp_path / "t.h5ad").obs  # nothing written to the file


# --------------------------------------------------------------------------------- reproducibility
def test_same_seed_same_probabilities(data, trained):
    target = target_of(data)
    expected = trained.predict(target.copy())
    np.testing.assert_array_equal(_fit(source_of(data), seed=0).predict(target.copy()), expected)
    assert not np.array_equal(_fit(source_of(data), seed=1).predict(target.copy()), expected)


def test_save_load_gives_identical_predictions(data, trained, tmp_path):
    target = target_of(data)
    expected = trained.predict(target.copy())
    trained.save(tmp_path / "m", save_anndata=True)
    loaded = SpaCRD.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(target.copy()), expected)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(target.copy()), trained.get_latent_representation(target.copy())
    )
    attached = SpaCRD.load(tmp_path / "m", adata=ad.read_h5ad(tmp_path / "m" / "adata.h5ad"))
    np.testing.assert_array_equal(attached.predict(target.copy()), expected)
    np.testing.assert_array_equal(attached.predict(), trained.predict())


# ------------------------------------------------------------------------------------- model files
def test_load_rejects_damaged_and_foreign_directories(data, trained, tmp_path):
    trained.save(tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())

    with pytest.raises(
        FileNotFoundError, match=r"model.json not found.*not a directory written by SpaCRD.save"
    ):
        SpaCRD.load(meta_path)  # a file, not a directory
    meta_path.write_text(json.dumps(meta)[:200])
    with pytest.raises(ValueError, match=r"not valid JSON \(truncated or foreign file\)"):
        SpaCRD.load(tmp_path / "m")
    meta_path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("registry", "genes")}))
    with pytest.raises(ValueError, match=r"lacks the entries \['registry', 'genes'\].*save the model again"):
        SpaCRD.load(tmp_path / "m")
    meta_path.write_text(json.dumps({**meta, "format_version": "1"}))
    with pytest.raises(ValueError, match="invalid format_version '1'"):
        SpaCRD.load(tmp_path / "m")
    meta_path.write_text(json.dumps({**meta, "format_version": 99, "spacrd_version": "9.0"}))
    with pytest.raises(ValueError, match=r"written by a newer spacrd \(9.0\); upgrade spacrd"):
        SpaCRD.load(tmp_path / "m")
    meta_path.write_text(json.dumps({**meta, "registry": {**meta["registry"], "model_name": "SCVI"}}))
    with pytest.raises(ValueError, match="holds a SCVI model, not SpaCRD"):
        SpaCRD.load(tmp_path / "m")

    meta_path.write_text(json.dumps(meta))
    other = source_of(data)
    SpaCRD.setup_anndata(other, **SETUP)
    wider = SpaCRD(other, **{**NET, "n_hidden": (48,)})
    torch.save(wider.module.state_dict(), tmp_path / "m" / "model.pt")
    with pytest.raises(ValueError, match="do not fit the saved architecture"):
        SpaCRD.load(tmp_path / "m")

    trained.save(tmp_path / "m", overwrite=True)
    other_genes = source_of(data)
    other_genes.var_names = [f"g{i}" for i in range(other_genes.n_vars)]
    with pytest.raises(ValueError, match=r"var_names differ.*load without `adata`"):
        SpaCRD.load(tmp_path / "m", adata=other_genes)
    parent = source_of(data)
    with pytest.raises(ValueError, match="view of another AnnData"):
        SpaCRD.load(tmp_path / "m", adata=parent[:50])
    assert SpaCRD.load(tmp_path / "m").is_trained_  # the directory itself was fine all along


class _OpensAFile:
    """Unpickling this object would create ``path``: proof that code from the file ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("writer", ["torch zip", "plain pickle"])
def test_load_never_runs_code_from_the_weights(trained, tmp_path, writer):
    trained.save(tmp_path / "m")
    sentinel = tmp_path / "code-ran"
    payload = {"weights": torch.zeros(2), "payload": _OpensAFile(sentinel)}
    if writer == "torch zip":
        torch.save(payload, tmp_path / "m" / "model.pt")
    else:
        (tmp_path / "m" / "model.pt").write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="Could not read weights"):
        SpaCRD.load(tmp_path / "m")
    assert not sentinel.exists()


# ---------------------------------------------------------------------------- interrupted training
class _InterruptFusion(pl.Callback):
    """Acts like Ctrl+C at the start of stage II."""

    def on_train_epoch_start(self, trainer, pl_module):
        if pl_module.stage == "fuse":
            raise KeyboardInterrupt


def test_interrupted_training_leaves_a_usable_model(data):
    source = source_of(data)
    scvi.settings.seed = 0
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(
        KeyboardInterrupt, match=r"interrupted in stage 2 \(fuse\).*Call `model.train\(\)` again"
    ):
        model.train(**EPOCHS, callbacks=[_InterruptFusion()])
    assert signal.getsignal(signal.SIGINT) is handler  # Lightning's SIG_IGN is undone: Ctrl+C works again
    assert not model.is_trained_
    assert "stage1_train_loss" in model.history and "stage3_train_loss" not in model.history
    with pytest.raises(RuntimeError, match=r"not trained \(an interrupted `train\(\)` leaves it untrained\)"):
        model.predict(target_of(data))

    model.train(**EPOCHS)
    assert model.is_trained_ and len(model.history["stage3_train_loss"]) == EPOCHS["classify_epochs"]
    prob = model.predict(target_of(data))
    assert np.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()
