"""SpaCRD: cancer tissue region detection from H&E histology and spatial transcriptomics.

The sub-packages (:mod:`~spacrd.model`, :mod:`~spacrd.pp`, :mod:`~spacrd.tl`, :mod:`~spacrd.pl`,
:mod:`~spacrd.io`, :mod:`~spacrd.datasets`, :mod:`~spacrd.module`, :mod:`~spacrd.nn`) are imported on
first use, so that ``import spacrd`` does not pull in torch, Lightning, scanpy and the plotting stack until they are needed.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("spacrd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["datasets", "io", "model", "module", "nn", "pl", "pp", "tl"]

if TYPE_CHECKING:
    from . import datasets, io, model, module, nn, pl, pp, tl


def __getattr__(name: str):
    if name in __all__:
        submodule = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = submodule
        return submodule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
