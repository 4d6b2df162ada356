"""User-facing SpaCRD model."""

from __future__ import annotations

import logging
import signal
import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, ObsmField
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner
from scvi.utils import setup_anndata_dsp

from spacrd.module import SpaCRDModule
from spacrd.module._constants import UNLABELLED
from spacrd.tl import (
    adjust_to_prior,
    expression_neighbors,
    fit_calibration,
    gmm_threshold,
    propagate_over_neighbors,
    section_neighbors,
    smooth_over_neighbors,
)

from . import _io
from ._inputs import NeighbourhoodDataset, SectionScaling, SpotInputs, build_inputs, make_loader, select_genes
from ._labels import LABEL_CATEGORIES, cancer_labels
from ._spatialdata import prepare_table, registered_table, table_region_key, target_table
from ._training import NeighbourhoodDataModule, SpaCRDTrainingPlan
from ._validation import (
    check_coordinates,
    check_counts,
    check_image_features,
    check_not_view,
    check_obs_key,
    check_unique_var_names,
)

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)

#: Columns/keys that :meth:`SpaCRD.setup_anndata` adds to the AnnData it registers.
LABELS_COLUMN = "_spacrd_labels"
NEIGHBORS_KEY = "_spacrd_neighbors"
IMAGE_REGISTRY_KEY = "image"
NEIGHBORS_REGISTRY_KEY = "neighbors"
SPATIAL_REGISTRY_KEY = "spatial"
SINGLE_SECTION = "section"
#: Sections with fewer spots are left out of the highly-variable-gene selection (seurat_v3 cannot fit them).
MIN_HVG_SPOTS = 10
# weight of label propagation over each target section's expression graph in ``predict``
DEFAULT_PROPAGATION = 0.5
# fewer labelled validation spots than this: the calibration is fitted on all labelled training spots
MIN_CALIBRATION_SPOTS = 20
UNTRAINED_MESSAGE = (
    "This SpaCRD model is not trained (an interrupted `train()` leaves it untrained). Call `model.train()`, "
    "or load a trained model with `SpaCRD.load(dir_path)`."
)


class SpaCRD(BaseModelClass):
    """SpaCRD: cancer tissue region detection by fusing histology and spatial transcriptomics.

    Trained on labelled source sections, it gives every spot of a new section the probability of lying
    in cancer tissue (Xue et al., AAAI 2026). Raw counts are normalised inside the model; per-section
    feature scaling uses each section's own statistics, in training and at prediction.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, or a SpatialData whose table
        :meth:`setup_spatialdata` registered (the model attaches to that table).
    n_top_genes
        Number of highly variable genes (``seurat_v3`` on the source counts, batch-aware) used as the
        expression features. Sections of fewer than 10 spots are left out of this selection (all spots
        are pooled if no section has 10).
    genes
        Use these registered genes as the expression features instead of selecting ``n_top_genes``
        (e.g. the genes of a targeted panel you will predict on).
    section_scaling
        Per-section feature scaling: ``"zscore"`` (default), ``"minmax"`` (the paper's) or ``"none"``.
    **module_kwargs
        Passed to :class:`~spacrd.module.SpaCRDModule` (``n_hidden``, ``n_embed``, ``n_latent``...).

    Examples
    --------
    >>> spacrd.model.SpaCRD.setup_anndata(adata, layer="counts", labels_key="cancer", batch_key="section")
    >>> model = spacrd.model.SpaCRD(adata)
    >>> model.train()
    >>> model.predict(target)  # target.obs["ctr_prob"], target.obs["ctr"]

    """

    _module_cls = SpaCRDModule
    _training_plan_cls = SpaCRDTrainingPlan
    _train_runner_cls = TrainRunner

    def __init__(
        self,
        adata: AnnData | None = None,
        n_top_genes: int = 2000,
        genes: Sequence[str] | None = None,
        section_scaling: SectionScaling = "zscore",
        registry: dict | None = None,
        **module_kwargs,
    ):
        adata = registered_table(type(self), adata)
        super().__init__(adata, registry=registry)
        if section_scaling not in ("zscore", "minmax", "none"):
            raise ValueError(
                f"`section_scaling` must be 'zscore', 'minmax' or 'none', got {section_scaling!r}."
            )
        self.section_scaling_ = section_scaling
        if genes is not None:
            position = self.var_names.get_indexer(pd.Index(genes))
            if (position < 0).any():
                missing = pd.Index(genes)[position < 0][:5].tolist()
                raise ValueError(f"`genes` contains names that are not registered var_names, e.g. {missing}.")
            self.gene_columns_ = position
        elif adata is not None:
            counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            sections = self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel()
            # seurat_v3 fits a loess per section: a few spots make it fail, a single spot crashes the process.
            big = pd.Series(sections).map(pd.Series(sections).value_counts()).to_numpy() >= MIN_HVG_SPOTS
            rows, hvg_sections = (big, sections[big]) if big.any() else (slice(None), np.zeros_like(sections))
            try:
                self.gene_columns_ = select_genes(
                    counts[rows], self.adata.var_names, hvg_sections, n_top_genes
                )
            except ValueError as err:
                raise ValueError(
                    f"Selecting {n_top_genes} highly variable genes (seurat_v3) failed: {err!s}. Sections of fewer "
                    f"than {MIN_HVG_SPOTS} spots are left out of the selection; with few spots in all, pass the "
                    "feature genes as `genes=`."
                ) from err
            if self.gene_columns_.size == 0:
                raise ValueError("No gene has a non-zero count in the registered data; check `layer`.")
        else:
            raise ValueError("Without `adata`, pass the feature `genes` explicitly.")
        n_image = self.registry["field_registries"].get(IMAGE_REGISTRY_KEY, {}).get("state_registry", {})
        n_image_features = len(n_image.get("column_names", [])) if n_image else 0
        self.module = self._module_cls(
            n_genes=len(self.gene_columns_), n_image_features=n_image_features, **module_kwargs
        )
        self._model_summary_string = (
            f"SpaCRD model with {len(self.gene_columns_)} genes, "
            f"{n_image_features or 'no'} histology features, {self.setup_args['n_neighbors']} neighbours."
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ set-up
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        image_key: str | None = None,
        spatial_key: str = "spatial",
        n_neighbors: int = 7,
        cancer_categories: Sequence[str] | None = None,
        **kwargs,
    ):
        """%(summary)s.

        Besides scvi-tools' registry entries (``uns["_scvi_uuid"]``, ``uns["_scvi_manager_uuid"]``,
        ``obs["_scvi_batch"]``, ``obs["_scvi_labels"]``), this writes ``obs["_spacrd_labels"]`` (the
        label mapped to non-cancer / cancer / unlabelled) and ``obsm["_spacrd_neighbors"]`` (``(n, k)``
        int, each spot's nearest spots in its own section, itself first, ``-1`` where a section has
        fewer than ``k`` spots). Nothing else in ``adata`` changes. A view (``adata[mask]``) is refused,
        since writing into it would silently make it a copy: pass ``adata[mask].copy()``. Gene names must
        be unique. A backed ``adata.X`` is refused; counts in an in-memory ``layer`` of a backed AnnData
        are fine.

        Parameters
        ----------
        %(param_adata)s
        layer
            Layer holding raw counts; ``None`` uses ``adata.X``. Negative, NaN or infinite values are
            errors; non-integer values only warn (ambient-corrected counts are non-integer and work),
            though normalised or log-transformed data give a poorer model.
        labels_key
            ``obs`` column with the cancer label: bool, 0/1, or categories named by
            ``cancer_categories``. Missing values mark unlabelled spots. ``None``: no labels (a model
            set up like this cannot be trained, but the set-up validates a target).
        batch_key
            ``obs`` column with the section of each spot. Neighbours and feature scaling are per
            section. ``None``: all spots are one section.
        image_key
            ``obsm`` key of the per-spot histology embedding (e.g. from
            :func:`spacrd.pp.image_features`); rows of NaN mark spots without an image. ``None``:
            expression-only model.
        spatial_key
            ``obsm`` key of the spot coordinates (one unit per section, e.g. pixels).
        n_neighbors
            Neighbourhood size ``k``, the spot itself included.
        cancer_categories
            Values of ``labels_key`` that mean cancer (e.g. ``["invasive cancer", "cancer in situ"]``).

        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_not_view(adata)
        check_counts(adata, layer)
        check_unique_var_names(adata)
        coordinates = check_coordinates(adata, spatial_key)
        if batch_key is not None:
            check_obs_key(adata, batch_key, "batch_key")
        if image_key is not None:
            check_image_features(adata, image_key)
        if not isinstance(n_neighbors, int | np.integer) or n_neighbors < 1:
            raise ValueError(f"`n_neighbors` must be a positive integer, got {n_neighbors!r}.")

        if labels_key is not None:
            check_obs_key(adata, labels_key, "labels_key")
            labels = cancer_labels(adata.obs[labels_key], cancer_categories)
        else:
            labels = pd.Categorical.from_codes(np.full(adata.n_obs, 2), categories=list(LABEL_CATEGORIES))
        sections = adata.obs[batch_key].to_numpy() if batch_key is not None else None
        neighbors, padding = section_neighbors(coordinates, sections, n_neighbors)
        neighbors[padding] = -1

        adata.obs[LABELS_COLUMN] = labels
        adata.obsm[NEIGHBORS_KEY] = neighbors
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, LABELS_COLUMN),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            ObsmField(SPATIAL_REGISTRY_KEY, spatial_key),
            ObsmField(NEIGHBORS_REGISTRY_KEY, NEIGHBORS_KEY),
        ]
        if image_key is not None:
            fields.append(ObsmField(IMAGE_REGISTRY_KEY, image_key))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def setup_spatialdata(
        cls,
        sdata: SpatialData,
        table_key: str = "table",
        image_key: str | Mapping[str, str] | None = None,
        shapes_key: str | Sequence[str] | None = None,
        layer: str | None = None,
        labels_key: str | None = None,
        batch_key: str | None = None,
        histology_key: str = "X_histology",
        backbone: str | torch.nn.Module = "histology_stats",
        n_neighbors: int = 7,
        cancer_categories: Sequence[str] | None = None,
        **image_feature_kwargs,
    ):
        """Set up the spot table of a SpatialData object (counts linked to spot shapes, an H&E image).

        ``sdata.tables[table_key]`` gets the spot centres under ``obsm["spatial"]`` (pixels of the
        image's full-resolution level, from the shapes and the elements' transformations) and, with
        ``image_key``, the per-spot histology embeddings of :func:`spacrd.pp.image_features` under
        ``obsm[histology_key]`` and ``uns[histology_key]``; either is kept as it is when already there.
        The table is then registered with :meth:`setup_anndata`, which writes its own entries (listed
        there). Afterwards ``SpaCRD(sdata)`` trains on this table and :meth:`predict` writes into it.

        Parameters
        ----------
        sdata
            SpatialData whose table annotates circle shapes through ``region``, ``region_key`` and
            ``instance_key``, as spatialdata-io's Visium reader writes.
        table_key
            The table of raw spot counts (and labels).
        image_key
            H&E image element under the spots, or ``{shapes_key: image_key}`` for several sections
            (sections left out have no image). ``None``: an expression-only model.
        shapes_key
            Spot shapes the table annotates; ``None``: every element named in its ``region_key`` column.
        layer, labels_key, n_neighbors, cancer_categories
            As for :meth:`setup_anndata`; columns and layers of the table.
        batch_key
            Column of ``table.obs`` with each spot's section; ``None``: the table's ``region_key``
            column, one section per shapes element.
        histology_key
            ``obsm`` key of the histology embeddings.
        backbone, **image_feature_kwargs
            Passed to :func:`spacrd.pp.image_features` when the embeddings are computed.

        """
        table = prepare_table(
            sdata,
            table_key,
            shapes_key,
            image_key,
            histology_key=histology_key,
            backbone=backbone,
            **image_feature_kwargs,
        )
        cls.setup_anndata(
            table,
            layer=layer,
            labels_key=labels_key,
            batch_key=table_region_key(table) if batch_key is None else batch_key,
            image_key=histology_key if image_key is not None else None,
            spatial_key="spatial",
            n_neighbors=n_neighbors,
            cancer_categories=cancer_categories,
        )

    @property
    def setup_args(self) -> dict:
        """Arguments given to :meth:`setup_anndata` (layer, keys, ``n_neighbors``...)."""
        return self.registry["setup_args"]

    @property
    def var_names(self) -> pd.Index:
        """All genes registered at set-up (the gene universe for library sizes)."""
        return pd.Index(
            self.registry["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]["column_names"]
        )

    @property
    def gene_names(self) -> pd.Index:
        """Genes used as expression features, in model order."""
        return self.var_names[self.gene_columns_]

    # ------------------------------------------------------------------ inputs
    def _source_inputs(self) -> SpotInputs:
        """Preprocessed inputs of the registered AnnData."""
        manager = self.adata_manager
        label_codes = manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).ravel()
        mapping = manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)["categorical_mapping"]
        label_names = np.asarray(mapping)[label_codes]
        labels = np.select([label_names == "non-cancer", label_names == "cancer"], [0, 1], default=UNLABELLED)
        neighbors = np.asarray(manager.get_from_registry(NEIGHBORS_REGISTRY_KEY))
        image = None
        if IMAGE_REGISTRY_KEY in manager.data_registry:
            image = np.asarray(manager.get_from_registry(IMAGE_REGISTRY_KEY), dtype=np.float32)
        return self._build_inputs(
            manager.get_from_registry(REGISTRY_KEYS.X_KEY),
            manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY).ravel(),
            neighbors,
            labels,
            image,
        )

    def _build_inputs(self, counts, sections, neighbors, labels, image) -> SpotInputs:
        if image is not None and self.is_trained_ and getattr(self, "n_image_training_spots_", 0) < 2:
            # An image encoder that never saw an image would only add noise.
            image = np.full_like(image, np.nan, dtype=np.float32)
        padding = neighbors < 0
        neighbors = np.where(padding, np.arange(len(neighbors))[:, None], neighbors)
        return build_inputs(
            counts,
            self.gene_columns_,
            np.asarray(sections),
            neighbors,
            padding,
            labels,
            image,
            self.section_scaling_,
        )

    def _target_inputs(self, adata: AnnData, min_gene_overlap: float) -> SpotInputs:
        """Preprocessed inputs of an unregistered target: genes aligned by name, own neighbours and statistics."""
        args = self.setup_args
        counts = check_counts(adata, args["layer"])
        coordinates = check_coordinates(adata, args["spatial_key"])
        if adata.var_names.has_duplicates:
            dups = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"The target has duplicated gene names (e.g. {dups}); make them unique with "
                "`adata.var_names_make_unique()` or aggregate them before predicting."
            )
        position = adata.var_names.get_indexer(self.var_names)
        present = position >= 0
        features_present = present[self.gene_columns_]
        overlap = features_present.mean()
        if overlap < min_gene_overlap:
            raise ValueError(
                f"Only {features_present.sum()} of the model's {features_present.size} genes "
                f"({overlap:.0%}) are in the target, below `min_gene_overlap={min_gene_overlap}`. Check that "
                "var_names use the same gene identifiers (symbols vs Ensembl IDs) as the training data."
            )
        if not features_present.all():
            warnings.warn(
                f"{(~features_present).sum()} of the model's {features_present.size} genes are missing in the "
                "target; they are filled with zeros.",
                UserWarning,
                stacklevel=3,
            )
        counts = sparse.csr_matrix(counts)[:, np.where(present, position, 0)]
        counts = counts @ sparse.diags(present.astype(np.float32))

        batch_key = args["batch_key"]
        if batch_key is not None and batch_key in adata.obs:
            sections = adata.obs[batch_key].to_numpy()
        else:
            sections = np.full(adata.n_obs, SINGLE_SECTION, dtype=object)
        if pd.isna(sections).any():
            raise ValueError(f"obs[{batch_key!r}] has missing values; every spot needs its section.")
        neighbors, padding = section_neighbors(coordinates, sections, args["n_neighbors"])
        neighbors[padding] = -1

        image = None
        image_key = args["image_key"]
        if self.module.image_encoder is not None and image_key is not None and image_key in adata.obsm:
            image = check_image_features(adata, image_key)
            if image.shape[1] != self.module.n_image_features:
                raise ValueError(
                    f"obsm[{image_key!r}] has {image.shape[1]} features but the model was trained with "
                    f"{self.module.n_image_features}; compute them with the same backbone."
                )
        elif self.module.image_encoder is not None:
            warnings.warn(
                f"The target has no obsm[{image_key!r}]: every spot is predicted from expression alone, as "
                "spots without an image are. Compute the histology embeddings with "
                f"`spacrd.pp.image_features(adata, key_added={image_key!r})` and the training backbone to use them.",
                UserWarning,
                stacklevel=4,
            )
            image = np.full((adata.n_obs, self.module.n_image_features), np.nan, dtype=np.float32)
        return self._build_inputs(counts, sections, neighbors, None, image)

    def _inputs(self, adata: AnnData | None, min_gene_overlap: float = 0.5) -> SpotInputs:
        if adata is None or adata is self.adata:
            if self.adata is None:
                raise ValueError("This model has no registered AnnData; pass `adata` explicitly.")
            return self._source_inputs()
        if not isinstance(adata, AnnData):
            raise TypeError(f"Expected an AnnData, got {type(adata).__name__}.")
        return self._target_inputs(adata, min_gene_overlap)

    def _dataset(self, inputs: SpotInputs) -> NeighbourhoodDataset:
        return NeighbourhoodDataset(inputs, use_image=self.module.image_encoder is not None)

    # ---------------------------------------------------------------- training
    def train(
        self,
        align_epochs: int = 10,
        fuse_epochs: int = 10,
        classify_epochs: int = 20,
        align_lr: float = 1e-3,
        fuse_lr: float = 1e-3,
        classify_lr: float = 1e-3,
        weight_decay: float = 1e-3,
        batch_size: int = 256,
        train_size: float = 0.9,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        early_stopping: bool = False,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the three stages in turn, each through scvi-tools' Lightning trainer.

        Parameters
        ----------
        align_epochs, fuse_epochs, classify_epochs
            Epochs of stage I (contrastive alignment; skipped without images), stage II (fusion VAE)
            and stage III (classifier). ``0`` skips a stage.
        align_lr, fuse_lr, classify_lr
            Adam learning rates of the three stages.
        weight_decay
            Adam weight decay.
        batch_size
            Spots per minibatch (each with its ``k`` neighbours).
        train_size
            Fraction of spots used for training; the rest is the validation set whose losses are
            logged (and monitored with ``early_stopping``). ``1.0`` disables validation.
        accelerator, devices
            Passed to :class:`scvi.train.Trainer`.
        early_stopping
            Stop each stage when ``validation_loss`` stops improving (``early_stopping_patience`` and
            friends go through ``trainer_kwargs``).
        plan_kwargs
            Extra arguments of :class:`~spacrd.model.SpaCRDTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer`.

        Notes
        -----
        ``model.history`` holds each stage's epoch losses under ``stage1_*``, ``stage2_*`` and
        ``stage3_*`` keys.

        After the last stage, ``model.calibration_`` (``{"scale", "shift", "n_spots"}``) is fitted on the
        labelled validation spots (on all labelled spots when there are fewer than 20 or only one
        class among them, e.g. with ``train_size=1.0``): :meth:`predict` maps its logits through
        ``scale * logit + shift`` so that the probabilities are calibrated on the source
        (:func:`spacrd.tl.fit_calibration`). ``model.source_cancer_share_`` is the share of cancer among
        the labelled training spots, the prior that ``predict(prior_shift=True)`` adapts from.

        Interrupting training (Ctrl+C, or :class:`KeyboardInterrupt` raised in a callback passed as
        ``callbacks=[...]``) stops the running stage and raises :class:`KeyboardInterrupt` naming it.
        Lightning's own handling, ``sys.exit(1)`` with SIGINT ignored from then on, is undone: the
        Python session and Ctrl+C keep working. The model object stays usable: ``history`` keeps the
        epochs logged so far, the model counts as untrained (``predict`` raises a ``RuntimeError``
        saying so), and calling ``train()`` again runs every stage, starting from the current weights.

        """
        if self.adata is None:
            raise ValueError("This model has no registered AnnData to train on.")
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"`train_size` must be in (0, 1], got {train_size}.")
        inputs = self._source_inputs()
        labelled = inputs.labels[inputs.labels != UNLABELLED]
        if np.unique(labelled).size < 2:
            raise ValueError(
                f"Training needs labelled spots of both classes; found {np.bincount(labelled, minlength=2)[0]} "
                f"non-cancer and {np.bincount(labelled, minlength=2)[1] if labelled.size else 0} cancer spots. "
                "Check `labels_key`/`cancer_categories` in setup_anndata."
            )
        self.n_image_training_spots_ = 0 if inputs.has_image is None else int(inputs.has_image.sum())
        self.source_cancer_share_ = float(labelled.mean())
        has_images = self.n_image_training_spots_ >= 2
        if self.module.image_encoder is not None and not has_images:
            warnings.warn(
                "No training spot has a histology embedding, so the image branch cannot be learnt; the model "
                "predicts from expression alone, also on targets with images.",
                UserWarning,
                stacklevel=2,
            )
        if not has_images and align_epochs:
            logger.info("No histology embeddings registered: skipping stage I (modality alignment).")
            align_epochs = 0

        rng = np.random.default_rng(settings.seed)
        order = rng.permutation(inputs.n_obs)
        n_train = max(round(train_size * inputs.n_obs), 1)
        datamodule = NeighbourhoodDataModule(
            self._dataset(inputs), np.sort(order[:n_train]), np.sort(order[n_train:]), batch_size
        )
        trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
        if datamodule.n_val == 0:
            early_stopping = False
        stages = (
            ("align", align_epochs, align_lr),
            ("fuse", fuse_epochs, fuse_lr),
            ("classify", classify_epochs, classify_lr),
        )
        history: dict[str, pd.DataFrame] = {}
        self.is_trained_ = False
        for number, (stage, epochs, lr) in enumerate(stages, start=1):
            if epochs <= 0:
                continue
            plan = self._training_plan_cls(
                self.module, stage=stage, lr=lr, weight_decay=weight_decay, **(plan_kwargs or {})
            )
            runner = self._train_runner_cls(
                self,
                training_plan=plan,
                data_splitter=datamodule,
                max_epochs=epochs,
                accelerator=accelerator,
                devices=devices,
                early_stopping=early_stopping,
                check_val_every_n_epoch=1,
                **trainer_kwargs,
            )
            # Each stage starts a fresh logger; keep its curves under a stage prefix.
            self.is_trained_, self.history_ = False, None
            # The runner leaves the module in eval mode after each stage; Lightning keeps that mode.
            self.module.train()
            sigint, interrupted = signal.getsignal(signal.SIGINT), False
            try:
                runner()
            except SystemExit as err:
                # Lightning turns Ctrl+C into sys.exit(1), which would end a script's caller too.
                if not isinstance(err.__context__, KeyboardInterrupt):
                    raise
                interrupted = True
            finally:
                for key, frame in (self.history_ or {}).items():
                    history[f"stage{number}_{key}"] = frame.rename(columns={key: f"stage{number}_{key}"})
                self.history_ = history
            if interrupted or runner.trainer.interrupted:
                # Lightning also ignores SIGINT from then on; give Ctrl+C back to the session.
                if sigint is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, sigint)
                self.module.eval()
                raise KeyboardInterrupt(
                    f"Training interrupted in stage {number} ({stage}); the model is not trained. Call "
                    "`model.train()` again: it runs every stage, starting from the current weights."
                )
        self.module.eval()
        self.is_trained_ = True
        self.calibration_ = self._fit_calibration(inputs, datamodule.val_idx)

    def _fit_calibration(self, inputs: SpotInputs, val_idx: np.ndarray) -> dict[str, float]:
        """Logit scale and shift fitted on the labelled validation spots (all labelled spots without any).

        The logits go through the label-free steps of :meth:`predict` with their defaults first, so the
        calibration applies to what ``predict`` computes.
        """
        logits = self._label_free_logits(inputs, None, DEFAULT_PROPAGATION, True)
        rows = np.asarray(val_idx, dtype=np.int64)
        rows = rows[inputs.labels[rows] != UNLABELLED]
        if rows.size < MIN_CALIBRATION_SPOTS or np.unique(inputs.labels[rows]).size < 2:
            rows = np.flatnonzero(inputs.labels != UNLABELLED)
        scale, shift = fit_calibration(logits[rows], inputs.labels[rows])
        return {"scale": scale, "shift": shift, "n_spots": int(rows.size)}

    # -------------------------------------------------------------- prediction
    def _label_free_logits(
        self,
        inputs: SpotInputs,
        batch_size: int | None,
        expression_propagation: float,
        spatial_smoothing: bool,
    ) -> np.ndarray:
        """Network logits ``(n,)`` after propagation over expression neighbours and spatial smoothing."""
        logits = self._forward_all(inputs, batch_size)["logits"]
        if expression_propagation:
            graph = expression_neighbors(inputs.genes, inputs.sections)
            logits = propagate_over_neighbors(logits, graph, alpha=expression_propagation)
        if spatial_smoothing:
            logits = smooth_over_neighbors(logits, inputs.neighbors, inputs.padding)
        return logits

    @torch.inference_mode()
    def _forward_all(self, inputs: SpotInputs, batch_size: int | None) -> dict[str, np.ndarray]:
        self.module.eval()
        loader = make_loader(
            self._dataset(inputs), np.arange(inputs.n_obs), batch_size or settings.batch_size, False
        )
        logits, latent = [], []
        for batch in loader:
            outputs = self.module.inference(**self.module._get_inference_input(batch))
            logits.append(outputs["logits"].cpu())
            latent.append(outputs["qz_mean"].cpu())
        return {"logits": torch.cat(logits).numpy(), "latent": torch.cat(latent).numpy()}

    def predict(
        self,
        adata: AnnData | None = None,
        batch_size: int | None = None,
        *,
        prob_key: str = "ctr_prob",
        call_key: str = "ctr",
        uns_key: str = "spacrd",
        threshold: float | Literal["gmm"] | None = None,
        min_gene_overlap: float = 0.5,
        spatial_smoothing: bool = True,
        expression_propagation: float = DEFAULT_PROPAGATION,
        prior_shift: bool = True,
        table_key: str = "table",
        image_key: str | Mapping[str, str] | None = None,
    ) -> np.ndarray:
        """Cancer probability of every spot of ``adata``, with a label-free cancer / non-cancer call.

        The target needs no labels. Its genes are matched to the model's by name (missing genes are
        filled with zeros and counted in a warning), its neighbour sets and per-section statistics are
        computed from the target itself (sections from the set-up ``batch_key`` column if present).

        Parameters
        ----------
        adata
            Target AnnData with raw counts in the set-up ``layer`` (or ``X``) and coordinates in
            ``obsm[spatial_key]``; ``None`` predicts the registered AnnData. A view gets the results
            after becoming a copy (with a warning); the AnnData it was sliced from is not changed. An
            image model predicts a target without ``obsm[image_key]`` from expression alone (with a
            warning), as for spots whose embedding row is NaN. A SpatialData is predicted through its
            table (see ``table_key``).
        batch_size
            Spots per minibatch; default ``scvi.settings.batch_size``.
        prob_key
            ``obs`` column written with the probabilities (float in ``[0, 1]``).
        call_key
            ``obs`` column written with the call (categorical ``"non-cancer"``/``"cancer"``).
        uns_key
            ``uns`` key written with ``{"threshold", "threshold_method", "cancer_share", "prob_key",
            "call_key", "spatial_smoothing", "expression_propagation", "prior_shift", "version"}``;
            ``cancer_share`` maps each section to its estimated share of cancer spots (empty without
            ``prior_shift``).
        threshold
            Probability threshold of the call. ``None`` (default) calls cancer where the probability is
            at least one half, which is a label-free Bayes call once ``prior_shift`` has adapted the
            probabilities to the section's own cancer share; ``"gmm"`` takes the crossing of a
            two-component Gaussian mixture on the logits (:func:`spacrd.tl.gmm_threshold`); a float is
            used as it is.
        min_gene_overlap
            Smallest fraction of the model's genes that must be in the target.
        spatial_smoothing
            Average each spot's logit over its neighbourhood in the target (the same ``k`` spatial
            neighbours the model attends to). Cancer regions are spatially contiguous.
        expression_propagation
            Weight ``alpha`` of label propagation of the logits over each section's own expression
            neighbour graph (10 nearest spots on 10 principal components of the model's preprocessed
            genes; :func:`spacrd.tl.propagate_over_neighbors`), applied before the spatial smoothing.
            Spots of one tumour clone resemble each other more than they resemble the training
            patients, so their scores are pulled together. ``0`` turns it off.
        prior_shift
            Re-weight the probabilities to each target section's cancer share, estimated by EM from the
            probabilities themselves (:func:`spacrd.tl.adjust_to_prior`). Without it the probabilities
            assume the training sections' share, and the call over-calls sections with little tumour.
            Either way the logits are first calibrated with the scale and shift that :meth:`train`
            fitted on the source's validation spots (:func:`spacrd.tl.fit_calibration`), since the EM
            assumes calibrated probabilities.
        table_key, image_key
            For a SpatialData ``adata``: the results go into ``sdata.tables[table_key]``, which gets
            spot centres and, for a model with histology whose table lacks the embeddings, the
            ``histology_stats`` embeddings of ``image_key`` (default: the only image), as in
            :meth:`setup_spatialdata`.

        Returns
        -------
        ``(n_spots,)`` float array of cancer probabilities.

        """
        self._check_if_trained(warn=False, message=UNTRAINED_MESSAGE)
        adata = target_table(self, adata, table_key, image_key)
        target = self.adata if adata is None else adata
        if isinstance(threshold, str):
            if threshold != "gmm":
                raise ValueError(f"`threshold` must be None, 'gmm' or a probability, got {threshold!r}.")
        elif threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"`threshold` must be a probability in [0, 1], got {threshold}.")
        inputs = self._inputs(adata, min_gene_overlap)
        logits = self._label_free_logits(inputs, batch_size, expression_propagation, spatial_smoothing)
        calibration = getattr(self, "calibration_", None) or {"scale": 1.0, "shift": 0.0}
        logits = calibration["scale"] * logits.astype(np.float64) + calibration["shift"]
        probabilities = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        cancer_share: dict[str, float] = {}
        if prior_shift:
            source_share = getattr(self, "source_cancer_share_", None)
            if source_share is None:
                raise ValueError(
                    "This model does not know the cancer share of its training spots (it was saved by an "
                    "older spacrd); predict with `prior_shift=False`, or train it again."
                )
            probabilities, cancer_share = adjust_to_prior(probabilities, source_share, inputs.sections)
        if threshold is None:
            method, threshold = "bayes", 0.5
        elif threshold == "gmm":
            method, threshold = "gmm", gmm_threshold(probabilities)
        else:
            method = "fixed"
        calls = np.where(probabilities >= threshold, "cancer", "non-cancer")
        if target.is_view:
            warnings.warn(
                "adata is a view (e.g. `adata[mask]`): the results are written into it, which makes it a copy; "
                "the AnnData it was sliced from is not changed. Predict on the full AnnData, or write the "
                "returned probabilities into it yourself.",
                UserWarning,
                stacklevel=2,
            )
            target._init_as_actual(target.copy())  # as scvi-tools' copy_if_view; avoids anndata's own warning
        target.obs[prob_key] = probabilities
        target.obs[call_key] = pd.Categorical(calls, categories=["non-cancer", "cancer"])
        target.uns[uns_key] = {
            "threshold": float(threshold),
            "threshold_method": method,
            "cancer_share": cancer_share,
            "spatial_smoothing": spatial_smoothing,
            "expression_propagation": float(expression_propagation),
            "prior_shift": prior_shift,
            "prob_key": prob_key,
            "call_key": call_key,
            "version": _io.package_version(),
        }
        return probabilities

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        batch_size: int | None = None,
        *,
        table_key: str = "table",
        image_key: str | Mapping[str, str] | None = None,
    ) -> np.ndarray:
        """Posterior mean of the fused VAE latent, ``(n_spots, n_latent)``; arguments as in :meth:`predict`."""
        self._check_if_trained(warn=False, message=UNTRAINED_MESSAGE)
        adata = target_table(self, adata, table_key, image_key)
        return self._forward_all(self._inputs(adata), batch_size)["latent"]

    # --------------------------------------------------------------- save/load
    def save(
        self, dir_path: str, overwrite: bool = False, save_anndata: bool = False, **anndata_write_kwargs
    ):
        """Save the model to ``dir_path``: weights (``model.pt``, tensors only) and ``model.json``.

        Loading never unpickles code: weights are read with ``torch.load(weights_only=True)`` and
        everything else is JSON. ``save_anndata`` also writes the registered AnnData as ``adata.h5ad``.
        """
        _io.save_model(self, dir_path, overwrite, save_anndata, **anndata_write_kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
    ) -> SpaCRD:
        """Load a model saved by :meth:`save`.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Optional AnnData to attach (set up with the saved arguments; its genes must equal the saved
            ones). Without it the model predicts on any target passed to :meth:`predict`.
        accelerator, device
            Where to place the weights.

        """
        return _io.load_model(cls, dir_path, adata, accelerator, device)

    def __repr__(self) -> str:
        return f"{self._model_summary_string} Trained: {self.is_trained_}."
