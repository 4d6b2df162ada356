"""Public spatial transcriptomics data sets with H&E images and pathologist labels."""

from ._her2st import her2st
from ._her2st_ctr import her2st_ctr
from ._libraries import remove_unused_libraries

__all__ = ["her2st", "her2st_ctr", "remove_unused_libraries"]
