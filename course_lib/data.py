"""The course's one door to downloaded data: an asset registry with verified, cached,
mirrored downloads.

Every downloadable file is registered here with its file name, canonical address(es), sha256,
size and licence. :func:`fetch` returns a verified local path, looking in this order:

1. the cache, ``COURSE_DATA_DIR`` (default ``~/.cache/llm-course``);
2. the mirrors, ``COURSE_DATA_MIRROR`` (folders separated by ``os.pathsep``), searched by file
   name, e.g. a classroom share behind a firewall, or this course's CI copy ``../shared/data``;
3. the network, each registered address in turn, with a progress bar.

Downloads are written to a temporary file next to their destination and renamed into place
only after their size and sha256 match, so a broken or tampered download never lands in the
cache. No other module of the course touches the network.

CLI::

    python -m course_lib.data list
    python -m course_lib.data prefetch [NAME ...] [--all]
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import profile as _profile
from .files import atomic_write

CHUNK = 1 << 20


class DataError(RuntimeError):
    """An asset could not be had: the message says what, from where, and what to do."""


@dataclass(frozen=True)
class Asset:
    """One registered file."""

    name: str
    filename: str
    urls: tuple[str, ...]
    sha256: str
    size: int | None
    licence: str
    description: str
    profiles: tuple[str, ...] = ("smoke", "cpu", "gpu")  # profiles whose notebooks need it
    extra: dict = field(default_factory=dict, compare=False)


REGISTRY: dict[str, Asset] = {}


def register(asset: Asset) -> Asset:
    if len(asset.sha256) != 64 or any(c not in "0123456789abcdef" for c in asset.sha256):
        raise ValueError(f"asset {asset.name!r}: sha256 must be 64 lowercase hex digits, got {asset.sha256!r}")
    REGISTRY[asset.name] = asset
    return asset


register(Asset(
    name="tiny_shakespeare",
    filename="tiny_shakespeare.txt",
    urls=("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",),
    sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    size=1115394,
    licence="public domain (Shakespeare's works, compiled by Andrej Karpathy for char-rnn)",
    description="Tiny Shakespeare, 1.1 MB of plays; the usual char-level language-model benchmark",
))
register(Asset(
    name="gpt2_bpe_ranks",
    filename="r50k_base.tiktoken",
    urls=("https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken",),
    sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    size=835554,
    licence="MIT (OpenAI tiktoken / GPT-2)",
    description="GPT-2's byte-level BPE merge ranks (r50k_base) in tiktoken's format",
))


def get_asset(name: str) -> Asset:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; registered assets: {', '.join(sorted(REGISTRY))}") from None


def cache_dir() -> Path:
    d = os.environ.get("COURSE_DATA_DIR", "").strip()
    return Path(d).expanduser() if d else Path.home() / ".cache" / "llm-course"


def mirror_dirs() -> list[Path]:
    raw = os.environ.get("COURSE_DATA_MIRROR", "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, asset: Asset) -> str | None:
    """None when ``path`` holds the asset, else a reason (an unreadable file is a reason too, so
    the next source is tried instead of a raw OSError)."""
    try:
        if not path.is_file():
            return "not a regular file (a folder or a broken link)"
        if asset.size is not None:
            size = path.stat().st_size
            if size != asset.size:
                return f"size {size} bytes, expected {asset.size}"
        digest = sha256_of(path)
    except OSError as e:
        return f"unreadable ({type(e).__name__}: {e.strerror or e})"
    if digest != asset.sha256:
        return f"sha256 {digest}, expected {asset.sha256}"
    return None


def _asset_lock(asset: Asset):
    """A file lock per asset in the cache, so concurrent fetches (several notebooks, several
    processes) verify, remove and download one at a time; a cache folder that cannot hold a lock
    file (read-only) gets none, and the fetch goes on without it."""
    import contextlib

    from filelock import FileLock

    try:
        folder = cache_dir() / ".locks"
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / f"{asset.filename}.lock"))
        lock.acquire(timeout=600)
    except OSError:
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def held():
        try:
            yield
        finally:
            lock.release()

    return held()


def _download(url: str, dest: Path, asset: Asset, progress: bool, timeout: float) -> None:
    """Download ``url`` to ``dest`` atomically; raise DataError if it fails or mismatches."""

    def stream_and_verify(tmp: str) -> None:
        req = urllib.request.Request(url, headers={"User-Agent": "llm-course/1.0"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = resp.headers.get("Content-Length")
            total = int(total) if total and total.isdigit() else asset.size
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=asset.filename, leave=False)
            try:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
        reason = _verify(Path(tmp), asset)
        if reason:
            raise DataError(f"download of {asset.filename} from {url} is corrupt ({reason}); it was discarded")

    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(dest, stream_and_verify, suffix=".part")
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"could not download {asset.filename} from {url}: {e}") from None


def fetch_asset(asset: Asset, *, progress: bool | None = None, offline: bool | None = None,
                timeout: float = 60.0) -> Path:
    """Return a verified local path to ``asset`` (cache -> mirrors -> network)."""
    if progress is None:
        progress = not _profile.is_smoke()
    if offline is None:
        offline = os.environ.get("COURSE_OFFLINE", "") not in ("", "0")
    cached = cache_dir() / asset.filename
    problems: list[str] = []
    with _asset_lock(asset):
        found = _first_good_copy(asset, cached, problems)
        if found is not None:
            return found
        if not offline:
            for url in asset.urls:
                try:
                    _download(url, cached, asset, progress, timeout)
                    return cached
                except DataError as e:
                    problems.append(str(e))
        else:
            problems.append("not downloaded: offline (COURSE_OFFLINE is set)")
    where = ", ".join(str(m) for m in mirror_dirs()) or "(COURSE_DATA_MIRROR not set)"
    detail = "".join(f"\n  - {p}" for p in problems)
    raise DataError(
        f"cannot get asset {asset.name!r}: file {asset.filename} "
        f"({asset.size if asset.size is not None else '?'} bytes, sha256 {asset.sha256}).\n"
        f"Canonical address: {' or '.join(asset.urls)}\n"
        f"Mirrors searched: {where}\n"
        f"To fix: download it on a machine with internet and put it at {cached} "
        f"or in a folder named by COURSE_DATA_MIRROR." + detail
    )


def _first_good_copy(asset: Asset, cached: Path, problems: list[str]) -> Path | None:
    """The cached copy, else the first mirror's, that verifies; every source that fails (corrupt,
    unreadable, a folder, not removable) is noted in ``problems`` and the next one is tried."""
    if cached.exists() or cached.is_symlink():
        reason = _verify(cached, asset)
        if reason is None:
            return cached
        try:
            if cached.is_dir() and not cached.is_symlink():
                problems.append(f"cache entry {cached} is {reason}; left alone (remove it yourself)")
            else:
                cached.unlink(missing_ok=True)  # another process may have removed it already
                problems.append(f"cached copy {cached} is corrupt ({reason}) and was removed")
        except OSError as e:
            problems.append(f"cached copy {cached} is corrupt ({reason}) and could not be removed "
                            f"({type(e).__name__}: {e.strerror or e}); set COURSE_DATA_DIR to a folder you can write")
    for folder in mirror_dirs():
        candidate = folder / asset.filename
        try:
            present = candidate.exists()
        except OSError as e:
            problems.append(f"mirror {folder} is unreadable ({type(e).__name__}: {e.strerror or e}); skipped")
            continue
        if not present:
            problems.append(f"mirror {folder}: no {asset.filename}")
            continue
        reason = _verify(candidate, asset)
        if reason is None:
            return candidate
        problems.append(f"mirror copy {candidate} does not match ({reason}); ignored")
    return None


def fetch(name: str, **kwargs) -> Path:
    """Return a verified local path to the registered asset ``name``."""
    return fetch_asset(get_asset(name), **kwargs)


def status(name: str) -> str:
    """Where an asset would come from right now, without downloading: cache, mirror or missing."""
    asset = get_asset(name)
    if (cache_dir() / asset.filename).exists():
        return f"cache ({cache_dir() / asset.filename})"
    for folder in mirror_dirs():
        if (folder / asset.filename).exists():
            return f"mirror ({folder / asset.filename})"
    return "not present (will download on first use)"


def load_text(name: str = "tiny_shakespeare") -> str:
    """The registered text asset as a string (UTF-8)."""
    return fetch(name).read_text(encoding="utf-8")


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """A quick DNS + TCP probe, so an offline machine gets its error in seconds, not after retries."""
    import socket

    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def fetch_hf(repo_id: str, filename: str, *, revision: str | None = None, offline: bool | None = None) -> Path:
    """A file from the Hugging Face hub (e.g. ``fetch_hf("openai-community/gpt2", "model.safetensors")``),
    cached under ``<COURSE_DATA_DIR>/hf``. Mirrors are searched first, as
    ``<mirror>/<owner>--<name>/<filename>`` or ``<mirror>/<filename>``. Offline (no network, or
    ``COURSE_OFFLINE=1``) and not cached: a :class:`DataError` saying where to put the file."""
    if not isinstance(repo_id, str) or not repo_id.strip() or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must look like 'owner/name' (or a bare model name), got {repo_id!r}")
    if not isinstance(filename, str) or not filename.strip():
        raise ValueError(f"filename must be a non-empty file name in the repository, got {filename!r}")
    parts = filename.replace("\\", "/").split("/")
    if filename.startswith(("/", "\\")) or Path(filename).is_absolute() or ".." in parts or ":" in parts[0]:
        raise ValueError(f"filename must be a path inside the repository (no absolute path, no '..'), got {filename!r}")
    if any(p in ("", ".", "..") for p in repo_id.split("/")):
        raise ValueError(f"repo_id must look like 'owner/name' (or a bare model name), got {repo_id!r}")
    if offline is None:
        offline = os.environ.get("COURSE_OFFLINE", "") not in ("", "0")
    flat = repo_id.replace("/", "--")
    for folder in mirror_dirs():
        for candidate in (folder / flat / filename, folder / filename):
            if candidate.exists():
                return candidate
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:  # pragma: no cover - a dependency of the course
        raise DataError("huggingface_hub is not installed: pip install huggingface_hub") from None
    hub_cache = cache_dir() / "hf"
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=hub_cache,
                                    local_files_only=True))
    except Exception:
        pass  # not cached yet
    problem = ""
    if not offline and _hub_reachable():
        try:
            return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=hub_cache))
        except Exception as e:
            problem = f"\n  - download failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    else:
        why = "COURSE_OFFLINE is set" if offline else "offline"
        problem = f"\n  - the Hugging Face hub is not reachable ({why})"
    where = ", ".join(str(m) for m in mirror_dirs()) or "(COURSE_DATA_MIRROR not set)"
    raise DataError(
        f"cannot get {filename} of the Hugging Face repository {repo_id!r}.\n"
        f"Canonical address: https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}\n"
        f"Cache: {hub_cache}; mirrors searched: {where}\n"
        f"To fix: connect to the internet, or download the file elsewhere and put it at "
        f"<mirror>/{flat}/{filename} in a folder named by COURSE_DATA_MIRROR." + problem
    )


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list registered assets and where each would come from")
    pre = sub.add_parser("prefetch", help="download and verify assets (default: those the profile needs)")
    pre.add_argument("names", nargs="*")
    pre.add_argument("--all", action="store_true", help="every registered asset")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for a in REGISTRY.values():
            print(f"{a.name:20s} {a.filename:24s} {a.size or '?':>10} bytes  {status(a.name)}")
            print(f"{'':20s} {a.description}; licence: {a.licence}")
        return 0
    if args.all:
        names = list(REGISTRY)
    elif args.names:
        names = args.names
    else:
        prof = _profile.name()
        names = [a.name for a in REGISTRY.values() if prof in a.profiles]
    failed = 0
    for n in names:
        try:
            path = fetch(n, progress=True)
            print(f"ok      {n}: {path}")
        except (DataError, KeyError) as e:
            failed += 1
            print(f"FAILED  {n}: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main())
