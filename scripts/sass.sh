#!/usr/bin/env bash
# Shows, HERE (no GPU needed), what ptxas made of one kernel: its registers and spills, and the
# order of its memory and tensor-core instructions, each run of equal opcodes as NAMEcount (e.g.
# "LDSM6 REDG8 HMMA1"). bench/NOTES.md (session 11) reads the dK/dV kernel's dQ reductions
# this way before spending device time on a schedule change.
#
#   scripts/sass.sh [INSTANTIATION] [KERNEL_REGEX] [OPCODE_REGEX]
#   scripts/sass.sh backward_sm80_bf16_d128 'backward_dkdv_kernel.*Lb1ELb0E'   # the defaults
#   scripts/sass.sh forward_sm80_bf16_d128 forward_kernel 'LDGSTS|LDSM|HMMA|BAR'
#
# INSTANTIATION is a file of src/cuda/instantiations/ without .cu; KERNEL_REGEX picks functions
# by mangled name (the dK/dV kernel's template booleans: kAccumulateDq, kSortedKeys); the full
# SASS lands in build/sass/<instantiation>.sass. The development machine's CUDA toolkit has no
# disassembler, so the first run fetches NVIDIA's cuobjdump and nvdisasm wheels from PyPI into .deps/cuda-tools
# (git-ignored through .git/info/exclude, as scripts/device-deps.sh does for .deps/).
set -euo pipefail
cd "$(dirname "$0")/.."

INSTANTIATION=${1:-backward_sm80_bf16_d128}
KERNEL_REGEX=${2:-'backward_dkdv_kernel.*Lb1ELb0E'}
OPCODE_REGEX=${3:-'REDG|LDSM|HMMA|BAR\.SYNC'}
SOURCE=src/cuda/instantiations/$INSTANTIATION.cu
TOOLS_DIR=.deps/cuda-tools
OUT_DIR=build/sass
[ -f "$SOURCE" ] || { echo "sass.sh: no $SOURCE (expected a name from src/cuda/instantiations/, without .cu)" >&2; exit 2; }

CUOBJDUMP=$(command -v cuobjdump || true)
if [ -z "$CUOBJDUMP" ]; then
  CUOBJDUMP=$(find "$TOOLS_DIR" -name cuobjdump -type f 2>/dev/null | head -1 || true)
  if [ -z "$CUOBJDUMP" ]; then
    echo "[sass] fetching cuobjdump and the nvdisasm it runs from PyPI into $TOOLS_DIR" >&2
    mkdir -p "$TOOLS_DIR"
    python3 -m pip download -q --no-deps -d "$TOOLS_DIR" nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm
    for wheel in "$TOOLS_DIR"/*.whl; do python3 -m zipfile -e "$wheel" "$TOOLS_DIR/unpacked"; done
    CUOBJDUMP=$(find "$TOOLS_DIR/unpacked" -name cuobjdump -type f | head -1)
    [ -n "$CUOBJDUMP" ] || { echo "sass.sh: the wheel held no cuobjdump" >&2; exit 1; }
    chmod +x "$(dirname "$CUOBJDUMP")"/*
    exclude_file="$(git rev-parse --git-path info/exclude)"
    grep -qxF "/.deps/" "$exclude_file" 2>/dev/null || echo "/.deps/" >>"$exclude_file"
  fi
fi

export PATH="$(dirname "$CUOBJDUMP"):$PATH"  # cuobjdump runs nvdisasm, which the wheel puts beside it
mkdir -p "$OUT_DIR"
# The library's own flags (build/compile_commands.json, which CMake writes: CMakeLists.txt), with
# one architecture, sm_90a, and ptxas verbose; the command's output, dependency and architecture
# flags dropped. Without that file (no build yet), build/ is configured first, as scripts/build.sh
# configures it, so that the flags always come from the CMake files.
if [ ! -f build/compile_commands.json ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null || { echo "sass.sh: configuring build/ failed" >&2; exit 1; }
fi
FLAGS=$(python3 - "$SOURCE" <<'PY' 2>/dev/null || true
import json, shlex, sys, os
source = os.path.abspath(sys.argv[1])
for entry in json.load(open("build/compile_commands.json")):
    if os.path.abspath(os.path.join(entry["directory"], entry["file"])) != source:
        continue
    words, kept, skip = shlex.split(entry["command"])[1:], [], False
    for word in words:
        if skip:
            skip = False
        elif word in ("-o", "-MF", "-MT", "-x"):
            skip = True
        elif word in ("-c", "-MD", source) or word.startswith("--generate-code") or word.startswith("-gencode"):
            pass
        else:
            kept.append(word)
    print(shlex.join(kept))
    break
PY
)
[ -n "$FLAGS" ] || { echo "sass.sh: build/compile_commands.json has no command for $SOURCE (CUDA not enabled in build/?)" >&2; exit 1; }
# shellcheck disable=SC2086  # FLAGS is a list of words
nvcc $FLAGS --generate-code=arch=compute_90a,code=[sm_90a] -Xptxas -v -cubin "$SOURCE" \
  -o "$OUT_DIR/$INSTANTIATION.cubin" >"$OUT_DIR/$INSTANTIATION.ptxas" 2>&1 || { tail -20 "$OUT_DIR/$INSTANTIATION.ptxas"; exit 1; }
"$CUOBJDUMP" -sass "$OUT_DIR/$INSTANTIATION.cubin" >"$OUT_DIR/$INSTANTIATION.sass"

awk -v kernel="$KERNEL_REGEX" -v opcodes="$OPCODE_REGEX" '
  /Function : / { inside = ($0 ~ kernel); if (inside) { flush(); print "== " $3; found = 1 } next }
  function flush() { if (count) { line = line " " last count } if (line != "") print line; line = ""; last = ""; count = 0 }
  inside {
    for (i = 1; i <= NF; ++i) if ($i ~ "^(" opcodes ")") { op = $i; sub(/\..*/, "", op); break }
    if (i > NF) next
    if (op == last) { ++count } else { if (count) line = line " " last count; last = op; count = 1 }
  }
  END { flush(); if (!found) { print "sass.sh: no function matches " kernel > "/dev/stderr"; exit 1 } }
' "$OUT_DIR/$INSTANTIATION.sass"
# ptxas: each matching function's registers and spills.
grep -A3 -E "Compiling entry function '[^']*'" "$OUT_DIR/$INSTANTIATION.ptxas" |
  awk -v kernel="$KERNEL_REGEX" '/Compiling entry/ { keep = ($0 ~ kernel); next } keep && /spill|Used/ { sub(/^ptxas info *: */, ""); print "   " $0 }'
