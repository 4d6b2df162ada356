from ._module import STAGES, SpaCRDModule

__all__ = ["STAGES", "SpaCRDModule"]
