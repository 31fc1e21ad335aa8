"""WFDB ingest: the reader against wfdb-python, the CinC round trip, resampling, leads, CSVs, the report, the CLI."""

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

from ecgfast.cli import main
from ecgfast.ingest import SkipRecord, ingest
from ecgfast.ingest.wfdb import WFDBReader
from ecgfast.leads import LEADS12, canonical_lead
from ecgfast.store import ECGStore


@pytest.fixture(scope="module")
def cinc(data_dir, tmp_path_factory):
    """The 50 CinC records ingested with the defaults (12 leads, 500 Hz, 10 s, 1 uV per unit)."""
    dest = tmp_path_factory.mktemp("cinc") / "cinc.zarr"
    report = ingest(data_dir / "cinc2021", dest, progress=False)
    return ECGStore.open(dest), report


def _write_wfdb(folder, name, adc, names, fs=500, gain=1000, fmt="16", header_extra="", truncate=0):
    """A format-16 WFDB record (.hea + .dat) written from its specification, samples interleaved by frame."""
    folder.mkdir(parents=True, exist_ok=True)
    adc = np.asarray(adc, np.int16)
    data = adc.T.astype("<i2").tobytes()
    (folder / f"{name}.dat").write_bytes(data[: len(data) - truncate])
    lines = [f"{name} {len(names)} {fs} {adc.shape[1]}"]
    lines += [f"{name}.dat {fmt} {gain}(0)/mV 16 0 {a[0]} 0 0 {n}" for a, n in zip(adc, names)]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n" + header_extra)


def test_reader_matches_wfdb_on_cinc_and_ptb(data_dir):
    for folder, item in [("cinc2021", "E07500"), ("cinc2021", "HR06002"), ("cinc2021", "JS20004"),
                         ("ptb_frank", "s0010_re")]:
        ours = WFDBReader(data_dir / folder).read(item)
        ref = wfdb.rdrecord(str(data_dir / folder / item))
        assert ours.lead_names == ref.sig_name and ours.fs == ref.fs, item
        np.testing.assert_allclose(ours.signal, ref.p_signal.T, rtol=0, atol=1e-6, err_msg=item)
        comments = {c.split(":")[0].strip().lower(): c.split(":", 1)[1].strip() for c in ref.comments if ":" in c}
        assert ours.age == float(comments["age"])
        assert ours.sex == {"male": 1, "female": 0}[comments["sex"].lower()]


@pytest.mark.parametrize("fmt", ["212", "24", "32", "61", "80"])
def test_reader_matches_wfdb_on_other_sample_formats(fmt, tmp_path, monkeypatch):
    rng = np.random.default_rng(int(fmt))
    adc = rng.integers(-120, 120, (1001, 3))  # odd length: 212 packs samples in pairs
    monkeypatch.chdir(tmp_path)
    if fmt == "61":  # wfdb cannot write it: 16-bit big-endian, written here from the specification
        _write_wfdb(tmp_path, "r", adc.T, ["I", "II", "V1"], fs=250, gain=200)
        (tmp_path / "r.dat").write_bytes(adc.astype(">i2").tobytes())
        (tmp_path / "r.hea").write_text((tmp_path / "r.hea").read_text().replace(" 16 200", " 61 200"))
    else:
        wfdb.wrsamp("r", fs=250, units=["mV"] * 3, sig_name=["I", "II", "V1"], d_signal=adc, fmt=[fmt] * 3,
                    adc_gain=[200.0] * 3, baseline=[5] * 3)
    ref = wfdb.rdrecord(str(tmp_path / "r"))
    ours = WFDBReader(tmp_path).read("r")
    assert ref.fmt == [fmt] * 3 and ours.fs == 250 and ours.lead_names == ["I", "II", "V1"]
    np.testing.assert_allclose(ours.signal, ref.p_signal.T, rtol=0, atol=1e-6)


def test_cinc_round_trip_is_integer_equal_to_wfdb(cinc, data_dir):
    store, report = cinc
    items = WFDBReader(data_dir / "cinc2021").items()
    assert len(items) == 50 and len(store) == 50 and report.stored == 50
    assert store.record_ids.tolist() == [f"cinc2021/{it}" for it in items]
    uv = np.rint(store.read(np.arange(50)).astype(np.float64) * 1000).astype(np.int64)
    for i, item in enumerate(items):
        ref = wfdb.rdrecord(str(data_dir / "cinc2021" / item), physical=False)
        order = [ref.sig_name.index(lead) for lead in LEADS12]
        np.testing.assert_array_equal(uv[i], ref.d_signal.T[order], err_msg=item)
        assert store.lengths[i] == 5000 and store.fs_original[i] == 500
        assert store.sex[i] in (0, 1) and store.age[i] > 0
        flat = {"JS20004", "JS20008"}
        expected_valid = [not (item in flat and lead in ("V2", "V4", "V6")) for lead in LEADS12]
        assert store.lead_valid[i].tolist() == expected_valid, item
    rows = store.report
    assert sorted(zip(rows["record_id"], rows["level"], rows["reason"])) == [
        ("cinc2021/JS20004", "warn", "flat_lead V2 V4 V6"), ("cinc2021/JS20008", "warn", "flat_lead V2 V4 V6")]
    assert "warned 2 (flat_lead 2)" in str(report) and "records   50" in str(report)


def test_resampled_cropped_padded_and_frank_leads_ignored(data_dir, tmp_path):
    """PTB s0010_re: 15 signals at 1000 Hz, 38.4 s, 2000 adu/mV, into 500 Hz stores of 10 s and of 60 s."""
    ref = wfdb.rdrecord(str(data_dir / "ptb_frank" / "s0010_re"))
    expected = resample_poly(ref.p_signal[:, :12], 1, 2, axis=0).T  # float64 reference, lead order as LEADS12
    assert [canonical_lead(n) for n in ref.sig_name[:12]] == list(LEADS12)
    for seconds, length in [(10, 5000), (60, 19200)]:
        dest = tmp_path / f"ptb{seconds}.zarr"
        ingest(data_dir / "ptb_frank", dest, seconds=seconds, progress=False)
        store = ECGStore.open(dest)
        assert store.lengths[0] == length and store.fs_original[0] == 1000
        assert store.age[0] == 81 and store.sex[0] == 0
        x = store.read([0])[0]
        np.testing.assert_allclose(x[:, :length], expected[:, :length], rtol=0, atol=0.5e-3 + 1e-6)
        assert not x[:, length:].any()


def test_8_lead_store_derives_limb_leads_close_to_the_recorded_ones(data_dir, cinc, tmp_path):
    dest = tmp_path / "cinc8.zarr"
    ingest(data_dir / "cinc2021", dest, leads=8, progress=False)
    store8, store12 = ECGStore.open(dest), cinc[0]
    assert store8.lead_names == ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
    derived = store8.read(np.arange(50), leads=["III", "aVR", "aVL", "aVF"])
    recorded = store12.read(np.arange(50), leads=["III", "aVR", "aVL", "aVF"])
    # The recorded limb leads are rounded separately from I and II: they differ by a few microvolts.
    assert np.abs(derived - recorded).max() <= 3.5e-3 + 1e-6
    np.testing.assert_array_equal(store8.read_block(0, 50, leads=["I", "V6"]), store12.read_block(0, 50, leads=["I", "V6"]))


def test_patients_csv_groups_records_and_labels_csv_fills_labels(data_dir, tmp_path):
    items = WFDBReader(data_dir / "cinc2021").items()
    patients = tmp_path / "patients.csv"
    # Interleaved in the listing order: p0 owns items 0, 3, 6, ...; stored, each patient's records are adjacent.
    patients.write_text("record_id,patient_key\n" + "".join(f"{it},p{i % 3}\n" for i, it in enumerate(items)))
    labels = tmp_path / "labels.csv"
    labels.write_text("record_id,af,lvef\n" + f"{items[0]},1,0.35\n{items[4]},0,\n")
    dest = tmp_path / "grouped.zarr"
    ingest(data_dir / "cinc2021", dest, source_name="cinc", patients=patients, labels=labels, progress=False)
    store = ECGStore.open(dest)
    pid = store.patient_ids
    assert len(np.unique(pid)) == 3 and (np.diff(pid) >= 0).all()
    expected_order = [items[i] for k in range(3) for i in range(k, 50, 3)]
    assert store.record_ids.tolist() == [f"cinc/{it}" for it in expected_order]
    af, lvef = store.labels["af"], store.labels["lvef"]
    at = {rid: i for i, rid in enumerate(store.record_ids.tolist())}
    assert af[at[f"cinc/{items[0]}"]] == 1 and af[at[f"cinc/{items[4]}"]] == 0
    assert np.isclose(lvef[at[f"cinc/{items[0]}"]], 0.35) and np.isnan(lvef[at[f"cinc/{items[4]}"]])
    assert np.isnan(af).sum() == 48


def test_bad_records_are_skipped_and_reported(tmp_path):
    src = tmp_path / "src"
    t = np.arange(1000)
    good = np.stack([np.rint(800 * np.sin(2 * np.pi * t / (90 + 7 * k))) for k in range(12)])
    names = list(LEADS12)
    _write_wfdb(src, "good", good, names, header_extra="# Age: 61\n# Sex: F\n")
    _write_wfdb(src / "sub", "short", good, names, truncate=100)
    _write_wfdb(src, "flat", np.full_like(good, 7), names)
    _write_wfdb(src, "nolead", good[:3], ["vx", "vy", "vz"])
    _write_wfdb(src, "loud", good * 40, names, gain=500)  # 64 mV: beyond int16 at 1 uV per unit
    _write_wfdb(src, "eight", good[:8], ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6"])
    (src / "broken.hea").write_text("broken twelve 500\n")
    _write_wfdb(src, "nodat", good, names)
    (src / "nodat.dat").unlink()
    dest = tmp_path / "bad.zarr"
    report = ingest(src, dest, fs=500, seconds=2, progress=False)
    store = ECGStore.open(dest)
    assert store.record_ids.tolist() == ["src/eight", "src/good"]
    assert store.age.tolist() == [pytest.approx(np.nan, nan_ok=True), 61] and store.sex.tolist() == [-1, 0]
    reasons = {rid: (level, reason.split()[0]) for rid, level, reason in zip(*store.report.values())}
    assert reasons == {"src/broken": ("skip", "bad_header"), "src/sub/short": ("skip", "truncated"),
                       "src/flat": ("skip", "flat_record"), "src/nolead": ("skip", "lead_set"),
                       "src/loud": ("skip", "out_of_range"), "src/nodat": ("skip", "missing")}
    assert report.stored == 2 and sum(report.skipped.values()) == 6
    assert "skipped 6 (bad_header 1, flat_record 1, lead_set 1, missing 1, out_of_range 1, truncated 1)" in str(report)
    # An 8-lead source in a 12-lead store: the limb leads are derived, every lead valid.
    x = store.read([0], leads=["III", "aVF"])[0]
    np.testing.assert_allclose(x[0, :1000], (good[1] - good[0]) / 1000, rtol=0, atol=1e-6)
    # aVF = II - I/2 falls on half microvolts: the store rounds it to a whole one.
    np.testing.assert_allclose(x[1, :1000], (good[1] - good[0] / 2) / 1000, rtol=0, atol=0.5e-3 + 1e-6)
    assert store.lead_valid[0].all() and store.lengths.tolist() == [1000, 1000]
    with pytest.raises(SkipRecord, match="broken"):
        WFDBReader(src).read("broken")


def test_a_store_of_another_shape_is_refused_and_left_unchanged(tmp_path, data_dir):
    src = tmp_path / "src"
    _write_wfdb(src, "a", np.arange(24).reshape(12, 2) * 10, list(LEADS12))
    dest = tmp_path / "s.zarr"
    ingest(src, dest, seconds=1, progress=False)
    with pytest.raises(ValueError, match="250 Hz"):
        ingest(src, dest, fs=250, seconds=1, progress=False)
    assert len(ECGStore.open(dest)) == 1


def test_a_second_run_adds_only_new_records_and_a_second_source_appends(tmp_path):
    t = np.arange(500)
    wave = np.stack([np.rint(500 * np.sin(2 * np.pi * t / (60 + k))) for k in range(12)])
    for name in ("a", "b"):
        _write_wfdb(tmp_path / "one", name, wave, list(LEADS12))
    dest = tmp_path / "s.zarr"
    assert ingest(tmp_path / "one", dest, seconds=1, progress=False).stored == 2
    _write_wfdb(tmp_path / "one", "c", wave, list(LEADS12))
    again = ingest(tmp_path / "one", dest, seconds=1, progress=False)
    assert (again.stored, again.already_stored) == (1, 2) and "already stored 2" in str(again)
    _write_wfdb(tmp_path / "two", "a", wave, list(LEADS12))
    ingest(tmp_path / "two", dest, seconds=1, progress=False)
    store = ECGStore.open(dest)
    assert store.record_ids.tolist() == ["one/a", "one/b", "one/c", "two/a"]
    assert store.patient_ids.tolist() == [0, 1, 2, 3]
    assert [s["source_name"] for s in store.attrs["provenance"]["sources"]] == ["one", "one", "two"]


def test_cli_ingest_and_info(data_dir, tmp_path, capsys):
    dest = tmp_path / "cli.zarr"
    assert main(["ingest", str(data_dir / "ptb_frank"), str(dest), "--leads", "8", "--seconds", "2",
                 "--source-name", "ptb"]) == 0
    assert "ingested 1 records" in capsys.readouterr().out
    assert main(["info", str(dest)]) == 0
    out = capsys.readouterr().out
    assert "records   1" in out and "leads     8" in out and "1000 samples (2 s)" in out
    assert ECGStore.open(dest).record_ids.tolist() == ["ptb/s0010_re"]
    assert main(["ingest", str(tmp_path / "nowhere"), str(dest)]) == 2
    assert "nowhere" in capsys.readouterr().err
