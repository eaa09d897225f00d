#!/usr/bin/env bash
# Installs what building and testing flashmask needs on a fresh Debian machine: the C++
# toolchain pieces from Debian's packages (skipped when already present) and, for Python, a
# virtual environment under build/venv with the test requirements from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v ninja >/dev/null || need_apt+=(ninja-build)
command -v g++ >/dev/null || need_apt+=(g++)
[ -e /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev libgmock-dev)
[ -e /usr/include/benchmark/benchmark.h ] || need_apt+=(libbenchmark-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[install-deps] apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if [ "${1:-}" = "--python" ]; then
  if [ ! -x build/venv/bin/python ]; then
    python3 -m venv build/venv
  fi
  build/venv/bin/python -m pip install -q --upgrade pip
  build/venv/bin/python -m pip install -q numpy pytest nanobind scikit-build-core ml_dtypes
fi
