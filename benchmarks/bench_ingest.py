"""WFDB ingest records/s, per wall second and per CPU-second (per core), against reading the same records into
memory (header, signal, resampling, leads, crop) without storing them.

The 50 real CinC records, linked three times under one source folder (150 records). Run with
``pytest --benchmark -s``.
"""

import shutil

import pytest
from ratios import interleaved_rates, print_table

from ecgfast.ingest import convert, ingest
from ecgfast.ingest.wfdb import WFDBReader
from ecgfast.leads import LEADS12

COPIES = 3


@pytest.fixture(scope="module")
def source(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("wfdb")
    for k in range(COPIES):
        (root / f"copy{k}").mkdir()
        for f in (data_dir / "cinc2021").iterdir():
            (root / f"copy{k}" / f.name).symlink_to(f)
    return root


def test_wfdb_ingest_rate(source, tmp_path, benchmark):
    reader = WFDBReader(source)
    items = reader.items()
    dest = tmp_path / "ingest.zarr"

    def read_only():
        for item in items:
            convert(reader.read(item), LEADS12, 500, 5000)

    def ingest_fresh():
        shutil.rmtree(dest, ignore_errors=True)
        ingest(source, dest, progress=False)

    cases = {"read into memory": read_only, "ingest into a store": ingest_fresh}
    rates = interleaved_rates(cases, len(items), rounds=3, min_seconds=0)
    print_table(f"WFDB ingest of {len(items)} CinC records (12 leads, 500 Hz, 10 s)", rates, "read into memory")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(ingest_fresh, rounds=1, iterations=1)
    # Storing adds the Blosc zstd encoding (~540 records per CPU-second at level 3), measured here at ~0.2x.
    # Issue 6 asks for 0.5x (parallel shard writers); until then this floor only catches regressions.
    assert rates["ingest into a store"].cpu >= 0.1 * rates["read into memory"].cpu
