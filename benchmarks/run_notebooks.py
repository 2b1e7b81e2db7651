"""Execute worked notebooks headless under the current profile and time each one.

    python benchmarks/run_notebooks.py [solutions/01_*.ipynb ...] [--out build]

Writes ``build/executed/*.ipynb``, ``build/html/*.html``, ``build/notebook_times.json`` (wall
seconds per notebook, with profile and hardware) and ``build/results.md`` (the table of every
``results.record`` made during the runs). Prints one JSON line per notebook. ``make course``
runs it over every solution notebook.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    from course_lib import profile, results

    p = argparse.ArgumentParser()
    p.add_argument("notebooks", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "build")
    p.add_argument("--no-html", action="store_true")
    args = p.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "solutions").glob("*.ipynb"))
    (args.out / "executed").mkdir(parents=True, exist_ok=True)
    (args.out / "html").mkdir(parents=True, exist_ok=True)
    times_path = args.out / "notebook_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=None, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        t0 = time.perf_counter()
        error = None
        try:
            client.execute()
        except Exception as e:  # keep going; report at the end
            error = f"{type(e).__name__}: {str(e)[-500:]}"
            failed += 1
        seconds = time.perf_counter() - t0
        nbformat.write(nb, args.out / "executed" / path.name)
        if not args.no_html:
            body, _ = HTMLExporter().from_notebook_node(nb)
            (args.out / "html" / path.with_suffix(".html").name).write_text(body, encoding="utf-8")
        entry = {"notebook": path.stem, "profile": profile.name(), "seconds": round(seconds, 1),
                 "hardware": results.hardware(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                 "ok": error is None}
        if error:
            entry["error"] = error
        times[f"{path.stem}__{profile.name()}"] = entry
        print(json.dumps(entry), flush=True)
    times_path.write_text(json.dumps(times, indent=2) + "\n")
    (args.out / "results.md").write_text("# Results of this run\n\n" + results.table())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
