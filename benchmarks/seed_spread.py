"""Run one notebook at several seeds and keep what each run recorded: the seed spread that
``course_lib/expected.json``'s tolerances are taken from.

    python benchmarks/seed_spread.py solutions/06_gpt_pretraining.ipynb --profile cpu --seeds 3
    python benchmarks/seed_spread.py notebooks/06_gpt_pretraining.ipynb --profile smoke --seeds 1 --threads 1 --tag student-t1

Each run is papermill with ``-p PROFILE <profile> -p SEED <seed>``: the notebook's own default
``SEED`` (read from its parameters cell) and the next ``--seeds - 1`` integers. The kernel records
into its own folder (``COURSE_RESULTS_DIR``), so no other run's rows mix in. Writes
``build/spread/<stem>__<profile>[__<tag>].json``: per seed the recorded metrics, the wall seconds
and the load average before and after (other jobs on the machine inflate the seconds, never the
seeded metrics). A run that fails is kept with its error and makes the script exit 1.
``benchmarks/expected_bands.py`` turns these files into the expected bands.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPREAD_DIR = ROOT / "build" / "spread"


def default_seed(path: Path) -> int:
    """The ``SEED = N`` of the notebook's parameters cell."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            m = re.search(r"^SEED\s*=\s*(\d+)", cell.source, re.M)
            if m:
                return int(m.group(1))
    raise ValueError(f"{path}: no 'SEED = <int>' in a cell tagged 'parameters'")


def loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # Windows
        return None


def run_one(path: Path, profile: str, seed: int, work: Path) -> dict:
    import papermill as pm

    results_dir = work / f"seed{seed}"
    results_dir.mkdir(parents=True, exist_ok=True)
    for old in results_dir.glob("*.json"):
        old.unlink()
    os.environ["COURSE_RESULTS_DIR"] = str(results_dir)
    os.environ["COURSE_PROFILE"] = profile
    entry: dict = {"seed": seed, "load_before": loadavg()}
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(str(path), str(work / f"seed{seed}.ipynb"), cwd=str(path.parent),
                            parameters={"PROFILE": profile, "SEED": seed}, progress_bar=False,
                            kernel_name="python3")
        entry["ok"] = True
    except Exception as e:  # keep the other seeds; reported at the end
        entry["ok"] = False
        entry["error"] = f"{type(e).__name__}: {str(e)[-800:]}"
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    entry["load_after"] = loadavg()
    records = sorted(results_dir.glob("*.json"))
    if records:
        rec = json.loads(records[-1].read_text())
        entry["metrics"] = rec.get("metrics", {})
        entry["hardware"] = rec.get("hardware")
        if rec.get("overrides"):
            entry["overrides"] = rec["overrides"]
    elif entry["ok"]:
        entry["ok"] = False
        entry["error"] = "the notebook ran but recorded nothing (no results.record call reached)"
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=Path)
    p.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "gpu"])
    p.add_argument("--seeds", type=int, default=3, help="how many seeds, from the notebook's default one")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the kernels")
    p.add_argument("--append", action="store_true",
                   help="add the runs to an existing output file (same seed: the new run replaces the old)")
    p.add_argument("--start", type=int, default=None, help="first seed (default: the notebook's SEED)")
    p.add_argument("--tag", default="", help="suffix of the output file, e.g. student-t1")
    p.add_argument("--out", type=Path, default=SPREAD_DIR)
    p.add_argument("--fresh-artifacts", action="store_true",
                   help="train the cached models (char_gpt, ...) anew in an empty COURSE_ARTIFACT_DIR, as a clean "
                        "CI machine does, so their training at this thread count is part of what is measured")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be at least 1, got {args.seeds}")
    path = args.notebook.resolve()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    name = f"{path.stem}__{args.profile}" + (f"__{args.tag}" if args.tag else "")
    work = args.out / name
    work.mkdir(parents=True, exist_ok=True)
    first = default_seed(path) if args.start is None else args.start
    if args.fresh_artifacts:
        import tempfile

        os.environ["COURSE_ARTIFACT_DIR"] = tempfile.mkdtemp(prefix=f"artifacts-{name}-")
    runs = []
    for seed in range(first, first + args.seeds):
        entry = run_one(path, args.profile, seed, work)
        print(json.dumps({k: v for k, v in entry.items() if k != "metrics"}), flush=True)
        runs.append(entry)
    out = {"notebook": path.stem, "source": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
           "profile": args.profile, "tag": args.tag, "threads": args.threads,
           "fresh_artifacts": args.fresh_artifacts,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
    target = args.out / f"{name}.json"
    if args.append and target.exists():
        new = {r["seed"] for r in runs}
        runs = sorted([r for r in json.loads(target.read_text())["runs"] if r["seed"] not in new] + runs,
                      key=lambda r: r["seed"])
        out["runs"] = runs
    target.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {target}")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
