"""Pieces shared by every regen part. Nothing here imports torch."""

__version__ = "0.1.0"
