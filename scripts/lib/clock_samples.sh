# Sourced by scripts/cli-ab.sh and scripts/env-ab.sh: the SM clock and power draw that nvidia-smi
# samples while one timed run goes on. The masks below the card's power limit run at clocks that
# move 5-10 % between leases (bench/NOTES.md, sessions 23-24), so an A/B's figure is read beside
# its clock. The caller sets CLOCK_LOG, a file for the samples.

CLOCK_SAMPLE_MS=100  # several samples in a run of SPEC §6 size (its timed passes alone: 20 x ~24 ms at config (a))
# Samples the SM clock and power draw in the background until stop_clock_samples; without
# nvidia-smi the samples are empty and the run's clock reads "n/a".
start_clock_samples() {
  : >"$CLOCK_LOG"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --id=0 --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms "$CLOCK_SAMPLE_MS" \
      >"$CLOCK_LOG" 2>/dev/null &
    clock_sampler=$!
  else
    clock_sampler=
  fi
}
# Prints "<median MHz> MHz, <median W> W" of the samples since start_clock_samples, or "n/a".
stop_clock_samples() {
  if [ -n "$clock_sampler" ]; then kill "$clock_sampler" 2>/dev/null; wait "$clock_sampler" 2>/dev/null; fi
  python3 - "$CLOCK_LOG" <<'PY'
import statistics, sys
samples = []
for line in open(sys.argv[1]):
    try:
        clock, power = (float(field) for field in line.split(","))
    except ValueError:
        continue  # a line cut short by the kill, or "[N/A]"
    samples.append((clock, power))
if samples:
    print("%.0f MHz, %.0f W" % (statistics.median(c for c, _ in samples), statistics.median(p for _, p in samples)))
else:
    print("n/a")
PY
}
