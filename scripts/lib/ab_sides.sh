# Sourced by scripts/ab-bench.sh, scripts/cli-ab.sh and scripts/env-ab.sh: the sides of an A/B
# (tarballs made here with `git archive -o ab-<name>.tar <commit>`, then the working tree) and its
# round count.

# Reads "TARBALL [TARBALL ...] [ROUNDS] [-- ARGUMENTS...]" into TARBALLS, ROUNDS (default 2:
# every side, then again, so that an order effect shows as a drift within one side) and
# SIDE_ARGUMENTS (what follows --). $1: the calling script's name, for messages; $2: whether the
# arguments after -- are required ("required") or not. Exits with status 2 on anything else.
parse_ab_arguments() {
  local script=$1 need_rest=$2
  shift 2
  TARBALLS=()
  ROUNDS=2
  SIDE_ARGUMENTS=()
  local usage="usage: scripts/$script BASE_TARBALL [VARIANT_TARBALL ...] [ROUNDS] -- ARGUMENTS..."
  while [ $# -ge 1 ] && [ "$1" != "--" ]; do
    case $1 in
      *.tar) TARBALLS+=("$1") ;;
      *[!0-9]* | "") echo "$script: '$1' is neither a .tar archive nor a round count" >&2; echo "$usage" >&2; exit 2 ;;
      *) ROUNDS=$1 ;;
    esac
    shift
  done
  if [ ${#TARBALLS[@]} -lt 1 ] || { [ "$need_rest" = required ] && [ $# -lt 1 ]; }; then
    echo "$usage" >&2
    exit 2
  fi
  [ $# -ge 1 ] && shift  # the --
  SIDE_ARGUMENTS=("$@")
  [ "$ROUNDS" -ge 1 ] || { echo "$script: rounds must be at least 1, got $ROUNDS" >&2; exit 2; }
  local -A seen=()
  local tarball name
  for tarball in "${TARBALLS[@]}"; do
    [ -f "$tarball" ] || { echo "$script: no tarball '$tarball' (git archive -o $tarball REV here, then carry it)" >&2; exit 2; }
    name=$(side_name "$tarball")
    [ "$name" != tree ] && [ -z "${seen[$name]:-}" ] || { echo "$script: two sides would be named '$name'; rename a tarball" >&2; exit 2; }
    seen[$name]=1
  done
}

# A side's name: the tarball's file name without .tar, and without "ab-" ("ab-base.tar" -> "base").
side_name() { local name; name=$(basename "$1" .tar); echo "${name#ab-}"; }

# The commit a tarball was made from: git archive writes it into the archive's first (pax) header
# as "comment=<sha>"; read as bytes, since the machine's copy may have no git.
tarball_commit() {
  local commit
  commit=$(head -c 1024 "$1" | tr -d '\0' | grep -ao 'comment=[0-9a-f]*' | head -1)
  echo "${commit#comment=}"
}

# The catalogue seed whose mask densities are SPEC §6's (bench/spec_densities.py).
spec_density_seed() { sed -n 's/^SPEC_DENSITY_SEED = \([0-9][0-9]*\)$/\1/p' bench/spec_densities.py; }

# Splits the comma lists $3 (configurations) and $4 (masks) into CONFIG_LIST and MASK_LIST, checks
# every configuration with the function $2 (which prints its `flashmask run` arguments or returns
# 1), and reads SPEC §6's mask seed into SEED. $1: the calling script's name, $5: the accepted
# configuration names, both for messages. Exits with status 2 on a bad configuration or no seed.
parse_run_lists() {
  local script=$1 arguments_of=$2 config
  IFS=, read -r -a CONFIG_LIST <<<"$3"
  IFS=, read -r -a MASK_LIST <<<"$4"
  for config in "${CONFIG_LIST[@]}"; do
    "$arguments_of" "$config" >/dev/null ||
      { echo "$script: unknown configuration '$config'; expected $5" >&2; exit 2; }
  done
  SEED=$(spec_density_seed)
  [ -n "$SEED" ] || { echo "$script: no SPEC_DENSITY_SEED in bench/spec_densities.py" >&2; exit 2; }
}

# SPEC §6's configurations (STANDARD_CONFIGS in bench/bench_attention.py) as `flashmask run`
# arguments, and the timed passes of each: the 32K backward takes ~70 ms, so fewer repeats keep a
# round of three masks under a minute. "smoke": 256 rows, for trying a script without a GPU.
# Returns 1 for any other name.
spec_config_arguments() {
  case $1 in
    a) echo "--seqlen 8192 --heads 32 --batch 2 --repeats 20" ;;
    b) echo "--seqlen 32768 --heads 16 --batch 1 --repeats 10" ;;
    smoke) echo "--seqlen 256 --heads 2 --batch 1 --repeats 1" ;;
    *) return 1 ;;
  esac
}

# Waits for the sides' builds started in the background, given as PID:NAME words; where one
# failed, prints the end of its log (the printf pattern $2, %s standing for the side's name) and
# exits 1 once all are done. $1: the calling script's name, for messages.
wait_for_side_builds() {
  local script=$1 log_pattern=$2 failed=0 entry
  shift 2
  for entry in "$@"; do
    wait "${entry%%:*}" && continue
    echo "$script: building ${entry#*:} failed:" >&2
    # shellcheck disable=SC2059  # the pattern is the caller's
    tail -20 "$(printf "$log_pattern" "${entry#*:}")" >&2
    failed=1
  done
  [ "$failed" -eq 0 ] || exit 1
}
