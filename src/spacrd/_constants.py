"""Every key spacrd reads or writes in an AnnData, the label categories and the package-wide defaults.

Modules import these names instead of writing the strings, so that renaming a key is a one-line change
and ``git grep`` finds each key in one place. Users pass other keys through the functions' ``*_key``
arguments; the values here are only the defaults.
"""

from __future__ import annotations

from typing import NamedTuple


class _ObsKeys(NamedTuple):
    """``adata.obs`` columns."""

    #: Cancer probability per spot, float in ``[0, 1]`` (written by :meth:`~spacrd.model.SpaCRD.predict`).
    PROB: str = "ctr_prob"
    #: Label-free call, categorical :data:`CALL_CATEGORIES`.
    CALL: str = "ctr"
    #: Per-spot uncertainty of the probability.
    UNCERTAINTY: str = "ctr_uncertainty"
    #: Default section column of the loaders (:func:`spacrd.datasets.her2st`).
    SECTION: str = "section"


class _ObsmKeys(NamedTuple):
    """``adata.obsm`` entries."""

    #: Spot centres ``(n, 2)``, the scanpy/squidpy convention.
    SPATIAL: str = "spatial"
    #: Per-spot histology embedding ``(n, d)`` of :func:`spacrd.pp.image_features`.
    HISTOLOGY: str = "X_histology"
    #: Fixed-k spatial neighbour indices ``(n, k)`` of :func:`spacrd.pp.spatial_neighbors`.
    NEIGHBORS: str = "spacrd_neighbors"


class _UnsKeys(NamedTuple):
    """``adata.uns`` entries."""

    #: What :meth:`~spacrd.model.SpaCRD.predict` did: threshold, keys it wrote, per-section estimates.
    PREDICTION: str = "spacrd"
    #: The squidpy/scanpy image container, ``uns["spatial"][library_id]``.
    SPATIAL: str = "spatial"
    #: Provenance of :func:`spacrd.pp.labels_from_annotations`, one record per section.
    ANNOTATIONS: str = "spacrd_annotations"
    #: Appended to :func:`spacrd.tl.call`'s ``key_added``: how that call was made, ``uns["ctr_call"]``.
    CALL_SUFFIX: str = "_call"


class _ScanpyImageKeys(NamedTuple):
    """The scanpy/squidpy image container ``uns["spatial"][library_id]`` that spacrd reads."""

    IMAGES: str = "images"
    SCALEFACTORS: str = "scalefactors"
    METADATA: str = "metadata"
    #: Path of the full-resolution image file, in ``metadata`` (the resolution of ``obsm["spatial"]``).
    FULLRES_PATH: str = "fullres_image_path"
    #: Spot diameter in full-resolution pixels, in ``scalefactors``.
    SPOT_DIAMETER: str = "spot_diameter_fullres"
    #: Default image of ``images`` to crop from and draw on.
    HIRES: str = "hires"


class _SpatialDataKeys(NamedTuple):
    """Names in a :class:`~spatialdata.SpatialData` object that spacrd reads by default."""

    #: Default table of spots (spatialdata-io's Visium and Xenium readers call it so).
    TABLE: str = "table"
    #: Column of circle shapes holding the radius, in the shapes' own units.
    RADIUS: str = "radius"


class _RegistryKeys(NamedTuple):
    """Names of the AnnDataManager fields SpaCRD registers, beyond scvi-tools' ``X``/``batch``."""

    IMAGE: str = "image"
    NEIGHBORS: str = "neighbors"
    SPATIAL: str = "spatial"
    LABELS_SOURCE: str = "labels_source"


class _TensorKeys(NamedTuple):
    """Keys of a minibatch, from the data loader to the module.

    A minibatch of ``B`` neighbourhoods carries the features of the ``U`` distinct spots they contain
    once, and each neighbourhood as rows into them, so that a spot shared by several neighbourhoods
    is read (and, at inference, encoded) once.
    """

    #: ``(U, n_genes)`` float32 preprocessed expression of the batch's distinct spots.
    SPOT_GENES: str = "spot_genes"
    #: ``(U, n_image_features)`` float32 scaled histology features of those spots.
    SPOT_IMAGE: str = "spot_image"
    #: ``(U,)`` bool, true where the spot has a histology embedding.
    SPOT_HAS_IMAGE: str = "spot_has_image"
    #: ``(B, k)`` int64 rows into the spot arrays, the centre spot first.
    NEIGHBORS: str = "neighbors"
    #: ``(B, k)`` bool, true for padded neighbour slots (sections of fewer than ``k`` spots).
    PADDING_MASK: str = "padding_mask"
    #: ``(B,)`` int64 label of the centre spot: 0, 1 or :data:`UNLABELLED`.
    LABELS: str = "labels"


class _ModuleKeys(NamedTuple):
    """Keys of the dict that :meth:`spacrd.module.SpaCRDModule.inference` returns."""

    LOGITS: str = "logits"
    MEMBER_LOGITS: str = "member_logits"
    QZ_MEAN: str = "qz_mean"
    QZ_LOG_VAR: str = "qz_log_var"
    Z: str = "z"
    H: str = "h"
    GENE_EMB: str = "gene_emb"
    IMAGE_EMB: str = "image_emb"
    HAS_IMAGE: str = "has_image"
    H_REC: str = "h_rec"


OBS_KEYS = _ObsKeys()
OBSM_KEYS = _ObsmKeys()
UNS_KEYS = _UnsKeys()
SCANPY_IMAGE_KEYS = _ScanpyImageKeys()
SPATIALDATA_KEYS = _SpatialDataKeys()
REGISTRY_KEYS = _RegistryKeys()
MODULE_KEYS = _ModuleKeys()
TENSOR_KEYS = _TensorKeys()

#: Categories of the label-free call in ``obs[OBS_KEYS.CALL]``, in code order.
NON_CANCER, CANCER = "non-cancer", "cancer"
CALL_CATEGORIES: tuple[str, str] = (NON_CANCER, CANCER)
#: Label codes inside the model: 0 non-cancer, 1 cancer, and this for spots without a label.
UNLABELLED = -1

#: Default ``library_key``: the ``obs`` column naming each spot's section (library).
DEFAULT_LIBRARY_KEY = OBS_KEYS.SECTION
#: The default image backbone of :func:`spacrd.pp.image_features` (hand-crafted, no downloaded weights).
DEFAULT_BACKBONE = "histology_stats"
#: Default neighbourhood size ``k`` (the spot itself included), as in the SpaCRD paper.
DEFAULT_N_NEIGHBORS = 7
#: Per-section expression scalings of ``SpaCRD(section_scaling=...)``: z-scores (default), min-max
#: (the paper's) or none (log-normalised only).
SECTION_SCALINGS: tuple[str, ...] = ("zscore", "minmax", "none")
