"""Ingest ECG sources into an ECGStore."""
