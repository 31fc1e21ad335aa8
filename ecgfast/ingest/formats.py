"""The one registry of source formats: each reader declares its name, aliases, file suffixes and options
(:class:`~ecgfast.ingest.record.Reader`); ``ingest()``, ``--format auto`` and the ``ecgfast ingest`` command's
``--format`` choices and format options all derive from the classes listed here. A new format is a reader module
in this package and one line in ``READERS``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ecgfast.ingest.code15 import Code15Reader
from ecgfast.ingest.cpsc2018 import CPSC2018Reader
from ecgfast.ingest.dicom import DicomReader
from ecgfast.ingest.muse import MuseReader
from ecgfast.ingest.npy import NumpyReader
from ecgfast.ingest.record import Option, Reader
from ecgfast.ingest.wfdb import WFDBReader

READERS: dict[str, type[Reader]] = {cls.format: cls for cls in
                                    (WFDBReader, Code15Reader, NumpyReader, MuseReader, DicomReader, CPSC2018Reader)}
ALIASES: dict[str, str] = {alias: cls.format for cls in READERS.values() for alias in cls.ALIASES}
CHOICES: tuple[str, ...] = ("auto", *READERS, *ALIASES)  # what --format takes


def format_options() -> dict[str, tuple[Option, list[str]]]:
    """Every format-specific option: name -> (the option, the formats that take it)."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for name, cls in READERS.items():
        for opt in cls.OPTIONS:
            out.setdefault(opt.name, (opt, []))[1].append(name)
    return out


def canonical_format(format: str) -> str:
    """A format's name (an alias resolved); ``auto`` stays ``auto``. A ValueError listing the choices."""
    format = ALIASES.get(format, format)
    if format != "auto" and format not in READERS:
        raise ValueError(f"format must be one of {', '.join(CHOICES)} (--format), got {format!r}")
    return format


def _files(src: Path) -> list[Path]:
    return [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]


def describe_files(src) -> str:
    """What a source holds, by suffix (``50 .hea, 50 .mat``), for messages."""
    found = Counter(p.suffix.lower() or "without suffix" for p in _files(Path(src)))
    return ", ".join(f"{n} {suffix}" for suffix, n in found.most_common(8)) or "no files"


def detect_format(src) -> str:
    """The format of a source folder (or file) from its files; a ValueError when it is not clear."""
    src = Path(src)
    if not src.exists():
        raise ValueError(f"source {src} does not exist")
    found = Counter()
    for path in _files(src):
        for name, cls in READERS.items():
            if cls.claims(path):
                found[name] += 1
    if len(found) != 1:
        what = ", ".join(f"{n} {fmt}" for fmt, n in found.most_common()) or "no ECG files"
        raise ValueError(f"cannot tell the format of source {src} ({what}); pass --format")
    return next(iter(found))


def make_reader(format: str, src, options: dict | None = None) -> Reader:
    """The reader of ``format`` (``auto`` detects it) for ``src``, with its format-specific ``options`` (unset
    ones, None or False, are left out; one the format does not take is a ValueError naming it)."""
    format = canonical_format(format)
    if format == "auto":
        format = detect_format(src)
    cls = READERS[format]
    options = {k: v for k, v in (options or {}).items() if v not in (None, False)}
    wrong = sorted(set(options) - {opt.name for opt in cls.OPTIONS})
    if wrong:
        every = {name: opt for name, (opt, _) in format_options().items()}
        named = ", ".join(f"{every[w].flag} ({w})" if w in every else w for w in wrong)
        takes = ", ".join(f"{opt.flag} ({opt.name})" for opt in cls.OPTIONS) or "none"
        raise ValueError(f"options {named} do not apply to format {format} (it takes {takes})")
    return cls(src, **options)
