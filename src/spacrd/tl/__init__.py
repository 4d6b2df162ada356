from ._neighbors import section_neighbors, smooth_over_neighbors
from ._threshold import gmm_threshold

__all__ = ["gmm_threshold", "section_neighbors", "smooth_over_neighbors"]
