"""Checkers for the seq2seq notebook(s)."""
from __future__ import annotations

__all__: list[str] = []
