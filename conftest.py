"""`pytest` runs tests/; `pytest --benchmark` runs benchmarks/ with pytest-benchmark enabled."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real public ECGs beside the checkout (../shared/data), for tests and benchmarks."""
    assert DATA.is_dir(), f"expected the shared ECG data at {DATA}"
    return DATA


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark", action="store_true", default=False, help="run the benchmarks in benchmarks/ instead of the tests"
    )


def pytest_configure(config):
    if not config.getoption("--benchmark") and hasattr(config.option, "benchmark_skip"):
        config.option.benchmark_skip = True


def pytest_ignore_collect(collection_path, config):
    # Called for what lies inside the testpaths (not for the testpaths themselves): keep each run to its folder.
    bench = config.getoption("--benchmark")
    if collection_path == ROOT / "benchmarks" or ROOT / "benchmarks" in collection_path.parents:
        return not bench
    if collection_path == ROOT / "tests" or ROOT / "tests" in collection_path.parents:
        return bench
    return None
