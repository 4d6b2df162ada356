"""A model's inputs from an AnnData: its registered source, or a target aligned to the model's genes."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
from anndata import AnnData

from spacrd._constants import REGISTRY_KEYS
from spacrd._validation import check_coordinates, check_counts, check_image_features, check_sections
from spacrd.pp._neighbors import check_spread, section_neighbors, stored_neighbors

from ._inputs import SpotInputs, build_inputs, gene_selector
from ._labels import label_codes
from ._thinning import DepthThinning

if TYPE_CHECKING:
    from scvi.data import AnnDataManager

    from ._spec import InputSpec

logger = logging.getLogger(__name__)

#: obs columns that, when present in a target without the set-up section column, suggest it holds
#: several sections that must not be pooled.
SECTION_LIKE_COLUMNS = ("section", "sample", "sample_id", "library_id", "batch", "slide", "slide_id")


def source_inputs(spec: InputSpec, manager: AnnDataManager) -> SpotInputs:
    """Preprocessed inputs of a model's registered AnnData (``manager.adata``), with labels mapped as set up.

    Labels are read from ``obs[labels_key]`` now, not frozen at set-up, so edits after
    :meth:`~spacrd.model.SpaCRD.setup_anndata` are used; the graph is checked against the current spots.
    """
    adata, args = manager.adata, spec.setup_args
    labels = None
    if args["labels_key"] is not None:
        labels = label_codes(adata.obs[args["labels_key"]], args["cancer_categories"])
    image = None
    if REGISTRY_KEYS.IMAGE in manager.data_registry:
        image = check_image_features(adata, args["image_key"])
    neighbors = stored_neighbors(adata, args["neighbors_key"])
    if neighbors is None:
        raise ValueError(
            f"obsm[{args['neighbors_key']!r}], the spatial graph set up with this AnnData, was removed; "
            "re-run setup_anndata, which computes it again."
        )
    selector, in_universe, _ = gene_selector(spec.var_names, spec.gene_names, spec.var_names)
    return build_inputs(
        manager.get_from_registry("X"),
        selector,
        in_universe,
        adata.obs[args["batch_key"]].to_numpy() if args["batch_key"] is not None else None,
        neighbors,
        labels,
        spec.usable_image(image),
        spec.section_scaling,
        check_coordinates(adata, args["spatial_key"]),
    )


def source_thinning(
    spec: InputSpec, manager: AnnDataManager, inputs: SpotInputs, lowest_rate: float, seed: int
) -> DepthThinning:
    """Depth augmentation of the registered source's training minibatches (``train(depth_augmentation=...)``)."""
    selector, in_universe, _ = gene_selector(spec.var_names, spec.gene_names, spec.var_names)
    return DepthThinning.build(
        manager.get_from_registry("X"),
        selector,
        in_universe,
        inputs.codes,
        len(inputs.section_names),
        spec.section_scaling,
        lowest_rate,
        seed,
    )


def check_target(registered: AnnData | None, adata) -> None:
    """``predict()`` without a target predicts the registered AnnData, which a loaded model lacks."""
    if adata is None and registered is None:
        raise ValueError(
            "This model has no registered AnnData (it was loaded or built without one), so `adata` is "
            "needed: pass the target, `model.predict(adata)`."
        )


def target_sections(
    setup_key: str | None, adata: AnnData, batch_key: str | None
) -> tuple[np.ndarray | None, str | None]:
    """Section of each target spot and the column it came from.

    ``batch_key=None`` uses the set-up ``batch_key`` when the target has that column. A target without
    it is one section, unless it looks like several (a section-like ``obs`` column, e.g. ``"section"`` or
    ``"sample"``, with several values): pooling them would let neighbourhoods and statistics cross
    sections, so that is an error naming the candidates. ``setup_key`` is the set-up ``batch_key``.
    """
    key = batch_key if batch_key is not None else setup_key
    if key is not None and key in adata.obs:
        sections = adata.obs[key]
        check_sections(sections, f"obs[{key!r}]")
        return sections.to_numpy(), key
    if batch_key is not None:
        raise KeyError(
            f"`batch_key={batch_key!r}` is not a column of the target's obs; available: {list(adata.obs)}."
        )
    # uns["spatial"] is no evidence: subsets keep every library of the AnnData they came from.
    candidates = [c for c in SECTION_LIKE_COLUMNS if c in adata.obs and adata.obs[c].nunique() > 1]
    if candidates:
        raise ValueError(
            f"The target has no obs[{setup_key!r}] (the section column at set-up) but looks like several "
            f"sections (obs columns {candidates}). Pass the column naming each spot's section as `batch_key=`, "
            "or predict each section on its own; pooled sections would share neighbourhoods and statistics."
        )
    if setup_key is not None:
        logger.info("The target has no obs[%r]: all its spots are treated as one section.", setup_key)
    return None, None


def target_inputs(
    spec: InputSpec, adata: AnnData, min_gene_overlap: float, batch_key: str | None
) -> SpotInputs:
    """Preprocessed inputs of an unregistered target: genes aligned by name, its own neighbours and statistics."""
    args = spec.setup_args
    counts = check_counts(adata, args["layer"])
    coordinates = check_coordinates(adata, args["spatial_key"])
    if adata.var_names.has_duplicates:
        dups = adata.var_names[adata.var_names.duplicated()].unique()[:5].tolist()
        raise ValueError(
            f"The target has duplicated gene names (e.g. {dups}); make them unique with "
            "`adata.var_names_make_unique()` or aggregate them before predicting."
        )
    selector, in_universe, present = gene_selector(adata.var_names, spec.gene_names, spec.var_names)
    overlap = present.mean()
    if overlap < min_gene_overlap:
        raise ValueError(
            f"Only {present.sum()} of the model's {present.size} genes ({overlap:.0%}) are in the target, below "
            f"`min_gene_overlap={min_gene_overlap}`. Check that var_names use the same gene identifiers (symbols "
            "vs Ensembl IDs) as the training data; for a targeted panel, train on its genes with `genes=`."
        )
    if not present.all():
        warnings.warn(
            f"{(~present).sum()} of the model's {present.size} genes are missing in the target; they are filled "
            "with zeros.",
            UserWarning,
            stacklevel=4,
        )
    sections, _ = target_sections(args["batch_key"], adata, batch_key)
    check_spread(coordinates, sections, args["n_neighbors"], f"obsm[{args['spatial_key']!r}]")
    neighbors, padding = section_neighbors(coordinates, sections, args["n_neighbors"])
    neighbors[padding] = -1
    inputs = build_inputs(
        counts,
        selector,
        in_universe,
        sections,
        neighbors,
        None,
        spec.usable_image(_target_image(spec, adata)),
        spec.section_scaling,
        coordinates,
    )
    inputs.gene_overlap = float(overlap)
    return inputs


def _target_image(spec: InputSpec, adata: AnnData) -> np.ndarray | None:
    image_key = spec.setup_args["image_key"]
    if not spec.uses_images:
        return None
    if image_key is not None and image_key in adata.obsm:
        image = check_image_features(adata, image_key)
        if image.shape[1] != spec.n_image_features:
            raise ValueError(
                f"obsm[{image_key!r}] has {image.shape[1]} features but the model was trained with "
                f"{spec.n_image_features}; compute them with the same backbone."
            )
        return image
    warnings.warn(
        f"The target has no obsm[{image_key!r}]: every spot is predicted from expression alone, as spots "
        "without an image are. Compute the histology embeddings with "
        f"`spacrd.pp.image_features(adata, key_added={image_key!r})` and the training backbone to use them "
        "(for a SpatialData target, pass its H&E image as `image_key=`).",
        UserWarning,
        stacklevel=5,
    )
    return np.full((adata.n_obs, spec.n_image_features), np.nan, dtype=np.float32)


def label_summary(labels: np.ndarray) -> str:
    """``"120 cancer, 300 non-cancer, 5 unlabelled"`` for logging how labels were mapped."""
    counts = np.bincount(np.asarray(labels) + 1, minlength=3)
    return f"{counts[2]} cancer, {counts[1]} non-cancer, {counts[0]} unlabelled"
