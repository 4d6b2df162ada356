"""User-facing SpaCRD model."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, ObsmField
from scvi.model.base import BaseModelClass
from scvi.utils import setup_anndata_dsp

from spacrd._constants import DEFAULT_BACKBONE, OBSM_KEYS, REGISTRY_KEYS
from spacrd._logging import quiet_third_party
from spacrd._validation import (
    check_choice,
    check_coordinates,
    check_counts,
    check_image_features,
    check_n_neighbors,
    check_not_view,
    check_number,
    check_obs_key,
    check_unique_var_names,
)
from spacrd.module import SpaCRDModule
from spacrd.pp._genes import highly_variable_columns
from spacrd.pp._neighbors import ensure_spatial_neighbors

from . import _io, _pretrained
from ._adata_inputs import label_summary, source_inputs, target_inputs
from ._datamodule import NeighbourhoodDataset
from ._fitted import FittedState
from ._fitting import FittedStateMixin
from ._inputs import SECTION_SCALINGS, SectionScaling, SpotInputs
from ._labels import label_codes
from ._prediction import PredictionMixin
from ._runner import StagedTrainRunner
from ._spatialdata import prepare_table, registered_table, table_region_key
from ._spec import InputSpec
from ._training import SpaCRDTrainingPlan, StagedTrainingMixin

if TYPE_CHECKING:
    from spatialdata import SpatialData

logger = logging.getLogger(__name__)


class SpaCRD(PredictionMixin, FittedStateMixin, StagedTrainingMixin, BaseModelClass):
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
        Number of highly variable genes (``seurat_v3`` on the source counts, batch-aware;
        :func:`spacrd.pp.select_genes`) used as the expression features.
    genes
        Use these registered genes as the expression features instead of selecting ``n_top_genes``
        (e.g. the genes of a targeted panel you will predict on).
    section_scaling
        Per-section feature scaling: ``"zscore"`` (default), ``"minmax"`` (the paper's) or ``"none"``
        (log-normalised only). On held-out HER2ST patients ``"none"`` ranks spots better (nested
        mean ROC AUC 0.890 against 0.872) but shifts each new section's probabilities as a whole,
        so its calibrated call is unreliable. To have both, train one model of each and predict
        with the default one, ordering the spots by the other:
        ``model.predict(target, ranking_model=unscaled)``.
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
    _train_runner_cls = StagedTrainRunner

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
        check_choice("section_scaling", section_scaling, SECTION_SCALINGS)
        if genes is None:
            check_number("n_top_genes", n_top_genes, integer=True, low=1)
        self.gene_columns_ = self._feature_columns(adata, n_top_genes, genes)
        n_image_features = self.summary_stats.get(f"n_{REGISTRY_KEYS.IMAGE}", 0)
        self.module = self._module_cls(
            n_genes=len(self.gene_columns_), n_image_features=n_image_features, **module_kwargs
        )
        #: What reading an AnnData into the network's inputs needs of this model.
        self.input_spec = InputSpec(
            self.var_names, self.gene_names, self.setup_args, section_scaling, int(n_image_features)
        )
        #: What train() fits besides the weights (FittedState); None until it has run.
        self.fitted_state: FittedState | None = None
        self._model_summary_string = (
            f"SpaCRD model with {len(self.gene_columns_)} genes, "
            f"{n_image_features or 'no'} histology features, {self.setup_args['n_neighbors']} neighbours."
        )
        self.init_params_ = self._get_init_params(locals())

    def _feature_columns(
        self, adata: AnnData | None, n_top_genes: int, genes: Sequence[str] | None
    ) -> np.ndarray:
        """Positions of the expression features in :attr:`var_names`: ``genes``, or the source's HVGs."""
        if genes is not None:
            position = self.var_names.get_indexer(pd.Index(genes))
            if (position < 0).any():
                missing = pd.Index(genes)[position < 0][:5].tolist()
                raise ValueError(f"`genes` contains names that are not registered var_names, e.g. {missing}.")
            return position
        if adata is None:
            raise ValueError("Without `adata`, pass the feature `genes` explicitly.")
        batch_key = self.setup_args["batch_key"]
        sections = adata.obs[batch_key].to_numpy() if batch_key is not None else None
        counts = self.adata_manager.get_from_registry("X")
        columns = highly_variable_columns(counts, self.var_names, sections, n_top_genes)
        if columns.size == 0:
            raise ValueError("No gene has a non-zero count in the registered data; check `layer`.")
        return columns

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
        spatial_key: str = OBSM_KEYS.SPATIAL,
        n_neighbors: int | None = None,
        cancer_categories: Sequence[str] | None = None,
        neighbors_key: str = OBSM_KEYS.NEIGHBORS,
        **kwargs,
    ):
        """%(summary)s.

        Registers the fields below and checks them; labels are mapped (and the number of spots per class
        logged) here and again when training, so edits of ``obs[labels_key]`` after set-up are used.
        The only entries written into ``adata`` are scvi-tools' registry entries (``uns["_scvi_uuid"]``,
        ``uns["_scvi_manager_uuid"]``, ``obs["_scvi_batch"]``) and, when ``obsm[neighbors_key]`` does not
        hold it yet, the spatial graph of :func:`spacrd.pp.spatial_neighbors` per ``batch_key`` section
        (``obsm["spacrd_neighbors"]`` and ``uns["spacrd_neighbors"]`` for the default ``neighbors_key``). A view (``adata[mask]``) is refused, since
        writing into it would silently make it a copy: pass ``adata[mask].copy()``. Gene names must be
        unique.

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
            Neighbourhood size ``k``, the spot itself included (default 7, or the ``k`` of a graph
            already in ``obsm[neighbors_key]``); an integer from 1 to 1,024.
        cancer_categories
            Values of ``labels_key`` that mean cancer (e.g. ``["invasive cancer", "cancer in situ"]``);
            each must be one of the column's values.
        neighbors_key
            ``obsm`` key of the spatial graph of :func:`spacrd.pp.spatial_neighbors`; computed if absent.

        """
        setup_method_args = cls._get_setup_method_args(**locals())
        check_not_view(adata)
        check_counts(adata, layer)
        check_unique_var_names(adata)
        check_coordinates(adata, spatial_key)
        if batch_key is not None:
            check_obs_key(adata, batch_key, "batch_key")
        if image_key is not None:
            check_image_features(adata, image_key)
        if n_neighbors is not None:
            n_neighbors = check_n_neighbors(n_neighbors)
        if labels_key is not None:
            check_obs_key(adata, labels_key, "labels_key")
            logger.info(
                "set-up: %s spots in %s section(s); labels: %s.",
                f"{adata.n_obs:,}",
                adata.obs[batch_key].nunique() if batch_key is not None else 1,
                label_summary(label_codes(adata.obs[labels_key], cancer_categories)),
            )
        k = ensure_spatial_neighbors(adata, neighbors_key, n_neighbors, batch_key, spatial_key)
        setup_method_args["setup_args"]["n_neighbors"] = k
        fields = [
            LayerField("X", layer, is_count_data=True),
            CategoricalObsField("batch", batch_key),
            ObsmField(REGISTRY_KEYS.SPATIAL, spatial_key),
            ObsmField(REGISTRY_KEYS.NEIGHBORS, neighbors_key),
        ]
        if image_key is not None:
            fields.append(ObsmField(REGISTRY_KEYS.IMAGE, image_key))
        adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        with quiet_third_party():
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
        histology_key: str = OBSM_KEYS.HISTOLOGY,
        backbone: str | torch.nn.Module = DEFAULT_BACKBONE,
        n_neighbors: int | None = None,
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
            SpatialData whose table annotates spot shapes through ``region``, ``region_key`` and
            ``instance_key``, as spatialdata-io's readers write.
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
            spatial_key=OBSM_KEYS.SPATIAL,
            n_neighbors=n_neighbors,
            cancer_categories=cancer_categories,
        )

    @property
    def setup_args(self) -> dict:
        """Arguments given to :meth:`setup_anndata` (layer, keys, ``n_neighbors``...)."""
        args = dict(self.registry["setup_args"])
        args.setdefault("neighbors_key", OBSM_KEYS.NEIGHBORS)  # models saved before it was an argument
        return args

    @property
    def var_names(self) -> pd.Index:
        """All genes registered at set-up (the gene universe for library sizes)."""
        return pd.Index(self.registry["field_registries"]["X"]["state_registry"]["column_names"])

    @property
    def gene_names(self) -> pd.Index:
        """Genes used as expression features, in model order."""
        return self.var_names[self.gene_columns_]

    @property
    def section_scaling_(self) -> SectionScaling:
        """Per-section feature scaling the model was built with (``input_spec.section_scaling``)."""
        return self.input_spec.section_scaling

    # ------------------------------------------------------------------ inputs
    def _spec(self) -> InputSpec:
        """The input spec, with the image branch off for a model trained without any image."""
        state = self.fitted_state
        if self.is_trained_ and state is not None and state.n_image_training_spots < 2:
            return self.input_spec.without_trained_images()
        return self.input_spec

    def _inputs(
        self, adata: AnnData | None, min_gene_overlap: float = 0.5, batch_key: str | None = None
    ) -> SpotInputs:
        if adata is None or adata is self.adata:
            if self.adata is None:
                raise ValueError("This model has no registered AnnData; pass `adata` explicitly.")
            return source_inputs(self._spec(), self.adata_manager)
        if not isinstance(adata, AnnData):
            raise TypeError(f"Expected an AnnData or a SpatialData, got {type(adata).__name__}.")
        return target_inputs(self._spec(), adata, min_gene_overlap, batch_key)

    def _dataset(self, inputs: SpotInputs, sparse_genes: bool = False) -> NeighbourhoodDataset:
        return NeighbourhoodDataset(inputs, self.module.image_encoder is not None, sparse_genes)

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
        """Load a model saved by :meth:`~spacrd.model.SpaCRD.save`.

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

    @classmethod
    def load_pretrained(cls, name: str, accelerator: str = "auto", device: int | str = "auto") -> SpaCRD:
        """Load a model shipped with spacrd, offline: ``"her2st"`` (see the model card in the docs).

        ``"her2st"`` was trained on the six labelled HER2ST sections of
        :func:`spacrd.datasets.her2st_ctr` (HER2-positive breast cancer, legacy ST, 2,000 gene symbols,
        expression only) by ``scripts/build_pretrained.py``. Predict with :meth:`predict`; the target's
        genes are matched by symbol (``min_gene_overlap``).

        Parameters
        ----------
        name
            A shipped model's name; an unknown one is a :class:`ValueError` listing the available ones.
        accelerator, device
            Where to place the weights, as for :meth:`load`.

        Examples
        --------
        >>> model = spacrd.model.SpaCRD.load_pretrained("her2st")  # doctest: +SKIP
        >>> model.predict(adata)  # doctest: +SKIP
        >>> spacrd.pl.ctr(adata)  # doctest: +SKIP

        """
        return _pretrained.load_pretrained(cls, name, accelerator, device)

    def __repr__(self) -> str:
        return f"{self._model_summary_string} Trained: {self.is_trained_}."
