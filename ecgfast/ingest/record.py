"""What every format's reader yields: one source record in millivolts, or a reason to skip it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Record:
    """One ECG as its source holds it, before resampling, lead matching and cropping.

    Attributes:
        item: the record's name inside the source: its path relative to the source root without extension
            (plus ``/<item>`` for one of several records inside one file). The record id is
            ``<source name>/<item>``, and label and patient CSVs refer to records by ``item``.
        signal: float32 millivolts (n_signals, n_samples).
        lead_names: the signals' names as the source gives them (matched through ``ecgfast.leads.canonical_lead``).
        fs: sampling rate in Hz.
        age: years, NaN unknown. sex: 0 female, 1 male, -1 unknown.
        patient_key: the source's patient identifier, None when it has none.
        warnings: ``(reason, detail)`` pairs the reader noticed (an implausible amplitude...), reported as ``warn``.
    """

    item: str
    signal: np.ndarray
    lead_names: list[str]
    fs: float
    age: float = math.nan
    sex: int = -1
    patient_key: str | None = None
    warnings: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Option:
    """A format-specific option a reader takes: ``name`` is its keyword (the reader's and ``ingest()``'s), ``type``
    its kind (``bool``: a flag; ``list``: names, comma-separated on the command line), ``help`` what it does."""

    name: str
    help: str
    type: type = str

    @property
    def flag(self) -> str:
        """The command line's spelling: ``--labels-from-dx``."""
        return "--" + self.name.replace("_", "-")


class SkipRecord(ValueError):
    """A record that cannot be stored: ``reason`` is a report code (``bad_header``, ``truncated``...)."""

    def __init__(self, item: str, reason: str, detail: str = ""):
        super().__init__(f"record {item}: {reason} {detail}".rstrip())
        self.item, self.reason, self.detail = item, reason, detail


def source_files(root: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """The files under ``root`` (a folder, or one file) with one of ``suffixes``: item -> path, sorted by item,
    the item being the path relative to the root without its suffix (a single file: its name without suffix)."""
    root = Path(root)
    if root.is_file():
        return {root.stem: root}
    if not root.is_dir():
        raise ValueError(f"source {root} is neither a folder nor a file")
    found = {p.relative_to(root).with_suffix("").as_posix(): p for p in root.rglob("*")
             if p.suffix.lower() in suffixes and p.is_file()}
    return dict(sorted(found.items()))


def age_years(text) -> float:
    """An age in years from ``61``, ``'61'`` or DICOM's ``'061Y'``; NaN when unknown or implausible."""
    text = str(text).strip().upper()
    factor = {"Y": 1.0, "M": 1 / 12, "W": 1 / 52.18, "D": 1 / 365.25}.get(text[-1:], None)
    try:
        age = float(text[:-1]) * factor if factor else float(text)
    except ValueError:
        return math.nan
    return age if 0 <= age < 150 else math.nan


def sex_code(text) -> int:
    """0 female, 1 male, -1 unknown, from the spellings sources use (``F``, ``Female``, ``MALE``...)."""
    return {"f": 0, "female": 0, "m": 1, "male": 1}.get(str(text or "").strip().lower(), -1)


class Reader:
    """What every format's reader declares; the registry (``ecgfast.ingest.formats``), ``--format auto`` and the
    command line derive from it. A reader lists a source's ``items()``, may give their ``metadata(items)`` (patient
    keys, labels) and reads one item with ``read(item) -> Record``."""

    format = ""  # the name --format takes
    ALIASES: tuple[str, ...] = ()  # other names --format takes
    SUFFIXES: tuple[str, ...] = ()  # the files that hold its records (lower case)
    OPTIONS: tuple[Option, ...] = ()  # the format-specific options its constructor takes

    @classmethod
    def claims(cls, path: Path) -> bool:
        """Whether ``path`` looks like one of this format's files (for ``--format auto``)."""
        return path.suffix.lower() in cls.SUFFIXES


class FileReader(Reader):
    """Base of the readers whose every file is one record (``SUFFIXES``): items are the files' paths relative to
    the source root without suffix; subclasses read one in :meth:`read`."""

    def __init__(self, root):
        self.files = {item: path for item, path in source_files(Path(root), self.SUFFIXES).items()
                      if self.claims(path)}

    def items(self) -> list[str]:
        return list(self.files)

    def load(self, item: str, loader):
        """``loader(path)`` of the item's file; a missing file is a ``missing`` skip, any error of the parser an
        ``unreadable`` one (parsers raise many kinds for a broken file)."""
        try:
            return loader(self.files[item])
        except FileNotFoundError as err:
            raise SkipRecord(item, "missing", str(err)) from err
        except Exception as err:  # noqa: BLE001
            raise SkipRecord(item, "unreadable", f"{type(err).__name__}: {err}") from err

    def read(self, item: str) -> Record:
        raise NotImplementedError
