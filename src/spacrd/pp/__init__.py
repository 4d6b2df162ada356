"""Preprocessing: labels from annotations, spatial neighbourhoods, expression features, H&E crops and features."""

from ._annotations import labels_from_annotations
from ._crops import spot_crops
from ._genes import select_genes
from ._histology_stats import FEATURE_DESCRIPTIONS as HISTOLOGY_STATS_FEATURES
from ._image_features import image_features
from ._neighbors import section_neighbors, spatial_neighbors

__all__ = [
    "HISTOLOGY_STATS_FEATURES",
    "image_features",
    "labels_from_annotations",
    "section_neighbors",
    "select_genes",
    "spatial_neighbors",
    "spot_crops",
]
