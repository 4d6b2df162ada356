"""The names of the models shipped with spacrd and where their folders lie (standard library only).

Kept apart from :mod:`spacrd.model._pretrained` so that ``spacrd --help`` can list the names without
importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path


@dataclass(frozen=True)
class PretrainedModel:
    """One shipped model.

    Attributes
    ----------
    name
        The name :meth:`~spacrd.model.SpaCRD.load_pretrained` takes.
    folder
        Its folder under ``spacrd/datasets/data/pretrained/``, as written by :meth:`~spacrd.model.SpaCRD.save`.
    summary
        One line on what it was trained on, shown in errors and in ``spacrd predict --help``.

    """

    name: str
    folder: str
    summary: str


#: The shipped models by name; ``scripts/build_pretrained.py`` writes their folders.
PRETRAINED_MODELS: dict[str, PretrainedModel] = {
    "her2st": PretrainedModel(
        "her2st",
        "her2st",
        "HER2-positive breast cancer, legacy ST: the six labelled HER2ST sections A1-F1 (2,401 spots, "
        "2,000 gene symbols), expression only",
    ),
    "her2st-ranker": PretrainedModel(
        "her2st-ranker",
        "her2st_ranker",
        "the her2st recipe on unscaled expression (section_scaling='none'), to order the spots of her2st: "
        "predict(ranking_model=...) or spacrd predict --ranking-model her2st-ranker",
    ),
}


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(PRETRAINED_MODELS)


def pretrained_path(name: str) -> Path:
    """Folder of the shipped model ``name``; an unknown name is a :class:`ValueError` listing the known ones."""
    if name not in PRETRAINED_MODELS:
        raise ValueError(
            f"No pretrained SpaCRD model is called {name!r}; available: {available()}. To load a folder "
            "written by `SpaCRD.save`, use `SpaCRD.load(dir_path)`."
        )
    # an installed wheel unpacks to files on disk, so the package data is a plain directory
    root = files("spacrd") / "datasets" / "data" / "pretrained" / PRETRAINED_MODELS[name].folder
    return Path(str(root))
