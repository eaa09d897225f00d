"""Which flashmask call crashes the interpreter, and where (not a pytest file: run it).

On the H100 machine (2026-11-25) `pytest tests/python` died with SIGSEGV inside
`_flashmask.forward` (attention_forward on NumPy arrays, with torch imported by test_cuda.py),
and so did a forward_into on CUDA torch tensors; the same build's command-line tool ran the
CUDA path and its checks cleanly. This script runs one small call per case, each in a fresh
interpreter with faulthandler on, and prints OK / CRASH (signal) per case; for the first
crash it reruns that case under cuda-gdb or gdb, when one is installed, for a native
backtrace. (That crash was the module exporting its static libraries' symbols, which then
interposed with other extensions' copies: fixed by linking with --exclude-libs,ALL, see
bindings/CMakeLists.txt. The script stays for the next native crash.)

    python3 tests/python/crash_probe.py            # after pip install of the package
"""

import shutil
import subprocess
import sys

SETUP = """
import numpy as np, flashmask
rng = np.random.default_rng(0)
def arrays(dtype=np.float32):
    q = rng.standard_normal((1, 40, 2, 64)).astype(dtype)
    k = rng.standard_normal((1, 50, 2, 64)).astype(dtype)
    return q, k, k.copy()
"""

TORCH_CUDA = """
import torch
def cuda_tensors():
    q = torch.randn(1, 40, 2, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 50, 2, 64, device="cuda", dtype=torch.bfloat16)
    return q, k, k.clone(), torch.empty_like(q), torch.empty(1, 2, 40, device="cuda")
"""

# (name, code): each case alone in a fresh interpreter; the order goes from the least to the
# most involved, so the first crash points at the smallest cause.
CASES = [
    ("import_only", "import flashmask; print(flashmask.cuda_available())"),
    ("to_dense_numpy", SETUP + "flashmask.to_dense(flashmask.masks.causal_document([10, 20]))"),
    ("attention_forward_numpy_1_thread", SETUP + "q, k, v = arrays(); flashmask.attention_forward(q, k, v, num_threads=1)"),
    ("attention_forward_numpy_all_threads", SETUP + "q, k, v = arrays(); flashmask.attention_forward(q, k, v)"),
    ("reference_forward_numpy", SETUP + "q, k, v = arrays(); flashmask.reference_forward(q, k, v)"),
    ("forward_into_numpy", SETUP + "q, k, v = arrays(); out = np.empty_like(q); lse = np.empty((1, 2, 40), np.float32)\n"
                                  "flashmask.forward_into(q, k, v, out, lse, num_threads=1)"),
    ("torch_imported_then_attention_forward_numpy",
     "import torch\n" + SETUP + "q, k, v = arrays(); flashmask.attention_forward(q, k, v, num_threads=1)"),
    ("torch_cuda_initialised_then_attention_forward_numpy",
     "import torch; torch.zeros(1, device='cuda')\n" + SETUP +
     "q, k, v = arrays(); flashmask.attention_forward(q, k, v, num_threads=1)"),
    ("forward_into_torch_cpu",
     SETUP + "import torch\nq, k, v = (torch.from_numpy(x) for x in arrays()); out = torch.empty_like(q)\n"
             "flashmask.forward_into(q, k, v, out, torch.empty(1, 2, 40), num_threads=1)"),
    ("raw_binding_forward_torch_cuda",  # nanobind imports the tensors itself (no Python capsules)
     SETUP + TORCH_CUDA + "t = cuda_tensors(); flashmask._flashmask.forward(*t, None, True, None, 0, False, 0)\n"
                          "torch.cuda.synchronize()"),
    ("forward_into_torch_cuda",
     SETUP + TORCH_CUDA + "t = cuda_tensors(); flashmask.forward_into(*t, causal=True); torch.cuda.synchronize()"),
    ("forward_into_torch_cuda_torch_first",
     TORCH_CUDA + SETUP + "t = cuda_tensors(); flashmask.forward_into(*t, causal=True); torch.cuda.synchronize()"),
]


def run_case(code: str):
    return subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], capture_output=True, text=True,
                          timeout=120)


def native_backtrace(code: str) -> str:
    debugger = shutil.which("cuda-gdb") or shutil.which("gdb")
    if debugger is None:
        return "(no cuda-gdb or gdb here for a native backtrace)"
    result = subprocess.run([debugger, "-batch", "-ex", "run", "-ex", "bt 40", "--args", sys.executable, "-c", code],
                            capture_output=True, text=True, timeout=300)
    return result.stdout[-12000:] + result.stderr[-4000:]


def main() -> int:
    first_crash = None
    for name, code in CASES:
        result = run_case(code)
        if result.returncode == 0:
            print(f"OK     {name}")
            continue
        signal = -result.returncode if result.returncode < 0 else None
        status = f"CRASH (signal {signal})" if signal else f"FAIL (exit {result.returncode})"
        print(f"{status:<8} {name}\n{result.stderr[-3000:]}")
        if first_crash is None and signal:
            first_crash = (name, code)
    if first_crash:
        name, code = first_crash
        print(f"\n==== native backtrace of {name} ====\n{native_backtrace(code)}")
    return 1 if first_crash else 0


if __name__ == "__main__":
    sys.exit(main())
