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
from ci import ROOT, TINY

pytestmark = [pytest.mark.slurm, pytest.mark.slow]   # a real local Slurm



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


def test_two_task_job_runs_distributed_and_continues_on_one_task(slurm, tiny_shards, tmp_path, capsys):
    """A 2-task gloo job; then the run resubmitted with --resume on 1 task (accumulation 2: the same global
    batch) continues from its checkpoint; a resubmission that would change the global batch is refused
    before it is queued (exit 2, one line)."""
    root, _ = tiny_shards
    run = tmp_path / "run2"
    over = [f"data.shards={root}", f"train.run_dir={run}", "train.steps=4", "train.val_every=0", "model.name=unet"]
    assert cli.main(submit(tmp_path, "--tasks-per-node", "2", "--wait", *over)) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 4
    assert os.path.exists(run / "checkpoints" / "step_0000004" / "rank_00001.pt")
    longer = [*over[:2], "train.steps=6", *over[3:]]
    assert cli.main(submit(tmp_path, "--resume", "--tasks-per-node", "1", *longer)) == 2
    assert "global batch 4" in capsys.readouterr().err
    assert cli.main(submit(tmp_path, "--resume", "--tasks-per-node", "1", "--wait", *longer, "optim.accum=2")) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 1 and s["steps"] == 6
    recs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    resumed = [r for r in recs if r["kind"] == "resume"]
    assert resumed and resumed[-1]["step"] == 4 and resumed[-1]["changes"]["world_size"] == [2, 1]
    assert [r["step"] for r in recs if r["kind"] == "train"][-1] == 6


def _release_requeued(job_id: str, timeout: float = 90):
    """Slurm holds a requeued job ~2 min before it may start again; let it start now (saves CI time) -- but
    only once the node has finished cleaning up the previous run (started earlier, the new run is killed:
    "Job credential revoked")."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
        node = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.strip()
        if st.startswith("PENDING") and node == "idle":
            time.sleep(2)
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
            return
        time.sleep(0.5)


def _wait_log_lines(run, n, alive, timeout=180):
    t0 = time.time()
    def records():   # training records (the header of each (re)start is not progress)
        return [x for x in (run / "log.jsonl").read_text().splitlines() if '"kind": "header"' not in x]
    while not (run / "log.jsonl").exists() or len(records()) < n:
        assert time.time() - t0 < timeout and alive(), "the job ended before it was signalled"
        time.sleep(0.2)


@pytest.mark.parametrize("how,workers", [("interrupt", 0), ("term_to_step", 1)])
def test_preemption_requeues_and_resumes_exactly(slurm, tiny_shards, tmp_path, how, workers):
    """interrupt: submitit's SIGTERM + USR2 (a cluster with preempt_send_user_signal). term_to_step: only
    SIGTERM, delivered by Slurm to every process of the step -- the trainer and its DataLoader worker --
    as a cluster without preempt_send_user_signal does. Both: checkpoint, requeue, exact resume."""
    import submitit

    from launch.submit import TrainJob
    from sgmagnet.config import load_config
    from sgmagnet.train import Trainer

    root, _ = tiny_shards
    over = [f"data.shards={root}", "train.steps=400", "train.val_every=0", "train.ckpt_every=0",
            "train.log_every=1", "model.size=tiny", "model.name=unet", f"data.workers={workers}"]
    ex = submitit.AutoExecutor(folder=str(tmp_path / "logs" / "%j"), cluster="slurm")
    # 30 min limit: submitit counts a signal in the first 20 minutes as a preemption, not a time-out
    ex.update_parameters(timeout_min=30, slurm_partition="debug", tasks_per_node=1, cpus_per_task=workers + 1)
    run = tmp_path / "pre"
    job = ex.submit(TrainJob(TINY, over + [f"train.run_dir={run}"]))
    _wait_log_lines(run, 3, lambda: job.state not in ("FAILED", "COMPLETED"))
    if how == "interrupt":
        job._interrupt()                                      # SIGTERM + USR2, as on preemption
    else:
        subprocess.check_call(["scancel", "--signal=TERM", job.job_id])   # every process of the job's steps
    _release_requeued(job.job_id)
    summary = job.result()                                    # waits through the requeue
    assert summary["steps"] == 400
    text = "\n".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.err"))
    assert "requeue" in text.lower(), text[-2000:]
    out = "\n".join(p.read_text() for p in (tmp_path / "logs").rglob("*_log.out"))
    assert "resumed from" in out and "preemption signal: saved" in out, out[-2000:]
    # resumed from a mid-run checkpoint, and ended where an uninterrupted run ends
    saved = int(out.split("preemption signal: saved")[1].split("step_")[1][:7])
    assert 0 < saved < 400
    ref = Trainer(load_config(TINY, over + [f"train.run_dir={tmp_path / 'ref'}", "train.progress=false"]),
                  log=lambda m: None)
    ref.fit()
    got = torch.load(run / "checkpoints" / "step_0000400" / "state.pt", weights_only=True)["model"]
    for k, v in ref.model.state_dict().items():
        assert torch.equal(got[k], v), k


def test_sbatch_template_creates_logs_requeues_and_resumes(slurm, tiny_shards, tmp_path):
    """slurm/train.sbatch submitted with plain sbatch from a folder without slurm_logs/: the job writes its
    logs, a SIGTERM to the whole step (trainer + 1 DataLoader worker) ends in a checkpoint and exit 3, the
    template requeues, the job resumes and finishes."""
    root, _ = tiny_shards
    sub, run = tmp_path / "submit", tmp_path / "tpl"
    sub.mkdir()
    env = dict(os.environ, CONFIG=TINY, REPO=ROOT, EXTRA=f"data.shards={root} train.run_dir={run} train.steps=300 "
               f"train.val_every=0 train.ckpt_every=0 train.log_every=1 model.name=unet")
    r = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0",
                        "--cpus-per-task=2", os.path.join(ROOT, "slurm", "train.sbatch")], cwd=sub, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    jid = r.stdout.strip().split(";")[0]

    def alive():
        return subprocess.run(["squeue", "-h", "-j", jid], capture_output=True, text=True).stdout.strip() != ""
    _wait_log_lines(run, 3, alive)
    subprocess.check_call(["scancel", "--signal=TERM", jid])
    _release_requeued(jid)

    def state():
        info = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True).stdout
        return info.split("JobState=")[1].split()[0], int(info.split("Restarts=")[1].split()[0])
    t0 = time.time()
    while state()[0] not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
        assert time.time() - t0 < 300, f"the requeued job did not finish: {state()}"
        time.sleep(0.5)
    logs = [sub / f"sgmagnet-train-{jid}.out", sub / "slurm_logs" / jid / "0.out"]   # shown when it fails
    told = "\n".join(f"== {p}\n" + (p.read_text()[-1500:] if p.exists() else "(missing)") for p in logs)
    assert state() == ("COMPLETED", 1), f"{state()}\n{told}"
    log = logs[1].read_text()
    assert "preemption signal: saved" in log and "resumed from" in log, log[-2000:]
    assert json.loads((run / "summary.json").read_text())["steps"] == 300
    assert (sub / f"sgmagnet-train-{jid}.out").exists()


def build_argv(archive, out, tmp_path, *extra):
    """`sgmagnet submit build` with the settings of the tiny_shards fixture (conftest.build_cfg)."""
    return ["submit", "build", "--ahi", str(archive / "ahi"), "--cloudsat", str(archive / "cloudsat"),
            "--out", str(out), "--patch-size", "32", "--min-labelled", "16", "--split-days", "1,0,1",
            "--gap-days", "0", "--shard-maxcount", "8", "--partition", "debug", "--time", "00:10:00",
            "--cluster", "slurm", "--folder", str(tmp_path / "logs"), "--wait", *extra]


def test_build_array_survives_faults_and_equals_the_mpirun_build(slurm, tiny_archive, tmp_path, capsys):
    """The array build of a short span with the faults of a year's run (docs/scale.md): one task SIGKILLed, one
    scancelled, the node drained while a task waits and resumed, one granule permanently unreadable. The
    first array ends with failed tasks and its merge job never runs; the same submission again finishes the
    missing granules and merges. Its shards' sha256 list equals a fault-free `mpirun -n 2` build's."""
    import glob
    import re
    import sys

    from helpers import have_mpirun
    from hpc import slurm_faults as sf

    require(have_mpirun(), "mpirun + mpi4py")
    archive = tmp_path / "archive"
    shutil.copytree(tiny_archive[0], archive)
    bad = sorted(glob.glob(str(archive / "cloudsat" / "**" / "*.hdf"), recursive=True))[-1]
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    ref = tmp_path / "ref"
    r = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable, "-m",
                        "sgmagnet.cli", "build"] + build_argv(archive, ref, tmp_path)[2:-9] + ["--quiet"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = tmp_path / "shards"
    argv = [a for a in build_argv(archive, out, tmp_path, "--array", "3") if a != "--wait"]
    assert cli.main(argv) == 0
    job, merge = re.search(r"submitted array (\d+) .* merge job (\d+)", capsys.readouterr().out).groups()
    sf.wait(lambda: sf.tasks(job).get(0) == "RUNNING" and sf.task_pids(job, 0) and sf.tasks(job).get(1) == "RUNNING",
            120, "tasks 0 and 1 to run")
    waiting = sf.tasks(job).get(2) == "PENDING"         # on 2 cores (1 per task) task 2 waits for a free one
    node = sf.node()
    sf.drain(node)
    assert sf.kill_python(job, 0)
    sf.cancel(job, 1)
    time.sleep(4)
    if waiting:
        assert sf.tasks(job).get(2) == "PENDING", "a task started on a drained node"
    sf.resume(node)
    sf.wait(lambda: sf.finished(sf.tasks(job)), 300, "the array to finish")
    states = sf.tasks(job)
    assert states[0] == "FAILED" and states[1] == "CANCELLED", states
    assert not (out / "manifest.json").exists()
    assert sf.job_state(merge) == "PENDING"            # afterok can no longer be met
    sf.cancel_job(merge)
    assert cli.main(argv + ["--wait"]) == 0             # the operator's recovery: the same submission again
    got, want = (json.loads((d / "manifest.json").read_text()) for d in (out, ref))
    assert [(x["path"], x["sha256"]) for x in got["shards"]] == [(x["path"], x["sha256"]) for x in want["shards"]]
    for k in ("counts", "class_histogram", "band_stats", "profiles", "train_class_frequency"):
        assert got[k] == want[k], k
    assert sum(got["counts"].values()) > 0
    assert any(os.path.basename(bad) in x["file"] for x in got["skipped"]), got["skipped"]
    assert got["skipped"] == want["skipped"]


def test_mpi_build_job_equals_local_build(slurm, tiny_archive, tiny_shards, tmp_path):
    root, local = tiny_shards
    out = tmp_path / "mpi"
    assert cli.main(build_argv(tiny_archive[0], out, tmp_path, "--tasks-per-node", "2")) == 0
    got = json.loads((out / "manifest.json").read_text())
    stats = json.loads((out / "build_stats.json").read_text())
    assert len(stats["ranks"]) == 2                       # two MPI ranks under srun --mpi=pmix
    for k in ("counts", "class_histogram", "band_stats", "shards"):
        assert got[k] == getattr(local, k), k


@pytest.mark.parametrize("bad", [
    ["--name", "x; rm -rf /"], ["--name", "a\n#SBATCH --uid=0"], ["--partition", "debug$(id)"],
    ["--account", "a b"], ["--time", "10 && reboot"], ["--folder", "/tmp/x y"], ["--sbatch=--wrap=`id`"],
    ["--constraint", "gpu|'x'"], ["--partition", "debug\n"], ["--qos", "normal\n"], ["--name", "job\n"],
    ["--account", "a\n"], ["--constraint", "a100\n"], ["--sbatch=--uid=0"], ["--sbatch=--export=LD_PRELOAD=/x.so"],
    ["--sbatch=--partition=other"], ["--sbatch=--signal=USR1@1"], ["--setup", "echo $(id)"],
    ["--setup", "a; b"], ["--setup", "module load x\nrm -rf /"], ["--time", "1-25:00:00"],
    ["--cpus-per-task", "1", "data.workers=4"]])
def test_injection_attempts_are_rejected(bad, capsys):
    opts = {"--partition": "debug", "--time": "00:10:00"}
    if len(bad) == 2:
        opts.pop(bad[0], None)
    tail = [b for b in bad if b.startswith(("data.", "train.", "model."))]      # config overrides go last
    bad = [b for b in bad if b not in tail]
    argv = ["submit", "train", "--config", TINY, "--dry-run", "--cluster", "slurm", *bad]
    for k, v in opts.items():
        argv += [k, v]
    argv += tail
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert ("not allowed" in err or "must be" in err or "out of range" in err or "leaves no core" in err), err
    assert len(err.strip().splitlines()) == 1, err


def test_dry_run_prints_the_script(capsys):
    assert cli.main(["submit", "train", "--config", TINY, "--partition", "gpu", "--time", "1-02:00:00",
                     "--nodes", "4", "--gpus-per-node", "8", "--account", "proj42", "--sbatch=--exclusive",
                     "--dry-run", "--cluster", "slurm", "train.steps=10"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --time=1560", "#SBATCH --exclusive",
                 "#SBATCH --signal=USR2@120", "#SBATCH --requeue", "#SBATCH --cpus-per-task=1"):
        assert line in out, line
    assert "train.steps=10" in out and "wckey" not in out


def test_slurm_defaults_agree_with_the_templates():
    from launch.submit import SIGNAL_DELAY_S

    for t in ("train.sbatch", "train_torchrun.sbatch"):
        text = open(os.path.join(ROOT, "slurm", t)).read()
        assert f"#SBATCH --signal=USR2@{SIGNAL_DELAY_S}" in text and "#SBATCH --requeue" in text, t
        assert 'mkdir -p "$LOGS"' in text and "slurm_logs/%j" not in text.split("#SBATCH --output")[1][:20], t


@pytest.mark.parametrize("value,minutes", [("90", 90), ("10:30", 11), ("02:00:00", 120), ("1-02", 1560),
                                           ("1-02:30", 1590), ("1-02:00:01", 1561), ("0:01", 1)])
def test_every_slurm_time_format(value, minutes):
    from launch.submit import time_minutes

    assert time_minutes(value) == minutes


def test_dry_run_setup_cpus_and_array(capsys):
    assert cli.main(["submit", "train", "--config", TINY, "--partition", "cpu", "--time", "30", "--dry-run",
                     "--cluster", "slurm", "--setup", "module load cuda/12.4", "--setup",
                     "source /opt/venv/bin/activate", "data.workers=3"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --cpus-per-task=4" in out and "#SBATCH --time=30" in out
    assert "# setup\nmodule load cuda/12.4\nsource /opt/venv/bin/activate\n" in out
    assert cli.main(["submit", "build", "--ahi", "/data/ahi", "--cloudsat", "/data/cs", "--out", "/data/out",
                     "--partition", "cpu", "--time", "1:00:00", "--array", "4", "--dry-run", "--cluster", "slurm"]) == 0
    out = capsys.readouterr().out
    array, merge = out.split("merge job script")
    assert "#SBATCH --array=0-3%4" in array and "--dependency" not in array
    assert "#SBATCH --dependency=afterok:" in merge and "--array" not in merge
    # a real submission checks the input folders first (the dry run above may be written off the cluster)
    assert cli.main(["submit", "build", "--ahi", "/data/ahi", "--cloudsat", "/data/cs", "--out", "/data/out",
                     "--partition", "cpu", "--time", "10", "--cluster", "local"]) == 2
    assert "--ahi '/data/ahi' is not a directory" in capsys.readouterr().err
