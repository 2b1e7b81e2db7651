"""What numbers should I expect? The measured bands of every notebook's headline metrics.

``course_lib/expected.json`` holds, per notebook and profile, each headline metric's expected
value and tolerance, both taken from runs at several seeds on the course's reference machine
(``benchmarks/seed_spread.py`` runs them, ``benchmarks/expected_bands.py`` writes the file; the
seeds, their values and the machine are in the file beside each band). Each notebook's last cell::

    expected.report(record_path)   # the path results.record returned

prints, per metric, ``expected on this profile: X ± t, yours: Y — within`` (or ``outside``).
A metric is *within* when ``|Y - X| <= t``; booleans and strings must be equal.

Strictness, for the people whose job is to notice: ``benchmarks/run_notebooks.py`` (``make course``)
exits non-zero when a cpu-profile metric is outside its band, and under
``COURSE_EXPECTED_STRICT=deterministic`` (``make test`` sets it) :func:`report` raises for a
smoke metric marked ``deterministic`` (one that came out identical on every reference run: solution
and student version, 1 and 2 threads) that is outside. A learner's own run only prints.
A run whose sizes were changed by ``CFG_OVERRIDES`` is not compared: the bands are for the
profile's own sizes.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

FILE = Path(__file__).with_name("expected.json")
STRICT_ENV = "COURSE_EXPECTED_STRICT"
STRICT_LEVELS = ("", "off", "deterministic", "all")


@dataclass(frozen=True)
class Check:
    """One metric of one run against its band. ``status``: within, outside, missing (the band
    exists but the run did not record the metric) or no band (nothing measured to compare with)."""

    notebook: str
    profile: str
    metric: str
    value: Any
    expected: Any
    tol: float | None
    status: str
    deterministic: bool = False

    @property
    def ok(self) -> bool:
        return self.status in ("within", "no band")

    def line(self) -> str:
        if self.status == "no band":
            return f"{self.metric}: yours {_fmt(self.value)} (nothing measured to compare with on this profile)"
        if self.status == "missing":
            return f"{self.metric}: expected {_band(self.expected, self.tol)}, but this run did not record it — outside"
        return (f"{self.metric}: expected on this profile: {_band(self.expected, self.tol)}, "
                f"yours: {_fmt(self.value)} — {self.status}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"
    return str(v)


def _band(value: Any, tol: float | None) -> str:
    if isinstance(value, (bool, str)) or not tol:
        return _fmt(value)
    return f"{_fmt(value)} ± {tol:.2g}"


def load(path: Path | str | None = None) -> dict:
    """The expected-results file, checked for shape: a ValueError names the file and the entry."""
    p = Path(path) if path is not None else FILE
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{p}: the expected-results file is missing; rebuild it with "
                         "benchmarks/expected_bands.py") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e}); restore it from git or rebuild it with "
                         "benchmarks/expected_bands.py") from None
    notebooks = data.get("notebooks") if isinstance(data, dict) else None
    if not isinstance(notebooks, dict):
        raise ValueError(f"{p}: expected an object with a 'notebooks' mapping, got {type(data).__name__}")
    for nb, profiles in notebooks.items():
        for prof, entry in profiles.items():
            for metric, band in entry.get("metrics", {}).items():
                where = f"{p}: {nb} / {prof} / {metric}"
                if not isinstance(band, dict) or "value" not in band:
                    raise ValueError(f"{where}: a band needs a 'value', got {band!r}")
                tol = band.get("tol", 0)
                if isinstance(band["value"], (int, float)) and not isinstance(band["value"], bool):
                    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not tol >= 0 or math.isinf(tol):
                        raise ValueError(f"{where}: 'tol' must be a finite number >= 0, got {tol!r}")
    return data


def bands(notebook: str, profile: str, data: dict | None = None) -> dict[str, dict]:
    """The metric bands of ``notebook`` on ``profile`` (empty when none were measured)."""
    data = load() if data is None else data
    return dict(data["notebooks"].get(notebook, {}).get(profile, {}).get("metrics", {}))


def seconds(notebook: str, profile: str, data: dict | None = None) -> float | None:
    """The measured whole-notebook wall time on ``profile`` (what the header's time says), if any."""
    data = load() if data is None else data
    entry = data["notebooks"].get(notebook, {}).get(profile, {})
    return entry.get("seconds")


def _within(value: Any, expected: Any, tol: float) -> bool:
    if isinstance(expected, bool) or isinstance(expected, str) or isinstance(value, (bool, str)):
        return type(value) is type(expected) and value == expected
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return abs(value - expected) <= tol + 1e-9 * max(1.0, abs(expected))


def compare(notebook: str, profile: str, metrics: Mapping[str, Any], data: dict | None = None) -> list[Check]:
    """Each band of ``notebook``/``profile`` against ``metrics`` (what the run recorded)."""
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name -> value, got {type(metrics).__name__}")
    out = []
    for metric, band in bands(notebook, profile, data).items():
        expected, tol = band["value"], float(band.get("tol", 0) or 0)
        det = bool(band.get("deterministic", False))
        if metric not in metrics:
            out.append(Check(notebook, profile, metric, None, expected, tol, "missing", det))
            continue
        status = "within" if _within(metrics[metric], expected, tol) else "outside"
        out.append(Check(notebook, profile, metric, metrics[metric], expected, tol, status, det))
    return out


def _read_record(record: Path | str | Mapping) -> dict:
    if isinstance(record, Mapping):
        rec = dict(record)
    elif isinstance(record, (str, Path)):
        p = Path(record)
        try:
            rec = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: cannot read the recorded results ({e}); run the notebook's "
                             "results.record cell again") from None
    else:
        raise TypeError(f"record must be the path results.record returned (or its dict), got {type(record).__name__}")
    for key in ("notebook", "profile", "metrics"):
        if key not in rec:
            raise ValueError(f"a results record needs {key!r}; got keys {sorted(rec)}")
    return rec


def strictness() -> str:
    level = os.environ.get(STRICT_ENV, "").strip().lower()
    if level not in STRICT_LEVELS:
        raise ValueError(f"{STRICT_ENV}={level!r}: expected one of deterministic, all, off (or unset)")
    return level


def failures(checks: list[Check], level: str) -> list[Check]:
    """The checks that fail at strictness ``level`` (deterministic: only deterministic bands)."""
    if level in ("", "off"):
        return []
    return [c for c in checks if not c.ok and (level == "all" or c.deterministic)]


def report(record: Path | str | Mapping, *, data: dict | None = None, file=None) -> list[Check]:
    """Print this run's headline metrics against the measured bands; returns the checks.
    Raises AssertionError only under ``COURSE_EXPECTED_STRICT`` (see the module docstring)."""
    rec = _read_record(record)
    nb, prof = rec["notebook"], rec["profile"]
    say = (lambda s: print(s, file=file))
    if rec.get("overrides"):
        say(f"What to expect: this run changed the {prof} profile's sizes ({json.dumps(rec['overrides'], sort_keys=True)}), "
            "so the measured bands, which are for the profile's own sizes, do not apply.")
        return []
    data = load() if data is None else data
    checks = compare(nb, prof, rec["metrics"], data)
    entry = data["notebooks"].get(nb, {}).get(prof, {})
    if not checks:
        say(f"What to expect: nothing has been measured for {nb} on the {prof} profile yet "
            "(benchmarks/seed_spread.py measures it; docs/results.md says what is open).")
        return []
    say(f"What to expect on the {prof} profile ({entry.get('measured', 'measured runs')}):")
    for c in checks:
        say("  " + c.line())
    outside = [c for c in checks if not c.ok]
    if outside:
        say(f"{len(outside)} of {len(checks)} outside the measured band: a bug, a different machine or library "
            "version, or sizes changed by hand; compare with docs/results.md.")
    else:
        say(f"all {len(checks)} within the measured bands.")
    bad = failures(checks, strictness())
    if bad:
        raise AssertionError(f"{nb} ({prof}): outside the expected band under {STRICT_ENV}: "
                             + "; ".join(c.line() for c in bad))
    return checks
