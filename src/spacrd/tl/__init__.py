"""AnnData-level tools: call again from a stored prediction, the call as regions; the calibration type."""

from ._calibration import Calibration
from ._call import call
from ._regions import ctr_regions

__all__ = ["Calibration", "call", "ctr_regions"]
