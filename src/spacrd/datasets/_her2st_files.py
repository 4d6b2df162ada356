"""Where the files of the public HER2ST repository are, locally or downloaded (with checksums)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ._her2st_registry import REGISTRY, UNVERIFIED

#: Raw-file base URL of the public repository; files are fetched as ``BASE_URL + <relative path>``.
BASE_URL = "https://github.com/almaan/her2st/raw/master/"

SECTIONS: tuple[str, ...] = tuple(
    f"{patient}{i}"
    for patient, n in (("A", 6), ("B", 6), ("C", 6), ("D", 6), ("E", 3), ("F", 3), ("G", 3), ("H", 3))
    for i in range(1, n + 1)
)
LABELLED_SECTIONS: tuple[str, ...] = ("A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1")
# Stored image per section and its scale relative to the full-resolution pixels of the spot files: only
# images whose match to the spot coordinates was checked (spots on tissue) are attached; other sections
# load without one even if a copy holds their JPEG.
# The A1 PNG is the 6,954 px wide scan reduced to 2,000 px for the authors' Shiny app. The A2 PNG of
# the same app is not used: it was warped onto A1 for display and A2's spot coordinates do not map onto
# it by a scale (spots land off the tissue), so A2 loads without an image.
_IMAGES: dict[str, tuple[str, float | None]] = {
    "A1": ("app/www/imgs/A1_HE_image_dark.png", 2000 / 6954),
    "B4": ("data/ST-imgs/B/B4/BT10737_D2_HE.jpg", None),
    "C2": ("data/ST-imgs/C/C2/5714_HE_BT_C2.jpg", None),
    "C3": ("data/ST-imgs/C/C3/5714_HE_BT_D1.jpg", None),
    "C4": ("data/ST-imgs/C/C4/5714_HE_BT_D2.jpg", None),
    "C5": ("data/ST-imgs/C/C5/5714_HE_BT_E1.jpg", None),
    "C6": ("data/ST-imgs/C/C6/5714_HE_BT_E2.jpg", None),
}
_A2_NOTE = (
    "app/www/imgs/A2_HE_image_dark.png is registered to section A1 for display and does not match A2's "
    "spot coordinates; no image is attached."
)


def _counts_file(section: str) -> str:
    return f"data/ST-cnts/{section}.tsv.gz"


def _spot_file(section: str) -> str:
    return f"data/ST-spotfiles/{section}_selection.tsv"


def _label_file(section: str) -> str:
    return f"data/ST-pat/lbl/{section}_labeled_coordinates.tsv"


def _check_sections(sections: str | Sequence[str] | None) -> list[str] | None:
    """Validate the requested names; ``None`` (all available sections) is resolved later."""
    if sections is None:
        return None
    if isinstance(sections, str):
        sections = [sections]
    if not isinstance(sections, Sequence | np.ndarray | pd.Index):
        raise TypeError(
            f"`sections` must be a section name such as 'A1', a list of names or None, got {type(sections).__name__}."
        )
    sections = list(sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"Unknown HER2ST section(s) {unknown}; valid sections are {list(SECTIONS)}.")
    repeated = sorted({s for s in sections if sections.count(s) > 1})
    if repeated:
        raise ValueError(f"Section(s) {repeated} requested more than once; list each section once.")
    if not sections:
        raise ValueError(f"No sections requested; pass None for all or some of {list(SECTIONS)}.")
    return sections


def _sections_at(root: Path) -> list[str]:
    """The public sections whose count file is under ``root``; their other files are checked later."""
    present = [s for s in SECTIONS if (root / _counts_file(s)).is_file()]
    if not present:
        raise FileNotFoundError(
            f"No HER2ST count file (data/ST-cnts/<section>.tsv.gz) under {str(root)!r}. `path` must be the "
            "root of a copy of the almaan/her2st repository (the folder holding data/ and app/); pass "
            "path=None to download the files."
        )
    return present


def _files_for(section: str, load_images: bool) -> list[str]:
    files = [_counts_file(section), _spot_file(section)]
    if section in LABELLED_SECTIONS:
        files.append(_label_file(section))
    if load_images and section in _IMAGES:
        files.append(_IMAGES[section][0])
    return files


def _resolve_files(
    files: dict[str, list[str]], path: str | Path | None, progressbar: bool
) -> dict[str, Path]:
    needed = [f for fs in files.values() for f in fs]
    if path is not None:
        root = Path(path).expanduser()
        local = {f: root / f for f in needed}
        missing = [f for f, p in local.items() if not p.is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{len(missing)} HER2ST file(s) missing under {str(root)!r}: {shown}. `path` must be the root of "
                "a copy of the almaan/her2st repository (the folder holding data/ and app/); pass path=None "
                "to download the files, or load_images=False to skip the images."
            )
        return local
    return {f: Path(p) for f, p in zip(needed, _download(needed, progressbar), strict=True)}


def _download(relative_paths: list[str], progressbar: bool) -> list[str]:
    import pooch

    unverified = [f for f in relative_paths if f not in REGISTRY]
    unknown = sorted(set(unverified) - UNVERIFIED)
    if unknown:  # every file the loader asks for must be listed in the registry module
        raise RuntimeError(f"spacrd has no registry entry for HER2ST file(s) {unknown}; please report this.")
    fetcher = pooch.create(
        path=pooch.os_cache("spacrd") / "her2st",
        base_url=BASE_URL,
        # a hash of None makes pooch download without verifying (and reuse the cached copy as is)
        registry={**REGISTRY, **dict.fromkeys(unverified)},
        env="SPACRD_DATA_DIR",
        retry_if_failed=2,
    )
    local = [fetcher.fetch(f, progressbar=progressbar) for f in relative_paths]
    if unverified:
        by_name = dict(zip(relative_paths, local, strict=True))
        listed = "; ".join(f"{f} (sha256:{pooch.file_hash(by_name[f])})" for f in unverified)
        warnings.warn(
            f"HER2ST file(s) without a known checksum were read unverified from {BASE_URL} (or from the "
            f"download cache {fetcher.abspath}): {listed}. spacrd checks every other file against its SHA-256; "
            "for these a changed or damaged upstream copy would load silently. To load a copy you have "
            "checked, pass path= (the root of a clone of almaan/her2st).",
            UserWarning,
            stacklevel=3,
        )
    return local
