"""Write ``course_lib/expected.json`` from the seed-spread runs in ``build/spread/``.

    python benchmarks/expected_bands.py [--spread build/spread] [--only 06_gpt_pretraining ...]

For each notebook and profile (``<stem>__<profile>[__<tag>].json``, from ``seed_spread.py``):

- the metrics are the headline ones (``HEADLINE`` below; every recorded number except times and
  speeds when a notebook is not listed) that every run recorded;
- a number's band is the mean over the seeds, with tolerance ``max(1.5 x (max - min), 1% of
  |mean|, 0.001)`` (0 for an integer every seed agrees on); a boolean or string band is the value
  every run agrees on (none when they disagree);
- on ``smoke``, a metric is ``deterministic`` when every run at the default seed, whatever its
  tag (solution or student version, 1 or 2 threads), recorded the same value; its band is that
  value, exactly for an integer, boolean or string, within 0.001 x max(1, |value|) for a float
  (the last bits another CPU may round differently, far below what a changed exercise or recipe
  moves). ``make test`` holds the notebooks to these;
- ``--extra DIR`` adds the records of another run (``make course``'s ``build/course-results``, at the
  machine's own thread count) as one more run of each notebook's default seed: where a notebook
  reseeds its models itself, the seeds agree and the thread count is the variation a learner meets;
- ``seconds`` is the fastest whole-notebook run (the headers' times are checked against it), or,
  with ``--times OUT/notebook_times.json``, the time ``run_notebooks.py`` (``make course``)
  measured for the notebook at the machine's own thread count, which is what a learner runs.

Entries of notebooks with no spread file are kept as they are, so the file can be rebuilt one
notebook at a time. The seeds' values, dates and load averages are written beside each band.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPREAD = ROOT / "build" / "spread"
TARGET = ROOT / "course_lib" / "expected.json"

# machine-dependent figures: never a band
TIMING = re.compile(r"(seconds|minutes|hours|_s$|_s_|per_s|_ms$|_ms_|^ms_|us_per|gflops|tflops|speed|slowdown|time|mfu|throughput|tokens_per)")
# the headline metrics of a notebook; a notebook not listed gets every recorded number but times
HEADLINE: dict[str, list[str]] = {}


def headline(notebook: str, metrics: list[str]) -> list[str]:
    if notebook in HEADLINE:
        missing = [m for m in HEADLINE[notebook] if m not in metrics]
        if missing:
            raise ValueError(f"{notebook}: HEADLINE names {missing}, which the runs did not record")
        return list(HEADLINE[notebook])
    return [m for m in metrics if not TIMING.search(m)]


def number_band(values: list) -> dict:
    mean = statistics.fmean(values)
    spread = max(values) - min(values)
    if all(isinstance(v, int) for v in values) and spread == 0:
        return {"value": values[0], "tol": 0}
    tol = max(1.5 * spread, 0.01 * abs(mean), 1e-3)
    return {"value": round(mean, 6), "tol": float(f"{tol:.3g}")}


def band(values: list) -> dict | None:
    if any(isinstance(v, (bool, str)) for v in values):
        return {"value": values[0], "tol": 0} if len(set(map(repr, values))) == 1 else None
    return number_band(values)


def spread_files(directory: Path) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = {}
    for p in sorted(directory.glob("*.json")):
        d = json.loads(p.read_text())
        d["_file"] = p.name
        groups.setdefault((d["notebook"], d["profile"]), []).append(d)
    return groups


def main_file(notebook: str, profile: str, files: list[dict]) -> dict:
    """The seeds of the solution notebook: the untagged file, else (a run at another thread count)
    the tagged solution file with the most seeds; never the student version's."""
    untagged = [f for f in files if not f.get("tag")]
    solution = sorted((f for f in files if not str(f.get("source", "")).startswith("notebooks/")),
                      key=lambda f: -len(f["runs"]))
    if not (untagged or solution):
        raise ValueError(f"{notebook} {profile}: no spread file of the solution notebook")
    return (untagged or solution)[0]


def entry_for(notebook: str, profile: str, files: list[dict]) -> dict:
    main = [main_file(notebook, profile, files)]
    runs = [r for r in main[0]["runs"] if r["ok"] and not r.get("overrides")]
    if not runs:
        raise ValueError(f"{notebook} {profile}: no successful run in {main[0]['_file']}")
    names = [m for m in runs[0]["metrics"] if all(m in r["metrics"] for r in runs)]
    default_seed = main[0]["runs"][0]["seed"]
    at_default = [r for f in files for r in f["runs"]
                  if r["ok"] and (r["seed"] == default_seed or r.get("at_default_seed"))]
    fastest = min(runs, key=lambda r: r["seconds"])
    metrics = {}
    for m in headline(notebook, names):
        values = [r["metrics"][m] for r in runs]
        b = band(values)
        if b is None:
            continue
        if profile == "smoke" and len(at_default) > 1:
            same = {json.dumps(r["metrics"].get(m)) for r in at_default}
            if len(same) == 1:
                v = at_default[0]["metrics"][m]
                # floats: room for the last bits another CPU of this kind may round differently
                tol = 0 if isinstance(v, (bool, str, int)) else float(f"{1e-3 * max(1.0, abs(v)):.3g}")
                b = {"value": v, "tol": tol, "deterministic": True}
        b["seeds"] = {str(r["seed"]): r["metrics"][m] for r in runs}
        metrics[m] = b
    hardware = runs[0].get("hardware", "")
    loads = [r.get("load_before") for r in runs if r.get("load_before") is not None]
    measured = (f"{len(runs)} seeds ({', '.join(str(r['seed']) for r in runs)}) on {hardware}, {main[0]['date']}"
                + (f", load {min(loads):.1f}-{max(loads):.1f}" if loads else ""))
    return {"measured": measured, "seconds": fastest["seconds"], "seconds_load": fastest.get("load_before"),
            "metrics": metrics}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--spread", type=Path, default=SPREAD)
    p.add_argument("--target", type=Path, default=TARGET)
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--extra", type=Path, action="append", default=[],
                   help="a folder of results.record files from another run (e.g. make course)")
    p.add_argument("--times", type=Path, default=None, help="notebook_times.json of a run_notebooks.py run")
    args = p.parse_args(argv)
    data = json.loads(args.target.read_text()) if args.target.exists() else {}
    data.setdefault("about", "Expected headline metrics per notebook and profile, from runs at several seeds; "
                             "written by benchmarks/expected_bands.py, read by course_lib.expected.")
    data.setdefault("notebooks", {})
    groups = spread_files(args.spread)
    for folder in args.extra:
        for rec_path in sorted(folder.glob("*.json")):
            rec = json.loads(rec_path.read_text())
            files = groups.get((rec["notebook"], rec["profile"]))
            if not files or rec.get("overrides"):
                continue
            main = main_file(rec["notebook"], rec["profile"], files)
            seed = main["runs"][0]["seed"]
            main["runs"].append({"seed": f"{seed} ({rec['hardware'].split(', ')[-1]}, {folder.parent.name})",
                                      "ok": True, "seconds": float("inf"), "metrics": rec["metrics"], "at_default_seed": True,
                                      "hardware": rec["hardware"]})
    for (nb, prof), files in groups.items():
        if args.only and nb not in args.only:
            continue
        data["notebooks"].setdefault(nb, {})[prof] = entry_for(nb, prof, files)
        print(f"{nb} / {prof}: {len(data['notebooks'][nb][prof]['metrics'])} bands")
    if args.times:
        for key, t in json.loads(args.times.read_text()).items():
            entry = data["notebooks"].get(t["notebook"], {}).get(t["profile"])
            if entry is not None and t.get("ok"):
                entry.update(seconds=t["seconds"], seconds_load=t.get("load_before"),
                             seconds_measured=f"run_notebooks.py, {t['hardware']}, {t['date']}")
    data["notebooks"] = dict(sorted(data["notebooks"].items()))
    args.target.write_text(json.dumps(data, indent=1) + "\n")
    from course_lib import expected

    expected.load(args.target)  # refuse to leave a file the library cannot read
    print(f"wrote {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
