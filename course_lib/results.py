"""Record a run's measured metrics (JSON with profile, hardware, date) and render the table.

``results.record("06_gpt_pretraining", val_loss=1.87, minutes=2.9)`` writes
``build/results/06_gpt_pretraining__cpu.json`` (or under ``COURSE_RESULTS_DIR``);
``python -m course_lib.results`` turns every such file into a markdown table.
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


def results_dir() -> Path:
    d = os.environ.get("COURSE_RESULTS_DIR", "").strip()
    return Path(d) if d else ROOT / "build" / "results"


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
        rows.append(f"| {e['notebook']} | {e['profile']} | {m} | {e['hardware']} | {e['date']} |")
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
