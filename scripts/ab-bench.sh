#!/usr/bin/env bash
# An A/B of two builds in one device call, so that both run on the same card in the same state
# (bench/NOTES.md: own-full ratios move by about 0.05 between calls): the working tree's Python
# module against another commit's, alternately, a few rounds, then one table of both.
#
#   here:        git archive -o ab-base.tar <base-commit>        (the device copy has no .git)
#   device call: scripts/ab-bench.sh ab-base.tar [rounds] -- <bench_attention.py arguments>
#                with ab-base.tar in the call's carry (it is git-ignored), e.g.
#                scripts/ab-bench.sh ab-base.tar 2 -- --configs b --impls flashmask --masks full,share_question
#
# The working tree's module is installed as scripts/gpu.sh's python step installs it (into the
# interpreter's site-packages); the base's goes to its own --target folder and runs with its own
# copy of bench_attention.py on PYTHONPATH. Output: each run's markdown and log in
# $FLASHMASK_GPU_BUILD_DIR/ab (default build-gpu/ab), and ab.md there, every run's effective
# TFLOP/s table in order; ab.md alone is copied to $OUT when set (the device tool brings back at
# most 8 files), after every run, so that a call cut short still returns the runs it finished.
set -uo pipefail
cd "$(dirname "$0")/.."

usage() { echo "usage: scripts/ab-bench.sh BASE_TARBALL [ROUNDS] -- BENCH_ARGUMENTS..." >&2; exit 2; }
[ $# -ge 1 ] || usage
BASE_TARBALL=$1; shift
ROUNDS=2  # base, working tree, base, working tree: an order effect shows as a drift within one side
if [ $# -ge 1 ] && [ "$1" != "--" ]; then ROUNDS=$1; shift; fi
[ $# -ge 1 ] && [ "$1" = "--" ] || usage
shift
[ -f "$BASE_TARBALL" ] || { echo "ab-bench: no base tarball '$BASE_TARBALL' (git archive -o ab-base.tar REV here, then carry it)" >&2; exit 2; }

PYTHON=${PYTHON:-python3}
ARCHITECTURES=${FLASHMASK_CUDA_ARCHITECTURES:-90a-real}
WORK_DIR=${FLASHMASK_GPU_BUILD_DIR:-build-gpu}/ab
OUT_DIR=$(mkdir -p "$WORK_DIR" && cd "$WORK_DIR" && pwd)  # absolute: the base runs elsewhere
BASE_TREE=/tmp/flashmask-ab-base
BASE_PACKAGE=/tmp/flashmask-ab-base-package
export PYTHONUNBUFFERED=1

install_module() {  # install_module <source dir> <build dir> [pip arguments...]
  local source=$1 build=$2; shift 2
  (cd "$source" && FLASHMASK_CUDA=ON "$PYTHON" -m pip install -q --no-build-isolation --no-deps --no-index \
    -C build-dir="$build" -C cmake.define.FLASHMASK_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCHITECTURES" \
    "$@" .)
}

rm -rf "$BASE_TREE" "$BASE_PACKAGE" && mkdir -p "$BASE_TREE"
tar xf "$BASE_TARBALL" -C "$BASE_TREE" || exit 1
install_module "$BASE_TREE" /tmp/flashmask-ab-base-build --target "$BASE_PACKAGE" >"$OUT_DIR/install-base.log" 2>&1 ||
  { tail -20 "$OUT_DIR/install-base.log"; exit 1; }
install_module . "$(pwd)/${FLASHMASK_GPU_BUILD_DIR:-build-gpu}/python" >"$OUT_DIR/install-tree.log" 2>&1 || { tail -20 "$OUT_DIR/install-tree.log"; exit 1; }

summary="$OUT_DIR/ab.md"
{
  echo "# A/B: base ($(basename "$BASE_TARBALL")) against the working tree, alternately, $ROUNDS rounds"
  echo
  echo "bench_attention.py $*"
} >"$summary"
for round in $(seq 1 "$ROUNDS"); do
  for side in base tree; do
    name="$side-$round"
    if [ "$side" = base ]; then
      (cd "$BASE_TREE" && PYTHONPATH="$BASE_PACKAGE" "$PYTHON" bench/bench_attention.py "$@" --out "$OUT_DIR/$name.md") \
        >"$OUT_DIR/$name.log" 2>&1
    else
      "$PYTHON" bench/bench_attention.py "$@" --out "$OUT_DIR/$name.md" >"$OUT_DIR/$name.log" 2>&1
    fi
    status=$?
    {
      echo; echo "## $name (exit $status)"; echo
      # The effective TFLOP/s table: from its heading to the next one.
      awk '/^## / { inside = ($0 ~ /^## Effective TFLOP/) ; next } inside && /^\|/' "$OUT_DIR/$name.md" 2>/dev/null
    } >>"$summary"
    [ -n "${OUT:-}" ] && mkdir -p "$OUT" && cp "$summary" "$OUT/ab.md"
  done
done
cat "$summary"
