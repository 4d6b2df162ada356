"""The pretrained model shipped with the package: loads offline, predicts, and names what exists."""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import spacrd
from spacrd._pretrained_registry import PRETRAINED_MODELS, pretrained_path
from spacrd.model import SpaCRD

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the pretrained model must load without the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_every_registered_model_is_shipped_and_small():
    for name in PRETRAINED_MODELS:
        folder = pretrained_path(name)
        assert (folder / "model.pt").is_file() and (folder / "model.json").is_file()
        assert sum(f.stat().st_size for f in folder.iterdir()) < 5e6
        recipe = json.loads((folder / "training.json").read_text())
        assert recipe["built_by"] == "scripts/build_pretrained.py" and recipe["name"] == name


def test_load_pretrained_her2st_offline_and_predict_a1(offline):
    model = SpaCRD.load_pretrained("her2st", accelerator="cpu")
    assert model.is_trained_ and model.adata is None
    assert len(model.gene_names) == 2000 and model.module.image_encoder is None  # expression only
    recipe = json.loads((pretrained_path("her2st") / "training.json").read_text())
    assert recipe["sections"] == ["A1", "B1", "C1", "D1", "E1", "F1"] and recipe["seed"] == 0

    adata = spacrd.datasets.her2st_ctr()
    a1 = adata[adata.obs["section"] == "A1"].copy()
    truth = a1.obs["cancer"].astype(bool).to_numpy()
    a1.obs = a1.obs.drop(columns=["label", "cancer"])
    prob = model.predict(a1)
    assert prob.shape == (346,) and np.isfinite(prob).all() and ((prob >= 0) & (prob <= 1)).all()
    # A1 is one of the model's training sections: this checks the shipped weights are the trained ones,
    # not how well they generalise (the model card's leave-one-section-out numbers do that)
    assert roc_auc_score(truth, prob) > 0.8
    # the shipped model carries its bootstrap heads, so users get the per-spot uncertainty too
    assert model.module.n_members == 5
    uncertainty = a1.obs["ctr_uncertainty"].to_numpy()
    assert np.isfinite(uncertainty).all() and (uncertainty >= 0).all() and uncertainty.max() > 0


def test_her2st_ranker_orders_the_spots_of_her2st(offline):
    model = SpaCRD.load_pretrained("her2st", accelerator="cpu")
    ranker = SpaCRD.load_pretrained("her2st-ranker", accelerator="cpu")
    assert ranker.section_scaling_ == "none" and list(ranker.gene_names) == list(model.gene_names)
    adata = spacrd.datasets.her2st_ctr()
    e1 = adata[adata.obs["section"] == "E1"].copy()
    e1.obs = e1.obs.drop(columns=["label", "cancer"])
    alone, paired = e1.copy(), e1.copy()
    model.predict(alone)
    model.predict(paired, ranking_model=ranker)
    np.testing.assert_allclose(np.sort(paired.obs["ctr_prob"]), np.sort(alone.obs["ctr_prob"]), atol=0.01)
    assert (paired.obs["ctr"] == "cancer").sum() == (alone.obs["ctr"] == "cancer").sum()
    assert not np.allclose(paired.obs["ctr_prob"], alone.obs["ctr_prob"])


def test_unknown_pretrained_name_lists_the_available_ones():
    with pytest.raises(
        ValueError, match=r"'mouse_brain'.*available: \['her2st', 'her2st-ranker'\].*SpaCRD.load"
    ):
        SpaCRD.load_pretrained("mouse_brain")


def test_the_wheel_takes_the_package_data():
    """hatch builds the wheel from src/spacrd, and no ignore rule drops the weights."""
    config = pytest.importorskip("tomllib").loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == ["src/spacrd"]
    assert config["project"]["scripts"] == {"spacrd": "spacrd._cli:main", "spacrd-demo": "spacrd._cli:demo"}
    ignored = (ROOT / ".gitignore").read_text().split()
    assert not {"*.pt", "*.json", "pretrained/"} & set(ignored)
