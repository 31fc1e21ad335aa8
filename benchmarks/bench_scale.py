"""A store at scale: 10^5 records, the documented stand-in for 10^6 on this machine.

The 10^5 records are the 50 real CinC records (8 leads, 500 Hz, 10 s) tiled with distinct record ids: each is
encoded once and its bytes are written 2,000 times through the ingest's own shard writer
(``ECGStore.write_encoded_shard``, the resume protocol's markers, ``append_columns``), so the store is byte for byte what ingest writes, built
in a minute instead of the hours that encoding 10^5 records takes on 2 loaded cores. The ingest rate per core comes
from a real ingest of 1,000 records (the CinC records linked 20 times) and is extrapolated to 10^6 records.

Reported: records/s per core, the store's size on disk and file count, the time to open it (and load the fields
the loader needs), and loader throughput from it against a 10^4-record store built the same way (target >= 0.9x).
Run with ``pytest --benchmark -s``.
"""

import itertools
import os
import time
from pathlib import Path

import numpy as np
import pytest
from ratios import interleaved_rates, print_table

from ecgfast.augment import Augment
from ecgfast.ingest import ingest
from ecgfast.ingest.resume import Run
from ecgfast.leads import LEADS8
from ecgfast.loader import ECGLoader
from ecgfast.store import ECGStore
from ecgfast.views import ViewSpec

BIG, SMALL, SHARD, BATCH, BATCHES = 10**5, 10**4, 256, 256, 24
THREADS = len(os.sched_getaffinity(0))


def tiled_store(path, cinc: ECGStore, n: int) -> ECGStore:
    """``n`` records cycling through the CinC records, ids ``tile/<k>/<record>``, patients of two records."""
    with ECGStore.create(path, LEADS8, cinc.fs, cinc.n_samples, chunk_records=SHARD) as store:
        codec = store.record_codec()
    chunks = [codec.encode(r) for r in cinc.read_block(0, len(cinc), raw=True)]
    m = len(chunks)
    with ECGStore.open(path, mode="r+") as store:
        for k in range(0, n, SHARD):
            rows = np.arange(k, min(n, k + SHARD))
            store.write_encoded_shard(k // SHARD, [chunks[i % m] for i in rows])
            store.append_columns(lengths=cinc.lengths[rows % m], lead_valid=cinc.lead_valid[rows % m],
                                 record_ids=[f"tile/{i // m}/{cinc.record_ids[i % m]}" for i in rows],
                                 patient_keys=[str(i // 2) for i in rows])
    return ECGStore.open(path)


def files_and_bytes(path) -> tuple[int, int]:
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


@pytest.fixture(scope="module")
def stores(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scale")
    ingest(data_dir / "cinc2021", folder / "cinc8.zarr", leads=8, progress=False)
    cinc = ECGStore.open(folder / "cinc8.zarr")
    built = {}
    for name, n in (("10^4", SMALL), ("10^5", BIG)):
        t0 = time.perf_counter()
        tiled_store(folder / f"{name}.zarr", cinc, n)
        built[name] = (folder / f"{name}.zarr", time.perf_counter() - t0)
    return folder, built


def test_ingest_rate_per_core_extrapolated(data_dir, tmp_path):
    src = tmp_path / "src"
    for k in range(20):
        (src / f"copy{k:02d}").mkdir(parents=True)
        for f in (data_dir / "cinc2021").iterdir():
            (src / f"copy{k:02d}" / f.name).symlink_to(f)
    c0, t0 = time.process_time(), time.perf_counter()
    report = ingest(src, tmp_path / "s.zarr", leads=8, progress=False)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    per_core = report.stored / cpu
    print(f"\nWFDB ingest of {report.stored} CinC records, 8 leads, workers=1: {report.stored / wall:,.0f} records/s, "
          f"{per_core:,.0f} records per CPU-second; 10^6 records at this rate: {1e6 / per_core / 3600:.1f} core-hours, "
          f"{1e6 / per_core / 16 / 60:.0f} min on 16 cores (linear scaling; one writer process)")
    assert report.stored == 1000


def test_single_writer_rate(data_dir, tmp_path):
    """The one writer of a parallel ingest: whole encoded shards and their done markers, per 12-lead record."""
    ingest(data_dir / "cinc2021", tmp_path / "cinc.zarr", progress=False)
    cinc = ECGStore.open(tmp_path / "cinc.zarr")
    shards = 8
    with ECGStore.create(tmp_path / "w.zarr", cinc.lead_names, cinc.fs, cinc.n_samples, chunk_records=SHARD) as store:
        codec = store.record_codec()
        chunks = [codec.encode(r) for r in np.resize(cinc.read_block(0, len(cinc), raw=True), (SHARD, 12, 5000))]
        fields = [{"rid": f"x/{i}", "key": "k", "length": 5000, "age": None, "sex": 1, "fs": 500.0,
                   "valid": "1" * 12, "pos": i} for i in range(SHARD)]
        run = Run.begin(store, {"source": "bench", "format": "wfdb"}, 0, 0, shards * SHARD, "")
        c0, t0 = time.process_time(), time.perf_counter()
        for k in range(shards):
            store.write_encoded_shard(k, chunks)
            run.mark({"shard": k, "records": fields, "rows": [], "next": 0, "partial": 0})
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert store.encoded_chunks(shards - 1, SHARD) == chunks  # the shard holds what was written
        run.end()
    n = shards * SHARD
    print(f"\nsingle writer, {n} 12-lead records in shards of {SHARD} with done markers: "
          f"{wall / n * 1e3:.2f} ms wall, {cpu / n * 1e3:.2f} ms CPU per record: at most {n / wall:,.0f} records/s, "
          f"10^6 in {1e6 * wall / n / 60:.1f} min")


def test_scale_store_size_open_and_loader_throughput(stores, benchmark):
    folder, built = stores
    for name, (path, seconds) in built.items():
        files, size = files_and_bytes(path)
        t0 = time.perf_counter()
        store = ECGStore.open(path)
        fields = (store.patient_ids, store.lengths, store.lead_valid, store.record_ids)
        opened = time.perf_counter() - t0
        print(f"\n{name} store: {len(store):,} records in {seconds:.1f} s; {size / 1e9:.2f} GB on disk, "
              f"{files:,} files ({size / len(store) / 1e3:.1f} kB per record); open + fields {opened * 1e3:.0f} ms")
        assert len(fields[0]) == len(store)

    spec, augment = ViewSpec.paper(), Augment.paper()
    loaders = {name: ECGLoader(ECGStore.open(path), spec, augment, batch_size=BATCH, threads=THREADS)
               for name, (path, _) in built.items()}
    for loader in loaders.values():
        next(iter(loader))  # compile and warm up outside the timing

    def batches(loader):
        epochs = itertools.count(1)

        def run():  # the first batches of a fresh epoch: blocks in a new random order
            loader.set_epoch(next(epochs))
            it = iter(loader)
            for _ in range(BATCHES):
                next(it)
        return run

    rates = interleaved_rates({f"{name} records": batches(loader) for name, loader in loaders.items()},
                              BATCHES * BATCH, rounds=5)
    print_table(f"loader: {BATCHES} augmented 2-copy batches of {BATCH} (8 x 5000), {THREADS} threads, "
                f"load {os.getloadavg()[0]:.1f}", rates, "10^4 records", "ECGs/s")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(batches(loaders["10^5"]), rounds=1, iterations=1)
    assert rates["10^5 records"].wall >= 0.9 * rates["10^4 records"].wall
