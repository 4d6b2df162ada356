"""Where the ``spacrd`` command writes: outputs that spare every input, ``--overwrite``, messages of failed writes.

Checked before anything is read or computed, so that a run that would overwrite an input, or mix its
files with those of another run, stops at once with one line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from spacrd._cli_io import InputError

#: The files ``spacrd predict`` may write under ``--out`` (which ones depends on the input and options).
PREDICT_OUTPUTS = ("spots.csv", "annotated.h5ad", "ctr.png", "regions.geojson")


def _real(path: Path) -> Path:
    """``path`` with symbolic links and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(path))


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` lead to one file or folder: equal resolved paths, or one inode (hard links)."""
    if _real(a) == _real(b):
        return True
    with contextlib.suppress(OSError):
        return a.exists() and b.exists() and os.path.samefile(a, b)
    return False


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, through any symbolic links."""
    path, folder = _real(path), _real(folder)
    return path == folder or folder in path.parents


def check_out(
    out: Path,
    inputs: Mapping[str, Path | None],
    outputs: Iterable[str],
    *,
    option: str = "--out",
    closed: Iterable[str] = ("INPUT",),
) -> None:
    """Refuse an ``out`` folder whose outputs would overwrite any of ``inputs``, or land inside INPUT.

    ``inputs`` maps what the user called each input (``"INPUT"``, ``"--labels-file"``) to its path;
    ``outputs`` are the names the command writes under ``out``; no output may go inside the folders of
    the inputs named in ``closed`` (a Space Ranger folder or a zarr store is not a results folder).
    An input is never overwritten, with or without ``--overwrite``: it is read before anything is
    written, but a result written over it would destroy the user's data.
    """
    outputs, closed = list(outputs), set(closed)
    if out.exists() and not out.is_dir():
        raise InputError(f"{option} {out} is a file; {option} names a folder. Choose another {option}.")
    for label, path in inputs.items():
        if path is None or not path.exists():
            continue
        if label in closed and path.is_dir() and inside(out, path):
            raise InputError(
                f"{option} {out} lies inside {label} {path}; results never go into an input. Choose an "
                f"{option} folder outside it."
            )
        for name in outputs:
            if same_file(out / name, path):
                raise InputError(
                    f"{option} {out} would overwrite {label} {path} with its {name}; an input is never "
                    f"overwritten. Choose another {option}."
                )


def previous_outputs(out: Path, names: Iterable[str]) -> list[str]:
    """The ``names`` that exist under ``out`` (left by another run)."""
    return [name for name in names if (out / name).exists() or (out / name).is_symlink()]


def refuse_previous(out: Path, names: Iterable[str], overwrite: bool, option: str = "--out") -> list[str]:
    """Names under ``out`` from another run; an error unless ``overwrite`` (which then replaces them)."""
    found = previous_outputs(out, names)
    if found and not overwrite:
        raise InputError(
            f"{option} {out} holds {', '.join(found)} from another run; pass --overwrite to replace them "
            f"or choose another {option}."
        )
    return found


def remove_stale(out: Path, names: Iterable[str], written: Iterable[Path]) -> list[str]:
    """Remove the ``names`` under ``out`` that this run did not write (``--overwrite``); returns them."""
    kept = {Path(p).name for p in written}
    removed = []
    for name in names:
        if name not in kept and ((out / name).is_file() or (out / name).is_symlink()):
            (out / name).unlink()
            removed.append(name)
    return removed


@contextlib.contextmanager
def created_folder(out: Path):
    """Create ``out`` (and parents) for the block; remove what was created if the block fails empty-handed."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from spacrd._atomic import WriteError, reason

        raise WriteError(f"could not create the folder {out} ({reason(err)}); nothing was written") from err
    try:
        yield
    except BaseException:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only empty folders go
        raise
