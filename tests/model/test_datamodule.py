"""Minibatches, epoch sampling across processes and the validation split."""

import numpy as np
import pytest
from _synthetic import source_of, synthetic_sections

from spacrd._constants import TENSOR_KEYS, UNLABELLED
from spacrd.model import SpaCRD
from spacrd.model._adata_inputs import source_inputs
from spacrd.model._datamodule import (
    NeighbourhoodDataModule,
    NeighbourhoodDataset,
    NeighbourhoodSampler,
    validation_split,
)


@pytest.fixture(scope="module")
def inputs():
    source = source_of(synthetic_sections(n_sections=4, grid=12, n_genes=80))
    SpaCRD.setup_anndata(source, layer="counts", labels_key="cancer", batch_key="section")
    model = SpaCRD(source, n_top_genes=40)
    return source_inputs(model.input_spec, model.adata_manager)


def test_batches_hold_each_distinct_spot_once(inputs):
    dataset = NeighbourhoodDataset(inputs, use_image=False)
    centres = np.array([5, 6, 7, 40])
    batch = dataset[centres]
    genes, local = batch[TENSOR_KEYS.SPOT_GENES].numpy(), batch[TENSOR_KEYS.NEIGHBORS].numpy()
    spots = np.unique(inputs.neighbors[centres])
    assert genes.shape[0] == len(spots) < centres.size * inputs.neighbors.shape[1]
    # gathering the batch's spot rows by the local indices reproduces every neighbourhood token
    np.testing.assert_array_equal(
        genes[local], inputs.genes(inputs.neighbors[centres].ravel()).reshape(*local.shape, -1)
    )
    np.testing.assert_array_equal(batch[TENSOR_KEYS.LABELS].numpy(), inputs.labels[centres])


def test_shards_of_several_processes_split_every_epoch(inputs):
    indices = np.arange(inputs.n_obs)
    strata = inputs.codes * 3 + inputs.labels - UNLABELLED
    shards = []
    for rank in range(2):
        sampler = NeighbourhoodSampler(
            indices, 16, shuffle=True, strata=strata, spots_per_epoch=200, seed=3, num_replicas=2, rank=rank
        )
        sampler.set_epoch(1)
        shards.append(np.concatenate(list(sampler)))
        assert len(list(sampler)) == len(sampler)
    # the two processes draw the same epoch and split it without overlap
    assert len(shards[0]) == len(shards[1]) == 100
    assert not set(shards[0]) & set(shards[1])
    drawn = np.concatenate(shards)
    # the subsample keeps each section's and class's share of the training spots (largest remainder)
    share = np.bincount(strata[drawn], minlength=strata.max() + 1) / 200
    np.testing.assert_allclose(
        share, np.bincount(strata, minlength=strata.max() + 1) / len(strata), atol=0.01
    )
    # a new epoch is a new draw; the same epoch is the same draw
    again = NeighbourhoodSampler(indices, 16, shuffle=True, strata=strata, spots_per_epoch=200, seed=3)
    again.set_epoch(1)
    first = np.concatenate(list(again))
    np.testing.assert_array_equal(np.sort(first), np.sort(drawn))
    again.set_epoch(2)
    assert not np.array_equal(np.sort(np.concatenate(list(again))), np.sort(first))


def test_a_final_batch_of_one_spot_is_dropped_in_training():
    sampler = NeighbourhoodSampler(np.arange(33), 16, shuffle=True)
    assert [len(b) for b in sampler] == [16, 16] and len(sampler) == 2
    assert [len(b) for b in NeighbourhoodSampler(np.arange(33), 16, shuffle=False)] == [16, 16, 1]


@pytest.mark.parametrize("how", ["section", "block", "random"])
def test_validation_split(inputs, how):
    train, val, used = validation_split(inputs, inputs.coordinates, how, 0.85, seed=0)
    assert used == how and len(val) and len(train)
    assert not set(train) & set(val)
    if how == "section":
        # whole sections, never all of them
        assert not set(inputs.codes[train]) & set(inputs.codes[val])
    is_val = np.zeros(inputs.n_obs, dtype=bool)
    is_val[val] = True
    if how == "section":
        assert not is_val[inputs.neighbors[train]].any()
    if how == "block":
        # validation spots sit in the neighbourhoods of training spots at block edges; the data module
        # hides them there (as padding), so training never reads a validation spot
        module = NeighbourhoodDataModule(NeighbourhoodDataset(inputs, False), train, val, 64)
        batch = module.train_dataset[train]
        padding = batch[TENSOR_KEYS.PADDING_MASK].numpy()
        touched = is_val[inputs.neighbors[train]]
        assert touched.any() and padding[touched].all()
        assert not padding[~touched & ~inputs.padding[train]].any()
    if how == "block":
        # every section gives up some spots, in spatially compact blocks (not scattered spots)
        assert set(inputs.codes[val]) == set(inputs.codes)
        neighbours_also_held_out = is_val[inputs.neighbors[val, 1:]].mean()
        assert neighbours_also_held_out > 0.5


def test_validation_auto_and_no_validation(inputs):
    assert validation_split(inputs, inputs.coordinates, "auto", 0.9, seed=0)[2] == "section"
    train, val, used = validation_split(inputs, inputs.coordinates, "auto", 1.0, seed=0)
    assert used == "none" and len(val) == 0 and len(train) == inputs.n_obs
