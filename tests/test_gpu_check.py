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
hidden = sys.argv[1].split(",")
for m in hidden:
    sys.modules[m] = None          # `import m` now raises ImportError, as on a machine without it
script, sys.argv = sys.argv[2], sys.argv[2:]
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
runpy.run_path(script, run_name="__main__")
'''
BARE = "numpy,yaml,matplotlib,netCDF4,xarray,pytest,webdataset"


def run_without(tmp_path, hidden, *argv, interpret=False):
    wrapper = tmp_path / "without.py"
    wrapper.write_text(HIDE)
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, str(wrapper), hidden, *argv], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_gpu_check_names_only_existing_scripts():
    text = open(os.path.join(ROOT, "scripts", "gpu_check.sh")).read()
    scripts = re.findall(r'"\$PY" (\S+\.py)', text)
    assert len(scripts) >= 6
    for s in scripts:
        assert os.path.isfile(os.path.join(ROOT, s)), s


@pytest.mark.parametrize("argv", [
    ["hpc/bench/train_step.py", "--device", "cpu", "--models", "sgmagnet", "--size", "tiny", "--patch", "16",
     "--paths", "columns", "--compile", "none", "--batch-sweep", "2", "--steps", "1", "--warmup", "0"],
    ["hpc/bench/profile_step.py", "--device", "cpu", "--model", "sgmagnet", "--size", "tiny", "--patch", "16",
     "--batch", "2", "--mode", "train-columns", "--top", "3", "--summary", "{tmp}/summary"],
    ["kernels/bench/bench_gated_loss.py", "--help"],
    ["kernels/bench/bench_gated_softmax.py", "--help"],
], ids=["train_step", "profile_step", "bench_loss", "bench_softmax"])
def test_gpu_scripts_run_without_numpy_or_yaml(tmp_path, argv):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    r = run_without(tmp_path, BARE, *argv)
    assert r.returncode == 0, r.stderr[-3000:]
    if "--summary" in argv:
        assert (tmp_path / "summary" / "sgmagnet_train-columns.txt").exists()


def test_kernel_runner_without_pytest_or_yaml(tmp_path):
    """The stand-in runner (no pytest there); the interpreter used on CPU needs numpy, CUDA does not."""
    r = run_without(tmp_path, "yaml,pytest,matplotlib,netCDF4", "scripts/kernel_tests.py", "-k", "custom_op",
                    interpret=True)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
