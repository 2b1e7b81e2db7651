"""Record a run's measured metrics (JSON with profile, hardware, date) and render the table.

``results.record("06_gpt_pretraining", val_loss=1.87, minutes=2.9)`` writes
``06_gpt_pretraining__cpu.json`` into :func:`results_dir`: ``COURSE_RESULTS_DIR`` when set
(``benchmarks/run_notebooks.py --out DIR`` sets it to ``DIR/results``, so one run's table holds
only that run); else ``build/results`` of the checkout the library runs from; else, for an
installed copy (a wheel, Colab), ``build/results`` under the working directory, or under the
data cache when that is not writable. Never inside the installed package.
``python -m course_lib.results [OUT.md]`` turns every such file into a markdown table.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

from . import profile as _profile
from .files import atomic_write

ROOT = Path(__file__).resolve().parent.parent


def in_checkout(root: Path = ROOT) -> bool:
    """Whether the library runs from a checkout of the course (an editable install or the source
    tree), not from an installed copy in site-packages."""
    return (root / "pyproject.toml").is_file() and (root / "solutions").is_dir()


def results_dir() -> Path:
    """Where :func:`record` writes (see the module docstring); the folder need not exist yet."""
    d = os.environ.get("COURSE_RESULTS_DIR", "").strip()
    if d:
        return Path(d).expanduser().resolve()
    if in_checkout():
        return ROOT / "build" / "results"
    cwd = Path.cwd()
    if os.access(cwd, os.W_OK):
        return cwd / "build" / "results"
    from .data import cache_dir

    return cache_dir() / "results"


def hardware() -> str:
    import torch

    from .device import describe, get_device

    dev = get_device()
    desc = describe(dev)
    if dev.type == "cpu":
        desc += f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    else:
        desc += f", torch {torch.__version__}"
    return desc


def record(notebook: str, **metrics: float | int | str) -> Path:
    """Write the run's headline metrics; returns the JSON path. Values must be JSON scalars."""
    if not metrics:
        raise ValueError("results.record needs at least one metric, e.g. val_loss=1.9")
    for k, v in metrics.items():
        if not isinstance(v, (int, float, str, bool)) and v is not None:
            raise ValueError(f"metric {k!r} must be a number or string, got {type(v).__name__}; use float(...)")
    prof = _profile.name()
    entry = {
        "notebook": notebook,
        "profile": prof,
        "hardware": hardware(),
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "metrics": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in metrics.items()},
    }
    changed = _profile.overrides()
    if changed:  # sizes set by hand (CFG_OVERRIDES): not the profile's own figures
        entry["overrides"] = changed
    text = json.dumps(entry, indent=2) + "\n"
    return atomic_write(results_dir() / f"{notebook}__{prof}.json", lambda tmp: Path(tmp).write_text(text))


def load_all(directory: Path | None = None) -> list[dict]:
    d = directory or results_dir()
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]


def table(directory: Path | None = None) -> str:
    """Markdown table: notebook, profile, metrics, hardware, date."""
    rows = ["| notebook | profile | metrics | hardware | date |", "|---|---|---|---|---|"]
    for e in load_all(directory):
        m = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e["metrics"].items())
        prof = e["profile"]
        if e.get("overrides"):  # sizes set by hand: say so in the row
            prof += f" (overrides: {json.dumps(e['overrides'], sort_keys=True)})"
        rows.append(f"| {e['notebook']} | {prof} | {m} | {e['hardware']} | {e['date']} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    text = "# Results of this run\n\n" + table()
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")
    else:
        print(text)
