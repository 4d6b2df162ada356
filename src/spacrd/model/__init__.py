from spacrd._stages import STAGES, StageSpec

from ._datamodule import NeighbourhoodDataModule, NeighbourhoodDataset
from ._fitted import FittedState
from ._inputs import SectionStats, SpotInputs
from ._model import SpaCRD
from ._presets import PAPER, PAPER_SETTINGS, Preset
from ._runner import StagedTrainRunner
from ._spec import InputSpec
from ._training import SpaCRDTrainingPlan

__all__ = [
    "PAPER",
    "PAPER_SETTINGS",
    "STAGES",
    "FittedState",
    "InputSpec",
    "NeighbourhoodDataModule",
    "NeighbourhoodDataset",
    "Preset",
    "SectionStats",
    "SpaCRD",
    "SpaCRDTrainingPlan",
    "SpotInputs",
    "StageSpec",
    "StagedTrainRunner",
]
