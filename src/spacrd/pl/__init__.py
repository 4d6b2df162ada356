from ._calibration import calibration
from ._ctr import ctr
from ._score_distribution import score_distribution
from ._training_history import training_history

__all__ = ["calibration", "ctr", "score_distribution", "training_history"]
