"""Minibatches of neighbourhoods: the dataset, the epoch sampler, the train/validation split, the data module."""

from __future__ import annotations

import logging
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch

from spacrd._constants import TENSOR_KEYS, UNLABELLED
from spacrd.nn import ShiftedSparse

from . import _thinning
from ._inputs import SpotInputs

logger = logging.getLogger(__name__)

Validation = Literal["section", "block", "random", "auto"]
VALIDATIONS: tuple[str, ...] = ("section", "block", "random", "auto")
#: Spots per epoch when ``spots_per_epoch="auto"``: larger sources are subsampled each epoch.
AUTO_SPOTS_PER_EPOCH = 100_000
#: Side of the validation blocks of ``validation="block"``, in neighbour spacings.
BLOCK_SPACINGS = 4


class NeighbourhoodDataset(torch.utils.data.Dataset):
    """Serves minibatches of neighbourhoods; indexed with an array of centre spots at a time.

    An item holds the features of the distinct spots of the centres' neighbourhoods once
    (:data:`spacrd._constants.TENSOR_KEYS`): ``spot_genes`` ``(U, n_genes)``, for models with images
    ``spot_image`` ``(U, n_image_features)`` and ``spot_has_image`` ``(U,)``, and per centre
    ``neighbors`` ``(B, k)`` (rows into the spot arrays), ``padding_mask`` ``(B, k)`` and ``labels``
    ``(B,)``. Spots in ``hidden`` (``(n,)`` bool) are left out of every neighbourhood but their own, as
    padding: training batches hide the validation spots this way. Dense arrays exist only for these
    ``U`` spots; with ``sparse_genes`` (prediction) not even
    those: ``spot_genes`` is a :class:`~spacrd.nn.ShiftedSparse`. With ``thinning`` (training only), the
    genes of every item are thinned at a depth drawn for it (:class:`~spacrd.model._thinning.DepthThinning`).
    """

    def __init__(
        self,
        inputs: SpotInputs,
        use_image: bool,
        sparse_genes: bool = False,
        hidden: np.ndarray | None = None,
        thinning: _thinning.DepthThinning | None = None,
    ):
        if thinning is not None and sparse_genes:
            raise ValueError("Depth thinning serves dense training minibatches, not sparse ones.")
        self.inputs = inputs
        self.use_image = use_image
        self.sparse_genes = sparse_genes
        self.hidden = hidden
        self.thinning = thinning

    def __len__(self) -> int:
        return self.inputs.n_obs

    def __getitem__(self, centres) -> dict[str, torch.Tensor | ShiftedSparse]:
        centres = np.asarray(centres, dtype=np.int64).reshape(-1)
        inputs = self.inputs
        spots, local = np.unique(inputs.neighbors[centres], return_inverse=True)
        genes: torch.Tensor | ShiftedSparse
        if self.sparse_genes:
            genes = inputs.shifted_genes(spots)
        else:
            source = inputs if self.thinning is None else self.thinning
            genes = torch.from_numpy(source.genes(spots))
        batch: dict[str, torch.Tensor | ShiftedSparse] = {
            TENSOR_KEYS.SPOT_GENES: genes,
            TENSOR_KEYS.NEIGHBORS: torch.from_numpy(local.reshape(len(centres), -1).astype(np.int64)),
            TENSOR_KEYS.PADDING_MASK: torch.from_numpy(self._padding(centres)),
            TENSOR_KEYS.LABELS: torch.from_numpy(inputs.labels[centres]),
        }
        if self.use_image:
            if inputs.image is None:
                n_image = 0
                batch[TENSOR_KEYS.SPOT_IMAGE] = torch.zeros(len(spots), n_image)
                batch[TENSOR_KEYS.SPOT_HAS_IMAGE] = torch.zeros(len(spots), dtype=torch.bool)
            else:
                assert inputs.has_image is not None  # build_inputs sets it with the image
                batch[TENSOR_KEYS.SPOT_IMAGE] = torch.from_numpy(inputs.image_features(spots))
                batch[TENSOR_KEYS.SPOT_HAS_IMAGE] = torch.from_numpy(inputs.has_image[spots])
        return batch

    def _padding(self, centres: np.ndarray) -> np.ndarray:
        """``(B, k)`` padding of the centres' neighbourhoods; ``hidden`` spots count as padding."""
        padding = self.inputs.padding[centres]
        if self.hidden is None:
            return padding
        hidden = self.hidden[self.inputs.neighbors[centres]]
        hidden[:, 0] = False  # a spot is never hidden from its own neighbourhood
        return padding | hidden


class NeighbourhoodSampler(torch.utils.data.Sampler):
    """Batches of centre spots for one epoch, optionally subsampled and sharded across processes.

    Each epoch draws, with the seed ``(seed, epoch)``, either all ``indices`` or a subsample of
    ``spots_per_epoch`` of them stratified by ``strata`` (each stratum keeps its share), shuffles them
    (``shuffle``) and gives process ``rank`` of ``num_replicas`` every ``num_replicas``-th spot, the
    spots padded by repetition to a multiple of ``num_replicas`` as :class:`torch.utils.data.DistributedSampler`
    does. A final batch of a single spot is dropped in training (BatchNorm needs two).
    """

    def __init__(
        self,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        strata: np.ndarray | None = None,
        spots_per_epoch: int | None = None,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.strata = None if strata is None else np.asarray(strata)[self.indices]
        self.spots_per_epoch = spots_per_epoch if spots_per_epoch and spots_per_epoch < len(indices) else None
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _epoch_spots(self) -> np.ndarray:
        rng = np.random.default_rng((self.seed, self.epoch))
        pool = self.indices
        if self.spots_per_epoch is not None:
            pool = _stratified_draw(pool, self.strata, self.spots_per_epoch, rng)
        if self.shuffle:
            pool = rng.permutation(pool)
        if self.num_replicas > 1:
            total = -(-len(pool) // self.num_replicas) * self.num_replicas
            pool = np.resize(pool, total)[self.rank :: self.num_replicas]
        return pool

    def __iter__(self):
        spots = self._epoch_spots()
        for start in range(0, len(spots), self.batch_size):
            batch = spots[start : start + self.batch_size]
            if self.shuffle and len(batch) == 1 and len(spots) > 1:
                continue
            yield batch

    def __len__(self) -> int:
        n = -(-(self.spots_per_epoch or len(self.indices)) // self.num_replicas)
        dropped = self.shuffle and n > 1 and n % self.batch_size == 1
        return -(-n // self.batch_size) - int(dropped)


def _stratified_draw(pool: np.ndarray, strata: np.ndarray | None, size: int, rng) -> np.ndarray:
    """``size`` spots of ``pool`` without replacement, each stratum keeping its share (largest remainder)."""
    if strata is None:
        return np.sort(rng.choice(pool, size, replace=False))
    groups, inverse = np.unique(strata, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(groups))
    quota = counts * size / counts.sum()
    take = np.floor(quota).astype(np.int64)
    take[np.argsort(quota - take)[::-1][: size - take.sum()]] += 1
    chosen = [rng.choice(pool[inverse == g], take[g], replace=False) for g in range(len(groups)) if take[g]]
    return np.sort(np.concatenate(chosen))


# --------------------------------------------------------------------------------------------------
# train / validation split
# --------------------------------------------------------------------------------------------------


def validation_split(
    inputs: SpotInputs,
    coordinates: np.ndarray,
    how: Validation,
    train_size: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and validation spots, held apart so that validation neighbourhoods were not trained on.

    ``"section"`` holds out whole labelled sections (as many as make up about ``1 - train_size`` of the
    labelled spots, at least one, never all); ``"block"`` holds out square blocks of about
    ``BLOCK_SPACINGS`` neighbour spacings within every section (``NeighbourhoodDataModule`` then
    hides the validation spots from the training neighbourhoods); ``"random"`` draws spots at random
    (validation spots then have trained-on neighbours, so validation scores are optimistic). ``"auto"`` is
    ``"section"`` with at least three sections holding labelled spots of both classes, else ``"block"``.

    Returns ``(train_idx, val_idx, how)``, sorted indices and the rule actually used.
    """
    n = inputs.n_obs
    rng = np.random.default_rng(seed)
    if train_size >= 1.0:
        return np.arange(n), np.zeros(0, dtype=np.int64), "none"
    labelled = inputs.labels != UNLABELLED
    if how == "auto":
        both = [
            c
            for c in np.unique(inputs.codes)
            if np.unique(inputs.labels[(inputs.codes == c) & labelled]).size == 2
        ]
        how = "section" if len(both) >= 3 else "block"
    if how == "random":
        order = rng.permutation(n)
        n_train = max(round(train_size * n), 1)
        return np.sort(order[:n_train]), np.sort(order[n_train:]), how
    if how == "section":
        sections = [c for c in np.unique(inputs.codes) if labelled[inputs.codes == c].any()]
        if len(sections) < 2:
            logger.info(
                "Only one section has labels: validation holds out spatial blocks instead of a section."
            )
            return validation_split(inputs, coordinates, "block", train_size, seed)
        wanted = (1.0 - train_size) * labelled.sum()
        held: list[int] = []
        count = 0
        for code in rng.permutation(sections):
            if (held and count >= wanted) or len(held) == len(sections) - 1:
                break
            held.append(code)
            count += labelled[inputs.codes == code].sum()
        is_val = np.isin(inputs.codes, held)
        return np.flatnonzero(~is_val), np.flatnonzero(is_val), how
    if how != "block":
        raise ValueError(f"`validation` must be one of {VALIDATIONS}, got {how!r}.")
    is_val = np.zeros(n, dtype=bool)
    for code in np.unique(inputs.codes):
        rows = np.flatnonzero(inputs.codes == code)
        is_val[rows] = _held_out_blocks(
            coordinates[rows], inputs.neighbors[rows], rows, 1.0 - train_size, rng
        )
    return np.flatnonzero(~is_val), np.flatnonzero(is_val), how


def _held_out_blocks(
    xy: np.ndarray, neighbors: np.ndarray, rows: np.ndarray, share: float, rng
) -> np.ndarray:
    """Mask of one section's spots in randomly chosen square blocks covering about ``share`` of them."""
    if len(rows) < 2:
        return np.zeros(len(rows), dtype=bool)
    nearest = np.searchsorted(rows, neighbors[:, 1] if neighbors.shape[1] > 1 else neighbors[:, 0])
    spacing = np.median(np.linalg.norm(xy - xy[nearest], axis=1))
    side = BLOCK_SPACINGS * (spacing if spacing > 0 else 1.0)
    cell = np.floor((xy - xy.min(axis=0)) / side).astype(np.int64)
    block = cell[:, 0] * (cell[:, 1].max() + 1) + cell[:, 1]
    is_val = np.zeros(len(rows), dtype=bool)
    for b in rng.permutation(np.unique(block)):
        if is_val.mean() >= share:
            break
        is_val |= block == b
    if is_val.all():  # a section of a single block
        is_val[:] = False
    return is_val


class NeighbourhoodDataModule(pl.LightningDataModule):
    """Fixed train/validation split of spots, serving neighbourhood minibatches (several processes too).

    Training neighbourhoods never contain a validation spot (``hide_validation``): its slot is padding,
    so the network is not trained on the spots that validate it. Under a distributed strategy
    (``strategy="ddp"``/``"ddp_spawn"``), each process gets its own shard of every epoch from
    ``NeighbourhoodSampler``; the trainer must be built with ``use_distributed_sampler=False`` so
    that Lightning keeps this sampler.
    """

    def __init__(
        self,
        dataset: NeighbourhoodDataset,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        batch_size: int,
        *,
        spots_per_epoch: int | None = None,
        seed: int = 0,
        hide_validation: bool = True,
        thinning: _thinning.DepthThinning | None = None,
    ):
        super().__init__()
        self.dataset = dataset
        self.train_dataset = dataset
        hidden = None
        if hide_validation and len(val_idx):
            hidden = np.zeros(len(dataset), dtype=bool)
            hidden[np.asarray(val_idx, dtype=np.int64)] = True
        if hidden is not None or thinning is not None:
            self.train_dataset = NeighbourhoodDataset(
                dataset.inputs, dataset.use_image, hidden=hidden, thinning=thinning
            )
        self.train_idx = np.asarray(train_idx, dtype=np.int64)
        self.val_idx = np.asarray(val_idx, dtype=np.int64)
        self.test_idx = np.array([], dtype=np.int64)
        self.batch_size = batch_size
        self.spots_per_epoch = spots_per_epoch
        self.seed = seed
        inputs = dataset.inputs
        self._strata = inputs.codes * 3 + (inputs.labels - UNLABELLED)

    @property
    def n_train(self) -> int:
        return len(self.train_idx)

    @property
    def n_val(self) -> int:
        return len(self.val_idx)

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(
        self, indices: np.ndarray, shuffle: bool, dataset: NeighbourhoodDataset
    ) -> torch.utils.data.DataLoader:
        num_replicas, rank = self._replicas()
        sampler = NeighbourhoodSampler(
            indices,
            self.batch_size,
            shuffle=shuffle,
            strata=self._strata if shuffle else None,
            spots_per_epoch=self.spots_per_epoch if shuffle else None,
            seed=self.seed,
            num_replicas=num_replicas,
            rank=rank,
        )
        return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)

    def train_dataloader(self):
        return self._loader(self.train_idx, True, self.train_dataset)

    def val_dataloader(self):
        if self.n_val == 0:
            return []
        return self._loader(self.val_idx, False, self.dataset)


def inference_loader(dataset: NeighbourhoodDataset, order: np.ndarray, batch_size: int):
    """Batches of centre spots in ``order`` (e.g. :func:`~spacrd.model._inputs.locality_order`), for prediction."""
    for start in range(0, len(order), batch_size):
        centres = order[start : start + batch_size]
        yield centres, dataset[centres]
