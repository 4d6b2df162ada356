"""Atomic outputs: every file spacrd writes is written under a temporary name beside it, then renamed.

A reader (or a pipeline) therefore sees either the complete new file or whatever was there before,
never a half-written one: a full disk, a file-size limit or a permission error while writing leaves
the destination untouched and no temporary file behind. The rename is :func:`os.replace`, atomic on
POSIX and Windows when source and destination are in the same folder, which is why the temporary name
is made there.

:class:`AtomicFiles` commits several files together (all are written first, then all renamed), so
that outputs that belong together (``spots.csv`` and ``annotated.h5ad``, ``model.pt`` and
``model.json``) are never mixed from two runs. A failed write raises :class:`WriteError`, an
:class:`OSError` whose message names the file and the reason in one line.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import gc
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

#: Part of every temporary name, so that leftovers of a killed process are recognisable.
TEMPORARY_MARK = ".spacrd-tmp"


class WriteError(OSError):
    """A file could not be written; the destination is unchanged and no temporary file is left."""


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden, unique name beside ``path`` that keeps its suffix (writers pick the format by it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}{TEMPORARY_MARK}{path.suffix}")


def reason(err: BaseException) -> str:
    """A one-line reason for a failed write: the OS error's text (``No space left on device``) if any.

    Writers wrap OS errors (h5py and torch raise ``RuntimeError`` naming the errno in a long message),
    so the chain of causes is searched for an :class:`OSError` with an error number.
    """
    for code in _errnos(err):
        return os.strerror(code)
    text = str(err).strip()
    if isinstance(err, WriteError) and text:
        return text.splitlines()[0]
    for code, name in ((errno_codes.ENOSPC, "No space left"), (errno_codes.EFBIG, "too large")):
        if name.lower() in text.lower():
            return os.strerror(code)
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _from_h5py(kind, value, traceback) -> bool:
    """Whether an exception comes from h5py closing an object (its ``ObjectID.__dealloc__``)."""
    while traceback is not None:
        if "h5py" in traceback.tb_frame.f_code.co_filename:
            return True
        traceback = traceback.tb_next
    return False


@contextlib.contextmanager
def _quiet_h5py_closes():
    """Silence the reports h5py prints when closing objects of a file whose writes fail.

    h5py reports each failed close (one per dataset and group, hundreds for an AnnData) through
    ``sys.excepthook`` and ``sys.unraisablehook``; the failed write itself is raised and reported once.
    """
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def quiet_except(kind, value, traceback):
        if not _from_h5py(kind, value, traceback):
            excepthook(kind, value, traceback)

    def quiet_unraisable(unraisable):
        if not _from_h5py(unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = quiet_except, quiet_unraisable
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def release_handles() -> None:
    """Collect the objects of a failed write now, with h5py's reports of failed closes silenced."""
    with _quiet_h5py_closes():
        gc.collect()


def write_h5ad(adata, path: str | os.PathLike, **kwargs) -> None:
    """``adata.write_h5ad(path, **kwargs)`` in a forked child process where the platform allows it.

    HDF5 cannot recover from a failed write (a full disk, a file-size limit): the file stays open in
    the library with unwritten metadata, every later close fails again, and the interpreter can
    crash at exit. Writing in a child (which shares the parent's memory, copied only where written)
    keeps this process's HDF5 clean; the child's error comes back as an :class:`OSError` with its
    reason. Without ``os.fork`` (Windows) the file is written here.
    """
    if not hasattr(os, "fork") or sys.platform == "darwin":  # fork is unsafe with macOS frameworks
        adata.write_h5ad(path, **kwargs)
        return
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:  # no memory or process slot for a child: write here
        os.close(read_end)
        os.close(write_end)
        adata.write_h5ad(path, **kwargs)
        return
    if pid == 0:  # the child: write, report, and leave without running any exit handler
        os.close(read_end)
        code = 0
        try:
            with _quiet_h5py_closes():
                adata.write_h5ad(path, **kwargs)
        except BaseException as err:  # everything is reported to the parent
            code = 1
            with contextlib.suppress(Exception):
                number = next(_errnos(err), 0)
                os.write(write_end, f"{number}\n{reason(err)}".encode()[:4000])
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return
    if not message:
        raise OSError(f"the process writing {path} ended with status {os.waitstatus_to_exitcode(status)}")
    number, _, text = message.partition("\n")
    if int(number or 0):
        raise OSError(int(number), os.strerror(int(number)))
    raise WriteError(text)


def _errnos(err: BaseException):
    """The error numbers of the OS errors in ``err``'s chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        if isinstance(current, OSError) and isinstance(code, int) and code in errno_codes.errorcode:
            yield code
        current = current.__cause__ or current.__context__


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _fsync(path: Path) -> None:
    """Flush a finished file to disk before it is renamed into place (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicFiles:
    """Files written under temporary names and renamed into place together by :meth:`commit`.

    Used as a context manager, the files are committed when the block ends normally and discarded
    (temporary files removed, destinations untouched) when it raises.

    Examples
    --------
    >>> with AtomicFiles() as files:  # doctest: +SKIP
    ...     files.write("out/spots.csv", lambda tmp: frame.to_csv(tmp))
    ...     files.write("out/annotated.h5ad", adata.write_h5ad)

    """

    def __init__(self) -> None:
        self._pending: dict[Path, Path] = {}

    @property
    def pending(self) -> list[Path]:
        """Destinations written so far and not yet committed."""
        return list(self._pending)

    def write(self, path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
        """Call ``writer(temporary_path)``; on failure remove the temporary file and raise :class:`WriteError`."""
        path = Path(path)
        if path.is_dir():
            raise WriteError(f"could not write {path}: it is a folder.")
        tmp = temporary_name(path)
        try:
            with _quiet_h5py_closes():
                writer(tmp)
            if not tmp.is_file():
                raise FileNotFoundError(errno_codes.ENOENT, "the writer wrote nothing", str(tmp))
        except Exception as err:
            release_handles()
            _remove(tmp)
            raise WriteError(f"could not write {path} ({reason(err)})") from err
        _fsync(tmp)
        previous = self._pending.pop(path, None)
        if previous is not None:
            _remove(previous)
        self._pending[path] = tmp
        return path

    def commit(self) -> list[Path]:
        """Rename every temporary file to its destination; returns the destinations."""
        done = []
        try:
            for path, tmp in list(self._pending.items()):
                os.replace(tmp, path)
                del self._pending[path]
                done.append(path)
        except OSError as err:
            self.discard()
            raise WriteError(f"could not move {tmp} to {path} ({reason(err)})") from err
        return done

    def discard(self) -> None:
        """Remove the temporary files of everything not committed."""
        for tmp in self._pending.values():
            _remove(tmp)
        self._pending.clear()

    def __enter__(self) -> AtomicFiles:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """Write one file atomically: ``writer(temporary_path)``, then rename to ``path``."""
    with AtomicFiles() as files:
        files.write(path, writer)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# a table inside a SpatialData zarr store
# --------------------------------------------------------------------------------------------------

#: Suffix of the copy of a table being replaced; a table so named is never a user's table.
TABLE_SPARE = "_spacrd_tmp"
#: Folder in a zarr store that holds the replaced table until the new one is in place; zarr and
#: spatialdata do not see it (it has no zarr metadata), so a reader never lists it.
STORE_TRASH = ".spacrd-replaced"
#: The metadata files at a store's root that rewriting an element rewrites (consolidated metadata).
ROOT_METADATA = ("zarr.json", ".zmetadata", ".zgroup", ".zattrs")


def is_spare_table(name: str) -> bool:
    """Whether ``name`` is a copy that :func:`replace_table` makes (or an interrupted run left)."""
    return str(name).endswith(TABLE_SPARE)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _recover_store(root: Path, name: str) -> None:
    """Undo what an interrupted :func:`replace_table` left: a half-written copy, a table moved aside."""
    current, spare, old = (
        root / "tables" / name,
        root / "tables" / f"{name}{TABLE_SPARE}",
        root / STORE_TRASH / name,
    )
    if old.is_dir() and not current.exists():
        os.rename(old, current)  # killed between the two renames: the original goes back
    _remove_tree(spare)
    _remove_tree(root / STORE_TRASH)


def _backup_root_metadata(root: Path) -> dict[Path, Path]:
    """Copies of the root metadata files: spatialdata rewrites them in place after every element write."""
    import shutil

    backups: dict[Path, Path] = {}
    try:
        for meta in ROOT_METADATA:
            if (root / meta).is_file():
                backups[root / meta] = temporary_name(root / meta)
                shutil.copy2(root / meta, backups[root / meta])
    except OSError:
        for copy in backups.values():
            _remove(copy)
        raise
    return backups


def replace_table(sdata, name: str) -> None:
    """Write ``sdata.tables[name]`` over its own folder in the zarr store ``sdata`` was read from.

    The original survives any failure. spatialdata refuses to overwrite an element inside the store it
    reads from, so the new table is first written complete as ``tables/<name>_spacrd_tmp``; the
    original folder is then moved aside (into a folder zarr does not see), the copy renamed to
    ``tables/<name>`` and the consolidated metadata rewritten. Only then is the original removed. On
    any error the renames are undone, the root metadata restored from a copy taken first, the copy
    removed, and :class:`WriteError` says that the store is as it was.
    """
    root = Path(sdata.path)
    current, spare_name = root / "tables" / name, f"{name}{TABLE_SPARE}"
    spare, trash = root / "tables" / spare_name, root / STORE_TRASH
    _recover_store(root, name)
    backups = _backup_root_metadata(root)
    moved_old = moved_new = False
    try:
        sdata.tables[spare_name] = sdata.tables[name]
        try:
            sdata.write_element(spare_name)
        finally:
            del sdata.tables[spare_name]
        trash.mkdir(exist_ok=True)
        os.rename(current, trash / name)
        moved_old = True
        os.rename(spare, current)
        moved_new = True
        if sdata.has_consolidated_metadata():
            sdata.write_consolidated_metadata()
    except Exception as err:
        release_handles()
        with contextlib.suppress(OSError):
            if moved_new:
                os.rename(current, spare)
            if moved_old:
                os.rename(trash / name, current)
        _remove_tree(spare)
        for meta, copy in backups.items():
            with contextlib.suppress(OSError):
                os.replace(copy, meta)
        _remove_tree(trash)
        raise WriteError(
            f"could not rewrite table {name!r} in {root} ({reason(err)}); the store is as it was"
        ) from err
    for copy in backups.values():
        _remove(copy)
    _remove_tree(trash)
