#!/usr/bin/env bash
# Profiles flashmask's kernels and, for full and causal masks, SDPA's FlashAttention-2 kernels on
# the same inputs with Nsight Compute (bench/profile_attention.py), and exports what can be read
# without the GUI: every section's metrics (details.csv), the per-instruction SASS with its stall
# samples (source.csv) and the report itself. Needs the Python package installed with its
# kernels (scripts/gpu.sh python). Output goes to $OUT (default build-gpu/profile).
#
#   scripts/profile-kernels.sh [--mask NAME] [other profile_attention.py arguments]
#   KERNELS='regex:forward_kernel' SKIP=1 COUNT=1 scripts/profile-kernels.sh --mask share_question
#
# KERNELS picks the kernels (default: both sides' backward dK/dV kernels); SKIP launches of them
# are left out first (default 2: the warm-up's, one per side) and COUNT are profiled (default 2).
# Masks other than full and causal (and --sides flashmask) run flashmask's side alone, one
# launch per kernel in the warm-up: pass SKIP=1 COUNT=1 there, or the defaults profile nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-build-gpu/profile}
mkdir -p "$OUT_DIR"
REPORT=/tmp/flashmask-profile
# The warm-up runs each side once first: by default skip its two backward launches, profile the next two.
KERNELS=${KERNELS:-'regex:backward_dkdv|flash_bwd_dq_dk_dv'}
SKIP=${SKIP:-2}
COUNT=${COUNT:-2}
export PYTHONUNBUFFERED=1

ncu --version | tail -1
ncu --set full --import-source no -k "$KERNELS" --launch-skip "$SKIP" -c "$COUNT" -f -o "$REPORT" \
  python3 bench/profile_attention.py "$@" >"$OUT_DIR/ncu-run.txt" 2>&1 || { tail -20 "$OUT_DIR/ncu-run.txt"; exit 1; }
ncu -i "$REPORT.ncu-rep" --page details --csv >"$OUT_DIR/details.csv"
# Per-instruction SASS with sampled stall reasons; older ncu lack --print-source: say so, go on.
ncu -i "$REPORT.ncu-rep" --page source --csv --print-source sass >"$OUT_DIR/source.csv" 2>&1 ||
  echo "ncu could not export the source page: $(head -c 300 "$OUT_DIR/source.csv")"
gzip -c "$REPORT.ncu-rep" >"$OUT_DIR/profile.ncu-rep.gz"
ls -la "$OUT_DIR"
