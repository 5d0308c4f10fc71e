"""The README's Usage block, run verbatim (bash -e) in a temporary folder: every command must succeed."""
import os
import re
import subprocess

import pytest
from ci import ROOT

pytestmark = pytest.mark.slow   # the README's commands end to end (~3 min)



def usage_block(k: int = 0) -> str:
    """The k-th bash block of the README's Usage section (0: the P-Tree walk-through, 1: the HSD variant,
    2: the EarthCARE variant)."""
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Usage"):]
    return re.findall(r"```bash\n(.*?)```", section, re.S)[k]


def test_usage_block_runs_as_written(tmp_path):
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "activate")):
        pytest.skip("no .venv (make setup) in this checkout")
    block = usage_block()
    assert block.startswith(". .venv/bin/activate")
    for name in (".venv", "configs"):        # what the block reads from the repository root
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    env.pop("PYTHONPATH", None)
    res = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    for path in ("shards/manifest.json", "runs/sg/eval_test.json", "runs/unet/eval_test.json", "curves.png",
                 "cube.nc", "figs/cube_top_phase.png", "figs/cube_section_0.png", "figs/cube_curtain.png"):
        assert (tmp_path / path).exists(), path
    assert "WARNING" not in res.stderr                  # every split has data
    assert "curtain granule:" in res.stdout


def test_hsd_variant_runs_as_written(tmp_path):
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "activate")):
        pytest.skip("no .venv (make setup) in this checkout")
    block = usage_block(1)
    assert "--ahi-format both" in block and "archive_hsd/ahi_hsd" in block
    for name in (".venv", "configs"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    res = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=1500)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    import json

    man = json.load(open(tmp_path / "shards_hsd" / "manifest.json"))
    assert man["config"]["ahi_format"] == "hsd" and man["counts"]["train"] > 0 and man["counts"]["test"] > 0
    assert (tmp_path / "runs" / "unet_hsd" / "eval_test.json").exists()


def test_earthcare_variant_runs_as_written(tmp_path):
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "activate")):
        pytest.skip("no .venv (make setup) in this checkout")
    block = usage_block(2)
    assert "--earthcare archive_ec/earthcare" in block
    os.symlink(os.path.join(ROOT, ".venv"), tmp_path / ".venv")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    res = subprocess.run(["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    assert "AC__TC__2B/night/H09" in res.stdout and "2B-CLDCLASS-LIDAR/day/H08" in res.stdout
