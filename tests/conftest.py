from pathlib import Path

import pytest

#: The shared folder of real public data; CI places ``shared/`` beside the clone.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: The public HER2ST snapshot laid out as in ``almaan/her2st``.
HER2ST_ROOT = SHARED_DATA / "her2st"


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.data(*folders)`` tests when ``SHARED_DATA`` (or a folder named) is missing."""
    for item in items:
        if "her2st_root" in getattr(item, "fixturenames", ()) and item.get_closest_marker("data") is None:
            item.add_marker(pytest.mark.data("her2st"))  # every test reading the real HER2ST files
        marker = item.get_closest_marker("data")
        if marker is None:
            continue
        needed = [SHARED_DATA / folder for folder in marker.args] or [SHARED_DATA]
        missing = [path for path in needed if not path.is_dir()]
        if missing:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"needs the real data folder {missing[0]}; place the shared data folder "
                    f"(shared/data) beside the repository to run it."
                )
            )


@pytest.fixture(scope="session")
def her2st_root() -> Path:
    """The real HER2ST files; tests that use this fixture are marked ``data`` and skipped without them."""
    if not (HER2ST_ROOT / "data" / "ST-cnts").is_dir():
        pytest.skip(
            f"needs the HER2ST files at {HER2ST_ROOT}; place the shared data folder beside the repository"
        )
    return HER2ST_ROOT
