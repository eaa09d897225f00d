#!/usr/bin/env bash
# A quick A/B of the CUDA kernels through the command-line tool, for a lease with little time
# left: each side builds only the C++ library and `flashmask` (two sides side by side took 40 s
# on an H100 machine, session 20, against ~90 s for scripts/ab-bench.sh's Python modules), and
# each timing is one `flashmask run` of a mask at a SPEC §6 size, forward and backward. By default
# the tool's timings include the host's launches (it waits for each pass); with --timing queued
# its passes run back to back with the host ahead, as the benchmark's do (every side's tool must
# know --timing: commits from session 25 on). They compare sides; results and comparisons with
# the peers stay with bench/bench_attention.py (SPEC §6).
#
#   here:        git archive -o ab-base.tar <base-commit>     (and ab-<name>.tar for more sides)
#   device call: scripts/cli-ab.sh ab-base.tar [ab-<name>.tar ...] [ROUNDS] [-- OPTIONS]
#                with the tarballs in the call's carry (ab-*.tar are git-ignored), e.g.
#                scripts/cli-ab.sh ab-base.tar 2 -- --configs a,b --masks full,causal,share_question
#
# OPTIONS: --configs a,b (SPEC §6's configurations; default a; "smoke" is 256 rows, B 1, H 2,
# for trying the script on a machine without a GPU; tiny-rows, tiny-bound and tiny-past are the
# float32 small backward's shapes, timed in microseconds: see config_arguments), --masks
# (catalogue names; default full,causal,share_question), --dtype (default bf16), --deterministic, --timing synced|queued
# (`flashmask run --timing`; default synced). Every run uses the mask
# seed of SPEC §6's densities (bench/spec_densities.py) and the same inputs (the seed also draws
# them). Sides run in turn (the tarballs', then the working tree's), ROUNDS times (default 2).
# Output: cli-ab.md in $FLASHMASK_GPU_BUILD_DIR/cli-ab (default build-gpu/cli-ab), one line per
# run and a table of the figures (forward / backward: TFLOP/s, microseconds for the tiny shapes)
# last, also copied to $OUT when set. Each run also gives the median SM clock and power that
# nvidia-smi sampled while it ran (every CLOCK_SAMPLE_MS): the masks below the card's power
# limit run at clocks that move 5-10 % between leases (bench/NOTES.md, sessions 23-24), so a
# side's figure is read beside its clock.
#
# Environment: FLASHMASK_CUDA_ARCHITECTURES [90a-real], FLASHMASK_GPU_JOBS [16] (shared by the
# sides' builds), FLASHMASK_CUDA [ON], FLASHMASK_COMMIT (the working tree's commit, as in gpu.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/ab_sides.sh
source scripts/lib/clock_samples.sh
source scripts/lib/provenance.sh

parse_ab_arguments cli-ab.sh optional "$@"
configs=a
masks=full,causal,share_question
dtype=bf16
deterministic=()
timing=synced
set -- "${SIDE_ARGUMENTS[@]}"
while [ $# -ge 1 ]; do
  case $1 in
    --configs) configs=${2:?--configs needs a value}; shift 2 ;;
    --masks) masks=${2:?--masks needs a value}; shift 2 ;;
    --dtype) dtype=${2:?--dtype needs a value}; shift 2 ;;
    --deterministic) deterministic=(--deterministic); shift ;;
    --timing) timing=${2:?--timing needs a value}; shift 2 ;;
    *) echo "cli-ab.sh: unknown option '$1'; expected --configs, --masks, --dtype, --deterministic or --timing" >&2; exit 2 ;;
  esac
done
case $timing in
  synced) timing_arguments=(); timing_note="timings with the host's launches" ;;
  queued) timing_arguments=(--timing queued); timing_note="queued timings (the host ahead of the GPU)" ;;
  *) echo "cli-ab.sh: --timing '$timing'; expected synced or queued" >&2; exit 2 ;;
esac

# SPEC §6's configurations (spec_config_arguments, ab_sides.sh) and the small backward's shapes
# as `flashmask run` arguments.
config_arguments() {
  case $1 in
    # The small backward's (src/cuda/sm80/small_backward_bounds.hpp): 64 rows of one query
    # each over 17 keys (SPEC §5's failing shape), its largest problem (64 rows over 128
    # keys), and one key past it (the tiled kernels).
    tiny-rows) echo "--seqlen 1 --seqlen-k 17 --batch 8 --heads 8 --kv-heads 2 --dim 256 --repeats 50" ;;
    tiny-bound) echo "--seqlen 16 --seqlen-k 128 --heads 4 --kv-heads 1 --repeats 50" ;;
    tiny-past) echo "--seqlen 16 --seqlen-k 129 --heads 4 --kv-heads 1 --repeats 50" ;;
    *) spec_config_arguments "$1" ;;
  esac
}
# What a run's figures are: TFLOP/s at SPEC §6's sizes, microseconds for the tiny shapes, where
# the call is launches and fixed passes.
config_unit() { case $1 in tiny-*) echo us ;; *) echo TFLOP/s ;; esac; }
parse_run_lists cli-ab.sh config_arguments "$configs" "$masks" "a, b, smoke, tiny-rows, tiny-bound or tiny-past"
config_list=("${CONFIG_LIST[@]}")
mask_list=("${MASK_LIST[@]}")
seed=$SEED

[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
ARCHITECTURES=${FLASHMASK_CUDA_ARCHITECTURES:-90a-real}
JOBS=${FLASHMASK_GPU_JOBS:-16}
CUDA=${FLASHMASK_CUDA:-ON}
WORK_DIR=$(mkdir -p "${FLASHMASK_GPU_BUILD_DIR:-build-gpu}/cli-ab" && cd "${FLASHMASK_GPU_BUILD_DIR:-build-gpu}/cli-ab" && pwd)
side_names=()
for tarball in "${TARBALLS[@]}"; do side_names+=("$(side_name "$tarball")"); done
side_names+=(tree)
side_source() { [ "$1" = tree ] && pwd || echo "/tmp/flashmask-cli-ab-$1"; }

CLOCK_LOG="$WORK_DIR/clock-samples.csv"
side_tool() { echo "$WORK_DIR/build-$1/tools/flashmask"; }

# The builds run side by side, the machine's cores shared among them.
jobs_per_side=$(( JOBS / ${#side_names[@]} > 0 ? JOBS / ${#side_names[@]} : 1 ))
build_side() {  # build_side <name>
  local name=$1 source build
  source=$(side_source "$name") build="$WORK_DIR/build-$name"
  cmake -S "$source" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHMASK_CUDA="$CUDA" \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHITECTURES" -DFLASHMASK_BUILD_TESTS=OFF -DFLASHMASK_BUILD_BENCH=OFF &&
    cmake --build "$build" -j"$jobs_per_side" --target flashmask_cli
}
builds=()
for i in "${!TARBALLS[@]}"; do
  name=${side_names[$i]}
  rm -rf "$(side_source "$name")" && mkdir -p "$(side_source "$name")" && tar xf "${TARBALLS[$i]}" -C "$(side_source "$name")" || exit 1
done
for name in "${side_names[@]}"; do
  build_side "$name" >"$WORK_DIR/build-$name.log" 2>&1 &
  builds+=("$!:$name")
done
wait_for_side_builds cli-ab.sh "$WORK_DIR/build-%s.log" "${builds[@]}"

summary="$WORK_DIR/cli-ab.md"
results="$WORK_DIR/results.tsv"  # round, side, config, mask, forward and backward figures (config_unit), clock
: >"$results"
{
  echo "# CLI A/B: $(printf '%s, ' "${side_names[@]}" | sed 's/, $//'), in turn, $ROUNDS rounds"
  echo
  echo "GPU: $(gpu=$(current_gpu_name); echo "${gpu:-no GPU found}"); started $(date -u '+%Y-%m-%d %H:%M UTC'); \`flashmask run --backward --seed $seed --dtype $dtype ${deterministic[*]} ${timing_arguments[*]}\`, $timing_note"
  for i in "${!TARBALLS[@]}"; do echo "- ${side_names[$i]}: commit $(tarball_commit "${TARBALLS[$i]}" | cut -c1-12)"; done
  echo "- tree: commit $(tree_commit)"
  echo
} >"$summary"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${side_names[@]}"; do
    for config in "${config_list[@]}"; do
      for mask in "${mask_list[@]}"; do
        start_clock_samples
        # shellcheck disable=SC2046  # config_arguments is a list of words
        json=$("$(side_tool "$name")" run --mask "$mask" $(config_arguments "$config") --dtype "$dtype" --backward \
          "${deterministic[@]}" "${timing_arguments[@]}" --seed "$seed" --json 2>>"$WORK_DIR/run-errors.log")
        unit=$(config_unit "$config")
        figures=$(python3 -c 'import json, sys
timings = {t["pass"]: (t["median_seconds"] * 1e6 if sys.argv[2] == "us" else t["tflops"])
           for t in json.loads(sys.argv[1])["timings"]}
print("\t".join("%.4g" % timings[name] if name in timings else "missing" for name in ("forward", "backward")))' \
          "$json" "$unit" 2>>"$WORK_DIR/run-errors.log") || figures="failed	failed"
        clock=$(stop_clock_samples)
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$name" "$config" "$mask" "$figures" "$clock" >>"$results"
        echo "round $round, $name, config $config, $mask: $(echo "$figures" | tr '\t' '/') $unit ($clock)" | tee -a "$summary"
      done
    done
  done
  [ -n "${OUT:-}" ] && mkdir -p "$OUT" && cp "$summary" "$OUT/cli-ab.md"
done

# The table: a row per configuration and mask, a column per side with its rounds' figures.
python3 - "$results" "${side_names[@]}" >>"$summary" <<'PY'
import collections, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
sides = sys.argv[2:]
cells = collections.defaultdict(list)
for round_, side, config, mask, forward, backward, clock in rows:
    cells[(config, mask, side)].append(f"{forward} / {backward}" + (f" ({clock.split(',')[0]})" if clock != "n/a" else ""))
print()
print("| config | mask | " + " | ".join(sides) + " |")
print("|---|---|" + "---|" * len(sides))
for config, mask in dict.fromkeys((config, mask) for _, _, config, mask, _, _, _ in rows):
    print(f"| {config} | {mask} | " + " | ".join(", ".join(cells[(config, mask, side)]) for side in sides) + " |")
PY
[ -n "${OUT:-}" ] && cp "$summary" "$OUT/cli-ab.md"
tail -n $(( 3 + ${#config_list[@]} * ${#mask_list[@]} )) "$summary"
