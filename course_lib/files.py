"""Atomic file writes: the one routine behind the data cache, the artifact cache, the results
files and training checkpoints.

:func:`atomic_write` hands ``write`` the path of a fresh temporary file in the target's folder;
when ``write`` returns, the file is renamed over the target (``os.replace``, atomic on POSIX and
Windows), so a reader sees either the old file or the complete new one, never a half-written
one. If ``write`` raises (a failed download, a failed verification, a full disk) the target is
untouched, the temporary file is removed and the exception propagates. No torch here: the data
module uses this before anything heavy is imported.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, suffix: str = ".tmp") -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temporary file ``.<name>.<random><suffix>``
    beside ``path`` (its folder is created), which then replaces ``path``. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        # mkstemp makes the file 0600; give it the permissions a plain open() would (the umask's),
        # so a cache an instructor prepares for a class is readable by the students
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
