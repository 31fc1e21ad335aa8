"""Contrastive losses: the public API."""
