#!/usr/bin/env bash
# Configures and builds everything (library, CLI, tests, benchmarks; the CUDA kernels too when
# nvcc is found) in build/. Extra arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j"$(nproc)"
