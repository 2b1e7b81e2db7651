"""The data layer against a real HTTP server on loopback: good file, wrong hash, truncated
body, 404; mirrors, corrupt caches, the offline message and the CLI."""
from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from course_lib import data
from course_lib.data import Asset, DataError, fetch_asset

PAYLOAD = b"To be, or not to be, that is the question.\n" * 500
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        if self.path == "/good.txt":
            body = PAYLOAD
        elif self.path == "/tampered.txt":
            body = PAYLOAD.replace(b"question", b"answer!!")
        elif self.path == "/truncated.txt":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        else:
            self.send_error(404, "not here")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def asset(*urls: str, sha: str = SHA, size: int | None = len(PAYLOAD)) -> Asset:
    return Asset(name="hamlet", filename="hamlet.txt", urls=tuple(urls), sha256=sha, size=size,
                 licence="public domain", description="test asset")


def no_leftovers(cache: Path) -> bool:
    return not cache.exists() or not any(p.name.endswith(".part") for p in cache.iterdir())


def test_good_download_is_verified_and_cached(server, fresh_cache):
    path = fetch_asset(asset(f"{server}/good.txt"), progress=False)
    assert path == fresh_cache / "hamlet.txt"
    assert path.read_bytes() == PAYLOAD
    # second call is served from the cache even when the server no longer has it
    again = fetch_asset(asset(f"{server}/gone.txt"), progress=False)
    assert again == path and no_leftovers(fresh_cache)


def test_wrong_hash_never_lands_in_cache(server, fresh_cache):
    with pytest.raises(DataError) as err:
        fetch_asset(asset(f"{server}/tampered.txt"), progress=False)
    msg = str(err.value)
    assert "sha256" in msg and SHA in msg and "tampered.txt" in msg
    assert not (fresh_cache / "hamlet.txt").exists()
    assert no_leftovers(fresh_cache)


def test_wrong_hash_without_size_check(server, fresh_cache):
    with pytest.raises(DataError, match="sha256"):
        fetch_asset(asset(f"{server}/tampered.txt", size=None), progress=False)
    assert not (fresh_cache / "hamlet.txt").exists()


def test_truncated_body_is_discarded(server, fresh_cache):
    with pytest.raises(DataError) as err:
        fetch_asset(asset(f"{server}/truncated.txt"), progress=False)
    assert "truncated.txt" in str(err.value)
    assert not (fresh_cache / "hamlet.txt").exists()
    assert no_leftovers(fresh_cache)


def test_404_then_next_url(server, fresh_cache):
    path = fetch_asset(asset(f"{server}/missing.txt", f"{server}/good.txt"), progress=False)
    assert path.read_bytes() == PAYLOAD


def test_404_only_names_file_hash_address_and_where_to_put_it(server, fresh_cache):
    url = f"{server}/missing.txt"
    with pytest.raises(DataError) as err:
        fetch_asset(asset(url), progress=False)
    msg = str(err.value)
    for needle in ("hamlet.txt", SHA, url, "404", str(fresh_cache / "hamlet.txt"), "COURSE_DATA_MIRROR"):
        assert needle in msg, needle


def test_offline_error_names_everything(fresh_cache):
    with pytest.raises(DataError) as err:
        fetch_asset(asset("http://example.invalid/hamlet.txt"), offline=True)
    msg = str(err.value)
    assert "hamlet.txt" in msg and SHA in msg and "http://example.invalid/hamlet.txt" in msg
    assert str(fresh_cache / "hamlet.txt") in msg


def test_mirror_is_used_and_verified(tmp_path, fresh_cache, monkeypatch):
    good, bad = tmp_path / "good_mirror", tmp_path / "bad_mirror"
    good.mkdir(); bad.mkdir()
    (good / "hamlet.txt").write_bytes(PAYLOAD)
    (bad / "hamlet.txt").write_bytes(PAYLOAD[:-1] + b"?")
    monkeypatch.setenv("COURSE_DATA_MIRROR", os.pathsep.join([str(bad), str(good)]))
    path = fetch_asset(asset("http://example.invalid/x"), offline=True)
    assert path == good / "hamlet.txt"
    monkeypatch.setenv("COURSE_DATA_MIRROR", str(bad))
    with pytest.raises(DataError, match="does not match"):
        fetch_asset(asset("http://example.invalid/x"), offline=True)


def test_corrupt_cache_is_replaced(server, fresh_cache):
    fresh_cache.mkdir(parents=True)
    (fresh_cache / "hamlet.txt").write_bytes(b"garbage")
    path = fetch_asset(asset(f"{server}/good.txt"), progress=False)
    assert path.read_bytes() == PAYLOAD


def test_registry_rejects_bad_hash_and_unknown_names():
    with pytest.raises(ValueError, match="sha256"):
        data.register(asset("http://x", sha="not-a-hash"))
    with pytest.raises(KeyError, match="tiny_shakespeare"):
        data.get_asset("no_such_asset")


def test_registered_assets_come_from_the_mirror():
    if not data.mirror_dirs():
        pytest.skip("no mirror configured")
    for name in ("tiny_shakespeare", "gpt2_bpe_ranks"):
        path = data.fetch(name, offline=True)
        assert data.sha256_of(path) == data.get_asset(name).sha256
    assert data.load_text().startswith("First Citizen:")


def test_gpt2_tokenizer_offline():
    if not data.mirror_dirs():
        pytest.skip("no mirror configured")
    from course_lib.tokenizers import gpt2_tokenizer

    enc = gpt2_tokenizer()
    assert enc.encode("hello world") == [31373, 995]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.decode(enc.encode("Héllo, wörld! 🤖")) == "Héllo, wörld! 🤖"


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "course_lib.data", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_cli_list_and_prefetch(tmp_path):
    env = {**os.environ, "COURSE_DATA_DIR": str(tmp_path / "c"), "COURSE_OFFLINE": "1"}
    out = _cli("list", env=env)
    assert out.returncode == 0 and "tiny_shakespeare" in out.stdout and "gpt2_bpe_ranks" in out.stdout
    env_nomirror = {k: v for k, v in env.items() if k != "COURSE_DATA_MIRROR"}
    bad = _cli("prefetch", "tiny_shakespeare", env=env_nomirror)
    assert bad.returncode != 0
    assert "tiny_shakespeare.txt" in bad.stderr and data.get_asset("tiny_shakespeare").sha256 in bad.stderr
    unknown = _cli("prefetch", "nope", env=env_nomirror)
    assert unknown.returncode != 0 and "unknown asset" in unknown.stderr
    if data.mirror_dirs():
        good = _cli("prefetch", "--all", env=env)
        assert good.returncode == 0, good.stderr
        assert sum(line.startswith("ok ") for line in good.stdout.splitlines()) == len(data.REGISTRY)
