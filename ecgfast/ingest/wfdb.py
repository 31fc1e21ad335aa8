"""WFDB reader: a directory tree of ``.hea`` headers with ``.dat`` or ``.mat`` signal files.

Two published layouts are recognised by their index files at the source root: PTB-XL (``ptbxl_database.csv``:
the 500 Hz ``filename_hr`` records, ``patient_id`` as the patient; age, sex, ``strat_fold`` and the benchmark's
labels and label groups from ``ecgfast.ingest.ptbxl``) and MIMIC-IV-ECG (``record_list.csv``: ``path``,
``subject_id`` as the patient). Elsewhere every ``.hea`` under the root is a record.

A lean header parser of its own (wfdb-python spends 12-14 ms per header, mostly in pandas); the tests check it
against ``wfdb.rdrecord``. Signal files are read as the header's format says, ``.mat`` files (WFDB's wfdb2mat
layout, as in the PhysioNet/CinC challenges) through their byte offset, like any other file.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from ecgfast.ingest import ptbxl
from ecgfast.ingest.record import Option, Reader, Record, SkipRecord, age_years, sex_code

# Formats whose samples are whole bytes: format -> NumPy dtype (and the offset that makes them signed).
_DTYPES = {"16": ("<i2", 0), "61": (">i2", 0), "32": ("<i4", 0), "80": ("u1", 128)}
_UNITS = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3, "nv": 1e-6}
_SIGNAL = re.compile(
    r"(?P<fmt>\d+)(?:x(?P<spf>\d+))?(?::\d+)?(?:\+(?P<offset>\d+))?$"
)
_GAIN = re.compile(r"(?P<gain>[-+\d.eE]+)?(?:\((?P<baseline>[-\d]+)\))?(?:/(?P<units>\S+))?$")


def _header_fields(item: str, text: str) -> tuple[list[str], list[str], dict[str, str]]:
    lines = [ln.strip() for ln in text.splitlines()]
    comments = {}
    for ln in lines:
        if ln.startswith("#") and ":" in ln:
            key, value = ln[1:].split(":", 1)
            comments[key.strip().lower()] = value.strip()
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise SkipRecord(item, "bad_header", "empty header")
    return body[0].split(), body[1:], comments


def _unpack_24(raw: np.ndarray) -> np.ndarray:
    """Format 24: little-endian 24-bit two's-complement samples."""
    b = raw[: len(raw) - len(raw) % 3].reshape(-1, 3).astype(np.int32)
    out = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    out[out >= 1 << 23] -= 1 << 24
    return out


def _unpack_212(raw: np.ndarray) -> np.ndarray:
    """Format 212: pairs of 12-bit two's-complement samples in three bytes (an odd last sample in two)."""
    b = np.concatenate([raw, np.zeros(-len(raw) % 3, np.uint8)]).reshape(-1, 3).astype(np.int32)
    out = np.empty(2 * len(b), np.int32)
    out[0::2] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
    out[1::2] = b[:, 2] | ((b[:, 1] & 0xF0) << 4)
    out[out >= 2048] -= 4096
    return out[: (2 * len(raw)) // 3]


_PACKED = {"212": _unpack_212, "24": _unpack_24}


def _index_csv(path: Path, item_column: str, patient_column: str, optional=()) -> dict[str, dict[str, str]]:
    """A layout's index: item -> {column: value} for the patient column and those ``optional`` columns the file
    has; the patient key is normalised (``15709.0`` and ``15709`` are one patient)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {item_column, patient_column} <= rows[0].keys():
        raise ValueError(f"{path} needs the columns {item_column} and {patient_column}")
    keep = [c for c in optional if rows and c in rows[0]]
    return {row[item_column].strip().removesuffix(".hea"):
            {"patient": (row[patient_column] or "").strip().removesuffix(".0"), **{c: row[c] or "" for c in keep}}
            for row in rows}


class WFDBReader(Reader):
    """Reads the WFDB records under ``root``; ``items()`` lists them, ``read(item)`` gives one :class:`Record`.

    Args:
        root: the source folder.
        labels_from_dx: :meth:`metadata` gives one label ``dx_<code>`` per SNOMED-CT code of the ``# Dx:`` header
            lines (1 listed, 0 not listed, NaN for a record without a Dx line).
    """

    format = "wfdb"
    SUFFIXES = (".hea",)
    OPTIONS = (Option("labels_from_dx", "one label dx_<code> per SNOMED-CT code of the headers' '# Dx:' lines", bool),)

    def __init__(self, root, labels_from_dx: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"WFDB source {root} is not a folder")
        self.labels_from_dx = labels_from_dx
        self.layout, self._index = "wfdb", None
        if (self.root / ptbxl.DATABASE).is_file():
            self.layout = "ptbxl"
            self._index = _index_csv(self.root / ptbxl.DATABASE, "filename_hr", "patient_id", ptbxl.COLUMNS)
        elif (self.root / "record_list.csv").is_file():
            self.layout = "mimic"
            self._index = _index_csv(self.root / "record_list.csv", "path", "subject_id")

    def items(self) -> list[str]:
        """The records: those of the layout's index, else every header under the root (relative path without
        ``.hea``), sorted."""
        if self._index is not None:
            return sorted(self._index)
        return sorted(p.relative_to(self.root).with_suffix("").as_posix() for p in self.root.rglob("*.hea"))

    def metadata(self, items: list[str]) -> dict:
        """Per item: ``patient_keys`` (PTB-XL, MIMIC-IV-ECG); PTB-XL's ``fold``, ``labels`` and ``label_groups``
        (``ecgfast.ingest.ptbxl.metadata``); with ``labels_from_dx``, ``labels`` from the headers too."""
        out = {"labels": {}}
        if self._index is not None:
            out["patient_keys"] = [self._index[it]["patient"] or None for it in items]
        if self.layout == "ptbxl":
            out.update(ptbxl.metadata(self.root, self._index, items))
        if self.labels_from_dx:
            codes = []
            for item in items:
                try:
                    text = (self.root / f"{item}.hea").read_text(errors="replace")
                except OSError:
                    codes.append(None)
                    continue
                line = next((ln for ln in text.splitlines() if ln.lstrip("# ").lower().startswith("dx:")), None)
                codes.append(None if line is None else
                             {c.strip() for c in line.split(":", 1)[1].split(",") if c.strip()})
            names = sorted({c for cs in codes if cs for c in cs})
            labels = {f"dx_{c}": np.full(len(items), np.nan, np.float32) for c in names}
            for i, cs in enumerate(codes):
                for c in names if cs is not None else ():
                    labels[f"dx_{c}"][i] = float(c in cs)
            out["labels"] = {**out["labels"], **labels}
        return out

    def read(self, item: str) -> Record:
        """The record ``item`` in millivolts; raises :class:`SkipRecord` with the reason when it cannot be read."""
        hea = self.root / f"{item}.hea"
        try:
            text = hea.read_text(errors="replace")
        except FileNotFoundError as err:
            raise SkipRecord(item, "missing", f"no header {hea.name}") from err
        except OSError as err:
            raise SkipRecord(item, "unreadable", str(err)) from err
        first, signal_lines, comments = _header_fields(item, text)
        try:
            n_sig, fs = int(first[1]), float(first[2].split("/")[0])
            n_samples = int(first[3]) if len(first) > 3 else None
        except (IndexError, ValueError) as err:
            raise SkipRecord(item, "bad_header", f"record line {' '.join(first)!r}") from err
        if "/" in first[0]:
            raise SkipRecord(item, "bad_header", "multi-segment records are not supported")
        if len(signal_lines) < n_sig or fs <= 0:
            raise SkipRecord(item, "bad_header", f"{len(signal_lines)} signal lines for {n_sig} signals at {fs} Hz")

        specs = [self._signal_spec(item, ln) for ln in signal_lines[:n_sig]]
        signal = np.empty((n_sig, n_samples or 0), np.float32)
        files: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            files.setdefault(spec["file"], []).append(i)
        for name, rows in files.items():
            adc = self._read_file(item, hea.parent / name, [specs[i] for i in rows], n_samples)
            if signal.shape[1] != adc.shape[1]:
                if n_samples is not None:
                    raise SkipRecord(item, "truncated", f"{name} holds {adc.shape[1]} of {n_samples} samples")
                signal = np.empty((n_sig, adc.shape[1]), np.float32)
            for row, i in enumerate(rows):
                s = specs[i]
                signal[i] = (adc[row] - s["baseline"]) * (s["scale"] / s["gain"])
        age, sex = age_years(comments.get("age")), sex_code(comments.get("sex"))
        if self.layout == "ptbxl" and item in self._index:  # its headers carry no demographics; the index does
            index_age, index_sex = ptbxl.demographics(self._index[item])
            age, sex = (age if math.isnan(index_age) else index_age), (sex if index_sex < 0 else index_sex)
        return Record(item=item, signal=signal, lead_names=[s["name"] for s in specs], fs=fs, age=age, sex=sex)

    @staticmethod
    def _signal_spec(item: str, line: str) -> dict:
        fields = line.split(maxsplit=8)
        try:
            fmt = _SIGNAL.match(fields[1])
            gain = _GAIN.match(fields[2]) if len(fields) > 2 else None
            adc_zero = int(fields[4]) if len(fields) > 4 else 0
            units = (gain and gain["units"] or "mV").lower()
            return {
                "file": fields[0],
                "format": fmt["fmt"],
                "per_frame": int(fmt["spf"] or 1),
                "offset": int(fmt["offset"] or 0),
                "gain": float(gain["gain"]) if gain and gain["gain"] and float(gain["gain"]) != 0 else 200.0,
                "baseline": int(gain["baseline"]) if gain and gain["baseline"] else adc_zero,
                "scale": _UNITS[units],
                "name": fields[8].strip() if len(fields) > 8 else "",
            }
        except (TypeError, IndexError, KeyError, ValueError) as err:
            raise SkipRecord(item, "bad_header", f"signal line {line!r}") from err

    @staticmethod
    def _read_file(item: str, path: Path, specs: list[dict], n_samples: int | None) -> np.ndarray:
        """The ADC samples (n_signals_in_file, n) of one signal file, its signals interleaved frame by frame."""
        fmt, offset = specs[0]["format"], specs[0]["offset"]
        if any(s["format"] != fmt or s["offset"] != offset or s["per_frame"] != 1 for s in specs):
            raise SkipRecord(item, "unreadable", f"{path.name}: mixed formats or several samples per frame")
        try:
            raw = np.fromfile(path, dtype=np.uint8, offset=offset)
        except FileNotFoundError as err:
            raise SkipRecord(item, "missing", f"no signal file {path.name}") from err
        except (OSError, ValueError) as err:
            raise SkipRecord(item, "unreadable", f"{path.name}: {err}") from err
        if fmt in _PACKED:
            flat = _PACKED[fmt](raw)
        elif fmt in _DTYPES:
            dtype, shift = _DTYPES[fmt]
            size = np.dtype(dtype).itemsize
            flat = raw[: len(raw) - len(raw) % size].view(dtype).astype(np.int32) - shift
        else:
            raise SkipRecord(item, "unreadable", f"{path.name}: WFDB format {fmt} is not supported")
        n_sig = len(specs)
        n = len(flat) // n_sig if n_samples is None else n_samples
        if len(flat) < n * n_sig:
            raise SkipRecord(item, "truncated", f"{path.name} holds {len(flat) // n_sig} of {n} samples")
        return flat[: n * n_sig].reshape(n, n_sig).T
