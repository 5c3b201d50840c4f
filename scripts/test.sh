#!/usr/bin/env bash
# Everything CI checks, from a fresh machine: install, build, run the tests (the Python module's
# pytest and the OpenAI client against `ferry serve` among them); `pip install` of a fresh clone;
# then the unit tests again under AddressSanitizer + UndefinedBehaviorSanitizer; then a short
# libFuzzer run of each fuzz target when clang is present.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

echo "== build (Release) and test"
scripts/setup.sh
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== Python package: pip install of a fresh clone into a venv (offline, reusing build/)"
scripts/test_python_install.sh

echo "== AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON -DFERRY_BUILD_BENCH=OFF
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs" -L unit

if command -v clang++ >/dev/null; then
  echo "== fuzz (short runs)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFERRY_FUZZ=ON -DFERRY_BUILD_TESTS=OFF -DFERRY_BUILD_BENCH=OFF -DFERRY_USE_MIMALLOC=OFF
  cmake --build build-fuzz -j"$jobs" --target ferry_fuzz_targets
  for target in build-fuzz/tests/fuzz/fuzz_*; do
    [ -x "$target" ] || continue
    name=$(basename "$target")
    corpus=tests/fuzz/corpus/$name
    [ -d "$corpus" ] || corpus=tests/fuzz/corpus/${name#fuzz_}
    work=$(mktemp -d)
    [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
    echo "-- $name"
    "$target" -max_total_time="${FERRY_FUZZ_SECONDS:-30}" -rss_limit_mb=2048 "$work" 2>&1 | tail -n 3
    rm -rf "$work"
  done
else
  echo "== fuzz skipped: clang++ not found"
fi
echo "== all checks passed"
