# Sourced by scripts/gpu.sh and scripts/ab-bench.sh: the commit and the GPU a results file names.

# The working tree's commit: FLASHMASK_COMMIT when set (pass it in every device call), else git's
# HEAD with "-dirty" when tracked files differ from it, else "unknown". The mark matters on the
# device, where git, if it answers at all, need not describe the copy of the tree it runs in
# (session 16: an A/B header named main, f89f867, for a tree of 5e2ac46).
tree_commit() {
  if [ -n "${FLASHMASK_COMMIT:-}" ]; then
    echo "$FLASHMASK_COMMIT"
  else
    git describe --always --dirty --abbrev=7 2>/dev/null || echo unknown
  fi
}

# The first GPU's name, or nothing without one.
current_gpu_name() { nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1; }
