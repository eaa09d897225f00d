"""bench/ncu_stalls.py, the reader of Nsight Compute's per-instruction export that bench/NOTES.md
quotes: checked on a small export written here in ncu's layout (two kernels, a predicated
instruction, a loop body whose rows share an execution count)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
import ncu_stalls  # noqa: E402

HEADER = ('"Address","Source","# Samples","Instructions Executed",'
          '"stall_mio","stall_barrier","stall_mio (Not Issued)"')


def kernel_block(name, rows):
    lines = [f'"Kernel Name","{name}",', HEADER]
    lines += [f'"0x{i:x}","{source}","{samples}","{executed}","{mio}","{barrier}","{mio}"'
              for i, (source, samples, executed, mio, barrier) in enumerate(rows)]
    return lines


@pytest.fixture
def export(tmp_path):
    path = tmp_path / "source.csv"
    first = kernel_block("ours", [
        ("LDC R1, c[0x0][0x28]", 4, 10, 0, 4),               # prologue: once per warp
        ("LDSM.16.M88.4 R4, [R2]", 30, 1000, 30, 0),          # loop body: 100 steps per warp
        ("@P0 LDSM.16.MT88.4 R8, [R3]", 10, 1000, 6, 4),
        ("HMMA.16816.F32.BF16 R12, R4, R8, R12", 6, 1000, 0, 6),
        ("EXIT", 0, 10, 0, 0),
    ])
    second = kernel_block("theirs", [("LDSM.16.M88.4 R4, [R2]", 8, 1000, 8, 0)])
    path.write_text("\n".join(first + second) + "\n")
    return str(path)


def test_kernels_and_their_rows_are_read(export):
    kernels = ncu_stalls.read_kernels(export)
    assert [k.name for k in kernels] == ["ours", "theirs"]
    assert len(kernels[0].rows) == 5 and len(kernels[1].rows) == 1
    # The "(Not Issued)" copy of a reason is not counted a second time.
    assert ncu_stalls.reasons_of(kernels[0]) == ["stall_mio", "stall_barrier"]


def test_a_reason_is_attributed_to_opcodes_through_predicates(export, capsys):
    kernel = ncu_stalls.read_kernels(export)[0]
    ncu_stalls.print_reason_by_opcode(kernel, "mio", 5)
    out = capsys.readouterr().out
    assert "mio: 36 samples, at LDSM 36" in out
    assert "LDSM 0" in out.replace(",", "")  # 2,000 LDSM executed = 0 M (rounded), named in the mix


def test_regions_follow_execution_counts(export, capsys):
    kernel = ncu_stalls.read_kernels(export)[0]
    ncu_stalls.print_regions(kernel)
    rows = [line.replace("-", " ").split() for line in capsys.readouterr().out.splitlines()[1:]]
    # (first row, last row, executions, instructions, share of the samples); EXIT has no samples.
    assert [r[:5] for r in rows] == [["0", "0", "10", "1", "8.0"], ["1", "3", "1,000", "3", "92.0"]]


def test_an_unknown_reason_and_a_foreign_file_are_refused(export, tmp_path):
    kernel = ncu_stalls.read_kernels(export)[0]
    with pytest.raises(SystemExit, match="'foo' is not a column"):
        ncu_stalls.print_reason_by_opcode(kernel, "foo", 5)
    other = tmp_path / "details.csv"
    other.write_text('"ID","Kernel Name"\n"0","k"\n')
    with pytest.raises(SystemExit, match="no 'Kernel Name' line"):
        ncu_stalls.read_kernels(str(other))
