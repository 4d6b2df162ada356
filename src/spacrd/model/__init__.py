from ._datamodule import NeighbourhoodDataModule
from ._model import SpaCRD
from ._training import STAGES, SpaCRDTrainingPlan, StageSpec

__all__ = ["STAGES", "NeighbourhoodDataModule", "SpaCRD", "SpaCRDTrainingPlan", "StageSpec"]
