#!/usr/bin/env bash
# SPEC §6 in one device call, for a lease with ~450-550 s left: the Python module with the CUDA
# kernels (only the tests of FLASHMASK_PYTEST_FILTER, default "backward or compile"), config (a)
# with every mask, then config (b) with the masks given (all twelve at 32K do not fit the call's
# 600 s: run the rest in a second call and join them here with bench_attention.py --merge).
# The results (markdown and JSON) are copied to $OUT, where the device tool brings them back,
# and the run's summary table is printed last.
#
#   device call: FLASHMASK_COMMIT=<sha> scripts/spec-call.sh "full,share_question"   (carry [".deps"])
#                an empty mask list runs config (a) only
set -uo pipefail
cd "$(dirname "$0")/.."
b_masks=${1-full,share_question}
results_out=${OUT:-}
: "${FLASHMASK_COMMIT:?set FLASHMASK_COMMIT to the commit of this tree (git on the device machine does not know it)}"
export FLASHMASK_COMMIT
export FLASHMASK_PYTEST_FILTER=${FLASHMASK_PYTEST_FILTER:-"backward or compile"}
marker=$(mktemp)
summary=${FLASHMASK_GPU_BUILD_DIR:-build-gpu}/logs/summary.txt
# gpu.sh writes its logs to $OUT when set; here they stay in the build folder so that $OUT keeps
# to the result files (the device tool brings back few files). Each gpu.sh run rewrites its
# summary, so the first run's (build, Python tests, config a) is kept to be printed with the second's.
env -u OUT scripts/gpu.sh build python bench -- --configs a
status=$?
first_summary=$(cat "$summary")
if [ -n "$b_masks" ]; then
  env -u OUT scripts/gpu.sh bench -- --configs b --masks "$b_masks" || status=1
fi
[ -n "$results_out" ] && find bench/results -newer "$marker" -type f -exec cp {} "$results_out"/ \;
rm -f "$marker"
echo "$first_summary"
[ -n "$b_masks" ] && cat "$summary"
exit $status
