"""Shared fixtures of the Python tests: the module (skipped when it was not built), the fixture
models in tests/data, and the `ferry` command to compare against."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ferry = pytest.importorskip("ferry", reason="the Python module was not built (FERRY_PYTHON=OFF)")

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("FERRY_TEST_DATA", REPO / "tests" / "data"))
GPTJ = DATA / "gptj" / "tiny-f32"
LLAMA = DATA / "llama" / "llama3-gqa-f32"
GGUF = DATA / "gguf" / "tiny-llama-bpe" / "F32" / "model.gguf"  # a Llama with its tokenizer


def ferry_bin():
    """The ferry command ctest built beside the module (FERRY_BIN), else the one on PATH."""
    b = os.environ.get("FERRY_BIN") or shutil.which("ferry")
    if not b:
        pytest.skip("no ferry command to compare with (set FERRY_BIN)")
    return b


def run_cli(*args, check=True):
    r = subprocess.run([ferry_bin(), *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"ferry {' '.join(map(str, args))} failed: {r.stderr}")
    return r


def cli_error(*args):
    """The message `ferry` prints for an error, without its "ferry: error: " prefix."""
    r = run_cli(*args, check=False)
    assert r.returncode != 0, r.stdout
    lines = [l for l in r.stderr.splitlines() if l.startswith("ferry: error: ")]
    assert lines, r.stderr
    return lines[-1][len("ferry: error: "):]


def cli_json(*args):
    return json.loads(run_cli(*args).stdout)


@pytest.fixture(scope="session")
def gguf_model():
    return ferry.load(GGUF, device="cpu", progress=False)
