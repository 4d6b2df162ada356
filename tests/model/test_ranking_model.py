"""predict(ranking_model=...): a second model orders the spots, the first keeps its probabilities and call."""

import warnings

import numpy as np
import pytest
import scvi
from _synthetic import source_of, synthetic_sections, target_of
from scipy.stats import spearmanr

from spacrd.model import SpaCRD

SMALL = {"n_top_genes": 50, "n_embed": 16, "n_heads": 2, "n_latent": 4}


def _trained(source, **kwargs):
    scvi.settings.seed = 0
    model = SpaCRD(source, **SMALL, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(fuse_epochs=3, classify_epochs=8, batch_size=64, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def pair():
    data = synthetic_sections(n_sections=4, grid=12, n_genes=100, marker_fold=1.6)
    source = source_of(data)
    SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    return _trained(source), _trained(source, section_scaling="none"), target_of(data)


def test_ranked_prediction_keeps_the_level_and_takes_the_order(pair):
    model, ranker, target = pair
    own, ranked, by_ranker = target.copy(), target.copy(), target.copy()
    # without the prior shift, so that this small model's probabilities spread out
    model.predict(own, prior_shift=False)
    model.predict(ranked, ranking_model=ranker, prior_shift=False)
    ranker.predict(by_ranker, prior_shift=False)
    sections = target.obs["section"].to_numpy()
    for s in np.unique(sections):
        rows = sections == s
        # the same probabilities (tied ranking logits share the mean of theirs) and calls per section...
        np.testing.assert_allclose(
            np.sort(ranked.obs["ctr_prob"][rows]), np.sort(own.obs["ctr_prob"][rows]), atol=0.01
        )
        assert (ranked.obs["ctr"][rows] == "cancer").sum() == (own.obs["ctr"][rows] == "cancer").sum()
        # ...in the ranking model's order (its own probabilities are monotone in its logits)
        assert spearmanr(ranked.obs["ctr_prob"][rows], by_ranker.obs["ctr_prob"][rows])[0] > 0.999
        assert spearmanr(own.obs["ctr_prob"][rows], by_ranker.obs["ctr_prob"][rows])[0] < 0.99
    spread = ranked.obs["ctr_uncertainty"].to_numpy()
    assert np.isfinite(spread).all() and (spread >= 0).all() and (spread <= 0.5).all()
    assert not np.allclose(spread, own.obs["ctr_uncertainty"].to_numpy())


def test_ranking_model_must_be_trained(pair):
    model, _, target = pair
    untrained = SpaCRD(model.adata, **SMALL)
    with pytest.raises(TypeError, match="trained SpaCRD"):
        model.predict(target.copy(), ranking_model=untrained)
    with pytest.raises(TypeError, match="trained SpaCRD"):
        model.predict(target.copy(), ranking_model="unscaled")
