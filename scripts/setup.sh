#!/usr/bin/env bash
# Installs what ferry needs to build on a fresh Debian/Ubuntu machine (as root or with sudo),
# then configures and builds it into build/ (or $FERRY_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake ninja-build pkg-config git
          libfmt-dev nlohmann-json3-dev libcli11-dev liburing-dev libmimalloc-dev
          libcpp-httplib-dev libgtest-dev libgmock-dev libbenchmark-dev clang fio python3
          python3-dev pybind11-dev python3-numpy python3-pytest python3-setuptools python3-wheel
          python3-pip python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

build_dir=${FERRY_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=${FERRY_BUILD_TYPE:-Release} "$@"
cmake --build "$build_dir" -j"$(nproc)"
