"""Odd inputs at the model's boundary give the right result or an error naming the argument, value and fix."""

import json
import shutil
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from _synthetic import source_of, tiny_sections

import spacrd
from spacrd.model import SpaCRD
from spacrd.tl._adaptation import expression_neighbors

NET = {"n_top_genes": 40, "n_embed": 16, "n_heads": 2, "n_latent": 4}
EPOCHS = {"fuse_epochs": 1, "classify_epochs": 2, "enable_progress_bar": False}
SETUP = {"layer": "counts", "labels_key": "cancer", "batch_key": "section"}


@pytest.fixture(scope="module")
def data():
    return tiny_sections()


@pytest.fixture(scope="module")
def trained(data):
    """An expression-only model of sections S0 and S1."""
    scvi.settings.seed = 0
    source = source_of(data)
    SpaCRD.setup_anndata(source, **SETUP)
    model = SpaCRD(source, **NET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(**EPOCHS)
    return model


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model") / "tiny"
    trained.save(str(folder))
    return folder


def _target(data, sections=("S2",)):
    return data[data.obs["section"].isin(sections)].copy()


# ---------------------------------------------------------------------------------- SpatialData sections


def _two_region_sdata(data):
    """S1 and S2 as two circles elements annotated by one table without a section column."""
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    shapes, tables = {}, []
    for section in ("S1", "S2"):
        part = _target(data, (section,))
        shapes[f"{section}_spots"] = ShapesModel.parse(
            part.obsm["spatial"].astype(float), geometry=0, radius=np.full(part.n_obs, 40.0)
        )
        table = ad.AnnData(part.layers["counts"], obs=pd.DataFrame(index=part.obs_names), var=part.var[[]])
        table.layers["counts"] = part.layers["counts"]
        table.obs["region"] = f"{section}_spots"
        table.obs["spot_id"] = np.arange(part.n_obs)
        tables.append(table)
    table = ad.concat(tables)
    table.obs["region"] = pd.Categorical(table.obs["region"])
    table = TableModel.parse(table, region=list(shapes), region_key="region", instance_key="spot_id")
    return SpatialData(shapes=shapes, tables={"table": table})


def test_a_table_annotating_two_shapes_elements_is_two_sections(data, trained):
    sdata = _two_region_sdata(data)
    before = sdata.tables["table"].X.copy()
    prob = trained.predict(sdata)
    regions = sdata.tables["table"].obs["region"].to_numpy()
    for section in ("S1", "S2"):
        alone = trained.predict(_target(data, (section,)))
        np.testing.assert_allclose(prob[regions == f"{section}_spots"], alone, atol=1e-5)
    assert set(sdata.tables["table"].uns["spacrd"]["cancer_share"]) == {"S1_spots", "S2_spots"}
    assert (sdata.tables["table"].X != before).nnz == 0  # the counts are not touched


# ---------------------------------------------------------------------------------- sections and spots


def test_missing_section_values_are_refused_wherever_sections_are_read(data, trained):
    target = _target(data, ("S1", "S2"))
    target.obs["section"] = target.obs["section"].astype(object)
    target.obs.loc[target.obs_names[:3], "section"] = np.nan
    with pytest.raises(
        ValueError, match=r"obs\['section'\] has missing values; every spot needs its section \(3"
    ):
        trained.predict(target)
    with pytest.raises(ValueError, match=r"obs\['section'\] has missing values"):
        spacrd.pp.spatial_neighbors(target, library_key="section")
    with pytest.raises(ValueError, match="`sections` has missing values"):
        expression_neighbors(np.ones((target.n_obs, 3)), target.obs["section"].to_numpy())
    assert "ctr_prob" not in target.obs and "spacrd_neighbors" not in target.obsm


@pytest.mark.parametrize(
    ("k", "error"), [(True, TypeError), (0, ValueError), (10**9, ValueError), (2.5, TypeError)]
)
def test_n_neighbors_is_checked_before_anything_is_allocated(data, k, error):
    source = source_of(data)
    with pytest.raises(error, match=rf"`n_neighbors` must be an integer in \[1, 1024\], got {k!r}"):
        SpaCRD.setup_anndata(source, **SETUP, n_neighbors=k)
    with pytest.raises(error, match="`n_neighbors` must be an integer"):
        spacrd.pp.spatial_neighbors(source, k)
    assert "spacrd_neighbors" not in source.obsm


def test_a_section_of_exactly_k_spots_has_every_spot_as_neighbour(data, trained):
    target = _target(data)[:7].copy()
    prob = trained.predict(target)
    assert prob.shape == (7,) and np.isfinite(prob).all()
    spacrd.pp.spatial_neighbors(target, 7)
    graph = target.obsm["spacrd_neighbors"]
    assert all(set(row) == set(range(7)) for row in graph) and (graph[:, 0] == np.arange(7)).all()


def test_spots_at_one_position_are_an_error_for_a_section_larger_than_k(data, trained):
    target = _target(data)
    target.obsm["spatial"][:] = [10.0, 20.0]
    with pytest.raises(ValueError, match=r"All 64 spots of section 'S2' lie at one position .* \(10, 20\)"):
        trained.predict(target)
    assert "ctr_prob" not in target.obs


def test_global_coordinates_give_the_same_result_or_a_clear_error(data, trained):
    reference = trained.predict(_target(data))
    shifted = _target(data)
    shifted.obsm["spatial"] = shifted.obsm["spatial"] + 1e12  # stage coordinates
    np.testing.assert_allclose(trained.predict(shifted), reference, atol=1e-5)
    scaled = _target(data)
    scaled.obsm["spatial"] = scaled.obsm["spatial"] * 1e200
    with pytest.raises(
        ValueError, match=r"coordinates up to .*e\+20\d; distances between them overflow.*Rescale"
    ):
        trained.predict(scaled)


def test_float16_counts_name_the_fix(data, trained):
    target = _target(data)
    target.layers["counts"] = target.layers["counts"].toarray().astype(np.float16)
    with pytest.raises(TypeError, match=r"adata.layers\['counts'\] has dtype float16.*astype\('float32'\)"):
        trained.predict(target)


# ---------------------------------------------------------------------------------- loaded models


def test_predict_without_a_target_on_a_loaded_model_says_what_to_pass(saved):
    with pytest.raises(ValueError, match=r"no registered AnnData.*model.predict\(adata\)"):
        SpaCRD.load(str(saved)).predict()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_a_gpu_without_a_gpu_is_a_value_error(saved):
    for load in (
        lambda: SpaCRD.load(str(saved), accelerator="gpu"),
        lambda: SpaCRD.load_pretrained("her2st", "gpu"),
    ):
        with pytest.raises(ValueError, match=r"`accelerator='gpu'` but no CUDA GPU.*accelerator='cpu'"):
            load()


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["init_params"].update(n_hidden=[60_000, 60_000]), r"declares [\d,]+ bytes of weights"),
        (lambda m: m["init_params"].update(n_members=10**7), r"cannot be built: `n_members` must be"),
        (lambda m: m["registry"]["setup_args"].update(n_neighbors=10**9), r"setup_args.n_neighbors"),
        (lambda m: m["registry"]["setup_args"].update(layer=7), r"setup_args.layer must be a name"),
        (lambda m: m.update(history={"stage1_loss": {"x": [1]}}), "history is damaged"),
    ],
)
def test_hostile_values_in_an_edited_model_json_are_refused_before_allocation(saved, tmp_path, edit, match):
    folder = tmp_path / "edited"
    shutil.copytree(saved, folder)
    meta = json.loads((folder / "model.json").read_text())
    edit(meta)
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=match):
        SpaCRD.load(str(folder))


def test_a_ranking_model_that_does_not_fit_is_named_as_such(data, trained):
    ranker = SpaCRD.load_pretrained("her2st")  # HER2ST gene symbols, none of the synthetic genes
    target = _target(data)
    with pytest.raises(ValueError, match=r"^`ranking_model` does not fit the target: Only 0 of"):
        trained.predict(target, ranking_model=ranker)
    assert "ctr_prob" not in target.obs


# ---------------------------------------------------------------------------------- few labels


def _few_labels(data, n_labelled):
    source = source_of(data)
    labels = pd.array([pd.NA] * source.n_obs, dtype="boolean")
    cancer = source.obs["cancer"].to_numpy()
    chosen = np.r_[
        np.flatnonzero(cancer)[: n_labelled // 2], np.flatnonzero(~cancer)[: n_labelled - n_labelled // 2]
    ]
    labels[chosen] = cancer[chosen]
    source.obs["cancer"] = labels  # nullable booleans, NA for unlabelled spots
    SpaCRD.setup_anndata(source, **SETUP)
    return SpaCRD(source, **NET)


def test_a_calibration_on_few_labelled_spots_warns(data):
    model = _few_labels(data, 6)
    with pytest.warns(UserWarning, match=r"calibration is fitted on 6 labelled spots, fewer than 20"):
        model.train(**EPOCHS, train_size=1.0)
    assert model.is_trained_


def test_a_split_that_leaves_training_without_both_classes_is_an_error(data):
    model = _few_labels(data, 2)
    with pytest.raises(ValueError, match=r"the training spots hold \d cancer and \d non-cancer labels"):
        model.train(**EPOCHS, train_size=0.5, validation="random")
    assert not model.is_trained_
