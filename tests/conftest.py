from pathlib import Path

import pytest

#: The shared data folder beside the repository (CI places ``shared/`` beside the clone); tests marked
#: ``data`` read from it and are skipped where it is missing.
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
#: The public HER2ST snapshot laid out as in ``almaan/her2st``.
HER2ST_ROOT = DATA_ROOT / "her2st"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("data") is not None and not DATA_ROOT.is_dir():
        pytest.skip(f"needs the shared data folder {DATA_ROOT} (../shared/data beside the repository)")


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    if not (HER2ST_ROOT / "data" / "ST-cnts").is_dir():
        pytest.fail(
            f"HER2ST data not found at {HER2ST_ROOT}; place the shared data folder beside the repository."
        )
    return HER2ST_ROOT
