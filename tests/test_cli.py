"""The ``ecgfast`` command: failures that speak (one line naming the option and the fix, a non-zero exit status, the
traceback only under ``--debug``), ingest's reports of what it could not do, ``verify``, ``--storage-option``."""

import numpy as np
import pytest
import scipy.io

from ecgfast.cli import main
from ecgfast.ingest import NothingStored, ingest
from ecgfast.store import ECGStore


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("folder, fmt, says", [
    ("cinc2021", "muse", "holds no muse records (.xml files): it holds 50 .mat, 50 .hea; it looks like --format wfdb"),
    ("cpsc2018", "wfdb", "holds no wfdb records (.hea files): it holds 10 .mat; it looks like --format cpsc2018"),
    ("cinc2021", "cpsc2018", "holds no cpsc2018 records (.mat files)"),  # .mat beside .hea: WFDB signal files
    (None, "auto", "cannot tell the format"),
    (None, "wfdb", "holds no wfdb records (.hea files): it holds no files"),
])
def test_ingest_that_matches_nothing_fails_naming_the_format_and_writes_nothing(data_dir, tmp_path, capsys, folder,
                                                                                 fmt, says):
    src = data_dir / folder if folder else tmp_path / "empty"
    src.mkdir(exist_ok=True)
    dest = tmp_path / "s.zarr"
    assert main(["ingest", str(src), str(dest), "--format", fmt, "--no-progress"]) == 2
    err = _err(capsys)
    assert err.startswith("ecgfast ingest: error: ") and says in err and len(err.splitlines()) == 1
    assert not dest.exists()


def test_ingest_whose_every_record_is_skipped_fails_with_the_counts_and_reasons(tmp_path, capsys):
    src = tmp_path / "mats"
    src.mkdir()
    for i in range(3):
        (src / f"A{i}.mat").write_bytes(b"not a MATLAB file")
    dest = tmp_path / "s.zarr"
    assert main(["ingest", str(src), str(dest), "--workers", "1", "--no-progress"]) == 2
    err = _err(capsys)
    assert "stored none of the 3 records" in err and "(unreadable 3)" in err and "mats/A0: unreadable" in err
    assert "--format" in err and not dest.exists()  # the store this run created is removed again
    # Appending to an existing store: the store is left as it was, no report rows, no provenance entry.
    good = tmp_path / "good"
    good.mkdir()
    scipy.io.savemat(good / "B0.mat", {"ECG": {"sex": "Male", "age": 50, "data": np.ones((12, 5000)) *
                                               np.sin(np.arange(5000) / 30)}})
    ingest(good, dest, progress=False)
    before = ECGStore.open(dest)
    with pytest.raises(NothingStored, match="every one was skipped") as caught:
        ingest(src, dest, progress=False)
    assert caught.value.report.skipped == {"unreadable": 3}
    after = ECGStore.open(dest)
    assert len(after) == len(before) == 1 and len(after.report["level"]) == 0
    assert len(after.attrs["provenance"]["sources"]) == 1 and after.state_names() == []


@pytest.mark.parametrize("argv, says", [
    (["ingest", "SRC", "D", "--workers", "0"], "argument --workers: 0 is not at least 1"),
    (["ingest", "SRC", "D", "--codec", "blosc-zstd", "--compression-level", "12"],
     "compression_level (--compression-level) of blosc-zstd must be an integer from 0 to 9, got 12"),
    (["ingest", "SRC", "D", "--fs", "-5"], "argument --fs: -5 is not a positive number"),
    (["ingest", "SRC", "D", "--format", "edf"], "argument --format: invalid choice: 'edf'"),
    (["ingest", "SRC", "D", "--storage-option", "anon"], "argument --storage-option: 'anon' is not key=value"),
    (["synth", "D", "--patients", "0"], "argument --patients: 0 is not at least 1"),
    (["synth", "D", "--patients", "2", "--ecgs-per-patient", "9"], "argument --ecgs-per-patient: 9 is not from 1"),
])
def test_every_option_is_checked_before_any_work(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and says in _err(capsys)


def test_options_the_format_or_the_files_refuse_name_the_option(data_dir, tmp_path, capsys):
    cinc, dest = str(data_dir / "cinc2021"), str(tmp_path / "s.zarr")
    assert main(["ingest", cinc, dest, "--source-unit-uv", "100", "--no-progress"]) == 2
    assert "--source-unit-uv (source_unit_uv) do not apply to format wfdb (it takes --labels-from-dx" in _err(capsys)
    assert main(["ingest", cinc, dest, "--labels", str(tmp_path / "no.csv"), "--no-progress"]) == 2
    assert "labels (--labels)" in (err := _err(capsys)) and err.endswith("no.csv is not a file")
    assert main(["ingest", cinc, dest, "--format", "numpy", "--no-progress"]) == 2
    assert "--lead-names, --source-fs" in _err(capsys)


def test_debug_shows_the_traceback_and_other_errors_stay_one_line(tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ECGStore, "open", broken)
    assert main(["info", str(tmp_path / "s.zarr")]) == 1
    assert _err(capsys) == "ecgfast info: error: RuntimeError: disk on fire (--debug shows the traceback)"
    assert main(["info", str(tmp_path / "s.zarr"), "--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("ecgfast info: error: RuntimeError: disk on fire")


def test_synth_names_its_overwrite_option(tmp_path, capsys):
    dest = str(tmp_path / "c.zarr")
    argv = ["synth", dest, "--patients", "2", "--fs", "100", "--seconds", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 2
    assert _err(capsys) == f"ecgfast synth: error: {dest} already holds a store; pass --overwrite to replace it"
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0
    assert ECGStore.open(dest).attrs["provenance"]["seed"] == 3


def test_rerun_with_options_the_stored_records_cannot_take_warns_how_to_rebuild(data_dir, tmp_path, capsys):
    src, dest = str(data_dir / "cpsc2018"), tmp_path / "cpsc.zarr"
    assert main(["ingest", src, str(dest), "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "warned 8 (cropped 8)" in out  # the records longer than 10 s
    rows = {r: reason for r, level, reason in zip(*ECGStore.open(dest).report.values()) if level == "warn"}
    n = scipy.io.loadmat(data_dir / "cpsc2018" / "A1988.mat")["ECG"][0, 0]["data"].shape[1]  # 500 Hz
    assert rows["cpsc2018/A1988"] == (f"cropped {(n - 5000) / 500:.3g} s of {n / 500:.3g} s discarded "
                                      f"(--split keeps them as windows)")
    assert "cpsc2018/A1980" not in rows  # 10 s exactly: nothing discarded
    assert main(["ingest", src, str(dest), "--split", "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "ingested 0 records" in out and "already stored 10" in out
    assert (f"warning: --split does not apply to the 10 records of cpsc2018 already in {dest}, stored without it"
            in out) and "ingest into a new store" in out
    assert len(ECGStore.open(dest)) == 10


def test_labels_from_dx_on_stored_records_warns_and_adds_no_empty_labels(data_dir, tmp_path, capsys):
    src, dest = data_dir / "cinc2021", tmp_path / "cinc.zarr"
    ingest(src, dest, progress=False)
    labels = tmp_path / "labels.csv"
    labels.write_text("record_id,af\nE07500,1\nnosuch,0\ncinc2021/E07501,1\n")
    report = ingest(src, dest, labels_from_dx=True, labels=labels, progress=False)
    assert report.stored == 0 and report.unmatched == {"labels": ["nosuch", "cinc2021/E07501"]}
    text = str(report)
    assert "--labels: 2 rows match no record of the source: nosuch, cinc2021/E07501" in text
    assert "warning: --labels-from-dx does not apply to the 50 records" in text
    assert "warning: --labels does not apply" in text
    assert ECGStore.open(dest).label_names == []  # no all-NaN dx_ labels


def test_unmatched_patient_rows_are_counted_and_listed(data_dir, tmp_path):
    patients = tmp_path / "patients.csv"
    rows = "".join(f"x{i},p{i}\n" for i in range(12))
    patients.write_text("record_id,patient_key\nE07500,p1\nE07501,p1\n" + rows)
    report = ingest(data_dir / "cinc2021", tmp_path / "s.zarr", patients=patients, progress=False)
    assert report.stored == 50 and len(report.unmatched["patients"]) == 12
    assert "--patients: 12 rows match no record of the source: x0, x1" in str(report)
    assert "x9 and 2 more" in str(report)


def test_verify_passes_a_good_store_and_names_a_damaged_shard(data_dir, tmp_path, capsys):
    dest = tmp_path / "cinc.zarr"
    ingest(data_dir / "cinc2021", dest, chunk_records=16, progress=False)
    assert main(["verify", str(dest), "--no-progress"]) == 0
    assert "ok (50 records in 4 shards;" in capsys.readouterr().out
    record_40 = ECGStore.open(dest).read([40])
    shard = dest / "signals" / "c" / "2" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x04
    shard.write_bytes(data)
    assert main(["verify", str(dest), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"shard {shard} (records 32-47)" in out and "CRC-32C" in out
    assert main(["info", str(dest)]) == 0  # info reads no signals
    np.testing.assert_array_equal(ECGStore.open(dest).read([40]), record_40)  # the shard's other records still read
    with pytest.raises(ValueError, match="records 32-47"):  # the flipped byte lies in record 32's chunk
        ECGStore.open(dest).read([40, 32])


def test_storage_options_reach_fsspec_from_the_command_line(tmp_path, capsys, monkeypatch):
    import zarr.storage

    seen = []
    from_url = zarr.storage.FsspecStore.from_url

    def recording(url, **kwargs):
        seen.append(kwargs.get("storage_options"))
        return from_url(url, **kwargs)

    monkeypatch.setattr(zarr.storage.FsspecStore, "from_url", staticmethod(recording))
    url = "memory://cli-storage-options/c.zarr"
    argv = ["synth", url, "--patients", "1", "--fs", "100", "--seconds", "1", "--overwrite",
            "--storage-option", "tag=abc", "--storage-option", "retries=3"]
    assert main(argv) == 0
    assert main(["verify", url, "--storage-option", "tag=abc", "--no-progress"]) == 0
    assert seen and all(s in ({"tag": "abc", "retries": 3}, {"tag": "abc"}) for s in seen)
    assert main(["info", str(tmp_path / "local.zarr"), "--storage-option", "tag=abc"]) == 2
    assert "apply to fsspec URLs" in _err(capsys)
