"""Loader throughput: a compressed store -> augmented two-copy batches in memory, against the same pipeline fed from
an uncompressed memmap of the same records. The codec trade-off behind it is bench_store.py's codec tables.

Records: the 50 real CinC 2021 ECGs ingested with 8 leads (I, II, V1-V6; 500 Hz, 10 s), tiled to ``N`` records in
shards of 256 (the default codec), patients of two records. Views: the paper's (2 copies of a random 5 s window,
VCG rotation and scaling, zero mask). Cases: the block-mode loader (the default sampler, mode "patient": whole
shards read and kept) and the global shuffle (mode "uniform": each batch's records read on their own, merged per
shard) on the same store, on a copy in shards of 8 (a batch touches one or two records per shard, as in a store of
10^6), on ``memory://`` and on a local S3-compatible server (tests/s3_server.py: moto's S3 in its own process,
through s3fs). Targets: the block-mode store at least 0.25x the memmap; the global shuffle at least 0.5x the block
mode. Run with ``pytest --benchmark -s``.
"""

import os
import sys
from pathlib import Path

import numpy as np
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
        self.chunk_records, self.n_samples = store.chunk_records, store.n_samples
        self.patient_ids, self.lengths, self.lead_valid = store.patient_ids, store.lengths, store.lead_valid

    def read_block(self, start, stop, raw=True, out=None):
        if out is None:
            return np.array(self.raw[start:stop])
        out[...] = self.raw[start:stop]
        return out


def tile(raw, url, shard=SHARD, storage_options=None) -> ECGStore:
    with ECGStore.create(url, LEADS8, 500.0, raw.shape[2], chunk_records=shard,
                         storage_options=storage_options) as store:
        store.append(raw, lengths=np.full(len(raw), raw.shape[2]), record_ids=[f"t/{i}" for i in range(len(raw))],
                     patient_keys=[str(i // 2) for i in range(len(raw))], raw=True)
    return ECGStore.open(url, storage_options=storage_options)


def loaders(data_dir, folder, s3=None) -> dict:
    """name -> loader of each case (the S3 cases with ``s3``, a tests/s3_server.S3Server), warmed up."""
    ingest(data_dir / "cinc2021", folder / "cinc8.zarr", leads=8, progress=False)
    cinc = ECGStore.open(folder / "cinc8.zarr")
    raw = np.resize(cinc.read_block(0, len(cinc), raw=True), (N, 8, cinc.n_samples))
    local = tile(raw, str(folder / "tiled.zarr"))
    block = {"memmap, block mode": MemmapStore(folder / "tiled.npy", raw, local), "ECGStore, block mode": local,
             "ECGStore on memory://, block mode": tile(raw, f"memory://{folder.name}/tiled.zarr")}
    uniform = {"ECGStore, global shuffle": local, "global shuffle, shards of 8": tile(raw, str(folder / "s8.zarr"), 8)}
    if s3 is not None:
        remote = tile(raw, s3.bucket("bench-loader") + "/tiled.zarr", storage_options=s3.storage_options)
        block["ECGStore on S3 (local server), block mode"] = uniform["ECGStore on S3, global shuffle"] = remote
    spec, augment = ViewSpec.paper(), Augment.paper()
    out = {name: ECGLoader(src, spec, augment, batch_size=BATCH, threads=THREADS) for name, src in block.items()}
    for name, store in uniform.items():
        sampler = PatientBatchSampler.from_store(store, spec, batch_size=BATCH, augment=augment, mode="uniform")
        out[name] = ECGLoader(store, spec, augment, batch_size=BATCH, threads=THREADS, sampler=sampler)
    for loader in out.values():  # compile and warm up outside the timing
        next(iter(loader))
    return out


def epoch(loader):
    return lambda: sum(len(batch["index"]) for batch in loader)


def loader_rates(data_dir, folder, names, rounds=3) -> dict:
    """ECGs/s of the cases ``names``, one epoch per call, interleaved (bench_store.py's done-when table)."""
    cases = loaders(data_dir, folder)
    return interleaved_rates({name: epoch(cases[name]) for name in names}, len(cases[names[0]]) * BATCH,
                             rounds=rounds)


def test_loader_vs_memmap(data_dir, tmp_path, benchmark):
    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from s3_server import S3Server

    s3 = S3Server()
    try:
        cases = loaders(data_dir, tmp_path, s3)
        n = len(cases["memmap, block mode"]) * BATCH
        rates = interleaved_rates({name: epoch(loader) for name, loader in cases.items()}, n, rounds=3)
    finally:
        s3.stop()
    print_table(f"store -> augmented 2-copy batches of {BATCH} in memory, {N} CinC records (8 x 5000), "
                f"{THREADS} threads, load {os.getloadavg()[0]:.1f}", rates, "memmap, block mode", "ECGs/s")
    block = rates["ECGStore, block mode"]
    for name in ("ECGStore, global shuffle", "global shuffle, shards of 8", "ECGStore on S3, global shuffle"):
        print(f"{name} / block mode on local disk: {rates[name].wall / block.wall:.2f}x wall, "
              f"{rates[name].cpu / block.cpu:.2f}x per CPU-s")
    remote = rates["ECGStore on S3 (local server), block mode"]
    print(f"S3 / local disk, block mode: {remote.wall / block.wall:.2f}x wall")
    benchmark.extra_info.update({name: r._asdict() for name, r in rates.items()})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert block.wall >= 0.25 * rates["memmap, block mode"].wall
    assert rates["ECGStore, global shuffle"].wall >= 0.5 * block.wall
    assert rates["global shuffle, shards of 8"].wall >= 0.5 * block.wall
