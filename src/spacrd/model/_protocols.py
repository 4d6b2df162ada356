"""What the mixins and helpers of :mod:`spacrd.model` need of the model class, as :class:`typing.Protocol`.

:class:`~spacrd.model.SpaCRD` satisfies them; the modules that use them never import it, so the model
class is the only module that brings its pieces together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from anndata import AnnData
    from scvi.data import AnnDataManager

    from spacrd.module import SpaCRDModule

    from ._datamodule import NeighbourhoodDataset
    from ._fitted import FittedState
    from ._inputs import SpotInputs
    from ._spec import InputSpec


class ModelCore(Protocol):
    """The parts of an scvi-tools model (``BaseModelClass``) and of SpaCRD's ``__init__`` the mixins use."""

    module: SpaCRDModule
    is_trained_: bool
    history_: dict[str, pd.DataFrame] | None
    init_params_: dict[str, Any]
    input_spec: InputSpec
    fitted_state: FittedState | None
    _training_plan_cls: type
    _train_runner_cls: type

    @property
    def adata(self) -> AnnData | None: ...

    @property
    def adata_manager(self) -> AnnDataManager: ...

    @property
    def registry(self) -> dict: ...

    @property
    def setup_args(self) -> dict: ...

    @property
    def gene_names(self) -> pd.Index: ...

    def to_device(self, device: str | int | torch.device) -> None: ...

    def _check_if_trained(self, warn: bool = True, message: str = ...) -> bool: ...

    def _inputs(
        self, adata: AnnData | None, min_gene_overlap: float = 0.5, batch_key: str | None = None
    ) -> SpotInputs: ...

    def _dataset(self, inputs: SpotInputs, sparse_genes: bool = False) -> NeighbourhoodDataset: ...


@runtime_checkable
class Ranker(Protocol):
    """A trained model whose scores order the spots of another's prediction (``predict(ranking_model=...)``)."""

    is_trained_: bool

    def get_logits(self, adata: Any = None, batch_size: int | None = None, **kwargs: Any) -> Any: ...


class Saveable(ModelCore, Protocol):
    """What :mod:`spacrd.model._io` writes and rebuilds: a model built from its registry and genes."""

    def __init__(
        self, adata: AnnData | None = None, *, registry: dict | None = None, genes: Any = None, **kwargs: Any
    ) -> None: ...

    @classmethod
    def setup_anndata(cls, adata: AnnData, **kwargs: Any) -> None: ...

    @classmethod
    def load(cls, dir_path: str, adata: AnnData | None = None, **kwargs: Any) -> Saveable: ...


__all__ = ["ModelCore", "Ranker", "Saveable"]
