"""What the mixins and helpers of :mod:`spacrd.model` need of the model class, as :class:`typing.Protocol`.

:class:`~spacrd.model.SpaCRD` satisfies them; the modules that use them never import it, so the model
class is the only module that brings its pieces together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch
    from anndata import AnnData
    from scvi.data import AnnDataManager

    from spacrd.module import SpaCRDModule
    from spacrd.tl._calibration import Calibration
    from spacrd.tl._postprocess import Call, PostprocessSettings

    from ._datamodule import NeighbourhoodDataModule, NeighbourhoodDataset
    from ._fitted import FittedState
    from ._inputs import SpotInputs
    from ._spec import InputSpec

#: A model class that :mod:`spacrd.model._io` loads: loading ``type[SaveableT]`` gives a ``SaveableT``.
SaveableT = TypeVar("SaveableT", bound="Saveable")


class ModelCore(Protocol):
    """What the mixins of :class:`~spacrd.model.SpaCRD` use of the model class and of each other.

    The parts of an scvi-tools model (``BaseModelClass``) and of SpaCRD's ``__init__``, then the methods
    one mixin (:class:`~spacrd.model._prediction.PredictionMixin`,
    :class:`~spacrd.model._fitting.FittedStateMixin`,
    :class:`~spacrd.model._training.StagedTrainingMixin`) calls of another.
    """

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

    @classmethod
    def _get_most_recent_anndata_manager(
        cls, adata: AnnData, required: bool = False
    ) -> AnnDataManager | None: ...

    # ------------------------------------------------------------------ of PredictionMixin
    def _network_outputs(
        self, inputs: SpotInputs, batch_size: int | None = None
    ) -> dict[str, np.ndarray]: ...

    def _expression_graph(self, inputs: SpotInputs) -> np.ndarray: ...

    def _prediction_batch_size(self, inputs: SpotInputs) -> int: ...

    def _target(
        self, adata: Any, batch_key: str | None, table_key: str, image_key: str | Mapping[str, str] | None
    ) -> tuple[AnnData | None, AnnData, str | None]: ...

    # ------------------------------------------------------------------ of FittedStateMixin
    def _calibration_settings(
        self,
        expression_propagation: float = ...,
        spatial_smoothing: bool = True,
        *,
        call: Call | None = None,
        prior_shift: bool | None = None,
        threshold: Any = None,
    ) -> PostprocessSettings: ...

    def _calibration_for(self, settings: PostprocessSettings) -> Calibration | None: ...

    def _trained_state(self) -> FittedState: ...

    def _source_validation(self) -> tuple[SpotInputs, np.ndarray, str]: ...

    def _fitted_state(
        self,
        inputs: SpotInputs,
        val_idx: np.ndarray,
        how: str,
        n_image_spots: int,
        source_cancer_share: float,
        calibrate_for: Sequence[PostprocessSettings] = (),
    ) -> FittedState: ...

    # ------------------------------------------------------------------ of StagedTrainingMixin
    def _run_stages(
        self,
        datamodule: NeighbourhoodDataModule,
        epochs: dict[str, int],
        lrs: dict[str, float],
        *,
        weight_decay: float,
        accelerator: str,
        devices: int | list[int] | str,
        early_stopping: bool,
        plan_kwargs: dict | None,
        trainer_kwargs: dict,
    ) -> None: ...


@runtime_checkable
class Ranker(Protocol):
    """A trained model whose scores order the spots of another's prediction (``predict(ranking_model=...)``)."""

    is_trained_: bool

    def get_logits(self, adata: Any = None, batch_size: int | None = None, **kwargs: Any) -> Any: ...


class Saveable(ModelCore, Protocol):
    """What :mod:`spacrd.model._io` writes and rebuilds: a model built from its registry and genes."""

    #: scvi-tools' record of the rows held out in training (``BaseModelClass.validation_indices``).
    validation_indices: np.ndarray | None

    def __init__(
        self, adata: AnnData | None = None, *, registry: dict | None = None, genes: Any = None, **kwargs: Any
    ) -> None: ...

    @classmethod
    def setup_anndata(cls, adata: AnnData, **kwargs: Any) -> None: ...

    @classmethod
    def load(
        cls: type[SaveableT], dir_path: str, adata: AnnData | None = None, **kwargs: Any
    ) -> SaveableT: ...


__all__ = ["ModelCore", "Ranker", "Saveable", "SaveableT"]
