"""SpaCRD on every available device: CPU and, where there is one, a CUDA GPU.

On the shipped HER2ST subset (:func:`spacrd.datasets.her2st_ctr`), trains on B1–F1 and predicts A1 on
each device, prints training and prediction wall time and ROC AUC, checks that a model trained on the
GPU saves and loads onto the CPU with the same predictions, and, where :mod:`timm` is installed,
embeds A1's spots with a timm backbone loaded from a local checkpoint file on the fastest device.

Run from the repository root::

    python benchmarks/bench_devices.py
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings

import numpy as np
import scvi
import torch
from sklearn.metrics import roc_auc_score

import spacrd


def _fit_predict(adata, held_out: str, accelerator: str) -> tuple[spacrd.model.SpaCRD, dict]:
    is_target = (adata.obs["section"] == held_out).to_numpy()
    source, target = adata[~is_target].copy(), adata[is_target].copy()
    truth = target.obs["cancer"].astype(bool).to_numpy()
    target.obs = target.obs.drop(columns=["label", "cancer"])
    scvi.settings.seed = 0
    spacrd.model.SpaCRD.setup_anndata(source, labels_key="cancer", batch_key="section")
    model = spacrd.model.SpaCRD(source)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(accelerator=accelerator, devices=1, enable_progress_bar=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    prob = model.predict(target)
    predict_s = time.perf_counter() - start
    device = str(next(model.module.parameters()).device)
    result = {"device": device, "train_s": train_s, "predict_s": predict_s, "auc": roc_auc_score(truth, prob)}
    return model, {**result, "target": target, "prob": prob}


def _timm_check(adata, held_out: str, device: str) -> str:
    try:
        import timm
    except ImportError:
        return "timm is not installed: skipped"
    target = adata[(adata.obs["section"] == held_out).to_numpy()].copy()
    with tempfile.TemporaryDirectory() as tmp:
        # No download: random weights, saved and read back through the checkpoint_path route.
        path = f"{tmp}/resnet18.pth"
        torch.save(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), path)
        start = time.perf_counter()
        spacrd.pp.image_features(
            target,
            backbone="timm:resnet18",
            checkpoint_path=path,
            library_key="section",
            device=device,
            key_added="X_timm",
        )
        seconds = time.perf_counter() - start
    features = target.obsm["X_timm"]
    finite = np.isfinite(features).all(axis=1).mean()
    return (
        f"timm {timm.__version__} resnet18 from a local checkpoint on {device}: {features.shape[0]} spots x "
        f"{features.shape[1]} features in {seconds:.2f} s, {finite:.0%} of rows finite"
    )


def main() -> None:
    scvi.settings.verbosity = logging.WARNING
    adata = spacrd.datasets.her2st_ctr()
    accelerators = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, scvi-tools {scvi.__version__}, spacrd {spacrd.__version__}")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    runs = {}
    print("\n| device | training wall (s) | prediction wall (s) | A1 ROC AUC |\n|---|---|---|---|")
    for accelerator in accelerators:
        model, run = _fit_predict(adata, "A1", accelerator)
        runs[accelerator] = (model, run)
        print(f"| {run['device']} | {run['train_s']:.1f} | {run['predict_s']:.2f} | {run['auc']:.3f} |")
    if "gpu" in runs:
        model, run = runs["gpu"]
        with tempfile.TemporaryDirectory() as tmp:
            model.save(f"{tmp}/m")
            loaded = spacrd.model.SpaCRD.load(f"{tmp}/m", accelerator="cpu")
            diff = np.abs(loaded.predict(run["target"].copy()) - run["prob"]).max()
        print(f"\nGPU-trained model loaded on the CPU: max |probability difference| = {diff:.2e}")
    print("\n" + _timm_check(adata, "A1", "cuda" if torch.cuda.is_available() else "cpu"))


if __name__ == "__main__":
    main()
