"""Methods compared in the leave-one-section-out benchmark.

Every method is a function ``fit_predict(train, test, seed, *, timer=None, **options) -> np.ndarray``:

- ``train`` holds the training sections: raw counts in ``layers["counts"]``, ``obs["section"]``,
  ``obs["cancer"]`` (nullable boolean; ``<NA>`` = spot without a usable label, not used as a target) and
  ``obsm["spatial"]`` (pixel coordinates).
- ``test`` holds the held-out section(s) with the same genes. The benchmark removes every label column
  from it before calling a method, so no method can read the test labels.
- The return value is the probability of cancer for every spot of ``test``, shape ``(test.n_obs,)``.

``timer`` (a :class:`Timer`) splits the wall time into a ``train`` and a ``predict`` phase. Transductive,
label-free steps on the test section (its own per-gene standardisation, its neighbour graph) are counted
as prediction.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from _metrics import minmax
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import LeaveOneGroupOut
from sklearn.neighbors import NearestNeighbors

N_HVG = 2000
#: grid of inverse L2 strengths searched by :func:`fit_logreg`; the optimum on HER2ST is well inside it
LOGREG_CS = np.logspace(-5, 0, 11)
N_NEIGHBORS = 7  # the spot itself and its 6 nearest spots: one ring on the hexagonal/ST grid


class Timer:
    """Accumulates wall-clock and process CPU seconds (all threads) per phase (``train``, ``predict``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {"train": 0.0, "predict": 0.0}
        self.cpu_seconds: dict[str, float] = {"train": 0.0, "predict": 0.0}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - c0


def labelled(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Boolean mask of spots with a cancer/non-cancer label, and those labels (0/1)."""
    cancer = adata.obs["cancer"].astype("boolean")
    mask = cancer.notna().to_numpy()
    return mask, cancer[mask].astype(bool).to_numpy().astype(int)


def _counts(adata: ad.AnnData) -> sp.csr_matrix:
    x = adata.layers["counts"] if "counts" in adata.layers else adata.X
    return sp.csr_matrix(x, dtype=np.float32)


def log_normalise(adata: ad.AnnData, genes: list[str] | None = None) -> np.ndarray:
    """``log1p`` of counts scaled to 10,000 per spot (library size over *all* genes), dense ``(n, g)``."""
    x = _counts(adata)
    size = np.asarray(x.sum(axis=1)).ravel()
    size[size == 0] = 1.0
    x = sp.diags(1e4 / size) @ x
    if genes is not None:
        x = x[:, adata.var_names.get_indexer(genes)]
    return np.log1p(x.toarray())


def select_hvgs(train: ad.AnnData, n_top: int = N_HVG) -> list[str]:
    """Highly variable genes of the training sections (``seurat_v3`` on raw counts, batch = section)."""
    tmp = ad.AnnData(
        _counts(train), obs=train.obs[["section"]].copy(), var=pd.DataFrame(index=train.var_names)
    )
    tmp.obs["section"] = tmp.obs["section"].astype(str).astype("category")
    expressed = np.asarray((tmp.X > 0).sum(axis=0)).ravel() > 0
    tmp = tmp[:, expressed].copy()
    n_top = min(n_top, tmp.n_vars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top, batch_key="section")
    return tmp.var_names[tmp.var["highly_variable"].to_numpy()].tolist()


def zscore_by_section(x: np.ndarray, sections: np.ndarray) -> np.ndarray:
    """Standardise every column within every section (a gene constant in a section becomes 0 there)."""
    out = np.empty_like(x, dtype=np.float64)
    for s in pd.unique(sections):
        idx = sections == s
        mu = x[idx].mean(axis=0)
        sd = x[idx].std(axis=0)
        sd[sd == 0] = 1.0
        out[idx] = (x[idx] - mu) / sd
    return out


def knn_smooth(x: np.ndarray, coords: np.ndarray, sections: np.ndarray, k: int = N_NEIGHBORS) -> np.ndarray:
    """Mean of each spot's features over itself and its ``k - 1`` nearest spots of the same section."""
    out = np.empty_like(x, dtype=np.float64)
    for s in pd.unique(sections):
        idx = np.flatnonzero(sections == s)
        kk = min(k, idx.size)
        nn = NearestNeighbors(n_neighbors=kk).fit(coords[idx])
        _, nbr = nn.kneighbors(coords[idx])
        out[idx] = x[idx][nbr].mean(axis=1)
    return out


def expression_features(adata: ad.AnnData, genes: list[str], smooth: bool) -> np.ndarray:
    """Log-normalised, per-section z-scored expression of ``genes``; optionally 7-NN spatially smoothed."""
    sections = adata.obs["section"].astype(str).to_numpy()
    x = zscore_by_section(log_normalise(adata, genes), sections)
    if smooth:
        x = knn_smooth(x, np.asarray(adata.obsm["spatial"], dtype=float), sections)
    return x


def fit_logreg(x: np.ndarray, y: np.ndarray, sections: np.ndarray, seed: int) -> LogisticRegression:
    """L2 logistic regression whose strength ``C`` is chosen by leave-one-section-out ROC AUC.

    The folds are the training sections, so ``C`` is picked for transfer to an unseen section using
    training labels only. With fewer than two labelled training sections, :data:`LOGREG_CS`'s middle
    value is used.
    """
    groups = pd.unique(sections)
    if groups.size < 2:
        return LogisticRegression(C=LOGREG_CS[len(LOGREG_CS) // 2], max_iter=5000, random_state=seed).fit(
            x, y
        )
    folds = [
        (tr, va)
        for tr, va in LeaveOneGroupOut().split(x, y, sections)
        if np.unique(y[tr]).size == 2 and np.unique(y[va]).size == 2
    ]
    cv = LogisticRegressionCV(Cs=LOGREG_CS, cv=folds, scoring="roc_auc", max_iter=5000, random_state=seed)
    with warnings.catch_warnings():  # scikit-learn 1.9 announces changes of defaults we do not rely on
        warnings.simplefilter("ignore", FutureWarning)
        return cv.fit(x, y)


def logreg_hvg(
    train: ad.AnnData, test: ad.AnnData, seed: int, *, timer: Timer | None = None, smooth: bool = False, **_
) -> np.ndarray:
    """L2 logistic regression on 2,000 training-set HVGs, log-normalised and z-scored per section.

    The regularisation strength is chosen by leave-one-training-section-out cross-validation
    (:func:`fit_logreg`); the held-out section plays no part in it.
    """
    timer = timer or Timer()
    with timer.phase("train"):
        genes = select_hvgs(train)
        mask, y = labelled(train)
        x = expression_features(train, genes, smooth)[mask]
        clf = fit_logreg(x, y, train.obs["section"].astype(str).to_numpy()[mask], seed)
    with timer.phase("predict"):
        return clf.predict_proba(expression_features(test, genes, smooth))[:, 1]


def logreg_hvg_knn(
    train: ad.AnnData, test: ad.AnnData, seed: int, *, timer: Timer | None = None, **_
) -> np.ndarray:
    """:func:`logreg_hvg` on features averaged over each spot and its 6 nearest spots."""
    return logreg_hvg(train, test, seed, timer=timer, smooth=True)


def erbb2(train: ad.AnnData, test: ad.AnnData, seed: int, *, timer: Timer | None = None, **_) -> np.ndarray:
    """ERBB2 log-normalised expression, min–max scaled within each test section (no training)."""
    timer = timer or Timer()
    if "ERBB2" not in test.var_names:
        raise KeyError("ERBB2 is not among the benchmark genes")
    with timer.phase("predict"):
        x = log_normalise(test, ["ERBB2"])[:, 0]
        sections = test.obs["section"].astype(str).to_numpy()
        out = np.empty_like(x)
        for s in pd.unique(sections):
            idx = sections == s
            out[idx] = minmax(x[idx])
        return out


def scanvi(
    train: ad.AnnData,
    test: ad.AnnData,
    seed: int,
    *,
    timer: Timer | None = None,
    quick: bool = False,
    scvi_epochs: int = 200,
    scanvi_epochs: int = 20,
    **_,
) -> np.ndarray:
    """scANVI label transfer: SCVI on train+test counts (batch = section), then SCANVI, soft predictions.

    Test spots enter as ``"Unknown"``; so do training spots without a label. Genes: the 2,000
    training-set HVGs. The whole fit is counted as training because scANVI is transductive.
    """
    import scvi

    timer = timer or Timer()
    if quick:
        scvi_epochs, scanvi_epochs = 10, 2
    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.WARNING
    for name in ("scvi", "lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with timer.phase("train"):
        genes = select_hvgs(train)
        mask, y = labelled(train)
        train_labels = np.full(train.n_obs, "Unknown", dtype=object)
        train_labels[mask] = np.where(y == 1, "cancer", "non-cancer")
        parts = []
        for part, labels in ((train, train_labels), (test, np.full(test.n_obs, "Unknown", dtype=object))):
            a = ad.AnnData(_counts(part[:, genes]), var=pd.DataFrame(index=genes))
            a.obs_names = part.obs_names
            a.layers["counts"] = a.X.copy()
            a.obs["section"] = part.obs["section"].astype(str).to_numpy()
            a.obs["ctr_label"] = labels
            parts.append(a)
        both = ad.concat(parts, index_unique="-")
        both.obs["section"] = both.obs["section"].astype("category")
        both.obs["ctr_label"] = both.obs["ctr_label"].astype("category")
        scvi.model.SCVI.setup_anndata(both, layer="counts", batch_key="section", labels_key="ctr_label")
        trainer_kwargs = {"enable_progress_bar": False, "enable_model_summary": False, "logger": False}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vae = scvi.model.SCVI(both)
            vae.train(max_epochs=scvi_epochs, **trainer_kwargs)
            model = scvi.model.SCANVI.from_scvi_model(
                vae, unlabeled_category="Unknown", labels_key="ctr_label"
            )
            model.train(max_epochs=scanvi_epochs, n_samples_per_label=100, **trainer_kwargs)
    with timer.phase("predict"):
        test_idx = np.arange(train.n_obs, both.n_obs)
        soft = model.predict(both, indices=test_idx, soft=True)
        return soft["cancer"].to_numpy(dtype=float)


@contextmanager
def unshifted_calibration(model) -> Iterator[None]:
    """Within the block, ``model`` predicts with its calibration's shift set to 0 (the scale kept).

    Covers the stored calibration and one refitted for other post-processing settings alike.
    """
    fitted = model._calibration_for

    def without_shift(settings):
        calibration = fitted(settings)
        return None if calibration is None else dataclasses.replace(calibration, shift=0.0)

    model._calibration_for = without_shift
    try:
        yield
    finally:
        del model._calibration_for  # back to the class's method


def _trained_spacrd(
    train: ad.AnnData, seed: int, quick: bool, image_key: str | None, model_kwargs: dict, train_kwargs: dict
):
    """A SpaCRD set up on (a copy of) ``train`` and trained with seed ``seed``."""
    import scvi

    from spacrd.model import SpaCRD

    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.WARNING
    train = train.copy()
    SpaCRD.setup_anndata(
        train,
        layer="counts",
        labels_key="cancer",
        batch_key="section",
        image_key=image_key,
        n_neighbors=N_NEIGHBORS,
    )
    model = SpaCRD(train, **model_kwargs)
    epochs = {"align_epochs": 2, "fuse_epochs": 2, "classify_epochs": 3} if quick else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(**{**train_kwargs, **epochs}, enable_progress_bar=False)
    return model


def _spacrd_run(
    train: ad.AnnData,
    test: ad.AnnData,
    seed: int,
    timer: Timer | None,
    quick: bool,
    image_key: str | None,
    model_kwargs: dict,
    train_kwargs: dict,
    predict_kwargs: dict,
    ranking_kwargs: dict | None = None,
) -> np.ndarray:
    """Set up, train and predict SpaCRD; writes ``test.obs["ctr"]`` (its label-free call) as a side effect.

    ``ranking_kwargs``: model arguments of a second SpaCRD, trained alongside, that orders the spots
    (``predict(ranking_model=...)``); its training time counts as training.
    """
    timer = timer or Timer()
    with timer.phase("train"):
        model = _trained_spacrd(train, seed, quick, image_key, model_kwargs, train_kwargs)
        ranker = None
        if ranking_kwargs is not None:
            ranker = _trained_spacrd(train, seed, quick, image_key, ranking_kwargs, train_kwargs)
    with timer.phase("predict"):
        return np.asarray(model.predict(test, ranking_model=ranker, **predict_kwargs), dtype=float)


def spacrd(
    train: ad.AnnData,
    test: ad.AnnData,
    seed: int,
    *,
    timer: Timer | None = None,
    quick: bool = False,
    image_key: str | None = None,
    train_kwargs: dict | None = None,
    ranking_kwargs: dict | None = None,
    **_,
) -> np.ndarray:
    """SpaCRD with default settings (``train_kwargs`` override training arguments).

    ``ranking_kwargs``: model arguments of a second SpaCRD that orders the spots (see :func:`_spacrd_run`).
    """
    return _spacrd_run(
        train, test, seed, timer, quick, image_key, {}, dict(train_kwargs or {}), {}, ranking_kwargs
    )


def spacrd_paper(
    train: ad.AnnData,
    test: ad.AnnData,
    seed: int,
    *,
    timer: Timer | None = None,
    quick: bool = False,
    image_key: str | None = None,
    **_,
) -> np.ndarray:
    """SpaCRD with the research code's configuration (``spacrd.model.PAPER``): model, training and prediction."""
    from spacrd.model import PAPER

    return _spacrd_run(
        train, test, seed, timer, quick, image_key, dict(PAPER.model), dict(PAPER.train), dict(PAPER.predict)
    )


#: Default SpaCRD whose spots are ordered by a second one trained on unscaled expression: the
#: ``section_scaling="none"`` ranking that the nested selection chose in every fold, with the default
#: model's per-section probabilities and Bayes call (``predict(ranking_model=...)``).
spacrd_ranked = functools.partial(spacrd, ranking_kwargs={"section_scaling": "none"})


METHODS: dict[str, Callable[..., np.ndarray]] = {
    "spacrd": spacrd,
    "spacrd_ranked": spacrd_ranked,
    "spacrd_paper": spacrd_paper,
    "logreg_hvg": logreg_hvg,
    "logreg_hvg_knn": logreg_hvg_knn,
    "scanvi": scanvi,
    "erbb2": erbb2,
}
