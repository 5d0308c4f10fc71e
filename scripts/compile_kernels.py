"""Compile every Triton kernel ahead of time for a real GPU target, on any machine (no GPU needed).

The kernel tests run under TRITON_INTERPRET=1 on machines without a GPU, and the interpreter hides a
class of bugs that only the compiler sees: e.g. Triton passes an int argument equal to 1 (a unit stride,
one level) as a constant Python int, so `arg.to(tl.int64)` compiles in the interpreter and fails on
every GPU. This script compiles each kernel down to a cubin (Triton ships ptxas) for each dtype and for
each int argument specialised to 1 (alone for fp32, all together for every dtype), and prints one line per failure.

    python scripts/compile_kernels.py [--arch 90] [--quick]     # exit 0 = all compiled, 1 = some failed
Runs with TRITON_INTERPRET unset (it is removed before Triton is imported).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)   # before triton is imported: kernels must be JITFunctions
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import softmax, sparse_ce  # noqa: E402

FLOATS = ("fp32", "bf16", "fp16")


def cases():
    """(name, kernel, pointer dtypes by arg name (D = the logits' dtype), int args, constexprs)."""
    ce_const = {"BLOCK": sparse_ce.BLOCK, "IGNORE": sparse_ce.IGNORE}
    ints_ce = ["n_elem", "L", "B", "H", "W", "s_b", "s_c", "s_l", "s_h", "s_w"]
    ce_fwd = {"logits_ptr": "D", "index_ptr": "i64", "prof_ptr": "u8", "w_ptr": "fp32", "sgrad_ptr": "fp32",
              "part_ptr": "fp32", "claim_ptr": "i32"}
    for unique in (False, True):
        yield (f"gated_sparse_ce.fwd(unique={unique})", sparse_ce._gsce_fwd_kernel, ce_fwd, ints_ce,
               {**ce_const, "UNIQUE": unique})
    yield ("gated_sparse_ce.bwd", sparse_ce._gsce_bwd_kernel,
           {"grad_ptr": "D", "index_ptr": "i64", "prof_ptr": "u8", "sgrad_ptr": "fp32", "scale_ptr": "fp32"},
           ints_ce, ce_const)
    def st(*tensors):       # the strides a variant reads (a contiguous tensor's are not read)
        return [f"{t}s_{d}" for t in tensors for d in ("b", "c", "1", "2", "3")]
    ints_sm = ["n_vox", "inner", "D2", "D3"]
    for xc, oc in ((True, True), (False, True), (True, False), (False, False)):
        yield (f"gated_softmax.fwd(contig={xc},{oc})", softmax._gsm_fwd_kernel, {"x_ptr": "D", "out_ptr": "D"},
               ints_sm + st(*(["x"] * (not xc) + ["o"] * (not oc))),
               {"BLOCK": softmax.BLOCK, "ARGMAX": False, "X_CONTIG": xc, "OUT_CONTIG": oc})
    for xc in (True, False):
        yield (f"gated_argmax(contig={xc})", softmax._gsm_fwd_kernel, {"x_ptr": "D", "out_ptr": "i8"},
               ints_sm + st(*["x"] * (not xc)), {"BLOCK": softmax.BLOCK, "ARGMAX": True, "X_CONTIG": xc,
                                                  "OUT_CONTIG": True})
    for c in (True, False):
        yield (f"gated_softmax.bwd(contig={c})", softmax._gsm_bwd_kernel,
               {"x_ptr": "D", "gout_ptr": "D", "gin_ptr": "D"}, ints_sm + ([] if c else st("x", "g", "i")),
               {"BLOCK": softmax.BLOCK, "CONTIG": c})


def compile_one(kernel, ptrs, ints, const, dtype, ones, arch):
    sig, constexprs = {}, dict(const)
    for name in kernel.arg_names:
        if name in ptrs:
            sig[name] = "*" + (dtype if ptrs[name] == "D" else ptrs[name])
        elif name in ones:
            sig[name], constexprs[name] = "constexpr", 1     # what the launcher does with an int equal to 1
        elif name in ints:
            sig[name] = "i32"
        elif name in const:
            sig[name] = "constexpr"
        else:
            sig[name] = "i32"            # an int the variant does not read (a contiguous tensor's strides)
    triton.compile(ASTSource(kernel, sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (default: 90, Hopper)")
    ap.add_argument("--quick", action="store_true", help="fp32 only, and only the all-ones specialisation")
    a = ap.parse_args(argv)
    failed = n = 0
    t0 = time.time()
    for name, kernel, ptrs, ints, const in cases():
        for dtype in (("fp32",) if a.quick else FLOATS):
            # each int specialised to 1 alone (fp32: the int code paths do not depend on the float dtype), none, all
            singles = [(i,) for i in ints] if dtype == "fp32" and not a.quick else []
            for ones in [()] + singles + [tuple(ints)]:
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
