from pathlib import Path

import pytest

#: The public HER2ST snapshot laid out as in ``almaan/her2st``; CI places ``shared/`` beside the clone.
HER2ST_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "her2st"


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    if not (HER2ST_ROOT / "data" / "ST-cnts").is_dir():
        pytest.fail(
            f"HER2ST data not found at {HER2ST_ROOT}; place the shared data folder beside the repository."
        )
    return HER2ST_ROOT
