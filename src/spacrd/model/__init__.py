from ._model import SpaCRD
from ._training import NeighbourhoodDataModule, SpaCRDTrainingPlan

__all__ = ["NeighbourhoodDataModule", "SpaCRD", "SpaCRDTrainingPlan"]
