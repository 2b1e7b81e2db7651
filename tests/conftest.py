"""Shared fixtures. Unit tests never use the network: data comes from the mirror
(COURSE_DATA_MIRROR, default ../shared/data beside the repository) or a loopback server."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_default_mirror = ROOT.parent / "shared" / "data"
if not os.environ.get("COURSE_DATA_MIRROR") and _default_mirror.is_dir():
    os.environ["COURSE_DATA_MIRROR"] = str(_default_mirror)
os.environ.setdefault("COURSE_PROFILE", "smoke")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty data cache, no mirrors, for tests of the download path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("COURSE_DATA_DIR", str(cache))
    monkeypatch.delenv("COURSE_DATA_MIRROR", raising=False)
    monkeypatch.delenv("COURSE_OFFLINE", raising=False)
    return cache


def mirror_has(name: str) -> bool:
    from course_lib.data import get_asset, mirror_dirs

    return any((m / get_asset(name).filename).exists() for m in mirror_dirs())


needs_shakespeare = pytest.mark.skipif(not mirror_has("tiny_shakespeare") if os.environ.get("COURSE_DATA_MIRROR")
                                       else True, reason="Tiny Shakespeare mirror not available")
