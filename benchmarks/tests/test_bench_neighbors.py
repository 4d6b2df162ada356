"""benchmarks/bench_neighbors.py: the recall it reports and its table."""

import bench_neighbors as bn
import numpy as np

from spacrd.pp._neighbors import IVF_CELLS_PER_SQRT_SPOTS, IVF_PROBES


def test_recall_counts_the_shared_neighbours():
    exact = np.array([[0, 1, 2, 3], [1, 0, 2, 4]])
    found = np.array([[0, 1, 2, 3], [1, 5, 6, 4]])
    assert bn.recall(exact, exact) == 1.0
    assert bn.recall(found, exact) == (1.0 + 0.5) / 2


def test_table_has_a_row_per_setting_with_a_high_recall(capsys):
    shipped_setting = f"{IVF_CELLS_PER_SQRT_SPOTS},{IVF_PROBES}"
    bn.main(["--spots", "3000", "--settings", shipped_setting, "1,1", "--threads", "1"])
    rows = [
        line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert len(rows) == 3  # header and two settings
    shipped, coarse = (float(r.split("|")[3]) for r in rows[1:])
    assert shipped > 0.9 and coarse < shipped  # one cell searched of a few misses neighbours
    assert "shipped" in rows[1]
