#!/usr/bin/env bash
# CI's packaging check: a fresh clone of the repository (its committed files), `pip install`ed
# offline into a temporary virtual environment, then `import ferry`, a generation and the `ferry`
# command from that environment. Debian 12's pip refuses installs into the system Python
# (PEP 668, "externally-managed-environment"), so the install goes into a venv made with
# --system-site-packages: it sees Debian's numpy, setuptools and wheel, so nothing is downloaded
# (--no-index, --no-build-isolation). The extension and the command are not compiled again: the
# Release build directory ($FERRY_BUILD_DIR, default build/) is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
build_dir=$(realpath "${FERRY_BUILD_DIR:-build}")
# The Python the module was built for (CMake caches it as Python3_EXECUTABLE when given, else
# only as _Python3_EXECUTABLE), not whichever python3 comes first on PATH.
python=${FERRY_PYTHON_EXE:-$(sed -n 's/^_\{0,1\}Python3_EXECUTABLE:[A-Z]*=//p' "$build_dir/CMakeCache.txt" 2>/dev/null | head -1 || true)}
python=${python:-python3}
if ! grep -q "^FERRY_PYTHON:BOOL=ON" "$build_dir/CMakeCache.txt" 2>/dev/null; then
  echo "python install: skipped ($build_dir was configured without the Python module: apt-get install python3-dev pybind11-dev)"
  exit 0
fi
if ! "$python" -c "import numpy, setuptools, wheel, venv" 2>/dev/null; then
  echo "python install: skipped ($python lacks numpy, setuptools, wheel or venv: apt-get install python3-numpy python3-setuptools python3-wheel python3-venv)"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q --shared "$repo" "$work/src"
"$python" -m venv --system-site-packages "$work/venv"
echo "== pip install (venv $work/venv, build dir $build_dir)"
FERRY_BUILD_DIR=$build_dir "$work/venv/bin/python" -m pip install -q --no-index \
  --no-build-isolation "$work/src"

echo "== import ferry from the venv"
cd "$work"  # not the repository: the installed package, not python/ in the source tree
"$work/venv/bin/python" - "$repo/tests/data/gguf/tiny-llama-bpe/F32/model.gguf" <<'PY'
import sys
import ferry
assert ferry.__file__.startswith(sys.prefix), ferry.__file__
m = ferry.load(sys.argv[1], device="cpu", progress=False)
text = m.generate("The license grants", max_new_tokens=8)
print(f"ferry {ferry.__version__} from {ferry.__file__}: {text!r}")
PY
"$work/venv/bin/ferry" --version
echo "== python install: ok"
