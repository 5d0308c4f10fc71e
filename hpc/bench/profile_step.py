"""Where a model's time goes: torch.profiler over training steps (dense or column path) and over dense
prediction (no autograd, what `sgmagnet predict` runs), printing the top operators by device time.

    python hpc/bench/profile_step.py [--model sgmagnet] [--size demo] [--patch 128] [--batch 8]
                                     [--mode train-dense,train-columns,predict] [--bf16] [--cudnn-benchmark]
                                     [--dense-chunk N] [--device auto] [--top 12] [--trace DIR]
                                     [--compile none|default|graphs] [--summary DIR]

Each mode prints its samples/s (3 timed steps after 2 warm-ups, outside the profiler) and the profiler table
(sorted by self device time: CUDA on a GPU, CPU otherwise). --trace DIR also writes a Chrome trace per mode.
--compile: the column-path training step through sgmagnet/train/compiled.py (train-columns only), as
`train.compile` runs it. --summary DIR: the summary `sgmagnet train --profile` writes (sgmagnet/train/profiling.py:
wall time, device-busy fraction, launches per step, per-kernel table) of 3 profiled steps, per mode, as
DIR/<model>_<mode>[_<compile>].txt and .json: the same numbers on a machine without shards or PyYAML.
"""
from __future__ import annotations

import json
import os
import sys
import time

from hpc.bench import benchcli  # noqa: E402  (one bad-input convention for the benchmarks)

import torch
from torch.profiler import ProfilerActivity, profile

from hpc.bench.train_step import memory_batch, train_step_fn  # noqa: E402

from sgmagnet.models import MODELS, build_model  # noqa: E402


def make_step(model, mode, batch, device, bf16, compile_mode="none"):
    if mode == "predict":
        x, geom = batch[:2]

        @torch.no_grad()
        def predict():
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                model(x, geom)
        return predict
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    path = "columns" if mode == "train-columns" else "dense"
    return train_step_fn(model, opt, batch, path, bf16, compile_mode=compile_mode if path == "columns" else "none")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = benchcli.parser("profile_step.py", __doc__)
    ap.add_argument("--model", default="sgmagnet", choices=sorted(MODELS), help="model (default: sgmagnet)")
    ap.add_argument("--size", default="demo", help="model size (default: demo)")
    ap.add_argument("--patch", type=benchcli.positive, default=128, help="patch size in pixels (default: 128)")
    ap.add_argument("--batch", type=benchcli.positive, default=8, help="samples per step (default: 8)")
    ap.add_argument("--mode", default="train-dense,train-columns,predict",
                    help="comma list of train-dense, train-columns, predict (default: all three)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (default: fp32)")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--dense-chunk", type=int, default=None,
                    help="SGMAGNet's prediction chunk in columns (default: DENSE_CHUNK, DENSE_CHUNK_CUDA on a GPU)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    ap.add_argument("--top", type=benchcli.positive, default=12, help="operators shown per mode (default: 12)")
    ap.add_argument("--trace", default=None, help="folder for Chrome traces (default: none written)")
    ap.add_argument("--compile", default="none", choices=("none", "default", "graphs"),
                    help="train-columns through torch.compile / CUDA graphs (default: none)")
    ap.add_argument("--summary", default=None, help="folder for the step summaries (default: none written)")
    a = ap.parse_args(argv)
    modes = a.mode.split(",")
    bad = [m for m in modes if m not in ("train-dense", "train-columns", "predict")]
    if bad:
        print(f"profile_step: --mode: unknown mode(s) {bad}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if a.device == "auto" else a.device))
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    if a.dense_chunk:
        import sgmagnet.models.sgmagnet as sgm
        sgm.DENSE_CHUNK = sgm.DENSE_CHUNK_CUDA = a.dense_chunk
    torch.manual_seed(0)
    model = build_model(a.model, a.size).to(device)
    batch = memory_batch(a.batch, a.patch, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"{a.model}/{a.size}, patch {a.patch}, batch {a.batch}, {'bf16' if a.bf16 else 'fp32'}, {name}, "
          f"cudnn.benchmark={a.cudnn_benchmark}")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for mode in modes:
        step = make_step(model, mode, batch, device, a.bf16, a.compile)
        for _ in range(2 if a.compile == "none" else 4):
            step()
        sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            step()
        sync(device)
        rate = 3 * a.batch / (time.perf_counter() - t0)
        sync(device)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(3 if a.summary else 1):
                step()
            sync(device)
        wall = time.perf_counter() - t0
        print(f"\n== {mode}{'' if a.compile == 'none' or mode != 'train-columns' else ' ' + a.compile}: "
              f"{rate:.1f} samples/s")
        if a.summary:
            from sgmagnet.train.profiling import format_summary, summarize

            s = summarize(prof, 3, wall, device)
            name = f"{a.model}_{mode}" + (f"_{a.compile}" if a.compile != "none" and mode == "train-columns" else "")
            os.makedirs(a.summary, exist_ok=True)
            with open(os.path.join(a.summary, name + ".json"), "w") as f:
                json.dump(s, f, indent=1)
            text = format_summary(s)
            with open(os.path.join(a.summary, name + ".txt"), "w") as f:
                f.write(text)
            print(text)
        print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=60))
        if a.trace:
            os.makedirs(a.trace, exist_ok=True)
            prof.export_chrome_trace(os.path.join(a.trace, f"{a.model}_{mode}.json"))
    return 0


if __name__ == "__main__":
    sys.exit(benchcli.run(main, "profile_step.py"))
