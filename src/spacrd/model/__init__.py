from ._datamodule import NeighbourhoodDataModule, NeighbourhoodDataset
from ._inputs import SectionStats, SpotInputs
from ._model import SpaCRD
from ._training import STAGES, SpaCRDTrainingPlan, StageSpec

__all__ = [
    "STAGES",
    "NeighbourhoodDataModule",
    "NeighbourhoodDataset",
    "SectionStats",
    "SpaCRD",
    "SpaCRDTrainingPlan",
    "SpotInputs",
    "StageSpec",
]
