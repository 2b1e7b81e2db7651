"""The lab around the notebooks, tested in a real Jupyter kernel: tqdm.auto (and so every training
bar of the course) draws a widget bar; the HTML of ``make course`` renders its formulas with no
network (MathML, no remote script); ``run_notebooks.py --out`` tables only its own run."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
WIDGET = "application/vnd.jupyter.widget-view+json"


def _load_run_notebooks():
    spec = importlib.util.spec_from_file_location("run_notebooks", ROOT / "benchmarks" / "run_notebooks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rn = _load_run_notebooks()


def _execute(*sources: str, markdown: str = "", cwd: Path | None = None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if markdown:
        nb.cells.append(nbformat.v4.new_markdown_cell(markdown))
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd or ROOT)}}).execute()
    return nb


def _text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


@pytest.fixture(scope="module")
def widget_notebook():
    return _execute(
        "import tqdm.auto, tqdm.notebook\nprint(issubclass(tqdm.auto.tqdm, tqdm.notebook.tqdm))",
        "from course_lib.train import progress_bar\n"
        "bar = progress_bar(3, desc='training', enabled=True)\nbar.update(3)\nbar.close()\n"
        "print(issubclass(type(bar), tqdm.notebook.tqdm))",
        markdown="# Offline\n\nInline $\\alpha_{ij} = \\mathrm{softmax}_j(e_{ij})$ and a display\n\n"
                 "$$c_i = \\sum_j \\alpha_{ij} h_j$$\n\nCode is not math: `$HOME` and\n\n"
                 "```bash\necho $PATH $HOME\n```\n\nNor is money: it costs $5 or $10.")


def test_tqdm_auto_draws_a_widget_bar_in_a_kernel(widget_notebook):
    probe, course = widget_notebook.cells[1], widget_notebook.cells[2]
    assert _text(probe).strip() == "True"  # ipywidgets is installed: tqdm.auto is the notebook bar
    assert _text(course).strip() == "True"  # the course's own bars (fit, downloads) too
    shown = [o for o in course.outputs if o.output_type == "display_data"]
    assert shown and all(WIDGET in o.data for o in shown)
    stderr = "".join(o.get("text", "") for c in widget_notebook.cells[1:] for o in c.outputs
                     if o.get("name") == "stderr")
    assert "TqdmWarning" not in stderr and "IProgress not found" not in stderr
    assert "training:" in shown[0].data["text/plain"]  # the text a viewer without widgets shows
    assert "widgets" in widget_notebook.metadata  # nbclient kept the widget state


def test_exported_html_needs_no_network(widget_notebook):
    page = rn.offline_html(widget_notebook)
    assert rn.remote_resources(page) == []
    assert page.count("<math") == 2 and 'display="block"' in page
    assert "MATHTOKEN" not in page and "\\alpha" not in page
    assert "<code>$HOME</code>" in page and '<span class="nv">$PATH</span>' in page  # code is left alone
    assert "it costs $5 or $10." in page  # and so is money
    assert "training: 100%" in page and "3/3 [" in page  # the progress bar's last state, as text


def test_remote_resources_finds_what_a_stock_export_loads(widget_notebook):
    from nbconvert import HTMLExporter

    stock, _ = HTMLExporter().from_notebook_node(widget_notebook)
    found = " ".join(rn.remote_resources(stock))
    assert "require.js" in found and "mathjax" in found.lower()  # what made formulas raw LaTeX offline


def test_every_formula_of_the_course_renders_offline():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        page = rn.offline_html(nbformat.read(path, as_version=4))
        assert "math-source" not in page, f"{path.name}: a formula latex2mathml could not read"
        # the Colab badge image is the only thing fetched from the network, and only an image
        assert rn.remote_resources(page) == ["https://colab.research.google.com/assets/colab-badge.svg"], path.name
        assert page.count("<math") >= 3, path.name


def test_run_notebooks_out_tables_only_its_own_run(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path / "elsewhere"))  # restored after main() changes it
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_markdown_cell("Formula $x^2$"))
    nb.cells.append(nbformat.v4.new_code_cell("from course_lib import results\nresults.record('98_demo', loss=0.5)"))
    src = tmp_path / "98_demo.ipynb"
    nbformat.write(nb, src)
    out = tmp_path / "out"
    old = {"notebook": "05_old", "profile": "cpu", "hardware": "x", "date": "d", "metrics": {"acc": 1}}
    for folder in ("course-results", "results"):  # an earlier run's records, and a notebook run by hand
        (out / folder).mkdir(parents=True)
        (out / folder / "05_old__cpu.json").write_text(json.dumps(old))
    assert rn.main([str(src), "--out", str(out)]) == 0
    table = (out / "results.md").read_text()
    assert "| 98_demo | smoke | loss=0.5 |" in table and "05_old" not in table
    assert sorted(p.name for p in (out / "course-results").iterdir()) == ["98_demo__smoke.json"]
    assert (out / "results" / "05_old__cpu.json").exists()  # records made by hand are left alone
    assert not (tmp_path / "elsewhere").exists()
    page = (out / "html" / "98_demo.html").read_text()
    assert rn.remote_resources(page) == [] and "<math" in page
    times = json.loads((out / "notebook_times.json").read_text())
    assert times["98_demo__smoke"]["ok"] is True
