"""The model side of the ``spacrd`` command: resolve ``--model``, predict and train on a read INPUT."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from spacrd._cli_io import InputError, Loaded, _first_line, copy_prediction, with_counts_in
from spacrd._console import StageProgress, quiet_libraries
from spacrd._constants import OBS_KEYS, OBSM_KEYS, UNS_KEYS
from spacrd._pretrained_registry import PRETRAINED_MODELS, available
from spacrd._validation import check_device
from spacrd.model import SpaCRD
from spacrd.model._spatialdata import table_region_key


def load_model(spec: str, accelerator: str, option: str = "--model") -> SpaCRD:
    """``--model`` (or ``option``): a folder written by :meth:`SpaCRD.save`, else a shipped model's name."""
    check_accelerator(accelerator)
    path = Path(spec)
    try:
        if path.is_dir():
            return SpaCRD.load(str(path), accelerator=accelerator)
        if spec in PRETRAINED_MODELS:
            return SpaCRD.load_pretrained(spec, accelerator=accelerator)
    except (ValueError, OSError) as err:
        raise InputError(f"{option} {spec}: {_first_line(err)}") from err
    raise InputError(
        f"{option} {spec!r} is neither a pretrained model (available: {', '.join(available())}) nor a "
        "folder written by SpaCRD.save or spacrd train."
    )


#: Values of ``--accelerator``; others are refused before any model is loaded.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def check_accelerator(value: str) -> None:
    """``--accelerator``: one of :data:`ACCELERATORS`, and a GPU only where torch sees one."""
    if value not in ACCELERATORS:
        raise InputError(f"--accelerator must be one of {', '.join(ACCELERATORS)}, got {value!r}.")
    try:
        check_device(value)
    except ValueError as err:
        raise InputError(f"--accelerator {value}: {_first_line(err)}") from err


def _threshold(value: str | None) -> float | str | None:
    if value is None or value == "gmm":
        return value
    try:
        threshold = float(value)
    except ValueError:
        raise InputError(f"--threshold must be a probability or 'gmm', got {value!r}.") from None
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold must be between 0 and 1, got {threshold}.")
    return threshold


def _section_key(loaded: Loaded, requested: str | None, fallback: str | None) -> str | None:
    """The section column: ``requested`` (must exist), else ``fallback`` if INPUT has it, else per shapes element."""
    obs = loaded.table.obs
    if requested is not None:
        if requested not in obs:
            raise InputError(
                f"--section-key {requested!r} is not a column of INPUT; its columns: {list(obs)}."
            )
        return requested
    if fallback is not None and fallback in obs:
        return fallback
    return table_region_key(loaded.table) if loaded.kind == "zarr" else None


def _histology(adata, section_key: str | None, key_added: str = OBSM_KEYS.HISTOLOGY) -> None:
    import spacrd

    if not adata.uns.get(UNS_KEYS.SPATIAL):
        raise InputError("--histology needs H&E images in uns['spatial'] (the squidpy/scanpy Visium layout).")
    if section_key is None:
        spacrd.pp.image_features(adata, key_added=key_added)
    else:
        spacrd.pp.image_features(adata, key_added=key_added, library_key=section_key)


def predict(model: SpaCRD, loaded: Loaded, args: argparse.Namespace) -> str | None:
    """Predict ``loaded`` in place with the command's options; returns the section column used."""
    setup = model.setup_args
    section_key = _section_key(loaded, args.section_key, setup["batch_key"])
    options = {
        "min_gene_overlap": args.min_gene_overlap,
        "threshold": _threshold(args.threshold),
        "call": args.call,
    }
    if args.ranking_model:
        options["ranking_model"] = load_model(args.ranking_model, args.accelerator, "--ranking-model")
    try:
        return _predict(model, loaded, args, section_key, options)
    except (ValueError, KeyError, TypeError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        if text.startswith("`ranking_model`"):  # the library's name of the option
            raise InputError(
                f"--ranking-model {args.ranking_model}{text.removeprefix('`ranking_model`')}"
            ) from err
        raise


def _predict(model: SpaCRD, loaded: Loaded, args: argparse.Namespace, section_key, options) -> str | None:
    setup = model.setup_args
    with quiet_libraries():
        if loaded.kind == "zarr":
            if args.layer not in (None, setup["layer"]):
                raise InputError(
                    "--layer works for .h5ad and Space Ranger inputs; the zarr table is read as is."
                )
            assert loaded.table_key is not None  # set for every zarr input
            model.predict(
                loaded.data,
                table_key=loaded.table_key,
                image_key=_zarr_image(model, loaded, args.image),
                batch_key=section_key,
                **options,
            )
            return section_key
        adata = loaded.data
        image_key = setup["image_key"]
        has_images = bool(adata.uns.get(UNS_KEYS.SPATIAL))
        if model.module.image_encoder is not None and image_key not in adata.obsm and has_images:
            _histology(adata, section_key, image_key)
        readers = {"--model": setup["layer"]}
        if "ranking_model" in options:
            readers["--ranking-model"] = options["ranking_model"].setup_args["layer"]
        absent = [
            (o, layer) for o, layer in readers.items() if layer is not None and layer not in adata.layers
        ]
        if args.layer is None and absent:
            option, layer = absent[0]
            raise InputError(
                f"INPUT has no layer {layer!r}, where {option} {getattr(args, option[2:].replace('-', '_'))} "
                f"reads raw counts (its layers: {list(adata.layers)}); name the layer with the counts with "
                "--layer NAME, or --layer X for adata.X."
            )
        layers = list(readers.values())
        target = with_counts_in(adata, args.layer, *layers) if args.layer is not None else adata
        model.predict(target, batch_key=section_key, **options)
        copy_prediction(target, adata, OBS_KEYS.PROB, OBS_KEYS.CALL, UNS_KEYS.PREDICTION)
    return section_key


def _zarr_image(model: SpaCRD, loaded: Loaded, image: str | None) -> str | None:
    """``--image``, or for a model with histology and a table without embeddings, the store's only image.

    The library computes embeddings only when asked (``image_key=``); the command asks for them, as it
    does for an ``.h5ad`` with H&E images.
    """
    key = model.setup_args["image_key"]
    if image is not None or model.module.image_encoder is None or key in loaded.table.obsm:
        return image
    images = list(loaded.data.images)
    if len(images) > 1:
        raise InputError(
            f"The model uses histology and INPUT's table has no obsm[{key!r}]; name the H&E image with "
            f"--image (one of {images})."
        )
    return images[0] if images else None


def _join_labels(table, path: Path, key: str) -> None:
    """``table.obs[key]`` from the CSV ``path`` (first column: spot ids); spots it lacks are unlabelled."""
    try:
        labels = pd.read_csv(path, index_col=0)
    except (OSError, ValueError) as err:
        raise InputError(f"--labels-file {path}: could not be read ({err}).") from err
    if key not in labels:
        raise InputError(f"--labels-file {path} has no column {key!r}; its columns: {list(labels)}.")
    labels.index = labels.index.astype(str)
    matched = table.obs_names.isin(labels.index)
    if not matched.any():
        raise InputError(
            f"No spot id of --labels-file {path} (e.g. {labels.index[0]!r}) is a spot of INPUT "
            f"(e.g. {table.obs_names[0]!r})."
        )
    table.obs[key] = labels[key].reindex(table.obs_names).to_numpy()


#: What ``--classes`` values may say, and what they mean for :func:`spacrd.pp.labels_from_annotations`.
CLASS_TARGETS = {"cancer": "cancer", "non-cancer": "non-cancer", "none": None}


def parse_classes(text: str | None) -> dict[str, str | None]:
    """``--classes "Tumor=cancer,Stroma=non-cancer,Ignore*=none"`` as the ``classes`` mapping."""
    if not text:
        raise InputError(
            "--annotations needs --classes saying what each annotation class means, e.g. "
            "--classes Tumor=cancer,Stroma=non-cancer"
        )
    classes = {}
    for item in text.split(","):
        name, sep, target = item.rpartition("=")
        if not sep or not name.strip() or target.strip().lower() not in CLASS_TARGETS:
            raise InputError(
                f"--classes entry {item!r} must be NAME=cancer, NAME=non-cancer or NAME=none "
                "(e.g. Tumor=cancer,Stroma=non-cancer)."
            )
        classes[name.strip()] = CLASS_TARGETS[target.strip().lower()]
    return classes


def _labels_from_annotations(loaded: Loaded, args: argparse.Namespace, section_key: str | None) -> str:
    """Write ``obs[labels key]`` from ``--annotations``; returns the column written."""
    from spacrd.pp import labels_from_annotations

    key = args.labels_key or "cancer"
    annotations = args.annotations
    in_store = loaded.kind == "zarr" and annotations in loaded.data.shapes
    if not in_store and not Path(annotations).is_file():
        raise InputError(f"--annotations {annotations}: no such file (or shapes element of INPUT).")
    options = {"classes": parse_classes(args.classes), "key_added": key, "min_overlap": args.min_overlap}
    if loaded.kind == "zarr":
        options |= {"table_key": loaded.table_key, "coordinate_system": args.coordinate_system}
    else:
        options |= {"library_key": section_key, "library_id": args.annotations_section}
    labels_from_annotations(loaded.data, annotations, **options)
    return key


def train(args: argparse.Namespace) -> SpaCRD:
    """Set up INPUT's labelled spots, train with the command's epochs and seed, return the model."""
    import scvi

    from spacrd._cli_io import read_input

    loaded = read_input(args.input, args.table)
    table = loaded.table
    section_key = _section_key(loaded, args.section_key, OBS_KEYS.SECTION)
    labels_key = args.labels_key
    if args.annotations is not None:
        if args.labels_file is not None:
            raise InputError("Give the labels either as --annotations or as --labels-file, not both.")
        labels_key = _labels_from_annotations(loaded, args, section_key)
    elif labels_key is None:
        raise InputError("Say where the labels are: --labels-key COLUMN, or --annotations FILE --classes ...")
    if args.labels_file is not None:
        _join_labels(table, args.labels_file, labels_key)
    if labels_key not in table.obs:
        raise InputError(
            f"--labels-key {labels_key!r} is not a column of INPUT; its columns: {list(table.obs)}."
        )
    labels = {"labels_key": labels_key, "cancer_categories": args.cancer_categories}
    with quiet_libraries():
        scvi.settings.seed = args.seed
        if loaded.kind == "zarr":
            if args.histology:
                raise InputError(
                    "For a SpatialData INPUT, name the H&E image with --image instead of --histology."
                )
            assert loaded.table_key is not None  # set for every zarr input
            SpaCRD.setup_spatialdata(
                loaded.data,
                table_key=loaded.table_key,
                image_key=args.image,
                layer=args.layer,
                batch_key=section_key,
                **labels,
            )
        else:
            if args.histology:
                _histology(table, section_key)
            image_key = OBSM_KEYS.HISTOLOGY if args.histology else None
            SpaCRD.setup_anndata(
                table, layer=args.layer, batch_key=section_key, image_key=image_key, **labels
            )
        model = SpaCRD(
            table, n_top_genes=min(args.n_top_genes, table.n_vars), section_scaling=args.section_scaling
        )
        model.train(
            align_epochs=args.align_epochs,
            fuse_epochs=args.fuse_epochs,
            classify_epochs=args.classify_epochs,
            accelerator=args.accelerator,
            enable_progress_bar=False,
            callbacks=[StageProgress()],
        )
    return model
