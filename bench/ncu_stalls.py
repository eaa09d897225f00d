"""Reads the per-instruction SASS page that scripts/profile-kernels.sh exports (source.csv) and
prints, per profiled kernel, where its warps waited: the stall reasons over all samples, the
instructions (by opcode) that a given reason stopped, and the kernel split into runs of
instructions with the same execution count (the prologue, each loop body, the epilogue), each
with its share of the samples. Runs here, on the development machine, on a fetched file.

    python bench/ncu_stalls.py source.csv                      # stall reasons per kernel
    python bench/ncu_stalls.py source.csv --reason mio         # which opcodes the MIO throttle hit
    python bench/ncu_stalls.py source.csv --regions --kernel 0 # samples per execution-count run

bench/NOTES.md (session 11) compares flashmask's dK/dV kernel with FlashAttention-2's this way.
"""

from __future__ import annotations

import argparse
import collections
import csv
import sys
from dataclasses import dataclass, field

STALL_PREFIX = "stall_"
NOT_ISSUED_SUFFIX = "(Not Issued)"  # ncu's second copy of each reason: only the cycles nothing issued
MIN_REGION_SHARE = 0.004            # runs below 0.4 % of a kernel's samples are left out of --regions


@dataclass
class Kernel:
    name: str
    rows: list[dict[str, str]] = field(default_factory=list)


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return 0.0


def read_kernels(path: str) -> list[Kernel]:
    """The kernels of one source-page export, each with its SASS rows keyed by column name."""
    kernels: list[Kernel] = []
    header: list[str] | None = None
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if not row:
                continue
            if row[0] == "Kernel Name":
                kernels.append(Kernel(row[1]))
                header = None
            elif row[0] == "Address":
                header = row
            elif header is not None and kernels:
                kernels[-1].rows.append(dict(zip(header, row)))
    if not kernels:
        raise SystemExit(f"{path}: no 'Kernel Name' line; expected ncu's source page "
                         "(ncu -i REPORT --page source --csv --print-source sass)")
    return kernels


def reasons_of(kernel: Kernel) -> list[str]:
    return [c for c in kernel.rows[0] if c.startswith(STALL_PREFIX) and not c.endswith(NOT_ISSUED_SUFFIX)]


def opcode(source: str) -> str:
    words = source.split()
    if words and words[0].startswith("@"):  # a predicate guard
        words = words[1:]
    return words[0].split(".")[0] if words else "?"


def print_reasons(kernel: Kernel, shown: int) -> None:
    totals = collections.Counter()
    reasons = reasons_of(kernel)
    for row in kernel.rows:
        for reason in reasons:
            totals[reason[len(STALL_PREFIX):]] += number(row[reason])
    samples = sum(totals.values()) or 1.0
    executed = sum(number(row.get("Instructions Executed", "0")) for row in kernel.rows)
    print(f"  {executed / 1e6:,.0f} M warp instructions, {samples:,.0f} stall samples")
    print("  " + ", ".join(f"{r} {100 * v / samples:.1f} %" for r, v in totals.most_common(shown)))


def print_reason_by_opcode(kernel: Kernel, reason: str, shown: int) -> None:
    column = STALL_PREFIX + reason
    if column not in kernel.rows[0]:
        raise SystemExit(f"--reason: '{reason}' is not a column of this export; "
                         f"expected one of {', '.join(r[len(STALL_PREFIX):] for r in reasons_of(kernel))}")
    stalls, executed = collections.Counter(), collections.Counter()
    for row in kernel.rows:
        op = opcode(row["Source"])
        stalls[op] += number(row[column])
        executed[op] += number(row.get("Instructions Executed", "0"))
    print(f"  {reason}: {sum(stalls.values()):,.0f} samples, at " +
          ", ".join(f"{op} {v:,.0f}" for op, v in stalls.most_common(shown) if v > 0))
    print("  instruction mix (M): " + ", ".join(f"{op} {v / 1e6:,.0f}" for op, v in executed.most_common(2 * shown)))


def print_regions(kernel: Kernel) -> None:
    """Runs of consecutive instructions executed equally often: a loop body's instructions share
    its trip count, so each run is a piece of the kernel's structure."""
    runs = []  # (first row, last row, executions, samples)
    for index, row in enumerate(kernel.rows):
        executions, samples = number(row.get("Instructions Executed", "0")), number(row["# Samples"])
        if runs and runs[-1][2] == executions:
            first, _, _, total = runs[-1]
            runs[-1] = (first, index, executions, total + samples)
        else:
            runs.append((index, index, executions, samples))
    all_samples = sum(r[3] for r in runs) or 1.0
    print("  rows          executions  instructions  samples")
    for first, last, executions, samples in runs:
        if executions > 0 and samples / all_samples >= MIN_REGION_SHARE:
            print(f"  {first:5d}-{last:5d}  {executions:>10,.0f}  {last - first + 1:12d}  {100 * samples / all_samples:6.1f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_csv", help="source.csv from scripts/profile-kernels.sh")
    parser.add_argument("--kernel", type=int, help="only the kernel with this index (in profiling order)")
    parser.add_argument("--reason", help="a stall reason without its prefix (mio, barrier, short_sb, ...)")
    parser.add_argument("--regions", action="store_true", help="samples per run of equally executed instructions")
    parser.add_argument("--top", type=int, default=9, help="entries per list")
    args = parser.parse_args()

    kernels = read_kernels(args.source_csv)
    if args.kernel is not None and not 0 <= args.kernel < len(kernels):
        parser.error(f"--kernel: {args.kernel} given, the export holds kernels 0 to {len(kernels) - 1}")
    for index, kernel in enumerate(kernels):
        if args.kernel is not None and index != args.kernel:
            continue
        print(f"[{index}] {kernel.name[:110]}")
        print_reasons(kernel, args.top)
        if args.reason:
            print_reason_by_opcode(kernel, args.reason, args.top)
        if args.regions:
            print_regions(kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
