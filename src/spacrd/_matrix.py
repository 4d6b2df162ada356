"""Reading a count matrix in row chunks, whether it is in memory (sparse or dense), backed on disk or lazy."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from scipy import sparse

#: Spots per chunk when counts are read from a backed, lazy or dense matrix.
READ_CHUNK = 65_536


def row_chunks(matrix: Any, chunk: int = READ_CHUNK) -> Iterator[tuple[int, sparse.csr_matrix]]:
    """Yield ``(start, CSR block)`` over the rows of an in-memory, backed or dense matrix."""
    if sparse.issparse(matrix) and not isinstance(matrix, sparse.csr_matrix | sparse.csr_array):
        matrix = sparse.csr_matrix(matrix)  # csc or coo in memory: one conversion, as scanpy does
    n = matrix.shape[0]
    if sparse.issparse(matrix):
        yield 0, matrix
        return
    for start in range(0, n, chunk):
        block = matrix[start : min(start + chunk, n)]
        if hasattr(block, "compute"):  # a lazily read (dask) matrix
            block = block.compute()
        if not sparse.issparse(block):
            block = sparse.csr_matrix(np.asarray(block))
        yield start, sparse.csr_matrix(block)
