import numpy as np
from scipy import sparse

import spacrd


def test_shipped_subset_is_the_labelled_her2st_sections(her2st_root):
    small = spacrd.datasets.her2st_ctr()
    assert small.n_vars == 2000
    counts = small.obs.groupby("section", observed=True).size().to_dict()
    assert counts == {"A1": 346, "B1": 295, "C1": 176, "D1": 306, "E1": 587, "F1": 691}
    assert small.obs["cancer"].notna().all()
    assert set(small.uns["spatial"]["A1"]["images"]) == {"hires"}
    # Counts equal the raw files for the kept genes.
    full = spacrd.datasets.her2st(["C1"], path=her2st_root, load_images=False)
    sub = small[small.obs["section"] == "C1"]
    full = full[sub.obs_names, sub.var_names]
    assert (sparse.csr_matrix(full.layers["counts"]) != sparse.csr_matrix(sub.X)).nnz == 0
    np.testing.assert_array_equal(full.obs["cancer"].to_numpy(bool), sub.obs["cancer"].to_numpy(bool))
