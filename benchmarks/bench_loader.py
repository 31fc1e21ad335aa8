"""Loader throughput: a compressed store -> augmented two-copy batches in memory, against the same pipeline fed from
an uncompressed memmap of the same records. The codec trade-off behind it is bench_store.py's ``test_codec_choice``.

Records: the 50 real CinC 2021 ECGs ingested with 8 leads (I, II, V1-V6; 500 Hz, 10 s), tiled to ``N`` records in
shards of 256, patients of two records. Views: the paper's (2 copies of a random 5 s window, VCG rotation and
scaling, zero mask). Cases: the block-mode loader (the default sampler, mode "patient": whole shards read and kept)
and the global shuffle (mode "uniform": each batch's records read on their own, merged per shard) on the same
store, and on a copy in shards of 8, where a batch touches one or two records per shard as in a store of 10^6.
Targets: the block-mode store at least 0.25x the memmap; the global shuffle at least 0.5x the block mode.
Run with ``pytest --benchmark -s``.
"""

import os

import numpy as np
import pytest
from ratios import interleaved_rates, print_table

from ecgfast.augment import Augment
from ecgfast.ingest import ingest
from ecgfast.leads import LEADS8
from ecgfast.loader import ECGLoader
from ecgfast.sampling import PatientBatchSampler
from ecgfast.store import ECGStore
from ecgfast.views import ViewSpec

N, BATCH, SHARD = 2048, 256, 256
THREADS = len(os.sched_getaffinity(0))


class MemmapStore:
    """The baseline: the same records uncompressed in one .npy file, read by the loader exactly like a store."""

    def __init__(self, path, raw, store):
        memmap = np.lib.format.open_memmap(path, mode="w+", dtype=np.int16, shape=raw.shape)
        memmap[:] = raw
        memmap.flush()
        self.raw = np.load(path, mmap_mode="r")
        self.lead_names, self.fs, self.gain_uv = store.lead_names, store.fs, store.gain_uv
        self.chunk_records = store.chunk_records
        self.patient_ids, self.lengths, self.lead_valid = store.patient_ids, store.lengths, store.lead_valid

    def read_block(self, start, stop, raw=True):
        return np.array(self.raw[start:stop])


def tile(raw, url, shard=SHARD) -> ECGStore:
    with ECGStore.create(url, LEADS8, 500.0, raw.shape[2], chunk_records=shard) as store:
        store.append(raw, lengths=np.full(len(raw), raw.shape[2]), record_ids=[f"t/{i}" for i in range(len(raw))],
                     patient_keys=[str(i // 2) for i in range(len(raw))], raw=True)
    return ECGStore.open(url)


@pytest.fixture(scope="module")
def sources(data_dir, tmp_path_factory):
    """name -> store-like source of the block-mode cases; and the same records in shards of 8."""
    folder = tmp_path_factory.mktemp("bench_loader")
    ingest(data_dir / "cinc2021", folder / "cinc8.zarr", leads=8, progress=False)
    cinc = ECGStore.open(folder / "cinc8.zarr")
    raw = np.resize(cinc.read_block(0, len(cinc), raw=True), (N, 8, cinc.n_samples))
    local = tile(raw, str(folder / "tiled.zarr"))
    return ({"memmap, uncompressed": MemmapStore(folder / "tiled.npy", raw, local),
             "ECGStore, Blosc zstd": local,
             "ECGStore on memory://": tile(raw, "memory://bench_loader/tiled.zarr")},
            tile(raw, str(folder / "shards8.zarr"), shard=8))


def test_loader_vs_memmap(sources, benchmark):
    spec, augment = ViewSpec.paper(), Augment.paper()
    stores, small_shards = sources
    loaders = {name: ECGLoader(src, spec, augment, batch_size=BATCH, threads=THREADS) for name, src in stores.items()}
    for name, store in (("ECGStore, global shuffle", stores["ECGStore, Blosc zstd"]),
                        ("global shuffle, shards of 8", small_shards)):
        uniform = PatientBatchSampler.from_store(store, spec, batch_size=BATCH, augment=augment, mode="uniform")
        loaders[name] = ECGLoader(store, spec, augment, batch_size=BATCH, threads=THREADS, sampler=uniform)
    for loader in loaders.values():  # compile and warm up outside the timing
        next(iter(loader))

    def epoch(loader):
        return lambda: sum(len(batch["index"]) for batch in loader)

    n = len(loaders["memmap, uncompressed"]) * BATCH
    rates = interleaved_rates({name: epoch(loader) for name, loader in loaders.items()}, n, rounds=3)
    print_table(f"store -> augmented 2-copy batches of {BATCH} in memory, {N} CinC records (8 x 5000), "
                f"{THREADS} threads, load {os.getloadavg()[0]:.1f}", rates, "memmap, uncompressed", "ECGs/s")
    block = rates["ECGStore, Blosc zstd"]
    for name in ("ECGStore, global shuffle", "global shuffle, shards of 8"):
        print(f"{name} / block mode: {rates[name].wall / block.wall:.2f}x wall, "
              f"{rates[name].cpu / block.cpu:.2f}x per CPU-s")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(epoch(loaders["ECGStore, Blosc zstd"]), rounds=1, iterations=1)
    assert rates["ECGStore, Blosc zstd"].wall >= 0.25 * rates["memmap, uncompressed"].wall
    assert rates["ECGStore, global shuffle"].wall >= 0.5 * block.wall
    assert rates["global shuffle, shards of 8"].wall >= 0.5 * block.wall
