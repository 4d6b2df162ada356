import numpy as np
import pytest

from spacrd.tl import gmm_threshold, section_neighbors


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
    from spacrd.tl import smooth_over_neighbors

    values = np.array([0.0, 2.0, 10.0])
    idx = np.array([[0, 1, 0], [1, 0, 1], [2, 2, 2]])
    padding = np.array([[False, False, True], [False, False, True], [False, True, True]])
    np.testing.assert_allclose(smooth_over_neighbors(values, idx, padding), [1.0, 1.0, 10.0])
    np.testing.assert_allclose(
        smooth_over_neighbors(np.c_[values, values], idx, padding)[:, 1], [1.0, 1.0, 10.0]
    )
