"""Preprocessing: per-spot image crops and H&E image features."""

from ._crops import spot_crops
from ._histology_stats import FEATURE_DESCRIPTIONS as HISTOLOGY_STATS_FEATURES
from ._image_features import image_features

__all__ = ["HISTOLOGY_STATS_FEATURES", "image_features", "spot_crops"]
