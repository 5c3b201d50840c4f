#!/usr/bin/env bash
# ctest serve_openai_client: installs the pinned OpenAI Node client (package-lock.json) into the
# build tree with `npm ci` and runs client_test.mjs against `ferry serve`. Exits 77 (ctest's
# SKIP_RETURN_CODE) when node or npm is missing or the packages cannot be installed (no registry).
#   run.sh FERRY_BINARY MODEL_DIR WORK_DIR
set -u
ferry=$1 model=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: node and npm are needed for the OpenAI client test"
  exit 77
fi
mkdir -p "$work"
cp "$here/package.json" "$here/package-lock.json" "$here/client_test.mjs" "$work/"
cd "$work" || exit 1
# Installed once per lock file: a later run reuses node_modules without the network.
if [ ! -d node_modules/openai ] || ! cmp -s package-lock.json .installed-lock; then
  if ! timeout 300 npm ci --no-audit --no-fund --loglevel=error; then
    echo "SKIP: npm ci could not install the OpenAI client (is the npm registry reachable?)"
    exit 77
  fi
  cp package-lock.json .installed-lock
fi
exec timeout 120 node client_test.mjs "$ferry" "$model"
