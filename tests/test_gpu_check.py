"""`make gpu-check` runs on a bare GPU machine (python3, torch, triton; no numpy, PyYAML, matplotlib, netCDF4,
pytest): each of its scripts is run here on CPU with those modules hidden, and every script it names exists."""
import os
import re
import subprocess
import sys

import pytest

from ci import ROOT

HIDE = r'''
import os, runpy, sys
hidden, runs = sys.argv[1].split(","), [r.split("\x1f") for r in sys.argv[2:]]
for m in hidden:
    sys.modules[m] = None          # `import m` now raises ImportError, as on a machine without it
for argv in runs:                  # each script in turn, in this one process (one torch import for all)
    sys.argv = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            sys.exit(f"{argv[0]}: exit {e.code}")
'''
BARE = "numpy,yaml,matplotlib,netCDF4,xarray,pytest,webdataset"


def run_without(tmp_path, hidden, *runs, interpret=False):
    """Run each argv of `runs` (script first) in one python process where the modules `hidden` cannot be imported."""
    wrapper = tmp_path / "without.py"
    wrapper.write_text(HIDE)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(wrapper), hidden, *("\x1f".join(r) for r in runs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_gpu_check_names_only_existing_scripts():
    text = open(os.path.join(ROOT, "scripts", "gpu_check.sh")).read()
    scripts = re.findall(r'"\$PY" (\S+\.py)', text)
    assert len(scripts) >= 6
    for s in scripts:
        assert os.path.isfile(os.path.join(ROOT, s)), s


def test_gpu_scripts_run_without_numpy_or_yaml(tmp_path):
    runs = [["hpc/bench/train_step.py", "--device", "cpu", "--models", "sgmagnet", "--size", "tiny", "--patch", "16",
             "--paths", "columns", "--compile", "none", "--batch-sweep", "2", "--steps", "1", "--warmup", "0",
             "--csv", str(tmp_path / "train_step.csv")],
            ["hpc/bench/profile_step.py", "--device", "cpu", "--model", "sgmagnet", "--size", "tiny", "--patch", "16",
             "--batch", "2", "--mode", "train-columns", "--top", "3", "--summary", str(tmp_path / "summary")],
            ["kernels/bench/bench_gated_loss.py", "--help"],
            ["kernels/bench/bench_gated_softmax.py", "--help"]]
    r = run_without(tmp_path, BARE, *runs)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "summary" / "sgmagnet_train-columns.txt").exists()
    assert "sgmagnet at 16 px: largest batch measured that fits: 2" in r.stdout
    header = (tmp_path / "train_step.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["date", "commit", "device"] and "mfu" in header


def test_kernel_runner_without_pytest_or_yaml(tmp_path):
    """The stand-in runner (no pytest there); the interpreter used on CPU needs numpy, CUDA does not."""
    r = run_without(tmp_path, "yaml,pytest,matplotlib,netCDF4", ["scripts/kernel_tests.py", "-k", "custom_op"],
                    interpret=True)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


@pytest.mark.slow
def test_kernel_benchmarks_gpu_path_on_cpu(tmp_path):
    """--device cpu runs the benchmarks' whole GPU path (layouts, implementations, rows, stamps) through the
    Triton interpreter on a tiny shape, so gpu-check's scripts are tested before a GPU runs them; then the
    roofline figure is drawn from the rows they appended."""
    csv_path = tmp_path / "kernels.csv"
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = run_without(tmp_path, "matplotlib", *([*argv, "--device", "cpu", "--csv", str(csv_path)] for argv in (
        ["kernels/bench/bench_gated_loss.py", "--batches", "1", "--densities", "0.05", "--size", "16", "--levels", "8"],
        ["kernels/bench/bench_gated_softmax.py", "--batches", "1", "--size", "8", "--levels", "4"])))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(open(csv_path)))
    assert {r["layout"] for r in rows if r["op"] == "gated_sparse_ce"} == {"compact", "permuted", "dense"}
    assert {r["impl"] for r in rows if r["layout"] == "compact"} == {"triton", "tri-uniq", "eager", "compile"}
    assert all(r["commit"] and r["torch"] and r["triton"] and r["iters"] == ">=50" for r in rows)
    r = subprocess.run([sys.executable, "kernels/bench/roofline.py", str(csv_path), "--out", str(tmp_path / "r.png")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and (tmp_path / "r.png").stat().st_size > 1000, r.stderr
