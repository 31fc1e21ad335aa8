"""Interrupted ingest: a real kill -9 of the ``ecgfast ingest`` process at several points (by time, and at named
fault points during the final write-out), Ctrl-C to the process group with worker processes, then the same command:
every good record exactly once, the report complete, the store equal to an uninterrupted run's, no worker left
behind. Also: stores that refuse an ingest are left unchanged, ``--strict``, ``memory://`` with worker processes,
appends."""

import hashlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from ecgfast.cli import main
from ecgfast.ingest import ingest
from ecgfast.leads import LEADS12
from ecgfast.store import ECGStore

N_GOOD, SHARD = 118, 4  # 118: the last shard is partial, so an append rewrites it


def _write_record(folder, name, adc, names=LEADS12, truncate=0, header=None):
    """A format-16 WFDB record written from the specification (1 uV per unit, 500 Hz)."""
    data = np.asarray(adc, "<i2").T.tobytes()
    (folder / f"{name}.dat").write_bytes(data[: len(data) - truncate])
    lines = [f"{name} {len(names)} 500 {adc.shape[1]}"]
    lines += [f"{name}.dat 16 1000(0)/mV 16 0 {a[0]} 0 0 {n}" for a, n in zip(adc, names)]
    (folder / f"{name}.hea").write_text(header or "\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """118 good 10 s records (two with a flat lead), and a truncated, a broken and a flat one among them."""
    src = tmp_path_factory.mktemp("resume") / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    t = np.arange(5000)
    for i in range(N_GOOD):
        periods = rng.uniform(200, 400, (12, 1))
        adc = np.rint(600 * np.sin(2 * np.pi * t[None] / periods) + rng.normal(0, 20, (12, 5000)))
        if i in (7, 70):
            adc[9] = 0
        _write_record(src, f"r{i:03d}", adc)
        if i == 30:
            _write_record(src, "r030x_truncated", adc, truncate=500)
        if i == 60:
            _write_record(src, "r060x_broken", adc, header="r060x_broken twelve 500\n")
        if i == 90:
            _write_record(src, "r090x_flat", np.full((12, 5000), 3))
    return src


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    dest = tmp_path_factory.mktemp("ref") / "ref.zarr"
    ingest(source, dest, chunk_records=SHARD, progress=False)
    return ECGStore.open(dest)


def _command(source, dest, workers):
    return [sys.executable, "-m", "ecgfast.cli", "ingest", str(source), str(dest), "--chunk-records", str(SHARD),
            "--workers", str(workers), "--no-progress"]


def _kill_after(cmd, dest, markers: int, timeout=60.0) -> None:
    """Run ``cmd``; kill -9 its process group, still running, once ``markers`` shards are marked done."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = dest / "ingest_state"
    deadline = time.monotonic() + timeout
    seen = 0
    while proc.poll() is None and time.monotonic() < deadline:
        seen = len(list(state.glob("done_*"))) if state.is_dir() else 0
        if seen >= markers and (markers or state.is_dir()):
            break
        time.sleep(0.002)
    assert proc.poll() is None, f"the ingest ended (exit {proc.returncode}) before {markers} shards were marked done"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _assert_same_fields(store, reference):
    for name in ("record_ids", "patient_ids", "patient_keys", "lengths", "lead_valid", "age", "sex", "fs_original"):
        np.testing.assert_array_equal(getattr(store, name), getattr(reference, name), err_msg=name)  # NaN == NaN


def test_kill_9_at_several_points_then_the_same_command_finishes_exactly_once(source, reference, tmp_path):
    dest = tmp_path / "killed.zarr"
    for workers, markers in ((2, 0), (1, 5), (2, 15)):  # markers: shards done before the kill; 0: once begun
        _kill_after(_command(source, dest, workers), dest, markers)
    done = subprocess.run(_command(source, dest, 2), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resumed an interrupted run" in done.stdout
    store = ECGStore.open(dest)
    assert len(store) == N_GOOD == len(set(store.record_ids.tolist()))
    _assert_same_fields(store, reference)
    np.testing.assert_array_equal(store.read_block(0, N_GOOD, raw=True), reference.read_block(0, N_GOOD, raw=True))
    # zarr-python itself reads the shards ingest wrote (it checks each shard index's CRC-32C).
    np.testing.assert_array_equal(zarr.open_group(dest, mode="r")["signals"][:],
                                  reference.read_block(0, N_GOOD, raw=True))
    rows = sorted(zip(*store.report.values()))
    assert rows == sorted(zip(*reference.report.values()))
    assert [(r[0], r[1], r[2].split()[0]) for r in rows] == [
        ("src/r007", "warn", "flat_lead"), ("src/r030x_truncated", "skip", "truncated"),
        ("src/r060x_broken", "skip", "bad_header"), ("src/r070", "warn", "flat_lead"),
        ("src/r090x_flat", "skip", "flat_record")]
    assert store.state("ingest_state") is None and not (dest / "ingest_state").exists()
    assert len(store.attrs["provenance"]["sources"]) == 1
    # The same command once more: nothing to do, nothing added.
    again = subprocess.run(_command(source, dest, 1), capture_output=True, text=True, timeout=120)
    assert "ingested 0 records" in again.stdout and f"already stored {N_GOOD + 3}" in again.stdout
    assert len(ECGStore.open(dest)) == N_GOOD and len(ECGStore.open(dest).report["level"]) == 5


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_refused_ingests_leave_the_store_unchanged(source, tmp_path):
    dest = tmp_path / "s.zarr"
    ingest(source, dest, chunk_records=SHARD, progress=False)
    before = _digest(dest)
    for kw, match in ((dict(fs=250), "250 Hz"), (dict(leads=8), "'I', 'II', 'V1'"), (dict(gain_uv=2), "2 uV"),
                      (dict(seconds=5), "2500 samples")):
        with pytest.raises(ValueError, match=match):
            ingest(source, dest, progress=False, **kw)
    assert _digest(dest) == before
    # An unfinished run of another source: a different command is refused until that one is finished.
    other = tmp_path / "other.zarr"
    _kill_after(_command(source, other, 1), other, markers=2)
    before = _digest(other)
    with pytest.raises(ValueError, match="unfinished ingest"):
        ingest(tmp_path, other, format="wfdb", source_name="elsewhere", progress=False)
    assert _digest(other) == before
    assert f"unfinished run of {source} (wfdb)" in ECGStore.open(other).summary()


def test_strict_stops_at_the_first_skipped_record(source, tmp_path, capsys):
    dest = tmp_path / "strict.zarr"
    assert main(["ingest", str(source), str(dest), "--strict", "--workers", "1", "--no-progress"]) == 2
    assert "src/r030x_truncated" in capsys.readouterr().err
    assert len(ECGStore.open(dest)) == 0  # nothing is visible until a run finishes


def test_memory_store_with_worker_processes_and_an_append(source, reference, tmp_path):
    dest = "memory://ingest-test"
    report = ingest(source, dest, chunk_records=SHARD, workers=2, progress=False)
    assert report.stored == N_GOOD
    store = ECGStore.open(dest)
    np.testing.assert_array_equal(store.read_block(0, N_GOOD, raw=True), reference.read_block(0, N_GOOD, raw=True))
    # A second source appends after a partial last shard: ids stay unique, its patients get new ids.
    second = tmp_path / "second"
    second.mkdir()
    for name in ("r000", "r001"):
        for ext in (".hea", ".dat"):
            (second / f"{name}{ext}").write_bytes((source / f"{name}{ext}").read_bytes())
    ingest(second, dest, workers=1, progress=False)
    store = ECGStore.open(dest)
    assert store.record_ids.tolist()[-3:] == [f"src/r{N_GOOD - 1:03d}", "second/r000", "second/r001"]
    assert store.patient_ids.tolist()[-3:] == [N_GOOD - 1, N_GOOD, N_GOOD + 1]
    np.testing.assert_array_equal(store.read_block(N_GOOD, N_GOOD + 2, raw=True), reference.read_block(0, 2, raw=True))


def test_interrupted_inside_a_record_split_into_windows(data_dir, tmp_path, monkeypatch):
    """Shards of 3 records cut the CPSC records' windows apart: a run stopped at the first marker that ends inside a
    record resumes there, writing each window once (Ctrl-C here, in-process; the kill -9 test covers dying)."""
    from ecgfast.ingest import driver

    src, kw = data_dir / "cpsc2018", dict(split=True, chunk_records=3, progress=False)
    ingest(src, tmp_path / "ref.zarr", **kw)
    reference = ECGStore.open(tmp_path / "ref.zarr")
    write = driver._ShardWriter.write
    stopped_at = []

    def interrupted(self, next_pos, partial):
        write(self, next_pos, partial)
        if partial > 0:
            stopped_at.append(self.next)
            raise KeyboardInterrupt

    monkeypatch.setattr(driver._ShardWriter, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ingest(src, tmp_path / "s.zarr", **kw)
    monkeypatch.setattr(driver._ShardWriter, "write", write)
    report = ingest(src, tmp_path / "s.zarr", **kw)
    assert stopped_at and report.resumed == stopped_at[0] and report.stored == len(reference)
    store = ECGStore.open(tmp_path / "s.zarr")
    _assert_same_fields(store, reference)
    np.testing.assert_array_equal(store.read_block(0, len(store), raw=True),
                                  reference.read_block(0, len(reference), raw=True))


@pytest.fixture
def sigint_at_default():
    """A shell starts a background job with SIGINT ignored, and an ignored signal stays ignored through exec, so the
    commands under test would never see the Ctrl-C (the ingest then exits 0). A caught signal is reset to its default
    by exec: catching it here starts them as a terminal's foreground job starts."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _with_fault(cmd, fault: str, timeout=120.0):
    """Run ``cmd`` in a process group of its own with the named fault point armed (``ecgfast.ingest.faults``)."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "ECGFAST_FAULT": fault})
    out, err = proc.communicate(timeout=timeout)
    return proc, out, err


def _finish_and_compare(source, dest, reference, workers=1):
    done = subprocess.run(_command(source, dest, workers), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    store = ECGStore.open(dest)
    assert len(store) == N_GOOD and store.state_names() == []
    _assert_same_fields(store, reference)
    np.testing.assert_array_equal(store.read_block(0, N_GOOD, raw=True), reference.read_block(0, N_GOOD, raw=True))
    assert sorted(zip(*store.report.values())) == sorted(zip(*reference.report.values()))
    assert len(store.attrs["provenance"]["sources"]) == 1 and store.verify() == []
    return done


def test_killed_during_the_final_write_out_the_same_command_finishes_exactly_once(source, reference, tmp_path):
    """Killed after the columns, report and provenance are written but before the store grows (its records are
    not visible yet); run again and killed after the store grew but before the run's state is removed; run again."""
    dest = tmp_path / "s.zarr"
    for point, visible in (("ingest.columns", 0), ("ingest.grown", N_GOOD)):
        proc, _, _ = _with_fault(_command(source, dest, 1), f"{point}:kill")
        assert proc.returncode == -signal.SIGKILL
        store = ECGStore.open(dest)
        assert len(store) == visible and store.state_names() == ["ingest_state"], point
        assert "unfinished run of" in store.summary()
    _finish_and_compare(source, dest, reference)


def test_ctrl_c_with_worker_processes_loses_nothing_and_leaves_no_worker(source, reference, tmp_path,
                                                                          sigint_at_default):
    """SIGINT to the whole process group (what Ctrl-C in a terminal does) once three shards are marked done, while
    two worker processes convert: the command says how to finish and exits 130, every process of the group is
    gone, and the same command finishes the run with every record exactly once."""
    dest = tmp_path / "s.zarr"
    proc, _, err = _with_fault(_command(source, dest, 2), "ingest.marked@3:sigint")
    assert proc.returncode == 130, err
    assert err.strip().endswith("ecgfast ingest: interrupted; run the same command again to finish it")
    deadline = time.monotonic() + 10
    while True:  # multiprocessing's resource tracker takes a moment to see the pipe close
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("a process of the interrupted ingest outlived it")
        time.sleep(0.05)
    store = ECGStore.open(dest)
    assert len(store) == 0 and len(store.state_entries("ingest_state")) == 3
    done = _finish_and_compare(source, dest, reference, workers=2)
    assert "resumed an interrupted run that had written 12" in done.stdout  # 3 shards of 4


def _importing_worker(group: int) -> bool:
    """Whether a process of ``group`` is a spawned multiprocessing worker that has begun its imports (NumPy's
    extension is mapped): Python's SIGINT handler is installed, the worker's initializer has not run yet."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if (os.getpgid(int(pid)) == group and b"spawn_main" in open(f"/proc/{pid}/cmdline", "rb").read()
                    and "_multiarray_umath" in open(f"/proc/{pid}/maps").read()):
                return True
        except (OSError, ProcessLookupError):
            continue
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the worker processes through /proc")
def test_ctrl_c_while_workers_start_prints_no_worker_traceback(source, tmp_path, sigint_at_default):
    """Ctrl-C to the process group while a worker process still imports (before its initializer could ignore
    SIGINT): the parent alone answers, with its one line, and no worker's traceback."""
    proc = subprocess.Popen(_command(source, tmp_path / "s.zarr", 2), start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _importing_worker(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "no worker process started"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip() == "ecgfast ingest: interrupted; run the same command again to finish it"
