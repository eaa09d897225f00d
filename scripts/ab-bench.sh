#!/usr/bin/env bash
# An A/B of builds in one device call, so that all run on the same card in the same state
# (bench/NOTES.md: own-full ratios move by about 0.05 between calls): another commit's Python
# module (the base), optionally more commits' (variants), and the working tree's, run in turn a
# few rounds, then one table of all.
#
#   here:        git archive -o ab-base.tar <base-commit>        (the device copy has no .git)
#                git archive -o ab-<name>.tar <commit>          (a variant, any number of them)
#   device call: scripts/ab-bench.sh ab-base.tar [ab-<name>.tar ...] [rounds] -- <bench_attention.py arguments>
#                with the tarballs in the call's carry (ab-*.tar are git-ignored), e.g.
#                scripts/ab-bench.sh ab-base.tar 2 -- --configs b --impls flashmask --masks full,share_question
#                scripts/ab-bench.sh ab-base.tar ab-dq-fa2-order.tar 2 -- --configs a --impls flashmask,flash
#
# The working tree's module is installed as scripts/gpu.sh's python step installs it (into the
# interpreter's site-packages); each tarball's goes to its own --target folder and runs with its
# own copy of bench_attention.py on PYTHONPATH. A run is named by its tarball (ab-base.tar:
# "base", ab-<name>.tar: "<name>") or "tree", with its round. Output: each run's markdown and log
# in $FLASHMASK_GPU_BUILD_DIR/ab (default build-gpu/ab), and ab.md there, every run's effective
# TFLOP/s table in order; ab.md alone is copied to $OUT when set (the device tool brings back at
# most 8 files), after every run, so that a call cut short still returns the runs it finished.
# ab.md's header names the GPU, the start time and each side's commit (the tarballs' from their
# archive headers; the working tree's from FLASHMASK_COMMIT, else git: scripts/lib/provenance.sh),
# so that it can be committed under bench/results/ as it is.
set -uo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/ab_sides.sh
parse_ab_arguments ab-bench.sh required "$@"
set -- "${SIDE_ARGUMENTS[@]}"
# Every side times the same masks: an archived commit's bench_attention.py may default to another
# mask seed (0 before bench/spec_densities.py), so the working tree's default goes to all of them
# unless the arguments name one.
case " $* " in
  *" --seed "* | *" --seed="*) ;;
  *)
    seed=$(spec_density_seed)
    [ -n "$seed" ] || { echo "ab-bench: no SPEC_DENSITY_SEED in bench/spec_densities.py" >&2; exit 2; }
    set -- "$@" --seed "$seed"
    ;;
esac

PYTHON=${PYTHON:-python3}
ARCHITECTURES=${FLASHMASK_CUDA_ARCHITECTURES:-90a-real}
WORK_DIR=${FLASHMASK_GPU_BUILD_DIR:-build-gpu}/ab
OUT_DIR=$(mkdir -p "$WORK_DIR" && cd "$WORK_DIR" && pwd)  # absolute: the archived builds run elsewhere
export PYTHONUNBUFFERED=1

install_module() {  # install_module <source dir> <build dir> [pip arguments...]
  local source=$1 build=$2; shift 2
  (cd "$source" && FLASHMASK_CUDA=ON "$PYTHON" -m pip install -q --no-build-isolation --no-deps --no-index \
    -C build-dir="$build" -C cmake.define.FLASHMASK_CUDA=ON -C cmake.define.CMAKE_CUDA_ARCHITECTURES="$ARCHITECTURES" \
    "$@" .)
}
archive_tree() { echo "/tmp/flashmask-ab-$1"; }        # where a tarball is unpacked
archive_package() { echo "/tmp/flashmask-ab-$1-package"; }  # where its module is installed

# The builds run side by side: each one's configure and link steps leave most of the machine's
# cores idle, and device time is short.
installs=()
for tarball in "${TARBALLS[@]}"; do
  name=$(side_name "$tarball")
  tree=$(archive_tree "$name") package=$(archive_package "$name")
  rm -rf "$tree" "$package" && mkdir -p "$tree"
  tar xf "$tarball" -C "$tree" || exit 1
  install_module "$tree" "/tmp/flashmask-ab-$name-build" --target "$package" >"$OUT_DIR/install-$name.log" 2>&1 &
  installs+=("$!:$name")
done
install_module . "$(pwd)/${FLASHMASK_GPU_BUILD_DIR:-build-gpu}/python" >"$OUT_DIR/install-tree.log" 2>&1 &
installs+=("$!:tree")
wait_for_side_builds ab-bench "$OUT_DIR/install-%s.log" "${installs[@]}"

source scripts/lib/provenance.sh
gpu_name=$(current_gpu_name)
summary="$OUT_DIR/ab.md"
{
  echo "# A/B: $(for t in "${TARBALLS[@]}"; do printf '%s (%s), ' "$(side_name "$t")" "$(basename "$t")"; done)and the working tree, in turn, $ROUNDS rounds"
  echo
  echo "GPU: ${gpu_name:-unknown}; started $(date -u '+%Y-%m-%d %H:%M UTC')"
  for t in "${TARBALLS[@]}"; do echo "- $(side_name "$t"): commit $(tarball_commit "$t" | cut -c1-12)"; done
  echo "- tree: commit $(tree_commit)"
  echo
  echo "bench_attention.py $*"
} >"$summary"
for round in $(seq 1 "$ROUNDS"); do
  for side in "${TARBALLS[@]}" tree; do
    if [ "$side" = tree ]; then
      name=tree
      "$PYTHON" bench/bench_attention.py "$@" --out "$OUT_DIR/$name-$round.md" >"$OUT_DIR/$name-$round.log" 2>&1
    else
      name=$(side_name "$side")
      (cd "$(archive_tree "$name")" && PYTHONPATH="$(archive_package "$name")" "$PYTHON" bench/bench_attention.py "$@" \
        --out "$OUT_DIR/$name-$round.md") >"$OUT_DIR/$name-$round.log" 2>&1
    fi
    status=$?
    {
      echo; echo "## $name-$round (exit $status)"; echo
      # The effective TFLOP/s table: from its heading to the next one.
      awk '/^## / { inside = ($0 ~ /^## Effective TFLOP/) ; next } inside && /^\|/' "$OUT_DIR/$name-$round.md" 2>/dev/null
    } >>"$summary"
    [ -n "${OUT:-}" ] && mkdir -p "$OUT" && cp "$summary" "$OUT/ab.md"
  done
done
cat "$summary"
