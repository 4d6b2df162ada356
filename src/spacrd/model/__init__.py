from ._datamodule import NeighbourhoodDataModule, NeighbourhoodDataset
from ._inputs import SectionStats, SpotInputs
from ._model import SpaCRD
from ._presets import PAPER, PAPER_SETTINGS, Preset
from ._training import STAGES, SpaCRDTrainingPlan, StageSpec

__all__ = [
    "PAPER",
    "PAPER_SETTINGS",
    "STAGES",
    "NeighbourhoodDataModule",
    "NeighbourhoodDataset",
    "Preset",
    "SectionStats",
    "SpaCRD",
    "SpaCRDTrainingPlan",
    "SpotInputs",
    "StageSpec",
]
