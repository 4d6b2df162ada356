"""Named configurations of SpaCRD: the research code's settings, to see what the defaults change."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Preset:
    """Arguments of :class:`~spacrd.model.SpaCRD` (``model``), its ``train`` and its ``predict``.

    >>> model = SpaCRD(adata, **PAPER.model)  # doctest: +SKIP
    >>> model.train(**PAPER.train)  # doctest: +SKIP
    >>> model.predict(target, **PAPER.predict)  # doctest: +SKIP
    """

    name: str
    model: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    train: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    predict: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))


def _frozen(values: dict[str, Any]) -> MappingProxyType:
    return MappingProxyType(dict(values))


#: The SpaCRD paper's configuration as its research code runs it (Xue et al., AAAI 2026): 3,000 highly
#: variable genes, per-section min–max scaling, 1,024–512 MLP encoders with a 512-wide embedding and a
#: 64-dimensional latent, no input dropout, no wide head; Adam at lr 1e-5 without weight decay, batch
#: 512, 100 epochs of stage I and 50 + 50 of stages II and III; no post-processing of the logits (the
#: call is the two-component mixture threshold the paper describes), so training also fits the
#: calibration for that (``calibrate_for``) which ``predict(**PAPER.predict)`` applies. Images: the paper uses UNI
#: embeddings; pass those (or any) with ``image_key`` at set-up as usual.
PAPER = Preset(
    "paper",
    model=_frozen(
        {
            "n_top_genes": 3000,
            "section_scaling": "minmax",
            "n_hidden": (1024, 512),
            "n_embed": 512,
            "n_latent": 64,
            "dropout": 0.2,
            "input_dropout": 0.0,
            "wide": False,
            "class_mean_margin": 0.0,
        }
    ),
    train=_frozen(
        {
            "align_epochs": 100,
            "fuse_epochs": 50,
            "classify_epochs": 50,
            "align_lr": 1e-5,
            "fuse_lr": 1e-5,
            "classify_lr": 1e-5,
            "weight_decay": 0.0,
            "batch_size": 512,
            "depth_augmentation": None,
            "calibrate_for": (MappingProxyType({"expression_propagation": 0.0, "spatial_smoothing": False}),),
        }
    ),
    predict=_frozen(
        {"expression_propagation": 0.0, "spatial_smoothing": False, "prior_shift": False, "threshold": "gmm"}
    ),
)
#: ``SpaCRD(adata, **PAPER_SETTINGS)``: the model arguments of :data:`PAPER`.
PAPER_SETTINGS = PAPER.model
