"""Ingest ECG sources into an ECGStore: one reader per format, one driver (``ingest``) for all of them."""

from ecgfast.ingest.driver import IngestReport, convert, ingest, plan
from ecgfast.ingest.record import Record, SkipRecord

__all__ = ["IngestReport", "Record", "SkipRecord", "convert", "ingest", "plan"]
