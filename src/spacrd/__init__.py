"""SpaCRD: cancer tissue region detection from H&E histology and spatial transcriptomics."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, model, module, nn, pl, pp, tl

try:
    __version__ = version("spacrd")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["datasets", "model", "module", "nn", "pl", "pp", "tl"]
