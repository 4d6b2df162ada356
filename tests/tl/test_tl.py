import numpy as np
import pytest

from spacrd.pp._neighbors import section_neighbors
from spacrd.tl._adaptation import (
    adjust_to_prior,
    expression_neighbors,
    propagate_over_neighbors,
    quantile_match,
)
from spacrd.tl._calibration import fit_calibration
from spacrd.tl._threshold import gmm_threshold


def test_section_neighbors_self_first_and_within_section():
    rng = np.random.default_rng(0)
    coords = rng.uniform(0, 100, (60, 2))
    sections = np.repeat(["a", "b", "c"], 20)
    idx, padding = section_neighbors(coords, sections, 7)
    assert idx.shape == (60, 7) and not padding.any()
    np.testing.assert_array_equal(idx[:, 0], np.arange(60))
    assert (sections[idx] == sections[:, None]).all()
    # Neighbours are the nearest ones.
    d = np.linalg.norm(coords[idx] - coords[:, None], axis=-1)
    assert (np.diff(d, axis=1) >= -1e-9).all()


def test_section_neighbors_pads_small_sections():
    coords = np.array([[0, 0], [1, 0], [5, 5], [6, 5], [7, 5], [8, 5], [9, 5], [10, 5], [11, 5]], float)
    sections = np.array(["small", "small"] + ["big"] * 7)
    idx, padding = section_neighbors(coords, sections, 4)
    assert padding[:2, 2:].all() and not padding[:2, :2].any() and not padding[2:].any()
    np.testing.assert_array_equal(idx[0, :2], [0, 1])


def test_section_neighbors_duplicated_coordinates_keep_self_first():
    coords = np.zeros((5, 2))
    idx, _ = section_neighbors(coords, None, 3)
    np.testing.assert_array_equal(idx[:, 0], np.arange(5))
    assert all(len(set(row)) == 3 for row in idx)


def test_gmm_threshold_between_modes():
    rng = np.random.default_rng(0)
    scores = np.r_[rng.beta(2, 20, 300), rng.beta(20, 2, 100)]
    t = gmm_threshold(scores)
    assert 0.2 < t < 0.8
    assert gmm_threshold(np.full(10, 0.3)) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        gmm_threshold(np.array([np.nan, 0.2]))


def test_smooth_over_neighbors_ignores_padding():
    from spacrd.tl._neighbors import smooth_over_neighbors

    values = np.array([0.0, 2.0, 10.0])
    idx = np.array([[0, 1, 0], [1, 0, 1], [2, 2, 2]])
    padding = np.array([[False, False, True], [False, False, True], [False, True, True]])
    np.testing.assert_allclose(smooth_over_neighbors(values, idx, padding), [1.0, 1.0, 10.0])
    np.testing.assert_allclose(
        smooth_over_neighbors(np.c_[values, values], idx, padding)[:, 1], [1.0, 1.0, 10.0]
    )


def test_neighbour_means_as_a_sparse_product_equal_the_gathered_means():
    from spacrd.tl._neighbors import neighbor_mean_operator, smooth_over_neighbors

    rng = np.random.default_rng(0)
    indices = rng.integers(0, 50, (50, 7))
    indices[:, 1] = indices[:, 0]  # a repeated neighbour counts twice, as in the gather
    padding = rng.random((50, 7)) < 0.3
    padding[:, 0] = False
    values = rng.normal(size=(50, 3)).astype(np.float32)
    weights = (~padding).astype(np.float64)
    gathered = (values[indices] * weights[..., None]).sum(1) / weights.sum(1, keepdims=True)
    np.testing.assert_allclose(smooth_over_neighbors(values, indices, padding), gathered, rtol=1e-6)
    np.testing.assert_allclose(
        neighbor_mean_operator(indices) @ values[:, 0], values[indices, 0].mean(1), rtol=1e-6
    )
    padding[3] = True  # nothing to average over
    assert np.isnan(neighbor_mean_operator(indices, padding) @ np.ones(50))[3]


def test_expression_neighbors_are_nearest_within_section():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(8, 1, (30, 5))])
    sections = np.repeat(["a", "b"], 30)
    idx = expression_neighbors(features, sections, n_neighbors=4, n_comps=5)
    assert idx.shape == (60, 4)
    np.testing.assert_array_equal(idx[:, 0], np.arange(60))
    assert (sections[idx] == sections[:, None]).all()
    # With as many components as features, PCA keeps distances: neighbours are the nearest spots.
    d = np.linalg.norm(features[idx] - features[:, None], axis=-1)
    assert (np.diff(d, axis=1) >= -1e-4).all()
    tiny = expression_neighbors(features[:3], None, n_neighbors=5)
    assert tiny.shape == (3, 5) and set(tiny[0]) == {0, 1, 2}


def test_propagation_smooths_towards_neighbours_and_keeps_constants():
    indices = np.array([[0, 1], [1, 0], [2, 3], [3, 2]])
    values = np.array([0.0, 4.0, 1.0, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(propagate_over_neighbors(values, indices, alpha=0.0), values)
    out = propagate_over_neighbors(values, indices, alpha=0.5, n_iter=50)
    assert out.dtype == np.float32
    assert 0.0 < out[0] < out[1] < 4.0 and out[0] + out[1] == pytest.approx(4.0)
    np.testing.assert_allclose(out[2:], 1.0)
    with pytest.raises(ValueError, match="alpha"):
        propagate_over_neighbors(values, indices, alpha=1.0)


def test_adjust_to_prior_recovers_the_target_share():
    rng = np.random.default_rng(0)
    # Calibrated posteriors for equal class shares, drawn on a section where 20% of spots are cancer.
    y = rng.random(4000) < 0.2
    score = rng.normal(np.where(y, 1.5, -1.5), 1.0)
    posterior = 1 / (1 + np.exp(-3.0 * score))  # the log-likelihood ratio of N(±1.5, 1) is 3 x
    adjusted, priors = adjust_to_prior(posterior, 0.5, np.repeat(["s"], y.size))
    assert priors["s"] == pytest.approx(0.2, abs=0.03)
    assert np.mean((adjusted - y) ** 2) < np.mean((posterior - y) ** 2)
    assert ((adjusted >= 0) & (adjusted <= 1)).all() and adjusted.dtype == np.float32
    same, prior = adjust_to_prior(np.full(10, 0.3), 0.3)
    np.testing.assert_allclose(same, 0.3, atol=1e-6)
    assert prior == {"all": pytest.approx(0.3)}
    with pytest.raises(ValueError, match="source_prior"):
        adjust_to_prior(posterior, 1.0)


def test_fit_calibration_recovers_scale_and_shift():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20000)
    y = rng.random(true_logit.size) < 1 / (1 + np.exp(-true_logit))
    # An under-confident network: its logits are the true ones shrunk and shifted.
    scale, shift = fit_calibration(0.25 * true_logit - 1.0, y)
    assert scale == pytest.approx(4.0, rel=0.1) and shift == pytest.approx(4.0, rel=0.15)
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(true_logit[:10], np.zeros(10))


def test_calibration_keeps_the_prior_estimate_from_collapsing():
    # Posteriors squeezed towards 0.2 (an under-trained network) make plain EM drift to an extreme
    # share; calibrated first, EM finds the true one.
    rng = np.random.default_rng(1)
    y = rng.random(3000) < 0.3
    logit = rng.normal(np.where(y, 2.0, -2.0), 1.0)
    squeezed = 0.1 * logit - 1.4
    _, raw_prior = adjust_to_prior(1 / (1 + np.exp(-squeezed)), 0.2)
    scale, shift = fit_calibration(squeezed[:1000], y[:1000])
    calibrated = 1 / (1 + np.exp(-(scale * squeezed + shift)))
    _, prior = adjust_to_prior(calibrated[1000:], float(y[:1000].mean()))
    assert prior["all"] == pytest.approx(y[1000:].mean(), abs=0.03)
    assert abs(raw_prior["all"] - 0.3) > abs(prior["all"] - 0.3)


def test_quantile_match_keeps_the_order_and_takes_the_reference_values():
    rng = np.random.default_rng(0)
    sections = np.repeat(["a", "b"], 50)
    scores = rng.normal(size=100)
    reference = np.r_[rng.uniform(0, 0.3, 50), rng.uniform(0.6, 1, 50)]
    matched = quantile_match(scores, reference, sections)
    for s in ("a", "b"):
        rows = sections == s
        np.testing.assert_allclose(np.sort(matched[rows]), np.sort(reference[rows]), rtol=1e-6)
        np.testing.assert_array_equal(np.argsort(matched[rows]), np.argsort(scores[rows]))
    # without sections the reference values are pooled
    assert quantile_match(scores, reference).max() == pytest.approx(reference.max())


def test_quantile_match_ties_and_columns():
    reference = np.array([0.1, 0.9, 0.5, 0.3])
    np.testing.assert_allclose(quantile_match(np.array([3.0, 1, 2, 2]), reference), [0.9, 0.1, 0.4, 0.4])
    both = quantile_match(np.c_[[3.0, 1, 2, 0], [0.0, 1, 2, 3]], reference)
    np.testing.assert_allclose(both, [[0.9, 0.1], [0.3, 0.3], [0.5, 0.5], [0.1, 0.9]])
    with pytest.raises(ValueError, match="same spots"):
        quantile_match(np.zeros(3), reference)
    with pytest.raises(ValueError, match="finite"):
        quantile_match(np.array([0.0, np.nan, 1, 2]), reference)
