"""Bad input at the API boundary gives errors that name the problem and the fix.

Image dtypes and channels (uint8, float, 16-bit, grayscale, RGBA), spots outside an image, NaN
coordinates and missing images for :func:`spacrd.pp.image_features` are covered in ``test_pp.py``
(``test_dtypes_and_channels``, ``test_bad_images``, ``test_spots_outside_image_and_nan_coordinates``,
``test_unknown_library_and_missing_uns``); shuffled gene order and missing genes at prediction in
``test_model.py``. This file fills the gaps and adds property-based tests of the validators.
"""

import warnings

import anndata as ad
import matplotlib
import numpy as np
import pandas as pd
import pytest
import scvi
from _synthetic import source_of, target_of, tiny_sections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse

import spacrd
from spacrd._constants import UNLABELLED
from spacrd._validation import check_counts
from spacrd.model import SpaCRD
from spacrd.model._adata_inputs import source_inputs
from spacrd.model._labels import LABEL_CATEGORIES, cancer_labels, label_codes
from spacrd.pp._neighbors import section_neighbors

matplotlib.use("Agg")

NET = {"n_top_genes": 50, "n_hidden": (32,), "n_embed": 16, "n_heads": 2, "n_latent": 4}
EPOCHS = {"align_epochs": 1, "fuse_epochs": 1, "classify_epochs": 2, "enable_progress_bar": False}
SETUP = {"layer": "counts", "labels_key": "cancer", "batch_key": "section", "image_key": "X_histology"}
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def data():
    return tiny_sections()


def _messysource_of(data):
    """S0 and S1 plus a 3-spot section at one position, two spots without counts, some labels missing."""
    source = source_of(data)
    tiny = data[data.obs["section"] == "S2"][:3].copy()
    tiny.obs["section"] = "tiny"
    tiny.obsm["spatial"][:] = tiny.obsm["spatial"][0]
    source = ad.concat([source, tiny], merge="same")
    source.obs["section"] = source.obs["section"].astype("category")
    counts = source.layers["counts"].tolil()
    counts[[0, 70], :] = 0
    source.layers["counts"] = counts.tocsr()
    source.obs["cancer"] = source.obs["cancer"].astype("boolean")
    source.obs.loc[source.obs_names[5:15], "cancer"] = pd.NA
    return source


@pytest.fixture(scope="module")
def trained(data):
    """A tiny model trained on the messy source: every oddity above must still train."""
    scvi.settings.seed = 0
    source = _messysource_of(data)
    with pytest.warns(UserWarning, match="2 spots have no counts"):
        SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    model.train(**EPOCHS)
    return model


def _setup_error(adata, error, match, **kwargs):
    with pytest.raises(error, match=match):
        SpaCRD.setup_anndata(adata, **{**SETUP, **kwargs})


# ------------------------------------------------------------------------------------------ counts
def test_negative_nan_and_infinite_counts_are_errors(data):
    for bad, match in (
        (-1.0, "negative values.*`layer=`"),
        (np.nan, "NaN or infinite"),
        (np.inf, "NaN or infinite"),
    ):
        source = source_of(data)
        source.layers["counts"].data[3] = bad
        _setup_error(source, ValueError, rf"adata.layers\['counts'\] contains {match}")


def test_non_numeric_missing_and_backed_counts(data, tmp_path):
    source = source_of(data)
    _setup_error(source, KeyError, r"Layer 'raw' not found; available layers: \['counts'\]", layer="raw")
    source.layers["counts"] = source.layers["counts"].toarray() > 0
    _setup_error(source, TypeError, "dtype bool; raw counts must be numeric")
    source_of(data).write_h5ad(tmp_path / "s.h5ad")
    backed = ad.read_h5ad(tmp_path / "s.h5ad", backed="r")
    # a backed X is read in chunks, never loaded whole; its values are checked all the same
    SpaCRD.setup_anndata(backed, **{**SETUP, "layer": None})
    assert backed.obsm["spacrd_neighbors"].shape == (backed.n_obs, 7)
    huge = source_of(data)
    huge.layers["counts"] = huge.layers["counts"].astype(np.float64)
    huge.layers["counts"][0, 0] = 1e39
    _setup_error(huge, ValueError, r"holds a count of 1e\+39, beyond float32")


def test_non_integer_counts_warn_but_work(data):
    """A warning, not an error: ambient-corrected counts are legitimately non-integer."""
    source = source_of(data)
    source.layers["counts"] = source.layers["counts"] * 1.5
    with pytest.warns(UserWarning, match="non-integer values; SpaCRD expects raw counts"):
        SpaCRD.setup_anndata(source, **SETUP)
    assert SpaCRD(source, **NET).gene_names.size == 50


def test_all_zero_spots_warn_and_all_zero_genes_are_dropped(data):
    source = source_of(data)
    counts = source.layers["counts"].toarray()
    counts[:4] = 0
    counts[:, :12] = 0  # twelve genes never detected
    source.layers["counts"] = sparse.csr_matrix(counts)
    with pytest.warns(UserWarning, match="4 spots have no counts"):
        SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **{**NET, "n_top_genes": 100})
    assert list(model.gene_names) == [f"gene{i}" for i in range(12, 60)]
    source.layers["counts"] = sparse.csr_matrix(counts.shape, dtype=np.float32)
    with pytest.warns(UserWarning, match=f"{source.n_obs} spots have no counts"):
        SpaCRD.setup_anndata(source, **SETUP)
    with pytest.raises(ValueError, match=r"No gene has a non-zero count.*check `layer`"):
        SpaCRD(source, **NET)


def test_gene_selection_leaves_out_sections_too_small_to_fit(data):
    """seurat_v3 fails on a 2- or 3-spot section and crashes the interpreter on a 1-spot one."""
    reference = source_of(data)
    SpaCRD.setup_anndata(reference, **SETUP)
    expected = list(SpaCRD(reference, **NET).gene_names)
    for n_spots in (1, 3):
        small = data[data.obs["section"] == "S2"][:n_spots].copy()
        small.obs["section"] = "small"
        source = ad.concat([source_of(data), small], merge="same")
        source.obs["section"] = source.obs["section"].astype("category")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # scvi-tools: a category with fewer than 3 cells
            SpaCRD.setup_anndata(source, **SETUP)
        assert list(SpaCRD(source, **NET).gene_names) == expected
    # no section large enough: all spots are pooled, and a failed fit says how to go on
    two = source_of(data)[:2].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        SpaCRD.setup_anndata(two, **SETUP)
    with pytest.raises(
        ValueError, match=r"highly variable genes \(seurat_v3\) failed.*pass the feature genes as `genes=`"
    ):
        SpaCRD(two, **NET)
    assert list(SpaCRD(two, genes=expected[:5], **NET).gene_names) == expected[:5]


@pytest.mark.parametrize(
    "convert",
    [
        lambda x: x.toarray(),
        lambda x: x.toarray().astype(np.float64),
        lambda x: x.toarray().astype(np.int64),
        lambda x: sparse.csc_matrix(x),
        lambda x: x.astype(np.int32),
    ],
    ids=["dense32", "dense64", "dense-int64", "csc", "csr-int32"],
)
def test_count_storage_does_not_change_the_inputs(data, convert):
    reference = source_of(data)
    SpaCRD.setup_anndata(reference, **SETUP)
    expected = SpaCRD(reference, **NET)
    source = source_of(data)
    source.layers["counts"] = convert(source.layers["counts"])
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    assert list(model.gene_names) == list(expected.gene_names)
    rows = np.arange(source.n_obs)
    np.testing.assert_allclose(
        source_inputs(model.input_spec, model.adata_manager).genes(rows),
        source_inputs(expected.input_spec, expected.adata_manager).genes(rows),
        atol=1e-6,
    )


# ------------------------------------------------------------------------------------------ labels
def test_label_errors(data):
    _setup_error(
        source_of(data), KeyError, r"`labels_key='tumour'` is not a column of adata.obs", labels_key="tumour"
    )
    source = source_of(data)
    source.obs["region"] = np.where(source.obs["cancer"], "invasive cancer", "stroma")
    _setup_error(
        source,
        ValueError,
        r"holds categories \['invasive cancer', 'stroma'\].*cancer_categories=",
        labels_key="region",
    )
    _setup_error(
        source,
        ValueError,
        r"`cancer_categories` \['tumor'\] do not occur.*\['invasive cancer', 'stroma'\]",
        labels_key="region",
        cancer_categories=["tumor"],
    )
    source.obs["score"] = source.obs["cancer"].astype(int) * 2
    _setup_error(source, ValueError, r"numeric with values \[0.0, 2.0\].*must be 0", labels_key="score")


def test_cancer_categories_map_region_names(data):
    source = source_of(data)
    regions = np.where(source.obs["cancer"], "invasive cancer", "stroma").astype(object)
    regions[:5] = "cancer in situ"
    regions[5:8] = None
    source.obs["region"] = pd.Categorical(regions)
    SpaCRD.setup_anndata(
        source, **{**SETUP, "labels_key": "region"}, cancer_categories=["invasive cancer", "cancer in situ"]
    )
    labels = label_codes(source.obs["region"], ["invasive cancer", "cancer in situ"])
    assert (labels[:5] == 1).all() and (labels[5:8] == UNLABELLED).all()
    np.testing.assert_array_equal(labels[8:], source.obs["cancer"].to_numpy()[8:].astype(int))
    # every entry must match a category exactly: a misspelt one is an error, even next to a correct one
    with pytest.raises(ValueError, match=r"\['cancer in-situ'\] do not occur"):
        label_codes(source.obs["region"], ["invasive cancer", "cancer in-situ"])


@pytest.mark.parametrize("labels", ["one class", "all missing", "no labels_key"])
def test_training_needs_both_classes(data, labels):
    source = source_of(data)
    kwargs = dict(SETUP)
    if labels == "one class":
        source.obs["cancer"] = False
    elif labels == "all missing":
        source.obs["cancer"] = pd.array([pd.NA] * source.n_obs, dtype="boolean")
    else:
        kwargs["labels_key"] = None
    SpaCRD.setup_anndata(source, **kwargs)
    model = SpaCRD(source, **NET)
    n_negative = source.n_obs if labels == "one class" else 0
    with pytest.raises(
        ValueError, match=rf"both classes; found {n_negative} non-cancer and 0 cancer.*cancer_categories"
    ):
        model.train(**EPOCHS)
    assert not model.is_trained_


# ------------------------------------------------------------------------------------------- genes
def test_duplicated_gene_names(data, trained):
    source = source_of(data)
    source.var_names = [f"gene{i % 55}" for i in range(60)]
    _setup_error(source, ValueError, r"5 duplicated gene names \(e.g. \['gene0',.*var_names_make_unique")
    target = target_of(data)
    target.var_names = source.var_names
    with pytest.raises(ValueError, match=r"target has duplicated gene names.*var_names_make_unique"):
        trained.predict(target)


def test_low_gene_overlap_names_the_threshold_and_the_likely_cause(data, trained):
    target = target_of(data)
    target.var_names = [f"ENSG{i:011d}" for i in range(target.n_vars)]
    with pytest.raises(
        ValueError, match=r"Only 0 of the model's 50 genes \(0%\).*min_gene_overlap=0.5.*Ensembl"
    ):
        trained.predict(target)
    half = target_of(data)[:, list(trained.gene_names[:20])].copy()
    with pytest.raises(ValueError, match=r"min_gene_overlap=0\.5"):
        trained.predict(half)
    with pytest.warns(UserWarning, match="30 of the model's 50 genes are missing"):
        assert np.isfinite(trained.predict(half, min_gene_overlap=0.3)).all()


# ----------------------------------------------------------------------------------------- spatial
def test_spatial_errors(data):
    source = source_of(data)
    del source.obsm["spatial"]
    _setup_error(
        source, KeyError, r"obsm\['spatial'\] not found.*Available obsm keys: \['X_histology'\].*spatial_key="
    )
    source = source_of(data)
    source.obsm["xy"] = source.obsm["spatial"][:, :1]
    _setup_error(source, ValueError, r"obsm\['xy'\] must be \(n_spots, 2\).*\(128, 1\)", spatial_key="xy")
    source.obsm["spatial"][[4, 9]] = [np.nan, np.inf]
    _setup_error(source, ValueError, r"2 spots with NaN or infinite coordinates \(e.g. \['S0_4', 'S0_9'\]\)")
    _setup_error(
        source_of(data), ValueError, r"`n_neighbors` must be an integer in \[1, 1024\], got 0", n_neighbors=0
    )
    _setup_error(source_of(data), KeyError, "`batch_key='slide'` is not a column", batch_key="slide")
    source = source_of(data)
    source.obs["section"] = source.obs["section"].astype(object)
    source.obs.loc[source.obs_names[0], "section"] = None
    _setup_error(source, ValueError, r"obs\['section'\] has missing values; every spot needs its section")


def test_small_sections_and_duplicated_coordinates(data, trained):
    """Padding marks exactly the slots a 3-spot section cannot fill; twins keep each spot first."""
    neighbors = trained.adata.obsm["spacrd_neighbors"]
    tiny = np.flatnonzero(trained.adata.obs["section"].to_numpy() == "tiny")
    assert neighbors.shape == (trained.adata.n_obs, 7)
    np.testing.assert_array_equal(neighbors[tiny, 0], tiny)
    assert (neighbors[tiny, 3:] == -1).all()
    assert all(set(row) == set(tiny) for row in neighbors[tiny, :3])
    assert (neighbors[np.setdiff1d(np.arange(len(neighbors)), tiny)] >= 0).all()
    prob = trained.predict(target_of(data)[:3].copy())  # a 3-spot target, one section smaller than k
    assert prob.shape == (3,) and np.isfinite(prob).all()


def test_predict_checks_target_coordinates_and_sections(data, trained):
    target = target_of(data)
    target.obsm["spatial"][2] = np.nan
    with pytest.raises(ValueError, match=r"1 spots with NaN or infinite coordinates \(e.g. \['S2_2'\]\)"):
        trained.predict(target)
    target = target_of(data)
    del target.obsm["spatial"]
    with pytest.raises(KeyError, match=r"obsm\['spatial'\] not found"):
        trained.predict(target)
    target = target_of(data)
    target.obs["section"] = target.obs["section"].astype(object)
    target.obs.loc[target.obs_names[:2], "section"] = np.nan
    with pytest.raises(ValueError, match="has missing values; every spot needs its section"):
        trained.predict(target)
    with pytest.raises(TypeError, match="Expected an AnnData or a SpatialData, got DataFrame"):
        trained.predict(target.obs)


# ----------------------------------------------------------------------------- histology embeddings
def test_histology_embedding_errors(data, trained):
    source = source_of(data)
    _setup_error(
        source,
        KeyError,
        r"obsm\['X_uni'\] not found.*spacrd.pp.image_features.*image_key=None",
        image_key="X_uni",
    )
    source.obsm["X_histology"][0, :2] = np.nan
    _setup_error(source, ValueError, r"1 rows of obsm\['X_histology'\] are partly NaN")
    source.obsm["X_histology"][0] = np.inf
    _setup_error(source, ValueError, "contains infinite values")
    target = target_of(data)
    target.obsm["X_histology"] = target.obsm["X_histology"][:, :5]
    with pytest.raises(ValueError, match=r"has 5 features but the model was trained with 12.*same backbone"):
        trained.predict(target)


def test_target_without_embeddings_is_predicted_from_expression(data, trained):
    """As documented: a missing embedding key means 'no image' for every spot, with a warning."""
    target = target_of(data)
    expected = target.copy()
    expected.obsm["X_histology"][:] = np.nan
    del target.obsm["X_histology"]
    with pytest.warns(
        UserWarning, match=r"no obsm\['X_histology'\].*expression alone.*spacrd.pp.image_features"
    ):
        prob = trained.predict(target)
    np.testing.assert_array_equal(prob, trained.predict(expected))


# ------------------------------------------------------------------------------------------- shape
def test_empty_and_single_spot_anndata(data, trained):
    source = source_of(data)
    _setup_error(source[:0].copy(), ValueError, r"The AnnData is empty \(0 spots × 60 genes\)")
    _setup_error(source[:, :0].copy(), ValueError, r"The AnnData is empty \(128 spots × 0 genes\)")
    with pytest.raises(ValueError, match="empty"):
        trained.predict(target_of(data)[:0].copy())
    one = source[:1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # scvi-tools: categories with fewer than 3 cells
        SpaCRD.setup_anndata(one, **SETUP)
    assert (one.obsm["spacrd_neighbors"] == [[0, -1, -1, -1, -1, -1, -1]]).all()
    with pytest.raises(ValueError, match="1 spots are too few to estimate gene variances"):
        SpaCRD(one, **NET)
    with pytest.raises(ValueError, match="both classes"):
        SpaCRD(one, genes=list(one.var_names[:5]), **NET).train(**EPOCHS)
    target = target_of(data)[:1].copy()
    prob = trained.predict(target)
    assert prob.shape == (1,) and 0 <= prob[0] <= 1
    assert target.obs["ctr"].iloc[0] in ("cancer", "non-cancer")


# ------------------------------------------------------------------------------------------- state
def test_predict_before_train_says_what_to_do(data):
    source = source_of(data)
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    for call in (model.predict, model.get_latent_representation):
        with pytest.raises(RuntimeError, match=r"not trained.*model.train\(\).*SpaCRD.load"):
            call(target_of(data))
    with pytest.raises(ValueError, match=r"`train_size` must be a number in \(0, 1\], got 0.0"):
        model.train(train_size=0.0, **EPOCHS)


# ------------------------------------------------------------------------------- image_features
def _with_images(adata, scalef=0.25):
    """A 200 × 200 px 'hires' image per section; spot centres (full-resolution px) fall inside it."""
    adata.obsm["spatial"] = adata.obsm["spatial"] + 50
    rng = np.random.default_rng(0)
    adata.uns["spatial"] = {
        str(s): {
            "images": {"hires": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)},
            "scalefactors": {"tissue_hires_scalef": scalef, "spot_diameter_fullres": 50.0},
            "metadata": {},
        }
        for s in adata.obs["section"].cat.categories
    }
    return adata


def test_image_features_coordinates_at_another_resolution(data):
    adata = _with_images(data.copy())
    spacrd.pp.image_features(adata)
    assert np.isfinite(adata.obsm["X_histology"]).all()
    wrong_scale = _with_images(data.copy(), scalef=1.0)  # says the image is full resolution; it is 4x smaller
    with pytest.raises(
        ValueError,
        match=r"60 spot centre\(s\) of library 'S0' lie outside its 200 x 200 px image.*"
        r"full-resolution pixels and the scale factor",
    ):
        spacrd.pp.image_features(wrong_scale)
    in_hires_pixels = _with_images(data.copy())
    in_hires_pixels.obsm["spatial"] = in_hires_pixels.obsm["spatial"] * 4
    with pytest.raises(ValueError, match="lie outside"):
        spacrd.pp.image_features(in_hires_pixels)


# -------------------------------------------------------------------------------------- pl and data
def test_ctr_empty_and_without_coordinates(data):
    adata = _with_images(data.copy())
    adata.obs["ctr_prob"] = np.linspace(0, 1, adata.n_obs)
    adata.obs["ctr"] = pd.Categorical(np.where(adata.obs["ctr_prob"] > 0.5, "cancer", "non-cancer"))
    with pytest.raises(ValueError, match=r"no spots \(n_obs == 0\)"):
        spacrd.pl.ctr(adata[:0].copy(), show=False)
    del adata.obsm["spatial"]
    with pytest.raises(KeyError, match=r"No spot coordinates in `adata.obsm\['spatial'\]`"):
        spacrd.pl.ctr(adata, show=False)


def test_her2st_argument_types(tmp_path):
    """Checked before any file is touched, so no data are needed."""
    with pytest.raises(TypeError, match=r"`sections` must be a section name such as 'A1'.*got int"):
        spacrd.datasets.her2st(3, path=tmp_path)
    with pytest.raises(ValueError, match=r"Unknown HER2ST section\(s\) \['a1'\]"):
        spacrd.datasets.her2st("a1", path=tmp_path)
    with pytest.raises(ValueError, match="`hires_size` must be a positive whole number of pixels, got 0"):
        spacrd.datasets.her2st("A1", path=tmp_path, hires_size=0)


# ------------------------------------------------------------------------------- property-based
NAMES = ["invasive cancer", "cancer in situ", "stroma", "immune", "fat"]


@PROPERTY
@given(
    values=st.lists(st.sampled_from([True, False, None]), min_size=1, max_size=40),
    storage=st.sampled_from(["boolean", "float", "object"]),
)
def test_cancer_labels_of_binary_columns(values, storage):
    if storage == "boolean":
        column = pd.Series(pd.array(values, dtype="boolean"), name="c")
    elif storage == "float":
        column = pd.Series([np.nan if v is None else float(v) for v in values], name="c")
    else:
        column = pd.Series(values, dtype=object, name="c")
    labels = cancer_labels(column)
    assert list(labels.categories) == list(LABEL_CATEGORIES)
    np.testing.assert_array_equal(labels.codes, [2 if v is None else int(v) for v in values])


@PROPERTY
@given(
    values=st.lists(st.sampled_from([*NAMES, None]), min_size=1, max_size=40),
    cancer=st.sets(st.sampled_from(NAMES), min_size=1),
    categorical=st.booleans(),
)
def test_cancer_labels_map_named_categories(values, cancer, categorical):
    column = pd.Series(values, dtype="category" if categorical else object, name="region")
    if not cancer <= {v for v in values if v is not None}:
        # every requested category must be one of the column's values: a typo is never dropped silently
        with pytest.raises(ValueError, match="do not occur in obs"):
            cancer_labels(column, sorted(cancer))
        return
    labels = cancer_labels(column, sorted(cancer))
    np.testing.assert_array_equal(labels.codes, [2 if v is None else int(v in cancer) for v in values])
    # without the mapping, only the literal names 'cancer' / 'non-cancer' are understood
    with pytest.raises(ValueError, match=r"Pass `cancer_categories=\[...\]`"):
        cancer_labels(column)


@PROPERTY
@given(values=st.lists(st.sampled_from(["cancer", "non-cancer", None]), min_size=1, max_size=30))
def test_cancer_labels_literal_names(values):
    labels = cancer_labels(pd.Series(values, name="c"))
    np.testing.assert_array_equal(labels.codes, [2 if v is None else int(v == "cancer") for v in values])


def _counts_adata(matrix):
    return ad.AnnData(X=matrix)


@PROPERTY
@given(
    counts=arrays(np.int64, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.integers(0, 30)),
    dtype=st.sampled_from([np.int32, np.int64, np.float32, np.float64]),
    storage=st.sampled_from(["dense", "csr", "csc"]),
    data=st.data(),
)
def test_check_counts_properties(counts, dtype, storage, data):
    def store(x):
        return x if storage == "dense" else getattr(sparse, f"{storage}_matrix")(x)

    empty_rows = int((counts.sum(axis=1) == 0).sum())
    matrix = store(counts.astype(dtype))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = check_counts(_counts_adata(matrix), None)
    assert out is matrix
    messages = [str(w.message) for w in caught]
    assert messages == (
        [f"{empty_rows} spots have no counts; their expression features are all zero."] if empty_rows else []
    )

    i = data.draw(st.integers(0, counts.shape[0] - 1))
    j = data.draw(st.integers(0, counts.shape[1] - 1))
    negative = counts.astype(dtype)
    negative[i, j] = -1
    with pytest.raises(ValueError, match="negative values"):
        check_counts(_counts_adata(store(negative)), None)
    if np.issubdtype(dtype, np.floating):
        for bad in (np.nan, np.inf, -np.inf):
            broken = counts.astype(dtype)
            broken[i, j] = bad
            with pytest.raises(ValueError, match="NaN or infinite"):
                check_counts(_counts_adata(store(broken)), None)
        fractional = counts.astype(dtype)
        fractional[i, j] += 0.5
        with pytest.warns(UserWarning, match="non-integer values"):
            check_counts(_counts_adata(store(fractional)), None)


@PROPERTY
@given(data=st.data())
def test_section_neighbors_invariants(data):
    n = data.draw(st.integers(1, 25), label="n")
    k = data.draw(st.integers(1, 8), label="k")
    # coarse integer positions make duplicated coordinates common
    coordinate = st.one_of(st.integers(0, 3).map(float), st.floats(-50, 50, allow_nan=False))
    coords = data.draw(arrays(np.float64, (n, 2), elements=coordinate), label="coords")
    sections = np.array(data.draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n), label="sections"))
    use_sections = data.draw(st.booleans(), label="use_sections")
    if not use_sections:
        sections[:] = "a"
    indices, padding = section_neighbors(coords, sections if use_sections else None, k)

    assert indices.shape == padding.shape == (n, k) and indices.dtype == np.int64
    np.testing.assert_array_equal(indices[:, 0], np.arange(n))  # self first
    assert (sections[indices] == sections[:, None]).all()  # same section
    for i in range(n):
        members = np.flatnonzero(sections == sections[i])
        filled = min(k, members.size)
        # padding only, and exactly, where the section has fewer than k spots; padded slots hold the spot
        np.testing.assert_array_equal(padding[i], np.arange(k) >= filled)
        assert (indices[i, filled:] == i).all()
        chosen = indices[i, :filled]
        assert len(set(chosen.tolist())) == filled
        others = np.setdiff1d(members, chosen)
        if others.size:
            distance = np.linalg.norm(coords - coords[i], axis=1)
            assert distance[chosen].max() <= distance[others].min() + 1e-9  # the nearest ones
