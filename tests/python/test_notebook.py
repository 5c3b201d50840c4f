"""examples/colab_gptj.ipynb: valid nbformat v4, and its cells after the download (tagged "ci")
run in order against a tiny local model (FERRY_NOTEBOOK_MODEL), without Jupyter."""
import json
import os

import pytest

from conftest import GGUF, REPO

NOTEBOOK = REPO / "examples" / "colab_gptj.ipynb"


def load():
    return json.loads(NOTEBOOK.read_text())


def source(cell):
    s = cell["source"]
    return "".join(s) if isinstance(s, list) else s


def test_valid_nbformat_v4():
    nb = load()
    assert nb["nbformat"] == 4 and isinstance(nb["nbformat_minor"], int)
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    ids = set()
    for cell in nb["cells"]:
        assert cell["cell_type"] in ("markdown", "code", "raw")
        assert isinstance(cell["metadata"], dict)
        assert isinstance(cell["source"], (str, list))
        if nb["nbformat_minor"] >= 5:
            assert cell["id"] not in ids
            ids.add(cell["id"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and "execution_count" in cell
        else:
            assert "outputs" not in cell
    try:  # the reference validator, where installed (python3-nbformat)
        import nbformat
    except ImportError:
        return
    nbformat.validate(nbformat.reads(NOTEBOOK.read_text(), as_version=4))


def test_notebook_has_the_parts():
    text = "\n".join(source(c) for c in load()["cells"])
    for part in ("pip install", 'revision="float16"', "EleutherAI/gpt-j-6b", "ferry.plan",
                 "ferry.load", "stream=True", "AutoModelForCausalLM", "FERRY_NOTEBOOK_MODEL"):
        assert part in text, part


def test_ci_cells_run(monkeypatch, capsys):
    monkeypatch.setenv("FERRY_NOTEBOOK_MODEL", str(GGUF))
    cells = [c for c in load()["cells"]
             if c["cell_type"] == "code" and "ci" in c["metadata"].get("tags", [])]
    assert len(cells) >= 4
    scope = {"__name__": "__notebook__"}
    for i, cell in enumerate(cells):
        code = source(cell)
        assert not any(l.lstrip().startswith(("!", "%")) for l in code.splitlines()), \
            f"ci cell {i} uses IPython syntax"
        exec(compile(code, f"<notebook ci cell {i}>", "exec"), scope)
    out = capsys.readouterr().out
    assert "model:" in out and "s/token predicted" in out
