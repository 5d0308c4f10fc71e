"""Compile every Triton kernel ahead of time for a real GPU target, on any machine (no GPU needed).

The kernel tests run under TRITON_INTERPRET=1 on machines without a GPU, and the interpreter hides a
class of bugs that only the compiler sees: e.g. Triton passes an int argument equal to 1 (a unit stride,
one level) as a constant Python int, so `arg.to(tl.int64)` compiles in the interpreter and fails on
every GPU. This script compiles each kernel down to a cubin (Triton ships ptxas) for each dtype and for
each int argument specialised to 1, alone and all together, and prints one line per failure.

    python scripts/compile_kernels.py [--arch 90] [--quick]     # exit 0 = all compiled, 1 = some failed
Runs with TRITON_INTERPRET unset (it is removed before Triton is imported).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)   # before triton is imported: kernels must be JITFunctions
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import softmax, sparse_ce  # noqa: E402

FLOATS = ("fp32", "bf16", "fp16")


def cases():
    """(name, kernel, pointer dtypes by arg name (D = the logits' dtype), int args, constexprs)."""
    ce_const = {"BLOCK": sparse_ce.BLOCK, "IGNORE": sparse_ce.IGNORE}
    ints_ce = ["n_elem", "L", "s_b", "s_c", "s_l", "s_h", "s_w"]
    yield ("gated_sparse_ce.fwd", sparse_ce._gsce_fwd_kernel,
           {"logits_ptr": "D", "index_ptr": "i64", "prof_ptr": "u8", "w_ptr": "fp32", "sgrad_ptr": "fp32",
            "part_ptr": "fp32"}, ints_ce, ce_const)
    yield ("gated_sparse_ce.bwd", sparse_ce._gsce_bwd_kernel,
           {"grad_ptr": "D", "index_ptr": "i64", "prof_ptr": "u8", "sgrad_ptr": "fp32", "scale_ptr": "fp32"},
           ints_ce, ce_const)
    yield ("gated_softmax.fwd", softmax._gsm_fwd_kernel, {"x_ptr": "D", "out_ptr": "D"}, ["n_vox", "inner"],
           {"BLOCK": softmax.BLOCK, "ARGMAX": False})
    yield ("gated_argmax", softmax._gsm_fwd_kernel, {"x_ptr": "D", "out_ptr": "i8"}, ["n_vox", "inner"],
           {"BLOCK": softmax.BLOCK, "ARGMAX": True})
    yield ("gated_softmax.bwd", softmax._gsm_bwd_kernel, {"x_ptr": "D", "gout_ptr": "D", "gin_ptr": "D"},
           ["n_vox", "inner"], {"BLOCK": softmax.BLOCK})


def compile_one(kernel, ptrs, ints, const, dtype, ones, arch):
    sig, constexprs = {}, dict(const)
    for name in kernel.arg_names:
        if name in ptrs:
            sig[name] = "*" + (dtype if ptrs[name] == "D" else ptrs[name])
        elif name in ones:
            sig[name], constexprs[name] = "constexpr", 1     # what the launcher does with an int equal to 1
        elif name in ints:
            sig[name] = "i32"
        else:
            sig[name] = "constexpr"
    triton.compile(ASTSource(kernel, sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (default: 90, Hopper)")
    ap.add_argument("--quick", action="store_true", help="fp32 only, and only the all-ones specialisation")
    a = ap.parse_args(argv)
    failed = n = 0
    t0 = time.time()
    for name, kernel, ptrs, ints, const in cases():
        variants = [()] + ([] if a.quick else [(i,) for i in ints]) + [tuple(ints)]
        for dtype in (("fp32",) if a.quick else FLOATS):
            for ones in variants:
                n += 1
                try:
                    compile_one(kernel, ptrs, ints, const, dtype, ones, a.arch)
                except Exception as e:   # noqa: BLE001  (report every failing combination, then fail)
                    failed += 1
                    msg = str(e).strip().splitlines()
                    print(f"FAIL {name} {dtype} ints=1: {','.join(ones) or '-'}: "
                          f"{msg[-1] if msg else type(e).__name__}")
    print(f"compiled {n - failed}/{n} kernel variants for sm_{a.arch} in {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
