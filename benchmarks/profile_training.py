"""Where SpaCRD's training time goes: one leave-one-section-out fold of HER2ST with default settings.

Trains on five labelled sections (A1 held out by default) under :mod:`cProfile` and prints a table of
wall time per phase (set-up, model construction with gene selection, the three stages, prediction)
and, inside training, the share of the network's parts (encoders, cross-attention, VAE), the dropout masks, the loss,
the backward pass, the Adam update and minibatch gathering (with its depth thinning); the rest is Lightning's loop and
logging.

Run from the repository root::

    python benchmarks/profile_training.py [--held-out A1] [--threads 1]
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import logging
import pstats
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run_benchmark import DEFAULT_DATA, HER2ST_LABELLED, load_data, split


def _parts() -> list[tuple[str, object]]:
    """(label, function) pairs whose cumulative time inside training is reported."""
    from torch.optim.adam import adam

    from spacrd.model._datamodule import NeighbourhoodDataset
    from spacrd.model._thinning import DepthThinning
    from spacrd.module import SpaCRDModule
    from spacrd.nn import CrossAttentionBlock, GaussianEncoder, MLPDecoder, MLPEncoder
    from spacrd.nn._blocks import dropout

    return [
        ("forward pass (SpaCRDModule.inference)", SpaCRDModule.inference),
        ("  modality encoders (MLPEncoder)", MLPEncoder.forward),
        ("dropout, every layer (spacrd.nn dropout)", dropout),
        ("  cross-attention (CrossAttentionBlock)", CrossAttentionBlock.forward),
        ("  VAE encoder (GaussianEncoder)", GaussianEncoder.forward),
        ("VAE decoder (MLPDecoder)", MLPDecoder.forward),
        ("loss (SpaCRDModule.loss)", SpaCRDModule.loss),
        ("backward pass (autograd engine)", None),
        ("Adam parameter update", adam),
        ("minibatch gathering (NeighbourhoodDataset)", NeighbourhoodDataset.__getitem__),
        ("  depth thinning (DepthThinning.genes)", DepthThinning.genes),
    ]


def _cumulative(stats: pstats.Stats, function) -> float:
    """Cumulative seconds of ``function`` (matched by its code object's file and first line).

    ``None`` stands for the autograd engine's backward call.
    """
    total = 0.0
    for (filename, line, name), (_, _, _, cumtime, _) in stats.stats.items():
        if function is None:
            hit = name == "_engine_run_backward"
        else:
            code = inspect.unwrap(function).__code__
            hit = filename == code.co_filename and line == code.co_firstlineno
        total += cumtime if hit else 0.0
    return total


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--held-out", default="A1", choices=HER2ST_LABELLED)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = p.parse_args(argv)

    import scvi
    import torch

    from spacrd.model import SpaCRD

    torch.set_num_threads(args.threads)
    scvi.settings.seed = 0
    scvi.settings.verbosity = logging.WARNING
    adata, _ = load_data(args.data, [], with_image=False)
    train, test = split(adata, args.held_out, list(HER2ST_LABELLED))

    phases: dict[str, float] = {}
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    SpaCRD.setup_anndata(train, layer="counts", labels_key="cancer", batch_key="section", n_neighbors=7)
    phases["setup_anndata (neighbours)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = SpaCRD(train)
    phases["model init (2,000 seurat_v3 HVGs)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        profiler.enable()
        model.train(enable_progress_bar=False)
        profiler.disable()
    phases["train (3 stages)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model.predict(test)
    phases["predict (held-out section)"] = time.perf_counter() - t0

    stats = pstats.Stats(profiler)
    train_s = phases["train (3 stages)"]
    print(
        f"held-out {args.held_out}: {train.n_obs} training spots, {test.n_obs} target spots, "
        f"{torch.get_num_threads()} thread(s)\n"
    )
    print("| phase | wall (s) |\n|---|---|")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds:.2f} |")
    print(
        "\nInside training (cumulative time; indented rows are part of the row above; profiling adds overhead):\n"
    )
    print("| part | seconds | share of training |\n|---|---|---|")
    for label, function in _parts():
        seconds = _cumulative(stats, function)
        print(f"| {label} | {seconds:.2f} | {seconds / train_s:.0%} |")
    epochs = {k: len(v) for k, v in model.history.items() if k.endswith("train_loss")}
    print(f"\nEpochs per stage: {epochs}")


if __name__ == "__main__":
    main()
