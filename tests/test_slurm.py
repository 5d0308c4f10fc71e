"""`sgmagnet submit` against a real single-node Slurm (slurm/local/up.sh): training jobs, a 2-task gloo job,
USR2 preemption -> requeue -> exact resume, a build job array + merge, and injection attempts."""
import json
import logging
import os
import shutil
import subprocess
import time

import pytest
import torch

from helpers import require
from sgmagnet import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    require(shutil.which("slurmctld") is not None and shutil.which("munged") is not None, "Slurm (slurm-wlm, munge)")
    require(os.geteuid() == 0, "root (to start the local Slurm daemons)")
    base = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, BASE=str(base))
    r = subprocess.run(["bash", os.path.join(ROOT, "slurm", "local", "up.sh")], env=env, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    logging.getLogger("submitit").setLevel(logging.ERROR)   # no accounting here: sacct warnings on each poll
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(base / "etc" / "slurm.conf")
    yield base
    subprocess.run(["bash", os.path.join(ROOT, "slurm", "local", "down.sh")], env=env, capture_output=True, timeout=60)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def submit(tmp_path, *args):
    return ["submit", "train", "--config", TINY, "--partition", "debug", "--time", "00:10:00", "--cluster", "slurm",
            "--folder", str(tmp_path / "logs"), *args]


def test_training_job_completes(slurm, tiny_shards, tmp_path, capsys):
    root, _ = tiny_shards
    run = tmp_path / "run"
    assert cli.main(submit(tmp_path, "--wait", f"data.shards={root}", f"train.run_dir={run}")) == 0
    out = capsys.readouterr().out
    assert "submitted job" in out
    s = json.loads((run / "summary.json").read_text())
    assert s["steps"] == 6 and s["world_size"] == 1 and (run / "checkpoints" / "latest").exists()
    assert any(json.loads(x)["kind"] == "val" for x in (run / "log.jsonl").read_text().splitlines())
    assert any(p.name.endswith("_log.out") for p in (tmp_path / "logs").rglob("*"))


def test_two_task_job_runs_distributed(slurm, tiny_shards, tmp_path):
    root, _ = tiny_shards
    run = tmp_path / "run2"
    assert cli.main(submit(tmp_path, "--tasks-per-node", "2", "--wait", f"data.shards={root}",
                           f"train.run_dir={run}")) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 6
    assert os.path.exists(run / "checkpoints" / "step_0000006" / "rank_00001.pt")


def test_usr2_requeues_and_resumes_exactly(slurm, tiny_shards, tmp_path):
    import submitit

    from launch.submit import TrainJob
    from sgmagnet.config import load_config
    from sgmagnet.train import Trainer

    root, _ = tiny_shards
    over = [f"data.shards={root}", "train.steps=400", "train.val_every=0", "train.ckpt_every=0",
            "train.log_every=1", "model.size=tiny", "model.name=unet"]
    ex = submitit.AutoExecutor(folder=str(tmp_path / "logs" / "%j"), cluster="slurm")
    # 30 min limit: submitit counts a signal in the first 20 minutes as a preemption, not a time-out
    ex.update_parameters(timeout_min=30, slurm_partition="debug", tasks_per_node=1, cpus_per_task=1)
    run = tmp_path / "pre"
    job = ex.submit(TrainJob(TINY, over + [f"train.run_dir={run}"]))
    t0 = time.time()
    while not (run / "log.jsonl").exists() or len((run / "log.jsonl").read_text().splitlines()) < 3:
        assert time.time() - t0 < 180 and job.state not in ("FAILED", "COMPLETED"), job.state
        time.sleep(0.2)
    job._interrupt()                                          # SIGTERM + USR2, as on preemption
    # Slurm holds a requeued job ~2 min before it may start again; let it start now (saves CI time)
    t0 = time.time()
    while time.time() - t0 < 60:
        st = subprocess.run(["squeue", "-h", "-j", job.job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
        if st.startswith("PENDING"):
            subprocess.run(["scontrol", "update", f"jobid={job.job_id}", "StartTime=now"], capture_output=True)
            break
        time.sleep(0.5)
    summary = job.result()                                    # waits through the requeue
    assert summary["steps"] == 400
    text = "\n".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.err"))
    assert "this job is preempted" in text and "requeue" in text.lower(), text[-2000:]
    out = "\n".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.out"))
    assert "resumed from" in out and "preemption signal: saved" in out, out[-2000:]
    # resumed from a mid-run checkpoint, and ended where an uninterrupted run ends
    ref = Trainer(load_config(TINY, over + [f"train.run_dir={tmp_path / 'ref'}", "train.progress=false"]),
                  log=lambda m: None)
    ref.fit()
    got = torch.load(run / "checkpoints" / "step_0000400" / "state.pt", weights_only=True)["model"]
    for k, v in ref.model.state_dict().items():
        assert torch.equal(got[k], v), k


def build_argv(archive, out, tmp_path, *extra):
    """`sgmagnet submit build` with the settings of the tiny_shards fixture (conftest.build_cfg)."""
    return ["submit", "build", "--ahi", str(archive / "ahi"), "--cloudsat", str(archive / "cloudsat"),
            "--out", str(out), "--patch-size", "32", "--min-labelled", "16", "--split-days", "1,0,1",
            "--gap-days", "0", "--shard-maxcount", "8", "--partition", "debug", "--time", "00:10:00",
            "--cluster", "slurm", "--folder", str(tmp_path / "logs"), "--wait", *extra]


def test_build_array_and_merge_equal_local_build(slurm, tiny_archive, tiny_shards, tmp_path):
    root, local = tiny_shards
    out = tmp_path / "shards"
    assert cli.main(build_argv(tiny_archive[0], out, tmp_path, "--array", "2")) == 0
    got = json.loads((out / "manifest.json").read_text())
    for k in ("counts", "class_histogram", "band_stats", "shards", "skipped", "profiles", "train_class_frequency"):
        assert got[k] == local[k], k


def test_mpi_build_job_equals_local_build(slurm, tiny_archive, tiny_shards, tmp_path):
    root, local = tiny_shards
    out = tmp_path / "mpi"
    assert cli.main(build_argv(tiny_archive[0], out, tmp_path, "--tasks-per-node", "2")) == 0
    got = json.loads((out / "manifest.json").read_text())
    stats = json.loads((out / "build_stats.json").read_text())
    assert len(stats["ranks"]) == 2                       # two MPI ranks under srun --mpi=pmix
    for k in ("counts", "class_histogram", "band_stats", "shards"):
        assert got[k] == local[k], k


@pytest.mark.parametrize("bad", [
    ["--name", "x; rm -rf /"], ["--name", "a\n#SBATCH --uid=0"], ["--partition", "debug$(id)"],
    ["--account", "a b"], ["--time", "10 && reboot"], ["--folder", "/tmp/x y"], ["--sbatch=--wrap=`id`"],
    ["--constraint", "gpu|'x'"]])
def test_injection_attempts_are_rejected(bad, capsys):
    opts = {"--partition": "debug", "--time": "00:10:00"}
    if len(bad) == 2:
        opts.pop(bad[0], None)
    argv = ["submit", "train", "--config", TINY, "--dry-run", "--cluster", "slurm", *bad]
    for k, v in opts.items():
        argv += [k, v]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "not allowed" in err or "must be" in err


def test_dry_run_prints_the_script(capsys):
    assert cli.main(["submit", "train", "--config", TINY, "--partition", "gpu", "--time", "1-02:00:00",
                     "--nodes", "4", "--gpus-per-node", "8", "--account", "proj42", "--sbatch=--exclusive",
                     "--dry-run", "--cluster", "slurm", "train.steps=10"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --time=1560", "#SBATCH --exclusive",
                 "#SBATCH --signal=USR2@90"):
        assert line in out, line
    assert "train.steps=10" in out
