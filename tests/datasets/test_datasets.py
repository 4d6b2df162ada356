import gzip
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import sparse

import spacrd
from spacrd.datasets import _her2st, _her2st_files
from spacrd.datasets._tsv_counts import read_count_tsv

matplotlib.use("Agg")

LABELLED_COUNTS = {"A1": 346, "B1": 295, "C1": 176, "D1": 306, "E1": 587, "F1": 691}
IMAGED = ["A1", "B4", "C2", "C3", "C4", "C5", "C6"]
#: The sections of the shared snapshot (patients A–F); G and H are public but not in it.
SNAPSHOT_SECTIONS = [s for s in _her2st.SECTIONS if s[0] in "ABCDEF"]


@pytest.fixture(scope="module")
def adata_all(her2st_root):
    return spacrd.datasets.her2st(path=her2st_root)


def _section(adata, s):
    return adata[adata.obs["section"] == s]


@pytest.mark.data
def test_all_sections_load(adata_all):
    # sections=None with a path: every public section whose files are there, in the public order
    assert list(adata_all.obs["section"].cat.categories) == SNAPSHOT_SECTIONS
    assert len(SNAPSHOT_SECTIONS) == 30
    assert adata_all.obs_names.is_unique
    assert adata_all.obs_names[0] == "A1_10x13"
    assert list(adata_all.uns["spatial"]) == SNAPSHOT_SECTIONS
    assert isinstance(adata_all.X, sparse.csr_matrix)
    assert adata_all.X.dtype == np.float32
    assert adata_all.layers["counts"] is not adata_all.X
    assert (adata_all.X != adata_all.layers["counts"]).nnz == 0
    assert np.array_equal(adata_all.X.data, np.round(adata_all.X.data))
    assert adata_all.X.has_sorted_indices
    assert isinstance(adata_all.obs["section"].dtype, pd.CategoricalDtype)
    assert (adata_all.obs["patient"].astype(str) == adata_all.obs["section"].astype(str).str[0]).all()
    # union of genes: every gene is listed by at least one section, some by all 30
    assert adata_all.var["n_sections"].min() >= 1
    assert adata_all.var["n_sections"].max() == 30
    assert adata_all.var_names.is_unique


@pytest.mark.data
@pytest.mark.parametrize("section", ["A1", "C3", "F2"])
def test_counts_match_pandas(adata_all, her2st_root, section):
    table = pd.read_csv(her2st_root / "data" / "ST-cnts" / f"{section}.tsv.gz", sep="\t", index_col=0)
    sub = _section(adata_all, section)
    assert list(sub.obs_names) == [f"{section}_{i}" for i in table.index]
    assert sub.obs["array_x"].tolist() == [int(i.split("x")[0]) for i in table.index]
    dense = sub[:, table.columns].X.toarray()
    np.testing.assert_array_equal(dense, table.to_numpy())
    # genes the section's file does not list are zero-filled
    others = sub.var_names.difference(table.columns)
    assert len(others) > 0
    assert sub[:, others].X.nnz == 0


@pytest.mark.data
def test_spatial_coordinates_are_spot_file_pixels(adata_all, her2st_root):
    for section in ["A1", "C2", "E3"]:
        spots = pd.read_csv(her2st_root / "data" / "ST-spotfiles" / f"{section}_selection.tsv", sep="\t")
        spots.index = spots["x"].astype(str) + "x" + spots["y"].astype(str)
        sub = _section(adata_all, section)
        ids = [n.split("_", 1)[1] for n in sub.obs_names]
        np.testing.assert_array_equal(sub.obsm["spatial"], spots.loc[ids, ["pixel_x", "pixel_y"]].to_numpy())
    assert adata_all.obsm["spatial"].shape == (adata_all.n_obs, 2)
    assert np.isfinite(adata_all.obsm["spatial"]).all()


@pytest.mark.data
def test_labels(adata_all, her2st_root):
    labelled = adata_all.obs.dropna(subset=["label"]).groupby("section", observed=True).size()
    assert labelled.to_dict() == LABELLED_COUNTS
    for section in LABELLED_COUNTS:
        table = pd.read_csv(
            her2st_root / "data" / "ST-pat" / "lbl" / f"{section}_labeled_coordinates.tsv", sep="\t"
        )
        table = table.dropna(subset=["x", "y"])
        keys = (
            section
            + "_"
            + table["x"].round().astype(int).astype(str)
            + "x"
            + table["y"].round().astype(int).astype(str)
        )
        in_counts = keys.isin(adata_all.obs_names)
        # every spot of the section is labelled, and gets exactly the label of its row
        assert in_counts.sum() == LABELLED_COUNTS[section] == (adata_all.obs["section"] == section).sum()
        got = adata_all.obs.loc[keys[in_counts], "label"].astype(str).to_numpy()
        np.testing.assert_array_equal(got, table.loc[in_counts, "label"].to_numpy())
    unlabelled = ~adata_all.obs["section"].isin(list(LABELLED_COUNTS))
    assert adata_all.obs.loc[unlabelled, "label"].isna().all()


@pytest.mark.data
def test_cancer_column(adata_all):
    cancer = adata_all.obs["cancer"]
    assert cancer.dtype == "boolean"
    label = adata_all.obs["label"]
    np.testing.assert_array_equal(cancer.isna().to_numpy(), label.isna().to_numpy())
    known = label.notna()
    expected = label[known].isin(["invasive cancer", "cancer in situ"])
    np.testing.assert_array_equal(cancer[known].to_numpy(dtype=bool), expected.to_numpy())
    a1 = adata_all.obs.loc[adata_all.obs["section"] == "A1", "cancer"]
    # 305 cancer rows in A1's label file, two of them at spots absent from the count matrix
    assert a1.sum() == 303


@pytest.mark.data
def test_uns_spatial_layout(adata_all):
    spatial = adata_all.uns["spatial"]
    a1 = spatial["A1"]
    assert a1["images"]["hires"].shape == (2138, 2000, 3)
    assert a1["images"]["hires"].dtype == np.uint8
    assert a1["scalefactors"]["tissue_hires_scalef"] == pytest.approx(2000 / 6954)
    assert "fullres_image_path" not in a1["metadata"]
    c2 = spatial["C2"]
    assert c2["images"]["hires"].shape == (-(-9911 // 4), -(-9274 // 4), 3)
    assert c2["scalefactors"]["tissue_hires_scalef"] == 0.25
    assert Path(c2["metadata"]["fullres_image_path"]).name == "5714_HE_BT_C2.jpg"
    for section in SNAPSHOT_SECTIONS:
        lib = spatial[section]
        diameter = lib["scalefactors"]["spot_diameter_fullres"]
        # 100 µm spots: ~109 px at patient A's 0.92 µm/px, ~145 px at 0.69 µm/px for B–F
        expected = 109 if section[0] == "A" else 145.5
        assert diameter == pytest.approx(expected, rel=0.02)
        assert lib["metadata"]["microns_per_pixel"] * diameter == pytest.approx(100)
        if section not in IMAGED:
            # no "images" key without an image (as scanpy's reader writes it); the scale factor keeps the
            # coordinates, and is there for squidpy, which looks it up even with img=False
            assert list(lib) == ["scalefactors", "metadata"]
            assert lib["scalefactors"]["tissue_hires_scalef"] == 1.0
        else:
            assert list(lib) == ["images", "scalefactors", "metadata"]
            assert list(lib["images"]) == ["hires"]
    assert "note" in spatial["A2"]["metadata"]


def _tissue_mask(pixels):
    pixels = pixels.astype(int)
    dark_background = pixels.max(-1) <= 20
    glass = (pixels.min(-1) > 200) & (np.ptp(pixels, axis=-1) < 25)
    return ~dark_background & ~glass


@pytest.mark.data
@pytest.mark.parametrize("section", IMAGED)
def test_spots_sit_on_tissue_and_colours_are_rgb(adata_all, section):
    lib = adata_all.uns["spatial"][section]
    image = lib["images"]["hires"]
    scale = lib["scalefactors"]["tissue_hires_scalef"]
    radius = int(lib["scalefactors"]["spot_diameter_fullres"] * scale / 2)
    xy = np.round(_section(adata_all, section).obsm["spatial"] * scale).astype(int)
    on_tissue = np.array(
        [_tissue_mask(image[y - radius : y + radius + 1, x - radius : x + radius + 1]).mean() for x, y in xy]
    )
    assert (on_tissue > 0.5).mean() > 0.97
    # H&E stains tissue pink-purple: red above green, in RGB order (a BGR read would swap R and B)
    tissue = image[_tissue_mask(image)].astype(float)
    assert tissue[:, 0].mean() > tissue[:, 1].mean() + 5


@pytest.mark.data
def test_squidpy_spatial_scatter(adata_all):
    import matplotlib.pyplot as plt
    import squidpy as sq
    from matplotlib.collections import PatchCollection

    sub = adata_all[adata_all.obs["section"].isin(["A1", "C2", "D1"])].copy()
    spacrd.datasets.remove_unused_libraries(sub)
    assert list(sub.uns["spatial"]) == ["A1", "C2", "D1"]
    for section, img in [("A1", True), ("C2", True), ("D1", False)]:
        fig, ax = plt.subplots()
        sq.pl.spatial_scatter(
            sub, library_key="section", library_id=section, img=img, img_res_key="hires", color="label", ax=ax
        )
        scalefactors = sub.uns["spatial"][section]["scalefactors"]
        scale = scalefactors["tissue_hires_scalef"]
        # spots are drawn as circles in image pixels: centre = obsm["spatial"] * scale factor
        circles = [c for c in ax.collections if isinstance(c, PatchCollection)]
        paths = [p for c in circles for p in c.get_paths()]
        lo = np.array([p.vertices.min(0) for p in paths])
        hi = np.array([p.vertices.max(0) for p in paths])
        expected = sub.obsm["spatial"][sub.obs["section"] == section] * scale
        np.testing.assert_allclose(np.sort((lo + hi) / 2, axis=0), np.sort(expected, axis=0), atol=1e-3)
        np.testing.assert_allclose(hi - lo, scalefactors["spot_diameter_fullres"] * scale, rtol=1e-3)
        if img:
            height, width = sub.uns["spatial"][section]["images"]["hires"].shape[:2]
            assert ax.images[0].get_array().shape[:2] == (height, width)
        plt.close(fig)


@pytest.mark.data
def test_h5ad_round_trip(adata_all, tmp_path):
    sub = spacrd.datasets.remove_unused_libraries(
        adata_all[adata_all.obs["section"].isin(["A1", "D1"])], copy=True
    )
    assert list(sub.uns["spatial"]) == ["A1", "D1"]
    sub.write_h5ad(tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    assert back.obs["cancer"].dtype == "boolean"
    np.testing.assert_array_equal(
        back.uns["spatial"]["A1"]["images"]["hires"], sub.uns["spatial"]["A1"]["images"]["hires"]
    )
    assert "images" not in back.uns["spatial"]["D1"]


@pytest.mark.data
def test_section_selection_and_order(her2st_root):
    adata = spacrd.datasets.her2st(["C2", "A1"], path=her2st_root, load_images=False)
    assert list(adata.obs["section"].cat.categories) == ["C2", "A1"]
    assert adata.obs["section"].iloc[0] == "C2"
    assert "images" not in adata.uns["spatial"]["C2"]
    assert "fullres_image_path" not in adata.uns["spatial"]["C2"]["metadata"]
    single = spacrd.datasets.her2st("B2", path=her2st_root)
    assert single.obs["label"].isna().all()
    assert single.obs["cancer"].isna().all()
    assert (single.var["n_sections"] == 1).all()


@pytest.mark.data
def test_unknown_and_repeated_sections(her2st_root):
    with pytest.raises(ValueError, match=r"Unknown HER2ST section\(s\) \['G4'\].*'A1'.*'H3'"):
        spacrd.datasets.her2st(["A1", "G4"], path=her2st_root)
    with pytest.raises(ValueError, match="more than once"):
        spacrd.datasets.her2st(["A1", "A1"], path=her2st_root)
    with pytest.raises(ValueError, match="No sections"):
        spacrd.datasets.her2st([], path=her2st_root)


@pytest.mark.data
def test_missing_files(her2st_root, tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copytree(her2st_root / "data" / "ST-cnts", tmp_path / "data" / "ST-cnts")
    shutil.copytree(her2st_root / "data" / "ST-spotfiles", tmp_path / "data" / "ST-spotfiles")
    with pytest.raises(FileNotFoundError, match=r"ST-pat/lbl/A1_labeled_coordinates.tsv.*path=None"):
        spacrd.datasets.her2st("A1", path=tmp_path)
    with pytest.raises(FileNotFoundError, match=r"ST-imgs/C/C2/5714_HE_BT_C2.jpg.*load_images=False"):
        spacrd.datasets.her2st("C2", path=tmp_path)
    # without images C2 needs only the files that are there
    adata = spacrd.datasets.her2st("C2", path=tmp_path, load_images=False)
    assert adata.n_obs == 187


@pytest.mark.data
def test_lfs_pointer_image_is_explained(her2st_root, tmp_path):
    root = tmp_path / "her2st"
    shutil.copytree(her2st_root / "data" / "ST-cnts", root / "data" / "ST-cnts")
    shutil.copytree(her2st_root / "data" / "ST-spotfiles", root / "data" / "ST-spotfiles")
    pointer = root / "data" / "ST-imgs" / "C" / "C2" / "5714_HE_BT_C2.jpg"
    pointer.parent.mkdir(parents=True)
    pointer.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(ValueError, match="git lfs pull"):
        spacrd.datasets.her2st("C2", path=root)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """Serve a folder over HTTP on 127.0.0.1 and point the loader's download URL and cache at it."""
    served = tmp_path / "served"
    served.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(_her2st_files, "BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setenv("SPACRD_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield served, tmp_path / "cache"
    server.shutdown()
    thread.join()


def _serve_copy(her2st_root, served, section_files):
    for relative in section_files:
        (served / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(her2st_root / relative, served / relative)


@pytest.mark.data
def test_download_verifies_and_caches(her2st_root, http_root):
    served, cache = http_root
    needed = _her2st._files_for("A1", load_images=True)
    _serve_copy(her2st_root, served, needed)
    downloaded = spacrd.datasets.her2st("A1")
    local = spacrd.datasets.her2st("A1", path=her2st_root)
    assert (downloaded.X != local.X).nnz == 0
    np.testing.assert_array_equal(downloaded.obsm["spatial"], local.obsm["spatial"])
    np.testing.assert_array_equal(
        downloaded.uns["spatial"]["A1"]["images"]["hires"], local.uns["spatial"]["A1"]["images"]["hires"]
    )
    assert downloaded.obs["label"].equals(local.obs["label"])
    for relative in needed:
        assert (cache / relative).is_file()
    # a second call reads the cache: it works with the server emptied
    shutil.rmtree(served / "data")
    again = spacrd.datasets.her2st("A1", load_images=False)
    assert again.n_obs == 346


@pytest.mark.data
def test_download_rejects_altered_file(her2st_root, http_root):
    served, _ = http_root
    needed = _her2st._files_for("B2", load_images=False)
    _serve_copy(her2st_root, served, needed)
    spot_file = served / needed[1]
    spot_file.write_text(spot_file.read_text().replace("\t1\n", "\t0\n", 1))
    with pytest.raises(ValueError, match="SHA256"):
        spacrd.datasets.her2st("B2")


def _write_gz(path, text):
    with gzip.open(path, "wt") as fh:
        fh.write(text)


def test_count_reader_plain_and_fallback(tmp_path):
    plain = "\tG1\tG2\tG3\n1x2\t0\t12\t00\n3x4\t305\t0\t7\n"
    _write_gz(tmp_path / "plain.tsv.gz", plain)
    ids, genes, x = read_count_tsv(tmp_path / "plain.tsv.gz")
    assert ids == ["1x2", "3x4"]
    assert genes == ["G1", "G2", "G3"]
    np.testing.assert_array_equal(x.toarray(), [[0, 12, 0], [305, 0, 7]])
    assert x.nnz == 3  # "00" is not stored
    # decimals and a missing final newline are read through pandas and still give exact counts
    (tmp_path / "float.tsv").write_text("\tG1\tG2\n1x2\t1.0\t0.0\n3x4\t2.0\t3.0")
    _, _, x = read_count_tsv(tmp_path / "float.tsv")
    np.testing.assert_array_equal(x.toarray(), [[1, 0], [2, 3]])
    (tmp_path / "frac.tsv").write_text("\tG1\n1x2\t1.5\n")
    with pytest.raises(ValueError, match="non-negative integers"):
        read_count_tsv(tmp_path / "frac.tsv")
    (tmp_path / "ragged.tsv").write_text("\tG1\tG2\n1x2\t1\n")
    with pytest.raises(ValueError, match="non-negative integers"):
        read_count_tsv(tmp_path / "ragged.tsv")


# ---------------------------------------------------------------- patients G and H (not in the snapshot)
# Real A–F files copied under G/H names into a folder in the public layout stand in for a user's clone.


def _copy_as(her2st_root, dest, source, target):
    """Copy ``source``'s count, spot and (if any) label file into ``dest`` under ``target``'s names."""
    pairs = [(_her2st._counts_file(source), _her2st._counts_file(target))]
    pairs.append((_her2st._spot_file(source), _her2st._spot_file(target)))
    if source in _her2st.LABELLED_SECTIONS:
        pairs.append((_her2st._label_file(source), _her2st._label_file(target)))
    for src, dst in pairs:
        (dest / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(her2st_root / src, dest / dst)
    return [dst for _, dst in pairs]


def _same_section(got, want):
    """``got`` holds section ``want``'s spots, counts and labels under another name."""
    assert [n.split("_", 1)[1] for n in got.obs_names] == [n.split("_", 1)[1] for n in want.obs_names]
    assert (got[:, want.var_names].layers["counts"] != want.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(got.obsm["spatial"], want.obsm["spatial"])
    np.testing.assert_array_equal(got.obs["label"].astype(str), want.obs["label"].astype(str))


def test_public_sections_and_labels():
    assert len(_her2st.SECTIONS) == 36
    assert _her2st.SECTIONS[-6:] == ("G1", "G2", "G3", "H1", "H2", "H3")
    assert _her2st.LABELLED_SECTIONS == ("A1", "B1", "C1", "D1", "E1", "F1", "G2", "H1")


@pytest.mark.data
def test_g_and_h_sections_load_from_path(her2st_root, tmp_path):
    _copy_as(her2st_root, tmp_path, "A1", "G2")
    _copy_as(her2st_root, tmp_path, "D1", "H1")
    _copy_as(her2st_root, tmp_path, "B2", "G1")
    # a JPEG under G2's image folder is not attached: G/H images were never checked against the spots
    jpg = tmp_path / "data" / "ST-imgs" / "G" / "G2" / "G2_HE.jpg"
    jpg.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), "white").save(jpg)

    adata = spacrd.datasets.her2st(["H1", "G2", "G1"], path=tmp_path)
    assert list(adata.obs["section"].cat.categories) == ["H1", "G2", "G1"]
    assert list(adata.obs["patient"].cat.categories) == ["G", "H"]
    assert adata.obs_names[0].startswith("H1_")
    assert list(adata.uns["spatial"]) == ["H1", "G2", "G1"]
    assert all("images" not in lib for lib in adata.uns["spatial"].values())
    assert adata.uns["spatial"]["G2"]["metadata"]["patient"] == "G"
    originals = spacrd.datasets.her2st(["A1", "D1", "B2"], path=her2st_root, load_images=False)
    for got, want in [("G2", "A1"), ("H1", "D1"), ("G1", "B2")]:
        _same_section(adata[adata.obs["section"] == got], originals[originals.obs["section"] == want])
    # the two labelled sections of G and H get labels, G1 none
    labelled = adata.obs.dropna(subset=["label"]).groupby("section", observed=True).size().to_dict()
    assert labelled == {"H1": LABELLED_COUNTS["D1"], "G2": LABELLED_COUNTS["A1"]}
    assert adata.obs.loc[adata.obs["section"] == "G1", "cancer"].isna().all()
    assert adata.obs.loc[adata.obs["section"] == "G2", "cancer"].sum() == 303

    # sections=None: the sections whose count files are at path, in the public order
    everything = spacrd.datasets.her2st(path=tmp_path)
    assert list(everything.obs["section"].cat.categories) == ["G1", "G2", "H1"]


def test_sections_none_needs_count_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No HER2ST count file .*data/ST-cnts"):
        spacrd.datasets.her2st(path=tmp_path)


@pytest.mark.data
def test_sections_none_does_not_skip_incomplete_sections(her2st_root, tmp_path):
    _copy_as(her2st_root, tmp_path, "B2", "G1")
    (tmp_path / _her2st._spot_file("G1")).unlink()
    with pytest.raises(FileNotFoundError, match=r"ST-spotfiles/G1_selection.tsv"):
        spacrd.datasets.her2st(path=tmp_path)


@pytest.mark.data
def test_unknown_label_is_kept_with_a_warning(her2st_root, tmp_path):
    (label_file,) = [f for f in _copy_as(her2st_root, tmp_path, "A1", "G2") if "lbl" in f]
    table = pd.read_csv(tmp_path / label_file, sep="\t")
    table.loc[table["label"] == "invasive cancer", "label"] = "necrosis"
    table.to_csv(tmp_path / label_file, sep="\t", index=False)
    with pytest.warns(UserWarning, match=r"\['necrosis'\] in section\(s\) \['G2'\]"):
        adata = spacrd.datasets.her2st("G2", path=tmp_path)
    assert list(adata.obs["label"].cat.categories) == [*_her2st.LABEL_CATEGORIES, "necrosis"]
    necrosis = adata.obs["label"] == "necrosis"
    assert necrosis.sum() > 0
    assert not adata.obs.loc[necrosis, "cancer"].any()


def test_every_downloadable_file_is_registered_or_listed_as_unverified():
    from spacrd.datasets._her2st_registry import REGISTRY, UNVERIFIED

    needed = {f for s in _her2st.SECTIONS for f in _her2st._files_for(s, load_images=True)}
    assert needed <= set(REGISTRY) | UNVERIFIED
    assert not set(REGISTRY) & UNVERIFIED
    assert {f for f in needed if f not in REGISTRY} == UNVERIFIED
    assert sorted({f.split("/")[-1][:2] for f in UNVERIFIED}) == ["G1", "G3", "H2", "H3"]
    assert REGISTRY["data/ST-cnts/G2.tsv.gz"].startswith("sha256:9d51a5ed")
    assert REGISTRY["data/ST-pat/lbl/H1_labeled_coordinates.tsv"].startswith("sha256:b65cbc99")


@pytest.mark.data
def test_download_without_checksum_warns_with_the_files_hashes(her2st_root, http_root):
    import pooch

    served, cache = http_root
    files = _copy_as(her2st_root, served, "B2", "G1")
    hashes = [pooch.file_hash(served / f) for f in files]
    with pytest.warns(UserWarning, match="without a known checksum") as record:
        adata = spacrd.datasets.her2st("G1")
    (message,) = [str(w.message) for w in record if "checksum" in str(w.message)]
    for relative, digest in zip(files, hashes, strict=True):
        assert f"{relative} (sha256:{digest})" in message
    assert "path=" in message
    original = spacrd.datasets.her2st("B2", path=her2st_root)
    _same_section(adata, original)
    # the cached copy is still unverified: reading it warns again
    shutil.rmtree(served / "data")
    with pytest.warns(UserWarning, match="without a known checksum"):
        spacrd.datasets.her2st("G1")
    assert all((cache / f).is_file() for f in files)


@pytest.mark.data
def test_download_of_g2_is_verified(her2st_root, http_root):
    served, _ = http_root
    _copy_as(her2st_root, served, "A1", "G2")  # A1's files are not G2's: the checksums must catch it
    with pytest.raises(ValueError, match="SHA256"):
        spacrd.datasets.her2st("G2", load_images=False)


# ------------------------------------------------------------------------- remove_unused_libraries


def _libraries_adata():
    obs = pd.DataFrame(
        {"section": pd.Categorical(["S1", "S1", "S2", "S3"], categories=["S1", "S2", "S3"])},
        index=[f"spot{i}" for i in range(4)],
    )
    adata = ad.AnnData(np.zeros((4, 2), dtype=np.float32), obs=obs)
    adata.uns["spatial"] = {
        lib: {"scalefactors": {"tissue_hires_scalef": 1.0, "spot_diameter_fullres": 10.0}}
        for lib in ["S3", "S1", "S2"]
    }
    adata.uns["spatial"]["S1"]["images"] = {"hires": np.zeros((4, 4, 3), dtype=np.uint8)}
    return adata


def test_remove_unused_libraries_in_place_and_copy():
    adata = _libraries_adata()
    sub = adata[adata.obs["section"] != "S2"].copy()
    assert list(sub.uns["spatial"]) == ["S3", "S1", "S2"]  # what subsetting leaves, and the bug
    assert spacrd.datasets.remove_unused_libraries(sub) is None
    assert list(sub.uns["spatial"]) == ["S3", "S1"]  # order of uns kept
    assert list(sub.obs["section"].cat.categories) == ["S1", "S3"]
    assert sub.uns["spatial"]["S1"]["images"]["hires"].shape == (4, 4, 3)

    # copy=True leaves the input alone, also when it is a view
    view = adata[adata.obs["section"] == "S1"]
    out = spacrd.datasets.remove_unused_libraries(view, copy=True)
    assert view.is_view
    assert list(view.uns["spatial"]) == ["S3", "S1", "S2"]
    assert list(out.uns["spatial"]) == ["S1"]
    assert not out.is_view

    # non-categorical library columns are matched as strings and left as they are
    adata.obs["lib"] = adata.obs["section"].astype(str)
    adata.obs.loc["spot3", "lib"] = "S2"
    spacrd.datasets.remove_unused_libraries(adata, "lib")
    assert list(adata.uns["spatial"]) == ["S1", "S2"]
    assert adata.obs["lib"].dtype == object


def test_remove_unused_libraries_errors():
    adata = _libraries_adata()
    with pytest.raises(KeyError, match="no column 'library'"):
        spacrd.datasets.remove_unused_libraries(adata, "library")
    del adata.uns["spatial"]
    with pytest.raises(KeyError, match=r"uns\['spatial'\] is missing"):
        spacrd.datasets.remove_unused_libraries(adata)
