from ._adaptation import adjust_to_prior, expression_neighbors, fit_calibration, propagate_over_neighbors
from ._neighbors import section_neighbors, smooth_over_neighbors
from ._threshold import gmm_threshold

__all__ = [
    "adjust_to_prior",
    "expression_neighbors",
    "fit_calibration",
    "gmm_threshold",
    "propagate_over_neighbors",
    "section_neighbors",
    "smooth_over_neighbors",
]
