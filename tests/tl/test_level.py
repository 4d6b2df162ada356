"""The call's level from the target's own scores (``call="mixture"``) and the calls' settings."""

import numpy as np
import pytest

from spacrd.tl import Calibration
from spacrd.tl._level import mixture_level
from spacrd.tl._postprocess import PostprocessSettings, postprocess


def _two_populations(n=2000, share=0.3, gap=4.0, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < share
    return rng.normal(offset + gap * truth, 1.0), truth


def test_mixture_level_finds_the_share_and_an_interval_around_it():
    scores, truth = _two_populations()
    level = mixture_level(scores)
    assert level.two_populations
    assert abs(level.share - truth.mean()) < 0.03
    low, high = level.interval
    assert low <= level.share <= high and high - low < 0.1
    assert abs(level.threshold - 2.0) < 0.6  # between the means 0 and 4, nearer the bigger component


@pytest.mark.parametrize("offset", [-3.0, 5.0])
def test_mixture_level_moves_with_the_scores(offset):
    """A shift of every score (a sparser platform moving every logit) moves the cut with it."""
    scores, _ = _two_populations()
    base = mixture_level(scores)
    moved = mixture_level(scores + offset)
    assert moved.threshold == pytest.approx(base.threshold + offset, abs=0.05)
    assert moved.share == pytest.approx(base.share, abs=0.005)


def test_mixture_level_one_population_or_few_spots_says_so():
    rng = np.random.default_rng(0)
    one = mixture_level(rng.normal(0, 1, 3000))
    assert not one.two_populations and np.isfinite(one.threshold)  # a cut, flagged as uncertain
    for scores in (rng.normal(0, 1, 10), np.zeros(100)):
        level = mixture_level(scores)
        assert not level.two_populations and np.isnan(level.threshold) and np.isnan(level.share)
    with pytest.raises(ValueError, match="finite"):
        mixture_level(np.array([0.0, np.nan] * 20))


@pytest.mark.parametrize("gap", [3.0, 4.5, 6.0])
def test_mixture_level_separation_is_ashmans_d(gap):
    """Two unit-variance populations ``gap`` apart separate by ``D = √2 · gap / √2 = gap``."""
    scores, _ = _two_populations(n=20_000, share=0.4, gap=gap)
    assert mixture_level(scores, n_bootstrap=0).separation == pytest.approx(gap, rel=0.12)
    # the interval is resampled only where a caller would use the level
    below = mixture_level(scores, min_separation=gap * 1.5)
    assert np.isnan(below.interval).all() and np.isfinite(below.threshold)
    assert np.isfinite(mixture_level(scores, min_separation=gap * 0.5).interval).all()
    assert np.isnan(mixture_level(np.zeros(100)).separation)


SHIFTED = Calibration(1.0, -1.0)


def _chain(logits, call, sections=None, calibration=SHIFTED, min_separation=float("inf"), **kwargs):
    n = logits.size
    neighbors = np.arange(n)[:, None]
    sections = np.zeros(n, dtype=object) if sections is None else sections
    settings = PostprocessSettings(
        expression_propagation=0.0, spatial_smoothing=False, call=call, min_separation=min_separation
    )
    return postprocess(logits, neighbors, None, sections, settings, calibration, 0.5, **kwargs)


def test_postprocess_mixture_levels_each_section_by_its_own_scores():
    """Two sections whose logits sit 6 apart (two depths) are both called at their own share."""
    a, truth_a = _two_populations(share=0.3, seed=1)
    b, truth_b = _two_populations(share=0.6, offset=6.0, seed=2)
    logits = np.concatenate([a, b])
    sections = np.array(["a"] * a.size + ["b"] * b.size, dtype=object)
    members = logits[:, None] + np.random.default_rng(0).normal(0, 0.3, (logits.size, 3))
    result = _chain(logits, "mixture", sections, member_logits=members)
    assert result.level == {"a": "mixture", "b": "mixture"}
    assert abs(result.cancer_share["a"] - truth_a.mean()) < 0.03
    assert abs(result.cancer_share["b"] - truth_b.mean()) < 0.03
    np.testing.assert_array_equal(result.called, result.probabilities >= 0.5)
    assert set(result.cancer_share_interval) == {"a", "b"} and result.threshold_method == "mixture"
    assert result.two_populations == {"a": True, "b": True}
    assert result.uncertainty is not None and result.uncertainty.shape == logits.shape
    # the source's level calls nearly all of section b cancer
    source = _chain(logits, "source", sections)
    assert source.cancer_share["b"] > 0.95 and source.level == {"a": "source", "b": "source"}
    # "auto" takes the mixture only where told (the sections unlike the training ones)
    auto = _chain(logits, "auto", sections, target_level_sections={"b"})
    assert auto.level == {"a": "source", "b": "mixture"}
    np.testing.assert_array_equal(auto.called[: a.size], source.called[: a.size])
    np.testing.assert_array_equal(auto.called[a.size :], result.called[a.size :])


def test_postprocess_auto_takes_a_well_separated_mixture_of_a_section_like_the_training_ones():
    """A section whose scores form two populations far apart is cut between them, though like training."""
    apart, truth_apart = _two_populations(share=0.2, gap=6.0, offset=2.0, seed=3)
    close, _ = _two_populations(share=0.5, gap=2.0, offset=2.0, seed=4)
    logits = np.concatenate([apart, close])
    sections = np.array(["apart"] * apart.size + ["close"] * close.size, dtype=object)
    source = _chain(logits, "source", sections)
    assert source.cancer_share["apart"] > truth_apart.mean() + 0.3  # the calibration over-calls it
    auto = _chain(logits, "auto", sections, min_separation=4.0)
    assert auto.level == {"apart": "mixture", "close": "source"}
    assert abs(auto.cancer_share["apart"] - truth_apart.mean()) < 0.03
    assert auto.separation["apart"] > 4.0 > auto.separation["close"]
    np.testing.assert_array_equal(auto.called[apart.size :], source.called[apart.size :])
    # without the test (inf), only the sections named unlike the training ones take their own level
    never = _chain(logits, "auto", sections)
    assert never.level == {"apart": "source", "close": "source"} and never.separation == {}
    with pytest.raises(ValueError, match="min_separation"):
        PostprocessSettings(call="auto", min_separation=-1.0)


def test_postprocess_mixture_keeps_the_source_level_without_a_mixture():
    logits = np.random.default_rng(0).normal(0, 1, 12)  # too few spots to fit one
    result = _chain(logits, "mixture")
    assert result.level == {"0": "source"}
    np.testing.assert_array_equal(result.called, logits - 1.0 >= 0)
    assert result.cancer_share_interval == {} and result.two_populations == {}
    one = _chain(np.random.default_rng(0).normal(0, 1, 2000), "mixture")
    assert one.level == {"0": "mixture"} and one.two_populations == {"0": False}


def test_calls_other_than_prior_refuse_prior_shift_and_threshold():
    assert PostprocessSettings().prior_shift and PostprocessSettings(call="prior").prior_shift
    assert not PostprocessSettings(call="mixture").prior_shift
    with pytest.raises(ValueError, match="call='prior'"):
        PostprocessSettings(call="mixture", threshold=0.3)
    with pytest.raises(ValueError, match="call='prior'"):
        PostprocessSettings(call="source", prior_shift=True)
    with pytest.raises(ValueError, match="`call` must be one of"):
        PostprocessSettings(call="otsu")
