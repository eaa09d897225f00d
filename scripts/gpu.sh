#!/usr/bin/env bash
# The one script for the GPU machine (issue #3): builds the C++ library and the GPU tests, runs
# them, runs compute-sanitizer memcheck on the *Sanitizer* tests, installs the Python package
# with the CUDA kernels, runs its CUDA tests, and runs the side-by-side benchmark. Prints a short
# table last. Logs and results go to $OUT when set (the device tool brings that folder back),
# else to $FLASHMASK_GPU_BUILD_DIR/logs.
#
#   scripts/gpu.sh                                   # every step: build test sanitize python bench (config a)
#   scripts/gpu.sh build test sanitize               # the C++ side only
#   scripts/gpu.sh python bench -- --configs b --masks full,causal,sliding_window,causal_document,document,share_question
#                                                    # arguments after -- go to bench_attention.py
#   scripts/gpu.sh bench -- --quick                  # benchmark smoke run
#
# bench times the module in the interpreter's site-packages, so without the python step it
# installs this tree's first (step "install", ~15 s on a warm build folder): a module left there
# by an earlier call (scripts/ab-bench.sh installs its working tree's too) would otherwise be
# timed under this tree's commit.
#
# Before a device call, run scripts/device-deps.sh here (GoogleTest for a machine without one)
# and name ".deps" in the call's carry. Pass the commit as FLASHMASK_COMMIT=$(git rev-parse
# --short HEAD) in the command: git on the machine's copy does not know it (scripts/lib/provenance.sh).
#
# Environment (defaults in brackets):
#   FLASHMASK_CUDA_ARCHITECTURES [90a-real]  CUDA targets of the C++ build and the Python module
#   FLASHMASK_GPU_BUILD_DIR      [build-gpu] CMake build folder (the Python build goes inside it)
#   FLASHMASK_GPU_JOBS           [16]        parallel compile jobs (the GPU machine has 16 cores)
#   FLASHMASK_CUDA               [ON]        the Python module's kernels (OFF: CPU-only module, for
#                                            benchmarking the peers before the kernels exist)
#   FLASHMASK_COMMIT             [git, "-dirty" marked, else 'unknown']  recorded in the benchmark results
#   FLASHMASK_PYTEST_FILTER      [all]       a pytest -k expression: the Python tests to run when
#                                            device time is short (e.g. "preprocessing or key_order")
#
# A failing step is reported at once with the end of its log; the steps that need it are
# skipped, the others still run, and the script exits non-zero.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

ARCHITECTURES=${FLASHMASK_CUDA_ARCHITECTURES:-90a-real}
BUILD_DIR=${FLASHMASK_GPU_BUILD_DIR:-build-gpu}
JOBS=${FLASHMASK_GPU_JOBS:-16}
PYTHON_CUDA=${FLASHMASK_CUDA:-ON}
PYTHON=${PYTHON:-python3}
LOG_DIR=${OUT:-$BUILD_DIR/logs}
GOOGLETEST_SOURCE=.deps/googletest          # put there by scripts/device-deps.sh
GOOGLETEST_PREFIX=$BUILD_DIR/googletest-install
GPU_TESTS=$BUILD_DIR/tests/gpu/flashmask_gpu_tests
LOG_TAIL_LINES=40                           # of a failing step's log, printed at once
ALL_STEPS=(build test sanitize python bench)
# The device tool brings back at most 8 files from $OUT: one log per step, the benchmark's
# markdown and JSON, and summary.txt.

steps=()
bench_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; bench_args=("$@"); break ;;
    build|test|sanitize|python|bench) steps+=("$1") ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;  # the header comment
    *) echo "gpu.sh: unknown step '$1'; expected any of: ${ALL_STEPS[*]} (then -- and benchmark arguments)" >&2; exit 2 ;;
  esac
  shift
done
[ ${#steps[@]} -eq 0 ] && steps=("${ALL_STEPS[@]}")
# Without benchmark arguments, config (a) only: on an H100 it takes ~2.5 minutes, config (b)
# ~8 (its dense-mask SDPA peer alone ~28 s a mask), more than one device call holds beside the
# build; run (b) in calls of its own (bench/README.md) and pass -- --configs a,b elsewhere.
DEFAULT_BENCH_ARGS=(--configs a)
[ ${#bench_args[@]} -eq 0 ] && bench_args=("${DEFAULT_BENCH_ARGS[@]}")

mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS
export PYTHONUNBUFFERED=1

source scripts/lib/provenance.sh
commit=$(tree_commit)
gpu_name=$(current_gpu_name)
gpu_name=${gpu_name:-"no GPU found"}

declare -A status seconds detail
failed=0

# run_step NAME LOG COMMAND...: runs the command with its output in LOG, timed; on failure prints
# the log's end at once.
run_step() {
  local name=$1 log=$2; shift 2
  local start=$SECONDS
  echo "== [$name] $(date -u +%H:%M:%S) -> $log"
  if "$@" >>"$log" 2>&1; then
    status[$name]=ok
  else
    status[$name]=FAILED
    failed=1
    echo "!! [$name] FAILED; last $LOG_TAIL_LINES lines of $log:"
    tail -n "$LOG_TAIL_LINES" "$log" | sed 's/^/   | /'
  fi
  seconds[$name]=$((SECONDS - start))
}

skip_step() {  # skip_step NAME REASON
  status[$1]=skipped; seconds[$1]=0; detail[$1]=$2
  echo "== [$1] skipped: $2"
}

wants() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }

# ---- build: GoogleTest (if carried), then the library, the GPU tests and the CLI --------------
build_cpp() {
  local prefix_args=()
  if [ -f "$GOOGLETEST_SOURCE/CMakeLists.txt" ]; then
    cmake -S "$GOOGLETEST_SOURCE" -B "$BUILD_DIR/googletest" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_GMOCK=OFF -DINSTALL_GTEST=ON -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
      -DCMAKE_INSTALL_PREFIX="$ROOT/$GOOGLETEST_PREFIX" &&
      cmake --build "$BUILD_DIR/googletest" -j"$JOBS" &&
      cmake --install "$BUILD_DIR/googletest" || return 1
    prefix_args=(-DCMAKE_PREFIX_PATH="$ROOT/$GOOGLETEST_PREFIX")
  fi
  # No Google Benchmark on the GPU machine: the C++ benchmarks stay off.
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHMASK_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHITECTURES" -DFLASHMASK_BUILD_TESTS=ON -DFLASHMASK_BUILD_BENCH=OFF \
    -DFLASHMASK_BUILD_TOOLS=ON "${prefix_args[@]}" &&
    cmake --build "$BUILD_DIR" -j"$JOBS" --target flashmask_gpu_tests flashmask_cli
}

if wants build; then
  run_step build "$LOG_DIR/build.log" build_cpp
  detail[build]="$BUILD_DIR, CUDA $ARCHITECTURES, -j$JOBS"
fi

# ---- test: the GPU test suite ---------------------------------------------------------------
gtest_counts() {  # "N passed, M failed, K skipped" from a GoogleTest log
  local log=$1
  local passed failed skipped
  passed=$(grep -oE '^\[  PASSED  \] [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  failed=$(grep -oE '^\[  FAILED  \] [0-9]+ tests?,' "$log" | tail -1 | grep -oE '[0-9]+')
  skipped=$(grep -oE '^\[  SKIPPED \] [0-9]+ tests?,' "$log" | tail -1 | grep -oE '[0-9]+')
  echo "${passed:-0} passed, ${failed:-0} failed, ${skipped:-0} skipped"
}

if wants test; then
  if [ ! -x "$GPU_TESTS" ]; then
    skip_step test "no $GPU_TESTS (build step failed or not run)"
  else
    run_step test "$LOG_DIR/tests.log" "$GPU_TESTS" --gtest_color=no
    detail[test]=$(gtest_counts "$LOG_DIR/tests.log")
  fi
fi

# ---- sanitize: compute-sanitizer memcheck on the small *Sanitizer* cases ---------------------
if wants sanitize; then
  if [ ! -x "$GPU_TESTS" ]; then
    skip_step sanitize "no $GPU_TESTS (build step failed or not run)"
  elif ! command -v compute-sanitizer >/dev/null; then
    status[sanitize]=FAILED; seconds[sanitize]=0; detail[sanitize]="compute-sanitizer not found"; failed=1
  else
    sanitizer_log="$LOG_DIR/tests.log"   # appended: one file fewer to bring back
    echo "==== compute-sanitizer memcheck --gtest_filter=*Sanitizer* ====" >>"$sanitizer_log"
    mark=$(wc -l <"$sanitizer_log")
    run_step sanitize "$sanitizer_log" compute-sanitizer --tool memcheck --error-exitcode 1 \
      "$GPU_TESTS" --gtest_filter='*Sanitizer*' --gtest_color=no
    section=$(tail -n +"$((mark + 1))" "$sanitizer_log")
    errors=$(grep -oE 'ERROR SUMMARY: [0-9]+' <<<"$section" | tail -1 | grep -oE '[0-9]+$')
    ran=$(grep -oE '^\[==========\] [0-9]+ tests? from' <<<"$section" | tail -1 | grep -oE '[0-9]+' | head -1)
    detail[sanitize]="${errors:-?} sanitizer errors, ${ran:-0} tests run"
    if [ "${ran:-0}" = 0 ]; then
      status[sanitize]=FAILED; failed=1; detail[sanitize]+=" (no test matches *Sanitizer*)"
    fi
  fi
fi

# ---- python: pip install with the kernels, then the CUDA tests ------------------------------
install_python() {
  FLASHMASK_CUDA=$PYTHON_CUDA FLASHMASK_CUDA_ARCHITECTURES=$ARCHITECTURES \
    "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index -v \
      -C build-dir="$BUILD_DIR/python" \
      -C cmake.define.FLASHMASK_CUDA="$PYTHON_CUDA" \
      -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCHITECTURES" .
}

run_pytest() {
  # Every Python test, the CUDA ones required to run (not skip) since this module has kernels.
  # pytest exits 5 when nothing is selected: reported, not a failure.
  local select=()
  [ -n "${FLASHMASK_PYTEST_FILTER:-}" ] && select=(-k "$FLASHMASK_PYTEST_FILTER")
  FLASHMASK_REQUIRE_CUDA=1 "$PYTHON" -m pytest tests/python -q -p no:cacheprovider "${select[@]}"
  local rc=$?
  [ $rc -eq 5 ] && { echo "pytest: no test selected"; return 0; }
  return $rc
}

if wants python; then
  python_log="$LOG_DIR/python.log"
  run_step python "$python_log" install_python
  if [ "${status[python]}" = ok ]; then
    detail[python]="pip install ok (kernels $PYTHON_CUDA)"
    echo "==== pytest tests/python ====" >>"$python_log"
    mark=$(wc -l <"$python_log")
    run_step pytest "$python_log" run_pytest
    # pytest -q ends with its counts ("3 passed, 1 skipped in 2.0s" or "...deselected...").
    detail[pytest]=$(tail -n +"$((mark + 1))" "$python_log" | grep -E '(passed|failed|error|deselected|no test)' | tail -1)
  else
    detail[python]="pip install failed"
  fi
fi

# ---- bench: the side-by-side benchmark ------------------------------------------------------
if wants bench && ! wants python; then
  run_step install "$LOG_DIR/python.log" install_python
  [ "${status[install]}" = ok ] && detail[install]="pip install ok (kernels $PYTHON_CUDA), for the benchmark"
fi
module_step=install
wants python && module_step=python
if wants bench && [ "${status[$module_step]:-}" != ok ]; then
  skip_step bench "this tree's module did not install (step $module_step)"
elif wants bench; then
  bench_log="$LOG_DIR/bench.log"
  slug=$(tr 'A-Z' 'a-z' <<<"$gpu_name" | sed -E 's/^nvidia //; s/[^a-z0-9]+/-/g; s/-+$//')
  results="bench/results/${slug:-gpu}-$(date -u +%Y-%m-%d-%H%M).md"
  mkdir -p bench/results
  run_step bench "$bench_log" "$PYTHON" bench/bench_attention.py --commit "$commit" --out "$results" "${bench_args[@]}"
  if [ -f "$results" ]; then
    [ "$LOG_DIR" != "$ROOT/bench/results" ] && cp "$results" "${results%.md}.json" "$LOG_DIR/" 2>/dev/null
    detail[bench]="$(basename "$results") (+ .json)"
  else
    detail[bench]="no results file"
  fi
fi

# ---- summary: printed last ------------------------------------------------------------------
{
  echo
  echo "== scripts/gpu.sh summary: $gpu_name, commit $commit, $(date -u '+%Y-%m-%d %H:%M UTC'), logs in $LOG_DIR"
  printf '%-9s %-8s %8s  %s\n' step status seconds detail
  for name in build test sanitize python pytest install bench; do
    [ -n "${status[$name]:-}" ] || continue
    printf '%-9s %-8s %8s  %s\n' "$name" "${status[$name]}" "${seconds[$name]}" "${detail[$name]:-}"
  done
  if [ -n "${status[bench]:-}" ] && [ -f "${bench_log:-/nonexistent}" ]; then
    echo
    # The benchmark prints its compact table last.
    sed -n '/^effective TFLOP\/s fwd\/bwd/,$p' "$bench_log"
  fi
} | tee "$LOG_DIR/summary.txt"
exit $failed
