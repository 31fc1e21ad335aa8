"""Ingest ECG sources into an ECGStore: one reader per format, one driver (``ingest``) for all of them."""

from ecgfast.ingest.driver import READERS, IngestReport, convert, detect_format, ingest, make_reader, plan, windows
from ecgfast.ingest.record import Record, SkipRecord

__all__ = ["READERS", "IngestReport", "Record", "SkipRecord", "convert", "detect_format", "ingest", "make_reader",
           "plan", "windows"]
