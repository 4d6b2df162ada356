"""No data lost: outputs are complete or absent, inputs are never overwritten, failed writes end in one line.

Every test checks what the user sees (exit code, the one line on standard error) and that no input
changed (a digest of every file of it, before and after).
"""

import errno
import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import spacrd
from spacrd import _atomic
from spacrd._cli import main
from spacrd.model import SpaCRD


@pytest.fixture(scope="module")
def a1_data() -> ad.AnnData:
    """The shipped A1 section (346 spots, the pretrained model's genes), without labels."""
    her2st = spacrd.datasets.her2st_ctr()
    a1 = her2st[her2st.obs["section"] == "A1"].copy()
    a1.obs = a1.obs[["section"]]
    return a1


@pytest.fixture(scope="module")
def a1(tmp_path_factory, a1_data) -> Path:
    """A1 as INPUT: a .h5ad file."""
    path = tmp_path_factory.mktemp("input") / "A1.h5ad"
    a1_data.write_h5ad(path)
    return path


def digest(path: Path) -> dict[str, str]:
    """SHA-1 of every file under ``path`` (or of ``path`` itself), by relative name."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha1(p.read_bytes()).hexdigest() for p in files}


def one_line_error(capsys, argv: list[str], *fragments: str, code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith("spacrd "), err
    for fragment in fragments:
        assert fragment in last, last
    return last


def no_temporary_files(folder: Path) -> bool:
    return not any(_atomic.TEMPORARY_MARK in p.name for p in folder.rglob("*"))


# ------------------------------------------------------------------------------------ failed writes


def test_a_write_that_fails_half_way_leaves_nothing(capsys, tmp_path, a1, monkeypatch):
    def half_then_full_disk(self, path, **kwargs):
        Path(path).write_bytes(b"\x89HDF\r\n" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")

    before = digest(a1)
    monkeypatch.setattr(ad.AnnData, "write_h5ad", half_then_full_disk)
    out = tmp_path / "results" / "run1"
    last = one_line_error(
        capsys, ["predict", str(a1), "--out", str(out), "--no-plot"], "could not write", "annotated.h5ad"
    )
    assert "No space left on device" in last and f"nothing was written to {out}" in last
    assert not (tmp_path / "results").exists()  # the folders it created are gone too
    assert digest(a1) == before


def test_a_failed_rerun_with_overwrite_keeps_the_previous_results(capsys, tmp_path, a1, monkeypatch):
    out = tmp_path / "out"
    assert main(["predict", str(a1), "--out", str(out), "--no-plot"]) == 0
    previous = digest(out)

    def fails(self, path, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ad.AnnData, "write_h5ad", fails)
    argv = ["predict", str(a1), "--out", str(out), "--no-plot", "--overwrite"]
    one_line_error(capsys, argv, "annotated.h5ad (Permission denied)", "nothing was written")
    assert digest(out) == previous and no_temporary_files(out)


def test_a_file_size_limit_ends_in_exit_2_and_one_line(tmp_path, a1):
    """The limit of ``ulimit -f``: writes fail with EFBIG (SIGXFSZ ignored, as Python does)."""
    out = tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (300 * 1024, 300 * 1024))
        from spacrd._cli import main
        sys.exit(main(["predict", {str(a1)!r}, "--out", {str(out)!r}, "--no-plot"]))
        """
    )
    before = digest(a1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 2, done.stderr  # not a crash (139) nor a signal
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) <= 3, done.stderr
    assert lines[-1].startswith("spacrd predict: error: could not write") and "File too large" in lines[-1]
    assert not out.exists() and digest(a1) == before


def test_an_output_folder_that_cannot_be_made_is_exit_2(capsys, tmp_path, a1):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    argv = ["predict", str(a1), "--out", str(blocker / "out"), "--no-plot"]
    one_line_error(capsys, argv, "could not create the folder", "Not a directory")
    assert blocker.read_text() == "not a folder"
    one_line_error(capsys, ["predict", str(a1), "--out", str(blocker)], "is a file")


def test_a_failed_model_save_keeps_the_previous_model(tmp_path, monkeypatch):
    model = SpaCRD.load_pretrained("her2st")
    folder = tmp_path / "model"
    model.save(str(folder))
    previous = digest(folder)
    real_write_text = Path.write_text

    def fails_half_way(self, text, *args, **kwargs):  # model.json: half the text, then a full disk
        real_write_text(self, text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", fails_half_way)
    with pytest.raises(OSError, match=r"could not write .*model\.json \(No space left on device\)"):
        model.save(str(folder), overwrite=True)
    assert digest(folder) == previous and no_temporary_files(folder)
    monkeypatch.undo()
    assert SpaCRD.load(str(folder)).gene_names.equals(model.gene_names)


def test_a_figure_saved_by_a_plot_function_is_complete_or_absent(tmp_path, a1_data, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    model = SpaCRD.load_pretrained("her2st")
    adata = a1_data.copy()
    model.predict(adata)
    spacrd.pl.ctr(adata, img=False, show=False, save=tmp_path / "figure")  # no suffix: matplotlib's default
    assert (tmp_path / "figure.png").stat().st_size > 1000
    real = Figure.savefig

    def half(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", half)
    with pytest.raises(OSError, match=r"could not write .*ctr\.png \(No space left on device\)"):
        spacrd.pl.ctr(adata, img=False, show=False, save=tmp_path / "ctr.png")
    monkeypatch.setattr(Figure, "savefig", real)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.png"]


# ------------------------------------------------------------------------------------ inputs spared


def test_a_rerun_on_a_result_never_overwrites_it(capsys, tmp_path, a1):
    out = tmp_path / "results"
    assert main(["predict", str(a1), "--out", str(out), "--no-plot"]) == 0
    result = out / "annotated.h5ad"
    result_digest = digest(result)
    for extra in ([], ["--overwrite"]):  # never, with or without --overwrite
        argv = ["predict", str(result), "--out", str(out), "--no-plot", *extra]
        one_line_error(capsys, argv, "would overwrite INPUT", "annotated.h5ad", "another --out")
    # through a symbolic link to the folder, or to the file, or with .. in the path
    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    for input_path, out_path in (
        (result, link),
        (link / "annotated.h5ad", out),
        (result, out / ".." / "results"),
    ):
        argv = ["predict", str(input_path), "--out", str(out_path), "--no-plot", "--overwrite"]
        one_line_error(capsys, argv, "would overwrite INPUT")
    assert digest(result) == result_digest
    assert "ctr_prob" in ad.read_h5ad(result).obs


def test_results_never_go_into_an_input_folder(capsys, tmp_path, her2st_zarr):
    before = digest(her2st_zarr)
    for out in (her2st_zarr, her2st_zarr / "results", her2st_zarr / "tables"):
        one_line_error(capsys, ["predict", str(her2st_zarr), "--out", str(out)], "lies inside INPUT")
    argv = ["train", str(her2st_zarr), "--labels-key", "x", "--out", str(her2st_zarr / "model")]
    one_line_error(capsys, argv, "lies inside INPUT")
    assert digest(her2st_zarr) == before


def test_labels_file_is_never_overwritten_by_train(capsys, tmp_path, a1):
    folder = tmp_path / "model"
    folder.mkdir()
    labels = folder / "model.json"
    labels.write_text("spot,label\n")
    argv = ["train", str(a1), "--labels-file", str(labels), "--labels-key", "label", "--out", str(folder)]
    one_line_error(capsys, [*argv, "--overwrite"], "would overwrite --labels-file")
    assert labels.read_text() == "spot,label\n"


def test_outputs_of_another_run_need_overwrite_which_replaces_only_them(capsys, tmp_path, a1):
    out = tmp_path / "out"
    out.mkdir()
    (out / "ctr.png").write_bytes(b"an old figure")
    (out / "spots.csv").write_text("old")
    (out / "notes.txt").write_text("mine")
    before = digest(a1)
    last = one_line_error(capsys, ["predict", str(a1), "--out", str(out), "--no-plot"], "--overwrite")
    assert "holds spots.csv, ctr.png from another run" in last
    assert (out / "spots.csv").read_text() == "old"
    assert main(["predict", str(a1), "--out", str(out), "--no-plot", "--overwrite"]) == 0
    assert "Removed the previous run's ctr.png" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["annotated.h5ad", "notes.txt", "spots.csv"]
    assert (out / "notes.txt").read_text() == "mine" and len(pd.read_csv(out / "spots.csv")) == 346
    assert digest(a1) == before


# ------------------------------------------------------------------------------------ zarr tables


@pytest.fixture
def her2st_zarr(tmp_path, a1_data) -> Path:
    """A1 as a small SpatialData store: circles, a table annotating them, no image."""
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    a1 = a1_data
    circles = ShapesModel.parse(
        np.asarray(a1.obsm["spatial"], dtype=float),
        geometry=0,
        radius=np.full(a1.n_obs, 70.0),
        index=pd.RangeIndex(a1.n_obs),
    )
    table = ad.AnnData(X=a1.X.copy(), obs=pd.DataFrame(index=a1.obs_names), var=a1.var[[]])
    table.obs["region"] = pd.Categorical(["A1_spots"] * a1.n_obs)
    table.obs["spot_id"] = np.arange(a1.n_obs)
    table = TableModel.parse(table, region="A1_spots", region_key="region", instance_key="spot_id")
    path = tmp_path / "A1.zarr"
    SpatialData(shapes={"A1_spots": circles}, tables={"table": table}).write(path)
    return path


@pytest.mark.parametrize("step", ["copy", "swap", "metadata"])
def test_a_failed_table_rewrite_leaves_the_store_as_it_was(capsys, tmp_path, her2st_zarr, monkeypatch, step):
    from spatialdata import SpatialData, read_zarr

    before = digest(her2st_zarr)
    full = OSError(errno.ENOSPC, "No space left on device")
    if step == "copy":  # the copy is written half, then the disk is full
        real = SpatialData.write_element

        def half(self, name, **kwargs):
            real(self, name, **kwargs)
            raise full

        monkeypatch.setattr(SpatialData, "write_element", half)
    elif step == "swap":  # the original is moved aside, the copy cannot be moved in
        real_rename, calls = os.rename, []

        def second_fails(source, target):
            calls.append(source)
            if len(calls) == 2:
                raise full
            real_rename(source, target)

        monkeypatch.setattr(_atomic.os, "rename", second_fails)
    else:
        monkeypatch.setattr(
            SpatialData, "write_consolidated_metadata", lambda self: (_ for _ in ()).throw(full)
        )
    out = tmp_path / "out"
    last = one_line_error(
        capsys, ["predict", str(her2st_zarr), "--out", str(out), "--no-plot"], "table 'table'"
    )
    assert (
        "No space left on device" in last
        and "the store is as it was" in last
        and "nothing was written" in last
    )
    monkeypatch.undo()
    assert digest(her2st_zarr) == before and not out.exists()
    assert list(read_zarr(her2st_zarr).tables) == ["table"]
    # and a rerun annotates the table itself, not a copy
    assert main(["predict", str(her2st_zarr), "--out", str(out), "--no-plot"]) == 0
    tables = read_zarr(her2st_zarr).tables
    assert list(tables) == ["table"] and "ctr_prob" in tables["table"].obs
    assert no_temporary_files(her2st_zarr) and not (her2st_zarr / _atomic.STORE_TRASH).exists()


def test_a_copy_left_by_an_interrupted_run_is_never_annotated(capsys, tmp_path, her2st_zarr):
    from spatialdata import read_zarr

    sdata = read_zarr(her2st_zarr)
    sdata.tables["table_spacrd_tmp"] = sdata.tables["table"].copy()
    sdata.write_element("table_spacrd_tmp")
    out = tmp_path / "out"
    assert main(["predict", str(her2st_zarr), "--out", str(out), "--no-plot"]) == 0
    tables = read_zarr(her2st_zarr).tables
    assert list(tables) == ["table"] and "ctr_prob" in tables["table"].obs
    # a store holding only such a copy (as an interrupted spacrd 0.1 left it) is named for what it is
    sdata = read_zarr(her2st_zarr)
    sdata.tables["table_spacrd_tmp"] = sdata.tables["table"].copy()
    sdata.write_element("table_spacrd_tmp")
    sdata.delete_element_from_disk("table")
    before = digest(her2st_zarr)
    argv = ["predict", str(her2st_zarr), "--out", str(tmp_path / "o2"), "--no-plot"]
    one_line_error(capsys, argv, "holds no SpatialData table", "table_spacrd_tmp", "interrupted")
    assert digest(her2st_zarr) == before
