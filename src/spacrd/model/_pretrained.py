"""Models trained by the spacrd developers and shipped inside the package, loaded by name and offline."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spacrd._pretrained_registry import PRETRAINED_MODELS, PretrainedModel, available, pretrained_path

if TYPE_CHECKING:
    from ._protocols import SaveableT

__all__ = ["PRETRAINED_MODELS", "PretrainedModel", "available", "load_pretrained", "pretrained_path"]


def load_pretrained(cls: type[SaveableT], name: str, accelerator: str, device: int | str) -> SaveableT:
    """Load the shipped model ``name`` with :meth:`~spacrd.model.SpaCRD.load` (no download)."""
    return cls.load(str(pretrained_path(name)), accelerator=accelerator, device=device)
