"""Public spatial transcriptomics data sets with H&E images and pathologist labels."""

from ._her2st import her2st

__all__ = ["her2st"]
