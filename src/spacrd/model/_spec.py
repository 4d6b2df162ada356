"""What turning an AnnData into a model's inputs needs of the model, in one frozen object.

:class:`InputSpec` is built in :class:`~spacrd.model.SpaCRD`'s ``__init__`` from its registry and
arguments; the helpers of :mod:`spacrd.model._adata_inputs` and :mod:`spacrd.model._spatialdata` take
it instead of the model, so they depend on these few values and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from ._inputs import SectionScaling


@dataclass(frozen=True, eq=False)
class InputSpec:
    """The genes, set-up arguments, scaling and image width that a model's inputs are built with.

    Attributes
    ----------
    var_names
        Every gene registered at set-up: the gene universe over which library sizes are taken.
    gene_names
        The expression features, in model order (a subset of ``var_names``).
    setup_args
        The arguments of :meth:`~spacrd.model.SpaCRD.setup_anndata` (``layer``, ``batch_key``,
        ``image_key``, ``spatial_key``, ``neighbors_key``, ``n_neighbors``...), read-only.
    section_scaling
        Per-section feature scaling: ``"zscore"``, ``"minmax"`` or ``"none"``.
    n_image_features
        Width of the histology embeddings the network reads; ``0``: an expression-only model.
    image_trained
        Whether the image branch was trained on any image; when not, every spot's embedding is read
        as missing (NaN), since an encoder that never saw an image would only add noise.

    """

    var_names: pd.Index
    gene_names: pd.Index
    setup_args: Mapping[str, Any]
    section_scaling: SectionScaling
    n_image_features: int = 0
    image_trained: bool = True

    def __post_init__(self):
        object.__setattr__(self, "setup_args", MappingProxyType(dict(self.setup_args)))

    def __reduce__(self):
        # a read-only mapping does not pickle (distributed training sends the model to its processes)
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return (_rebuilt, ({**values, "setup_args": dict(self.setup_args)},))

    @property
    def uses_images(self) -> bool:
        """Whether the network has an image branch (it then reads ``obsm[setup_args["image_key"]]``)."""
        return self.n_image_features > 0

    def usable_image(self, image: np.ndarray | None) -> np.ndarray | None:
        """Histology embeddings ``(n, n_image_features)`` as the network reads them (see ``image_trained``)."""
        if image is None or not self.uses_images:
            return None
        if not self.image_trained:
            return np.full_like(image, np.nan, dtype=np.float32)
        return image

    def without_trained_images(self) -> InputSpec:
        """A copy for a model whose image branch never saw an image (every embedding read as missing)."""
        return replace(self, image_trained=False)


def _rebuilt(values: dict[str, Any]) -> InputSpec:
    return InputSpec(**values)
