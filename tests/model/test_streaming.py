"""The streamed, sparse input path gives the dense path's numbers, and encodes each spot once."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy import sparse

import spacrd
from spacrd.model import SpaCRD
from spacrd.model._adata_inputs import target_inputs
from spacrd.model._inputs import section_codes, section_stats
from spacrd.nn import ShiftedSparse
from spacrd.tl._adaptation import expression_neighbors, section_pca


def _dense_scaling(values, sections, method):
    """The per-section scaling as the dense reference computes it: numpy statistics per block."""
    out = values.astype(np.float64).copy()
    for section in pd.unique(sections):
        rows = sections == section
        block = out[rows]
        if method == "zscore":
            centre, spread = block.mean(0), block.std(0)
        else:
            centre, spread = block.min(0), block.max(0) - block.min(0)
        out[rows] = np.divide(block - centre, spread, out=np.zeros_like(block), where=spread > 1e-8)
    return out


@pytest.fixture(scope="module")
def her2st():
    """A model trained on five patients of the shipped HER2ST subset, and the held-out A1."""
    adata = spacrd.datasets.her2st_ctr()
    source = adata[adata.obs["section"] != "A1"].copy()
    target = adata[adata.obs["section"] == "A1"].copy()
    scvi.settings.seed = 0
    SpaCRD.setup_anndata(source, labels_key="cancer", batch_key="section")
    model = SpaCRD(source, n_top_genes=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(fuse_epochs=1, classify_epochs=2, enable_progress_bar=False)
    return model, target


@pytest.mark.parametrize("method", ["zscore", "minmax"])
def test_section_statistics_from_sparse_moments_match_dense(method):
    rng = np.random.default_rng(0)
    counts = sparse.random(300, 40, density=0.1, format="csr", random_state=0, dtype=np.float32) * 5
    sections = rng.choice(["a", "b", "c"], 300)
    codes, names = section_codes(sections, 300)
    stats = section_stats(counts, codes, len(names), method)
    scaled = stats.apply(counts.toarray(), codes)
    np.testing.assert_allclose(scaled, _dense_scaling(counts.toarray(), sections, method), atol=1e-5)


def test_shifted_sparse_linear_is_the_dense_linear():
    x = sparse.random(50, 30, density=0.2, format="csr", random_state=1, dtype=np.float32)
    shift, rows = torch.randn(3, 30), torch.randint(0, 3, (50,))
    values = torch.sparse_csr_tensor(
        torch.from_numpy(x.indptr.astype(np.int64)),
        torch.from_numpy(x.indices.astype(np.int64)),
        torch.from_numpy(x.data),
        size=x.shape,
    )
    shifted = ShiftedSparse(values, shift, rows)
    weight, bias = torch.randn(8, 30), torch.randn(8)
    dense = torch.from_numpy(x.toarray()) - shift[rows]
    torch.testing.assert_close(shifted.dense(), dense)
    torch.testing.assert_close(shifted.linear(weight, bias), torch.nn.functional.linear(dense, weight, bias))


def test_sparse_pca_and_expression_graph_match_dense():
    rng = np.random.default_rng(0)
    x = sparse.random(400, 60, density=0.15, format="csr", random_state=2, dtype=np.float32)
    weights = rng.uniform(0.5, 2.0, (2, 60)).astype(np.float32)
    codes = np.repeat([0, 1], 200)
    dense = x.toarray() * weights[codes]
    sparse_embedding = section_pca(x, codes, 10, column_weights=weights)
    dense_embedding = section_pca(dense, codes, 10)
    # principal components are defined up to sign
    signs = np.sign((sparse_embedding * dense_embedding).sum(0))
    np.testing.assert_allclose(sparse_embedding * signs, dense_embedding, atol=1e-3)  # ARPACK tolerance
    np.testing.assert_array_equal(
        expression_neighbors(x, codes, column_weights=weights), expression_neighbors(dense, codes)
    )


def test_sparse_dense_and_backed_targets_predict_the_same(her2st, tmp_path):
    model, target = her2st
    reference = model.predict(target.copy())
    dense = target.copy()
    dense.X = dense.X.toarray()
    np.testing.assert_allclose(model.predict(dense), reference, atol=1e-5)
    target.write_h5ad(tmp_path / "a1.h5ad")
    backed = ad.read_h5ad(tmp_path / "a1.h5ad", backed="r")
    np.testing.assert_allclose(model.predict(backed), reference, atol=1e-5)
    # the network on densified batches (the training path's input) gives the same logits
    inputs = target_inputs(model.input_spec, target, 0.5, None)
    with torch.inference_mode():
        for sparse_genes in (True, False):
            batch = model._dataset(inputs, sparse_genes=sparse_genes)[np.arange(inputs.n_obs)]
            logits = model.module.inference(**model.module._get_inference_input(batch))["logits"]
            if sparse_genes:
                first = logits
    torch.testing.assert_close(first, logits, atol=1e-5, rtol=1e-5)


def test_prediction_encodes_each_spot_about_once(her2st):
    model, target = her2st
    rows = []
    hook = model.module.gene_encoder.register_forward_hook(lambda _m, args, _o: rows.append(args[0].shape[0]))
    try:
        model.predict(target.copy(), batch_size=64)  # small chunks: each adds its boundary spots
    finally:
        hook.remove()
    k = model.setup_args["n_neighbors"]
    # one pass over the spots plus chunk boundaries, against k passes for per-token encoding
    assert sum(rows) < 2.0 * target.n_obs < k * target.n_obs / 3
