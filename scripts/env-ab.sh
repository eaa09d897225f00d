#!/usr/bin/env bash
# An A/B inside one build: the same `flashmask run` with an environment variable set to each of
# its values in turn, for a runtime switch of the library (e.g. FLASHMASK_COMPRESSIBLE_SCRATCH, the
# dQ accumulator in compressible memory or not). One binary, so the sides differ only by the
# switch; values alternate within each round, and every run uses SPEC §6's mask seed and the same
# inputs. For changes that need two builds, scripts/cli-ab.sh.
#
#   device call, after scripts/gpu.sh build:
#     scripts/env-ab.sh FLASHMASK_COMPRESSIBLE_SCRATCH 0,1 [ROUNDS] [-- --configs a,b --masks full,share_question]
#
# OPTIONS: --configs a,b (default a: (a) N 8192, B 2, H 32; (b) N 32768, B 1, H 16; "smoke" is 256
# rows for a machine without a GPU), --masks (default full,causal,share_question), --dtype (bf16).
# Timings are queued (`flashmask run --timing queued`), forward and backward, each run beside the
# SM clock and power nvidia-smi sampled while it ran (scripts/lib/clock_samples.sh). Prints one
# line per run, then a table of every run (forward / backward TFLOP/s per value and round) and one
# of the means over the rounds with each value's change against the first value's (so give the
# baseline first), also written to env-ab.md in $FLASHMASK_GPU_BUILD_DIR (default build-gpu) and
# copied to $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ab_sides.sh
source scripts/lib/clock_samples.sh
source scripts/lib/provenance.sh

usage() { echo "usage: scripts/env-ab.sh VARIABLE VALUE,VALUE[,...] [ROUNDS] [-- --configs LIST --masks LIST --dtype D]" >&2; exit 2; }
[ $# -ge 2 ] || usage
variable=$1
IFS=, read -r -a values <<<"$2"
shift 2
rounds=2
if [ $# -ge 1 ] && [ "$1" != "--" ]; then rounds=$1; shift; fi
[[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "env-ab.sh: ROUNDS '$rounds'; expected a positive integer" >&2; exit 2; }
[ ${#values[@]} -ge 2 ] || { echo "env-ab.sh: values '${values[*]}'; expected at least two, comma-separated" >&2; exit 2; }
[ $# -ge 1 ] && { [ "$1" = "--" ] || usage; shift; }
configs=a
masks=full,causal,share_question
dtype=bf16
while [ $# -ge 1 ]; do
  case $1 in
    --configs) configs=${2:?--configs needs a value}; shift 2 ;;
    --masks) masks=${2:?--masks needs a value}; shift 2 ;;
    --dtype) dtype=${2:?--dtype needs a value}; shift 2 ;;
    *) echo "env-ab.sh: unknown option '$1'; expected --configs, --masks or --dtype" >&2; exit 2 ;;
  esac
done
parse_run_lists env-ab.sh spec_config_arguments "$configs" "$masks" "a, b or smoke"
build_dir=${FLASHMASK_GPU_BUILD_DIR:-build-gpu}
tool=$build_dir/tools/flashmask
[ -x "$tool" ] || { echo "env-ab.sh: no $tool; run scripts/gpu.sh build first" >&2; exit 2; }
timing=(--timing queued)
timing_note="queued timings"
if ! command -v nvidia-smi >/dev/null; then  # the CPU path refuses --timing (smoke runs here)
  timing=()
  timing_note="CPU timings (no GPU)"
fi

report="$build_dir/env-ab.md"
CLOCK_LOG="$build_dir/env-ab-clock-samples.csv"
rows=()
status=0
for round in $(seq 1 "$rounds"); do
  for config in "${CONFIG_LIST[@]}"; do
    for mask in "${MASK_LIST[@]}"; do
      for value in "${values[@]}"; do
        # shellcheck disable=SC2046  # spec_config_arguments is a list of words
        start_clock_samples
        json=$(env "$variable=$value" "$tool" run --mask "$mask" --dtype "$dtype" --dim 128 --backward --seed "$SEED" \
          "${timing[@]}" --json $(spec_config_arguments "$config"))
        run_status=$?
        clock=$(stop_clock_samples)
        [ $run_status -eq 0 ] || { echo "env-ab.sh: run failed: $variable=$value $config $mask" >&2; status=1; continue; }
        figures=$(python3 -c '
import json, sys
tflops = {t["pass"]: t.get("tflops") for t in json.loads(sys.argv[1])["timings"]}
print(" / ".join("n/a" if tflops.get(p) is None else "%.4g" % tflops[p] for p in ("forward", "backward")))' "$json") ||
          { status=1; figures="unreadable"; }
        line="| $config | $mask | $variable=$value | $round | $figures | $clock |"
        echo "$line"
        rows+=("$line")
      done
    done
  done
done
{
  echo "# env-ab: $variable in ${values[*]}"
  echo
  gpu=$(current_gpu_name)
  echo "Commit $(tree_commit), ${gpu:-no GPU found}, $(date -u +%Y-%m-%d), mask seed $SEED, $dtype, D 128; $timing_note; TFLOP/s forward / backward."
  echo
  echo "| config | mask | setting | round | TFLOP/s fwd / bwd | median SM clock, power |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
  echo
  # Means over the rounds, and each setting's change against the first value's.
  printf '%s\n' "${rows[@]}" | python3 -c '
import collections, statistics, sys
runs = collections.defaultdict(list)
order = []
for line in sys.stdin:
    config, mask, setting, _round, figures = [cell.strip() for cell in line.strip().strip("|").split("|")][:5]
    try:
        forward, backward = (float(x) for x in figures.split("/"))
    except ValueError:
        continue
    key = (config, mask)
    if key not in order:
        order.append(key)
    runs[key + (setting,)].append((forward, backward))
print("| config | mask | setting | mean fwd / bwd | change against the first setting |")
print("|---|---|---|---|---|")
for config, mask in order:
    settings = [k[2] for k in runs if k[:2] == (config, mask)]
    base = None
    for setting in settings:
        pairs = runs[(config, mask, setting)]
        forward, backward = (statistics.mean(p[i] for p in pairs) for i in (0, 1))
        if base is None:
            base, change = (forward, backward), "-"
        elif min(base) > 0:
            change = "%+.1f %% / %+.1f %%" % (100 * (forward / base[0] - 1), 100 * (backward / base[1] - 1))
        else:
            change = "n/a"
        print("| %s | %s | %s | %.4g / %.4g | %s |" % (config, mask, setting, forward, backward, change))
'
} >"$report"
[ -n "${OUT:-}" ] && cp "$report" "$OUT/"
echo
cat "$report"
exit $status
