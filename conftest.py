"""`pytest` runs tests/; `pytest --benchmark` runs benchmarks/ with pytest-benchmark enabled."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark", action="store_true", default=False, help="run the benchmarks in benchmarks/ instead of the tests"
    )


def pytest_configure(config):
    if not config.getoption("--benchmark") and hasattr(config.option, "benchmark_skip"):
        config.option.benchmark_skip = True


def pytest_ignore_collect(collection_path, config):
    bench = config.getoption("--benchmark")
    if collection_path == ROOT / "benchmarks":
        return not bench
    if collection_path == ROOT / "tests":
        return bench
    return None
