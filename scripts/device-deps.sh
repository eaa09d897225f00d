#!/usr/bin/env bash
# Run HERE (the development machine), before a device call: copies what scripts/gpu.sh needs and
# the GPU machine lacks into .deps/, a folder git ignores through .git/info/exclude (it is this
# checkout's luggage, not the project's). The GPU machine has no GoogleTest and no network, so
# the call must name it: carry [".deps"]. gpu.sh builds and installs GoogleTest from there into
# its build folder and points find_package(GTest) at it; no project CMake file changes.
set -euo pipefail
cd "$(dirname "$0")/.."

GOOGLETEST_SOURCE=/usr/src/googletest   # Debian's libgtest-dev ships the source tree here
DEPS_DIR=.deps

if [ ! -f "$GOOGLETEST_SOURCE/CMakeLists.txt" ]; then
  scripts/install-deps.sh  # installs libgtest-dev among the rest
fi
mkdir -p "$DEPS_DIR"
rm -rf "$DEPS_DIR/googletest"
cp -r "$GOOGLETEST_SOURCE" "$DEPS_DIR/googletest"

exclude_file="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude_file")"
grep -qxF "/$DEPS_DIR/" "$exclude_file" 2>/dev/null || echo "/$DEPS_DIR/" >>"$exclude_file"

echo "[device-deps] $DEPS_DIR/googletest ($(du -sh "$DEPS_DIR/googletest" | cut -f1)) ready; name \"$DEPS_DIR\" in the device call's carry"
