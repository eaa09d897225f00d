#!/usr/bin/env bash
# Profiles one backward of flashmask's dK/dV kernel and one of SDPA's FlashAttention-2 backward
# kernel on the same inputs with Nsight Compute (bench/profile_backward.py), and exports what
# can be read without the GUI: every section's metrics (details.csv), the per-instruction SASS
# with its stall samples (source.csv) and the report itself. Needs the Python package installed
# with its kernels (scripts/gpu.sh python). Output goes to $OUT (default build-gpu/profile).
#
#   scripts/profile-backward.sh [--mask full|causal] [other profile_backward.py arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-build-gpu/profile}
mkdir -p "$OUT_DIR"
REPORT=/tmp/flashmask-backward
# The warm-up runs one backward per side first: skip those two launches, profile the next two.
KERNELS='regex:backward_dkdv|flash_bwd_dq_dk_dv'
export PYTHONUNBUFFERED=1

ncu --version | tail -1
ncu --set full --import-source no -k "$KERNELS" --launch-skip 2 -c 2 -f -o "$REPORT" \
  python3 bench/profile_backward.py "$@" >"$OUT_DIR/ncu-run.txt" 2>&1 || { tail -20 "$OUT_DIR/ncu-run.txt"; exit 1; }
ncu -i "$REPORT.ncu-rep" --page details --csv >"$OUT_DIR/details.csv"
# Per-instruction SASS with sampled stall reasons; older ncu lack --print-source: say so, go on.
ncu -i "$REPORT.ncu-rep" --page source --csv --print-source sass >"$OUT_DIR/source.csv" 2>&1 ||
  echo "ncu could not export the source page: $(head -c 300 "$OUT_DIR/source.csv")"
gzip -c "$REPORT.ncu-rep" >"$OUT_DIR/backward.ncu-rep.gz"
ls -la "$OUT_DIR"
