"""Ingest ECG sources into an ECGStore: one reader per format (the registry in ``formats``), one driver
(``ingest``) for all of them, the resume protocol in ``resume``."""

from ecgfast.ingest.convert import convert, windows
from ecgfast.ingest.driver import IngestReport, NothingStored, ingest, plan
from ecgfast.ingest.formats import READERS, detect_format, make_reader
from ecgfast.ingest.record import Option, Record, SkipRecord

__all__ = ["READERS", "IngestReport", "NothingStored", "Option", "Record", "SkipRecord", "convert", "detect_format",
           "ingest", "make_reader", "plan", "windows"]
