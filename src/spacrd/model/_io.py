"""Saving and loading models without pickle: tensors through ``torch.load(weights_only=True)``, the rest JSON."""

from __future__ import annotations

import inspect
import json
import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scvi.model._utils import parse_device_args

from spacrd._atomic import AtomicFiles, write_h5ad
from spacrd._validation import check_bool, check_device, check_n_neighbors

from ._fitted import FittedState

if TYPE_CHECKING:
    from anndata import AnnData

    from ._protocols import Saveable, SaveableT

MODEL_FILE = "model.pt"
META_FILE = "model.json"
ADATA_FILE = "adata.h5ad"
MODEL_FILES = (MODEL_FILE, META_FILE, ADATA_FILE)
#: Entries of model.json that this spacrd reads.
META_KEYS = frozenset(
    {
        "format",
        "format_version",
        "spacrd_version",
        "init_params",
        "genes",
        "registry",
        "is_trained",
        "fitted_state",
        "history",
    }
)
#: Entries of format 1 (spacrd 0.1), where the fitted state was loose; read into a :class:`FittedState`.
LEGACY_STATE_KEYS = frozenset(
    {"training_profile", "n_image_training_spots", "source_cancer_share", "calibration", "validation_split"}
)
FORMAT = "spacrd-model"
#: 2: the fitted state is one entry, ``fitted_state``, with the validation rows.
FORMAT_VERSION = 2


def package_version() -> str:
    try:
        return version("spacrd")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


def _to_json(value: Any) -> Any:
    """Encode registries and attributes (dicts, lists, numpy arrays and scalars) as JSON values."""
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        kind = "str" if value.dtype.kind in "OUS" else value.dtype.str
        return {"__ndarray__": value.astype(str).tolist() if kind == "str" else value.tolist(), "dtype": kind}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Index):
        return _to_json(value.to_numpy())
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            dtype = object if value["dtype"] == "str" else np.dtype(value["dtype"])
            return np.asarray(value["__ndarray__"], dtype=dtype)
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def save_model(
    model: Saveable, dir_path: str, overwrite: bool, save_anndata: bool, **anndata_write_kwargs
) -> None:
    dir_path = os.fspath(dir_path)
    if os.path.exists(dir_path) and not os.path.isdir(dir_path):
        raise ValueError(
            f"{dir_path} is a file, not a directory; SpaCRD.save writes a directory. Choose another path."
        )
    if os.path.exists(dir_path) and not overwrite:
        raise ValueError(f"{dir_path} already exists; pass `overwrite=True` or choose another directory.")
    if save_anndata and model.adata is None:
        raise ValueError("`save_anndata=True` but this model has no registered AnnData.")
    os.makedirs(dir_path, exist_ok=True)
    init = model.init_params_
    kwargs = {k: v for group in init["kwargs"].values() for k, v in group.items()}
    non_kwargs = {k: v for k, v in init["non_kwargs"].items() if k not in ("genes", "registry")}
    state = model.fitted_state
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spacrd_version": package_version(),
        # members are recorded even at their default: files without the entry predate them (one member)
        "init_params": {**non_kwargs, **kwargs, "n_members": model.module.n_members},
        "genes": model.gene_names.tolist(),
        "registry": model.registry,
        "is_trained": model.is_trained_,
        "fitted_state": None if state is None else state.to_dict(),
        "history": {k: v.reset_index().to_dict(orient="list") for k, v in (model.history_ or {}).items()},
    }
    text = json.dumps(_to_json(meta))
    # every file is complete under a temporary name before any is renamed into place, so a failed save
    # (a full disk) leaves a previous model in dir_path as it was
    with AtomicFiles() as files:
        files.write(
            os.path.join(dir_path, MODEL_FILE), lambda tmp: torch.save(model.module.state_dict(), tmp)
        )
        files.write(os.path.join(dir_path, META_FILE), lambda tmp: tmp.write_text(text))
        if save_anndata:
            files.write(
                os.path.join(dir_path, ADATA_FILE),
                lambda tmp: write_h5ad(model.adata, tmp, **anndata_write_kwargs),
            )
    # an older save may have left files this one does not write (adata.h5ad): a reader must not mix them
    stale = os.path.join(dir_path, ADATA_FILE)
    if not save_anndata and (os.path.isfile(stale) or os.path.islink(stale)):
        os.remove(stale)


def load_model(
    cls: type[SaveableT], dir_path: str, adata: AnnData | None, accelerator: str, device: int | str
) -> SaveableT:
    check_device(accelerator)  # before Lightning's own error, which names no fix
    meta_path, weights_path = os.path.join(dir_path, META_FILE), os.path.join(dir_path, MODEL_FILE)
    for path in (meta_path, weights_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found; {dir_path!r} is not a directory written by SpaCRD.save()."
            )
    try:
        with open(meta_path) as f:
            meta = _from_json(json.load(f))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not valid JSON (truncated or foreign file): {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} does not describe a SpaCRD model.")
    file_version = meta.get("format_version", 0)
    legacy = LEGACY_STATE_KEYS if isinstance(file_version, int) and file_version < 2 else frozenset()
    unknown = sorted(set(meta) - META_KEYS - legacy)
    if unknown and meta.get("format_version", 0) <= FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has unknown entries {unknown} (edited or damaged); save the model again."
        )
    missing = [
        key for key in ("registry", "init_params", "genes", "is_trained", "history") if key not in meta
    ]
    if missing:
        raise ValueError(
            f"{meta_path} lacks the entries {missing} (edited or damaged); save the model again."
        )
    if not isinstance(meta.get("format_version", 0), int):
        raise ValueError(f"{meta_path} has an invalid format_version {meta.get('format_version')!r}.")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{dir_path} was written by a newer spacrd ({meta.get('spacrd_version')}); upgrade spacrd."
        )
    _, _, torch_device = parse_device_args(accelerator=accelerator, devices=device, return_device="torch")
    registry = meta["registry"]
    if not isinstance(registry, dict) or registry.get("model_name") not in (None, cls.__name__):
        raise ValueError(f"{dir_path} holds a {registry.get('model_name')} model, not {cls.__name__}.")
    params = _checked_init_params(cls, meta, meta_path)
    _check_setup_args(registry, meta_path)
    _check_declared_size(cls, registry, meta["genes"], params, weights_path, meta_path)
    if adata is not None:
        saved_genes = registry["field_registries"]["X"]["state_registry"]["column_names"]
        if not np.array_equal(adata.var_names.to_numpy(dtype=str), np.asarray(saved_genes, dtype=str)):
            raise ValueError(
                "The AnnData's var_names differ from the saved model's; load without `adata` and call "
                "`model.predict(adata)`, which aligns genes by name."
            )
        cls.setup_anndata(adata, **registry["setup_args"])
    # the architecture is checked (SpaCRDModule validates its sizes) before the weights are read
    model = cls(adata, registry=None if adata is not None else registry, genes=meta["genes"], **params)
    expected = sum(t.numel() * t.element_size() for t in model.module.state_dict().values())
    if os.path.getsize(weights_path) > 2 * expected + 1_000_000:
        raise ValueError(
            f"{weights_path} holds {os.path.getsize(weights_path):,} bytes, far more than the {expected:,} bytes of "
            f"weights {meta_path} declares; it is not this model's file."
        )
    try:
        state_dict = torch.load(weights_path, map_location=torch_device, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(
            f"Could not read weights from {weights_path} (truncated or not a SpaCRD file): {err}"
        ) from err
    try:
        model.module.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"Weights in {weights_path} do not fit the saved architecture: {err}") from err
    model.to_device(torch_device)
    model.module.eval()
    model.is_trained_ = check_bool(f"is_trained in {meta_path}", meta["is_trained"])
    model.fitted_state = (
        FittedState.from_dict(meta.get("fitted_state"), meta_path)
        if "fitted_state" in meta
        else FittedState.from_legacy(meta, meta_path)
    )
    if model.is_trained_ and model.fitted_state is None:
        raise ValueError(
            f"{meta_path} describes a trained model without its fitted_state (edited or damaged)."
        )
    if model.fitted_state is not None:  # scvi-tools' own record of the split, as after train()
        model.validation_indices = model.fitted_state.validation_indices
    try:
        model.history_ = {k: pd.DataFrame(v).set_index("epoch") for k, v in meta["history"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{meta_path}: history is damaged ({type(err).__name__}: {err}); save the model again."
        ) from err
    return model


#: Set-up arguments of model.json that hold a column, layer or key name (or ``None``).
_NAME_ARGS = ("layer", "labels_key", "batch_key", "image_key", "spatial_key", "neighbors_key")


def _check_setup_args(registry: dict, meta_path: str) -> None:
    """The saved set-up arguments, checked before they size anything (``n_neighbors`` sizes every graph)."""
    args = registry.get("setup_args")
    if not isinstance(args, dict):
        raise ValueError(f"{meta_path}: registry.setup_args must be a mapping (edited or damaged).")
    for name in _NAME_ARGS:
        value = args.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{meta_path}: setup_args.{name} must be a name or null, got {value!r}.")
    check_n_neighbors(args.get("n_neighbors"), f"setup_args.n_neighbors in {meta_path}")
    categories = args.get("cancer_categories")
    if categories is not None and (
        not isinstance(categories, list) or not all(isinstance(c, str | int | float) for c in categories)
    ):
        raise ValueError(f"{meta_path}: setup_args.cancer_categories must be a list of values or null.")


def _check_declared_size(
    cls: type[Saveable], registry: dict, genes: list, params: dict, weights_path: str, meta_path: str
) -> None:
    """Refuse an architecture far larger than the weights file before any of it is allocated.

    The model is built on PyTorch's ``meta`` device, which records shapes without memory, so hostile
    sizes in an edited model.json (``n_hidden``, ``n_members``...) cost nothing to measure.
    """
    try:
        with torch.device("meta"):
            probe = cls(None, registry=registry, genes=genes, **params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{meta_path} describes an architecture that cannot be built: {err}") from err
    declared = sum(t.numel() * t.element_size() for t in probe.module.state_dict().values())
    actual = os.path.getsize(weights_path)
    if declared > 2 * actual + 1_000_000:
        raise ValueError(
            f"{meta_path} declares {declared:,} bytes of weights but {weights_path} holds {actual:,}; the "
            "architecture was edited or the files belong to different models. Save the model again."
        )


def _checked_init_params(cls: type[Saveable], meta: dict, meta_path: str) -> dict[str, Any]:
    """The saved constructor arguments, with unknown names and malformed gene lists refused."""
    from spacrd.module import SpaCRDModule

    params = meta["init_params"]
    if not isinstance(params, dict):
        raise ValueError(f"{meta_path}: init_params must be a mapping, got {type(params).__name__}.")
    allowed = (
        set(inspect.signature(cls.__init__).parameters) | set(inspect.signature(SpaCRDModule).parameters)
    ) - {
        "self",
        "adata",
        "registry",
        "genes",
        "module_kwargs",
        "n_genes",
        "n_image_features",
    }
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"{meta_path} has unknown init_params {unknown} (edited, damaged or from a newer spacrd)."
        )
    genes = meta["genes"]
    if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
        raise ValueError(f"{meta_path}: genes must be a non-empty list of gene names.")
    if len(set(genes)) != len(genes):
        raise ValueError(f"{meta_path}: genes lists some names twice.")
    params = dict(params)
    params.setdefault("n_members", 1)  # saved before classifier members: the single classifier
    if isinstance(params.get("n_hidden"), list):
        params["n_hidden"] = tuple(params["n_hidden"])
    return params
