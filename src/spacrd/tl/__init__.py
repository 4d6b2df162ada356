"""Tools: label-free post-processing of scores (propagation, smoothing, calibration, prior shift, call), regions."""

from spacrd.pp._neighbors import section_neighbors

from ._adaptation import (
    adjust_to_prior,
    expression_neighbors,
    propagate_over_neighbors,
    quantile_match,
    section_pca,
)
from ._calibration import Calibration, fit_calibration
from ._call import call
from ._level import SectionLevel, mixture_level
from ._neighbors import smooth_over_neighbors
from ._postprocess import PostprocessResult, PostprocessSettings, label_free_logits, postprocess
from ._regions import ctr_regions
from ._threshold import gmm_threshold

__all__ = [
    "Calibration",
    "PostprocessResult",
    "PostprocessSettings",
    "SectionLevel",
    "adjust_to_prior",
    "call",
    "ctr_regions",
    "expression_neighbors",
    "fit_calibration",
    "gmm_threshold",
    "label_free_logits",
    "mixture_level",
    "postprocess",
    "propagate_over_neighbors",
    "quantile_match",
    "section_neighbors",
    "section_pca",
    "smooth_over_neighbors",
]
