"""Map a user's label column to cancer / non-cancer / unlabelled."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from spacrd._constants import CANCER, NON_CANCER, UNLABELLED

#: Categories of the derived label column, in code order (0, 1, 2).
LABEL_CATEGORIES = (NON_CANCER, CANCER, "unlabelled")


def cancer_labels(column: pd.Series, cancer_categories: Sequence[str] | None = None) -> pd.Categorical:
    """Convert a label column to a categorical with :data:`LABEL_CATEGORIES`.

    Accepted columns: bool (nullable ``boolean`` too), numbers 0/1 (NaN allowed), or categories/strings.
    For strings, ``cancer_categories`` lists the values that mean cancer; every other non-missing value
    is non-cancer. Without it, the strings must be exactly ``"cancer"``/``"non-cancer"``. Missing values
    (NaN, ``None``, ``<NA>``) become ``"unlabelled"``.
    """
    name = column.name
    missing = column.isna().to_numpy()
    values = column.to_numpy(dtype=object)
    if cancer_categories is not None:
        if isinstance(cancer_categories, str):
            raise TypeError(
                f"`cancer_categories` must be a list of category names, got the string {cancer_categories!r}; "
                f"pass [{cancer_categories!r}]."
            )
        wanted = {str(c) for c in cancer_categories}
        present = {str(v) for v in values[~missing]}
        available = sorted(present)
        if isinstance(column.dtype, pd.CategoricalDtype):
            available = sorted({str(c) for c in column.cat.categories} | present)
        unknown = sorted(wanted - set(available))
        if not wanted or unknown:
            raise ValueError(
                f"`cancer_categories` {unknown or []} do not occur in obs[{name!r}] (every entry must name one of "
                f"its values, exactly); its values are {available[:20]}."
            )
        is_cancer = np.array([str(v) in wanted for v in values])
    elif pd.api.types.is_bool_dtype(column.dtype) or set(values[~missing]) <= {True, False}:
        is_cancer = np.array([bool(v) if not m else False for v, m in zip(values, missing, strict=True)])
    elif pd.api.types.is_numeric_dtype(column.dtype):
        observed = set(np.unique(column.to_numpy(dtype=float)[~missing]).tolist())
        if not observed <= {0.0, 1.0}:
            raise ValueError(
                f"obs[{name!r}] is numeric with values {sorted(observed)[:10]}; a numeric label must be 0 "
                "(non-cancer) or 1 (cancer), with NaN for unlabelled spots."
            )
        is_cancer = np.nan_to_num(column.to_numpy(dtype=float)) == 1.0
    else:
        observed = {str(v) for v in values[~missing]}
        if not observed <= {"cancer", "non-cancer"}:
            raise ValueError(
                f"obs[{name!r}] holds categories {sorted(observed)[:20]}. Pass `cancer_categories=[...]` "
                "naming the ones that mean cancer (e.g. ['invasive cancer', 'cancer in situ']), or give a "
                "bool column."
            )
        is_cancer = np.array([str(v) == "cancer" for v in values])
    codes = np.where(missing, 2, is_cancer.astype(int))
    return pd.Categorical.from_codes(codes, categories=list(LABEL_CATEGORIES))


def label_codes(column: pd.Series, cancer_categories: Sequence[str] | None = None) -> np.ndarray:
    """``(n,)`` int64 label codes of :func:`cancer_labels`: 0 non-cancer, 1 cancer, ``UNLABELLED`` (-1)."""
    codes = cancer_labels(column, cancer_categories).codes.astype(np.int64)
    return np.where(codes == 2, UNLABELLED, codes)
