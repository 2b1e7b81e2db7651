"""Execute worked notebooks headless under the current profile and time each one.

    python benchmarks/run_notebooks.py [solutions/01_*.ipynb ...] [--out build] [--no-html]

Writes under ``--out`` (default ``build/``): ``executed/*.ipynb``, ``html/*.html``,
``notebook_times.json`` (wall seconds per notebook, with profile and hardware) and ``results.md``,
the table of the ``results.record`` calls of *this run only*: the notebooks record into
``OUT/course-results/``, emptied at the start (``COURSE_RESULTS_DIR`` is set for the kernels), so
rows of another profile, of the test suite or of a notebook run by hand (``build/results/``, left
alone) never mix in. Prints one JSON line
per notebook. ``make course`` runs it over every solution notebook.

The HTML needs no network: formulas are rendered to MathML at export (latex2mathml; browsers
draw MathML natively), and no remote script is loaded (no require.js, MathJax, mermaid or
widget manager from a CDN); progress-bar widgets show as their text.

Expected results: after the run, every record is compared with ``course_lib/expected.json``
(:func:`check_expected`); the script exits non-zero when a cpu-profile metric, or a smoke metric
marked deterministic, falls outside its measured band, naming the notebook, metric, band and value
(``--no-expected`` skips the comparison, e.g. for a run with ``CFG_OVERRIDES``).
"""
from __future__ import annotations

import argparse
import copy
import html
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the lab template, less every block that loads a script from a CDN
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
# fenced code blocks and inline code spans: never math
_CODE = re.compile(r"(^[ \t]*```.*?^[ \t]*```[ \t]*$|`[^`\n]+`)", re.M | re.S)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)(?<!\\)\$(?![\d$])")
_TOKEN = "MATHTOKEN{:05d}X"


def _latex_to_mathml(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert

    try:
        return convert(latex.strip(), display="block" if display else "inline")
    except Exception:  # a formula the converter cannot read stays visible as its source
        return f'<code class="math-source">{html.escape(latex)}</code>'


def extract_math(markdown: str, found: list[tuple[str, bool]]) -> str:
    """``markdown`` with every ``$$...$$`` and ``$...$`` outside code replaced by a token;
    the (latex, display) pairs are appended to ``found`` in token order."""
    def sub(text: str) -> str:
        def keep(display: bool):
            def f(m: re.Match) -> str:
                found.append((m.group(1), display))
                return _TOKEN.format(len(found) - 1)
            return f
        return _INLINE.sub(keep(False), _DISPLAY.sub(keep(True), text))

    parts = _CODE.split(markdown)
    return "".join(p if i % 2 else sub(p) for i, p in enumerate(parts))


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _widgets_as_text(nb) -> None:
    """Replace each widget output by text: a tqdm bar (an HBox of description, progress and
    stats) becomes its last state, read from the widget state nbclient saved; other widgets keep
    their plain-text form. The widget state itself is dropped (it would pull a CDN script)."""
    state = nb.metadata.pop("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})

    def value(ref) -> str:
        model = state.get(str(ref).removeprefix("IPY_MODEL_"), {}).get("state", {})
        return html.unescape(str(model.get("value", ""))).replace("\u2007", " ").strip()  # tqdm pads with figure spaces

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            view = data.pop(WIDGET_VIEW)
            children = state.get(view.get("model_id", ""), {}).get("state", {}).get("children", [])
            if len(children) == 3:  # tqdm.notebook: description + percentage, bar, counts and rate
                data["text/plain"] = f"{value(children[0])} {value(children[2])}".strip()


def offline_html(nb) -> str:
    """HTML of a notebook that renders offline: math as MathML, no remote script."""
    import jinja2
    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    _widgets_as_text(nb)
    found: list[tuple[str, bool]] = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = extract_math(cell.source, found)
    exporter = HTMLExporter(template_name="lab", template_file="offline.html.j2",
                            extra_loaders=[jinja2.DictLoader({"offline.html.j2": OFFLINE_TEMPLATE})])
    body, _ = exporter.from_notebook_node(nb)
    for i, (latex, display) in enumerate(found):
        body = body.replace(_TOKEN.format(i), _latex_to_mathml(latex, display))
    return body


def remote_resources(page: str) -> list[str]:
    """Every script, stylesheet, image or module import that ``page`` would fetch from the network."""
    urls = re.findall(r"""<(?:script|link|img|iframe)\b[^>]*?\b(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)""",
                      page, re.I)
    urls += re.findall(r"""\bimport\b[^;'"]*?["']((?:https?:)?//[^"']+)["']""", page)
    urls += re.findall(r"""@import\s+(?:url\()?["']?((?:https?:)?//[^"') ]+)""", page)
    return urls


# how strictly each profile's records are held to their bands (see course_lib.expected)
STRICT_BY_PROFILE = {"cpu": "all", "smoke": "deterministic", "gpu": "all"}


def check_expected(run_results: Path, data: dict | None = None) -> list:
    """The failing checks of every record in ``run_results`` against the expected bands."""
    from course_lib import expected, results

    bad = []
    for rec in results.load_all(run_results):
        if rec.get("overrides"):
            continue  # hand-sized runs are not the profile's own figures
        checks = expected.compare(rec["notebook"], rec["profile"], rec["metrics"], data)
        bad += expected.failures(checks, STRICT_BY_PROFILE.get(rec["profile"], "all"))
    return bad


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient

    p = argparse.ArgumentParser()
    p.add_argument("notebooks", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=ROOT / "build")
    p.add_argument("--no-html", action="store_true")
    p.add_argument("--no-expected", action="store_true", help="do not compare with course_lib/expected.json")
    args = p.parse_args(argv)
    out = args.out.resolve()
    paths = args.notebooks or sorted((ROOT / "solutions").glob("*.ipynb"))
    (out / "executed").mkdir(parents=True, exist_ok=True)
    (out / "html").mkdir(parents=True, exist_ok=True)
    # this run's results, and only this run's: the kernels inherit COURSE_RESULTS_DIR
    run_results = out / "course-results"
    run_results.mkdir(parents=True, exist_ok=True)
    for old in run_results.glob("*.json"):
        old.unlink()
    os.environ["COURSE_RESULTS_DIR"] = str(run_results)

    from course_lib import profile, results

    times_path = out / "notebook_times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    failed = 0
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=None, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs inflate the seconds
        t0 = time.perf_counter()
        error = None
        try:
            client.execute()
        except Exception as e:  # keep going; report at the end
            error = f"{type(e).__name__}: {str(e)[-500:]}"
            failed += 1
        seconds = time.perf_counter() - t0
        nbformat.write(nb, out / "executed" / path.name)
        if not args.no_html:
            (out / "html" / path.with_suffix(".html").name).write_text(offline_html(nb), encoding="utf-8")
        entry = {"notebook": path.stem, "profile": profile.name(), "seconds": round(seconds, 1),
                 "hardware": results.hardware(), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                 "ok": error is None, "load_before": None if load is None else round(load, 2)}
        if error:
            entry["error"] = error
        times[f"{path.stem}__{profile.name()}"] = entry
        print(json.dumps(entry), flush=True)
    times_path.write_text(json.dumps(times, indent=2) + "\n")
    (out / "results.md").write_text("# Results of this run\n\n" + results.table(run_results))
    outside = [] if args.no_expected else check_expected(run_results)
    for c in outside:
        print(f"OUTSIDE THE EXPECTED BAND: {c.notebook} ({c.profile}) {c.line()}", file=sys.stderr)
    return 1 if failed or outside else 0


if __name__ == "__main__":
    sys.exit(main())
