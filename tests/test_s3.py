"""Object stores for real: a store on a local S3-compatible server (moto's S3 in its own process, tests/s3_server.py)
through s3fs with ``storage_options`` for the endpoint: ingest killed mid-run and resumed, plain zarr, block and
random reads with the requests per shard that the README promises (counted at the server), one read's requests
across shards sent at once, and the loader in both sampling modes giving exactly what it gives from a local copy."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from ecgfast import shards
from ecgfast.augment import Augment
from ecgfast.ingest import ingest
from ecgfast.loader import ECGLoader
from ecgfast.sampling import PatientBatchSampler
from ecgfast.store import FIELDS, ECGStore
from ecgfast.views import ViewSpec

sys.path.insert(0, str(Path(__file__).parent))
from s3_server import S3Server  # noqa: E402

SHARD = 8
SHAPE = ["--leads", "8", "--fs", "100", "--seconds", "2", "--chunk-records", str(SHARD)]  # tiny records, 7 shards


@pytest.fixture(scope="session")
def s3():
    server = S3Server()
    yield server
    server.stop()


def _ingest_command(src, url, options) -> list[str]:
    opts = [a for k, v in options.items() for a in ("--storage-option", f"{k}={json.dumps(v)}")]
    return [sys.executable, "-m", "ecgfast.cli", "ingest", str(src), url, *SHAPE, "--workers", "1", "--no-progress",
            *opts]


@pytest.fixture(scope="module")
def stores(s3, data_dir, tmp_path_factory):
    """The CinC records ingested into S3 by a run killed (SIGKILL) after its second shard, then resumed; and the
    same ingest into a local folder in one go."""
    src = data_dir / "cinc2021"
    url = s3.bucket("ecgs") + "/cinc.zarr"
    killed = subprocess.run(_ingest_command(src, url, s3.storage_options), capture_output=True, text=True,
                            timeout=300, env={**os.environ, "ECGFAST_FAULT": "ingest.marked@2:kill"})
    assert killed.returncode == -9, killed.stderr
    interrupted = ECGStore.open(url, storage_options=s3.storage_options)
    assert len(interrupted) == 0 and interrupted.state_names() == ["ingest_state"]
    resumed = subprocess.run(_ingest_command(src, url, s3.storage_options), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed an interrupted run that had written 16" in resumed.stdout
    local = tmp_path_factory.mktemp("s3") / "cinc.zarr"
    ingest(src, local, leads=8, fs=100, seconds=2, chunk_records=SHARD, progress=False)
    return url, ECGStore.open(local)


def test_ingest_killed_and_resumed_stores_every_record_exactly_once(s3, stores):
    url, local = stores
    remote = ECGStore.open(url, storage_options=s3.storage_options)
    assert remote.state_names() == [] and remote.verify() == []
    assert len(remote) == len(local) == 50
    assert sorted(remote.record_ids.tolist()) == sorted(set(remote.record_ids.tolist()))  # each once
    np.testing.assert_array_equal(remote.record_ids, local.record_ids)
    np.testing.assert_array_equal(remote.read_block(0, len(remote), raw=True), local.read_block(0, len(local), raw=True))
    assert remote.codec == local.codec == ("blosc-lz4hc", 2) and remote.record_codec().checksum


def test_plain_zarr_opens_the_s3_store(s3, stores):
    url, local = stores
    group = zarr.open_group(url, mode="r", storage_options=s3.storage_options)
    np.testing.assert_array_equal(group["signals"][:], local.read_block(0, len(local), raw=True))
    for name in FIELDS:
        assert group[name].shape[0] == len(local), name
    np.testing.assert_array_equal(group["patient_id"][:], local.patient_ids)


def test_reads_cost_two_requests_per_shard_first_then_one(s3, stores, monkeypatch):
    url, local = stores
    remote = ECGStore.open(url, storage_options=s3.storage_options)
    expected = local.read_block(0, len(local), raw=True)

    def shard_requests():
        got = [(path.rsplit("/c/", 1)[1], method, rng) for method, path, rng in s3.requests() if "/signals/c/" in path]
        s3.reset()
        return got

    s3.reset()
    np.testing.assert_array_equal(remote.read_block(8, 24, raw=True), expected[8:24])  # shards 1 and 2, whole
    got = shard_requests()
    assert sorted(k for k, _, _ in got) == ["1/0/0", "1/0/0", "2/0/0", "2/0/0"]
    assert all(m == "GET" for _, m, _ in got) and sum(r.startswith("bytes=-") for _, _, r in got) == 2  # index
    np.testing.assert_array_equal(remote.read_block(8, 24, raw=True), expected[8:24])
    assert sorted(k for k, _, _ in shard_requests()) == ["1/0/0", "2/0/0"]  # indexes known: one span each
    idx = [45, 3, 31, 3, 24]  # shards 5, 0 and 3 (its first and last records, close: one request), a repeat
    np.testing.assert_array_equal(remote.read(idx, raw=True), expected[idx])
    got = shard_requests()
    assert sorted(k for k, _, r in got if r.startswith("bytes=-")) == ["0/0/0", "3/0/0", "5/0/0"]
    assert sorted(k for k, _, r in got if not r.startswith("bytes=-")) == ["0/0/0", "3/0/0", "5/0/0"]
    monkeypatch.setattr(shards, "_MAX_GAP", 0)  # chunks that do not touch: a request each
    np.testing.assert_array_equal(remote.read([31, 24], raw=True), expected[[31, 24]])
    index = remote._reader.index(3)
    assert sorted(shard_requests()) == sorted(("3/0/0", "GET", f"bytes={a}-{a + n - 1}") for a, n in index[[0, 7]])


def test_one_reads_requests_across_shards_go_out_at_once(s3, stores):
    url, local = stores
    remote = ECGStore.open(url, storage_options=s3.storage_options)
    s3.set_latency(0.2)  # long enough that requests sent one after another never overlap at the server
    try:
        s3.reset()
        np.testing.assert_array_equal(remote.read([1, 12, 20, 28, 36], raw=True),
                                      local.read([1, 12, 20, 28, 36], raw=True))
        assert len(s3.requests()) == 10 and s3.most_in_progress() == 5  # five indexes at once, then five records
    finally:
        s3.set_latency(0)


@pytest.mark.parametrize("mode", ["patient", "uniform"])
def test_the_loader_gives_over_s3_what_it_gives_from_disk(s3, stores, mode):
    url, local = stores
    remote = ECGStore.open(url, storage_options=s3.storage_options)
    spec, augment = ViewSpec(fs=100, window=100, copies=2), Augment.paper()

    def epoch(store):
        sampler = PatientBatchSampler.from_store(store, spec, batch_size=8, augment=augment, seed=3, mode=mode)
        return list(ECGLoader(store, spec, augment, batch_size=8, sampler=sampler, seed=3, threads=1))

    got, want = epoch(remote), epoch(local)
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
