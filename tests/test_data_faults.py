"""The data layer under faults: a bad source moves on to the next and the final error lists every
source and why; concurrent fetches over a corrupt cache all succeed; fetch_hf stays inside its
folders. (Downloads, hashes and mirrors in the ordinary case: tests/test_data.py.)"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib import data

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
NAME = "tiny_shakespeare"


@pytest.fixture()
def mirror(tmp_path):
    src = Path(os.environ.get("COURSE_DATA_MIRROR", "").split(os.pathsep)[0] or SHARED) / "tiny_shakespeare.txt"
    if not src.exists():
        pytest.skip(f"needs the offline copy of Tiny Shakespeare (COURSE_DATA_MIRROR); not at {src}")
    good = tmp_path / "good-mirror"
    good.mkdir()
    shutil.copy(src, good / src.name)
    return good


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    c = tmp_path / "cache"
    c.mkdir()
    monkeypatch.setenv("COURSE_DATA_DIR", str(c))
    monkeypatch.setenv("COURSE_OFFLINE", "1")
    return c


def test_a_cache_entry_that_is_a_folder_falls_back_to_the_mirror(cache, mirror, monkeypatch):
    (cache / "tiny_shakespeare.txt").mkdir()
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    assert data.fetch(NAME) == mirror / "tiny_shakespeare.txt"


def test_a_mirror_entry_that_is_a_folder_moves_on_to_the_next_mirror(cache, mirror, tmp_path, monkeypatch):
    bad = tmp_path / "bad-mirror"
    (bad / "tiny_shakespeare.txt").mkdir(parents=True)
    monkeypatch.setenv("COURSE_DATA_MIRROR", os.pathsep.join([str(bad), str(mirror)]))
    assert data.fetch(NAME) == mirror / "tiny_shakespeare.txt"


def test_a_corrupt_cached_copy_that_cannot_be_removed_moves_on(cache, mirror, monkeypatch):
    corrupt = cache / "tiny_shakespeare.txt"
    corrupt.write_text("not shakespeare")
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(mirror))
    real_unlink = Path.unlink

    def refuse(self, *a, **k):
        if self == corrupt:
            raise PermissionError(13, "Permission denied")  # a read-only class cache
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", refuse)
    assert data.fetch(NAME) == mirror / "tiny_shakespeare.txt"


def test_the_final_error_lists_every_source_and_why(cache, tmp_path, monkeypatch):
    (cache / "tiny_shakespeare.txt").write_text("corrupt")
    empty, folder = tmp_path / "empty-mirror", tmp_path / "folder-mirror"
    empty.mkdir()
    (folder / "tiny_shakespeare.txt").mkdir(parents=True)
    monkeypatch.setenv("COURSE_DATA_MIRROR", os.pathsep.join([str(empty), str(folder)]))
    with pytest.raises(data.DataError) as e:
        data.fetch(NAME)
    msg = str(e.value)
    assert "cached copy" in msg and "corrupt" in msg
    assert f"mirror {empty}: no tiny_shakespeare.txt" in msg
    assert "not a regular file" in msg and str(folder) in msg
    assert "offline" in msg and "To fix" in msg


CHILD = "import sys; from course_lib import data; print(data.fetch('tiny_shakespeare'))"


def test_concurrent_fetches_over_a_corrupt_cache_all_succeed(cache, mirror):
    (cache / "tiny_shakespeare.txt").write_text("corrupt")
    env = dict(os.environ, COURSE_DATA_DIR=str(cache), COURSE_DATA_MIRROR=str(mirror), COURSE_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == str(mirror / "tiny_shakespeare.txt")
    assert not (cache / "tiny_shakespeare.txt").exists()  # removed once, by one of them


@pytest.mark.parametrize("filename", ["/etc/passwd", "../secrets.txt", "weights/../../x", "..", "C:\\x.bin",
                                      "\\\\server\\share"])
def test_fetch_hf_refuses_names_that_leave_the_repository(filename, cache):
    with pytest.raises(ValueError, match="inside the repository"):
        data.fetch_hf("openai-community/gpt2", filename)


@pytest.mark.parametrize("repo", ["../gpt2", "owner/..", "a/b/c", ""])
def test_fetch_hf_refuses_malformed_repositories(repo, cache):
    with pytest.raises(ValueError, match="owner/name"):
        data.fetch_hf(repo, "config.json")


def test_fetch_hf_finds_a_mirrored_file(cache, tmp_path, monkeypatch):
    m = tmp_path / "hf-mirror" / "someone--tiny"
    m.mkdir(parents=True)
    (m / "config.json").write_text(json.dumps({"n_layer": 1}))
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(tmp_path / "hf-mirror"))
    assert data.fetch_hf("someone/tiny", "config.json") == m / "config.json"
