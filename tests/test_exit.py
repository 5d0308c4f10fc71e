"""A run that ends must exit: every way a long-running command ends -- finished, preempted (exit 3), failed
(exit 1), bad data after the loaders started (exit 2), interrupted (130), a second SIGTERM while the
checkpoint is written -- ends the process within 30 s of its last write, with every process it started gone.

Each case runs the real command line in its own session (process group), as Slurm runs a step; after the
command exits, the group must be empty within 30 s (DataLoader workers, DALI, MPI ranks, torchrun workers).
Failures that cannot be provoked from outside are injected by a small driver that patches one method and then
calls `sgmagnet.cli.main` (DRIVER below).
"""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

from ci import ROOT, TINY
from helpers import have_mpirun, live_processes, require

pytestmark = pytest.mark.slow   # real command lines in their own process groups (~2 min)

ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT, SGMAGNET_DIST_BACKEND="gloo")
ENV.pop("TRITON_INTERPRET", None)
EXIT_WITHIN_S = 30

DRIVER = r'''
import os, signal, sys, time
mode = sys.argv[1]
from sgmagnet import checkpoint, cli, train

rank = int(os.environ.get("RANK", "0"))
if mode == "fail":                          # an unexpected error in the middle of a run (on FAIL_RANK)
    orig = train.Trainer.train_step
    def boom(self, micro):
        if self.step == 2 and rank == int(os.environ.get("FAIL_RANK", "0")):
            raise RuntimeError("injected failure")
        return orig(self, micro)
    train.Trainer.train_step = boom
elif mode == "bad-batch":                   # damaged labels reach the loss after the loaders started
    orig = train.Trainer.train_step
    def bad(self, micro):
        if self.step == 2:
            micro[0]["index"][0, 1] = 10_000    # a row far outside the patch
        return orig(self, micro)
    train.Trainer.train_step = bad
elif mode == "sigterm-while-saving":        # every checkpoint write is hit by a SIGTERM to the whole group
    orig = checkpoint.Checkpointer.save
    def save(self, *a, **k):
        os.killpg(0, signal.SIGTERM)
        time.sleep(0.2)
        return orig(self, *a, **k)
    checkpoint.Checkpointer.save = save
elif mode == "rank-fails-in-build":         # one MPI rank dies of an unexpected error outside its granules
    from sgmagnet import build
    from mpi4py import MPI
    orig = build.run_rank
    def run_rank(*a, **k):
        if MPI.COMM_WORLD.Get_rank() == 1:
            raise RuntimeError("injected failure on rank 1")
        return orig(*a, **k)
    build.run_rank = run_rank
elif mode != "plain":
    raise SystemExit(f"unknown mode {mode}")
sys.exit(cli.main(sys.argv[2:]))
'''


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    p = tmp_path_factory.mktemp("driver") / "driver.py"
    p.write_text(DRIVER)
    return str(p)


def group_members(pgid: int) -> list[str]:
    """Live processes of a process group, as 'pid name'."""
    return [f"{pid} {name}" for pid, (name, _, pgrp) in live_processes().items() if pgrp == pgid]


def newest_write(folder) -> float:
    times = [os.path.getmtime(f) for f in glob.glob(os.path.join(str(folder), "**", "*"), recursive=True)
             if os.path.isfile(f)]
    return max(times, default=0.0)


class Run:
    """A command in its own session; `signal_when(ready, sig...)` signals its whole group once ready() holds."""

    def __init__(self, argv, cwd=ROOT, env=None):
        # SIGINT as in a terminal: a test suite started in the background (`make test &`, nohup) runs with SIGINT
        # ignored, which its children would inherit -- and a Python started so never raises KeyboardInterrupt
        self.p = subprocess.Popen(argv, cwd=cwd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.t0 = time.time()

    def wait_for(self, ready, what: str, timeout=300):
        while not ready():
            if self.p.poll() is not None:
                raise AssertionError(f"ended (exit {self.p.returncode}) before {what}:\n{self.p.stdout.read()[-3000:]}")
            assert time.time() - self.t0 < timeout, f"{what} never happened"
            time.sleep(0.05)

    def signal_group(self, sig):
        os.killpg(self.p.pid, sig)

    def finish(self, timeout=300):
        """(exit code, output, exit time); asserts the group is empty within EXIT_WITHIN_S of the exit."""
        try:
            out, _ = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            left = group_members(self.p.pid)
            os.killpg(self.p.pid, signal.SIGKILL)
            out, _ = self.p.communicate()
            raise AssertionError(f"did not exit within {timeout} s; group: {left}\n{out[-3000:]}")
        t_exit = time.time()
        while group_members(self.p.pid) and time.time() - t_exit < EXIT_WITHIN_S:
            time.sleep(0.1)
        left = group_members(self.p.pid)
        if left:
            os.killpg(self.p.pid, signal.SIGKILL)
        assert not left, f"processes left {EXIT_WITHIN_S} s after the command exited: {left}\n{out[-3000:]}"
        return self.p.returncode, out, t_exit


def train_argv(shards, run, *over, driver=None, mode="plain"):
    head = [sys.executable, driver, mode] if driver else [sys.executable, "-m", "sgmagnet.cli"]
    return [*head, "train", "--config", TINY, "--no-progress", f"data.shards={shards}", f"train.run_dir={run}",
            *over]


def trained_steps(run) -> int:
    return sum('"kind": "train"' in line for line in open(os.path.join(run, "log.jsonl")))


def check_prompt(run, t_exit):
    assert t_exit - newest_write(run) < EXIT_WITHIN_S, "the process outlived its last write by more than 30 s"


def has_workers(p, n):
    return lambda: len(subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()) >= n


def training_started(run):
    return lambda: os.path.exists(os.path.join(run, "log.jsonl")) and trained_steps(run) > 0


# ------------------------------------------------------------------------------------------ one rank
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_finished_run_exits(tiny_shards, tmp_path, workers):
    """Validation loaders (val_every) and the training stream both run workers; the run ends with exit 0."""
    root, _ = tiny_shards
    r = Run(train_argv(root, tmp_path / "run", "train.steps=6", f"data.workers={workers}"))
    code, out, t_exit = r.finish()
    assert code == 0 and (tmp_path / "run" / "summary.json").exists(), out[-2000:]
    check_prompt(tmp_path / "run", t_exit)


@pytest.mark.parametrize("workers", [1, 2])
def test_preempt_resume_finish_exits(tiny_shards, tmp_path, workers):
    """The report's case: configs/tiny.yaml (validating on `test`) with workers, SIGTERM to the whole group
    after a few steps (exit 3, a checkpoint), then --resume to the end: exit 0, within 30 s, nothing left."""
    root, _ = tiny_shards
    run = tmp_path / "run"
    argv = train_argv(root, run, "train.steps=40", f"data.workers={workers}")
    r = Run(argv)
    r.wait_for(training_started(run), "the first training step")
    r.wait_for(has_workers(r.p, workers), "the DataLoader workers")
    r.signal_group(signal.SIGTERM)
    code, out, t_exit = r.finish()
    assert code == 3 and "preemption signal" in out, out[-2000:]
    check_prompt(run, t_exit)
    r = Run(argv + ["--resume"])
    code, out, t_exit = r.finish()
    assert code == 0 and "resumed from" in out and (run / "summary.json").exists(), out[-2000:]
    check_prompt(run, t_exit)


@pytest.mark.parametrize("mode,code,text", [("fail", 1, "injected failure"),
                                            ("bad-batch", 2, "could not be scored")])
def test_failed_run_exits(tiny_shards, tmp_path, driver, mode, code, text):
    root, _ = tiny_shards
    run = tmp_path / "run"
    r = Run(train_argv(root, run, "train.steps=20", "data.workers=2", "train.columns=false", driver=driver,
                       mode=mode))
    got, out, t_exit = r.finish()
    assert got == code and text in out and "Traceback" not in out, out[-2000:]
    check_prompt(run, t_exit)


def test_keyboard_interrupt_exits(tiny_shards, tmp_path):
    root, _ = tiny_shards
    run = tmp_path / "run"
    r = Run(train_argv(root, run, "train.steps=100000", "train.val_every=0", "data.workers=2"))
    r.wait_for(training_started(run), "the first training step")
    r.wait_for(has_workers(r.p, 2), "the DataLoader workers")
    r.signal_group(signal.SIGINT)                         # Ctrl-C in a terminal: the whole foreground group
    code, out, t_exit = r.finish()
    assert code == 130 and "interrupted" in out, out[-2000:]
    check_prompt(run, t_exit)


def test_second_sigterm_while_saving_keeps_a_usable_checkpoint(tiny_shards, tmp_path, driver):
    """Every checkpoint write is hit by a SIGTERM to the group: the first makes the run stop at the step
    boundary, the one during that final save changes nothing -- exit 3, a checkpoint that loads, and a
    resume from it that finishes."""
    from sgmagnet.checkpoint import latest_in, load, load_common

    root, _ = tiny_shards
    run = tmp_path / "run"
    argv = train_argv(root, run, "train.steps=30", "train.ckpt_every=2", "train.val_every=0", "data.workers=2",
                      driver=driver, mode="sigterm-while-saving")
    code, out, t_exit = Run(argv).finish()
    assert code == 3 and "preemption signal" in out, out[-2000:]
    check_prompt(run, t_exit)
    folder = latest_in(str(run / "checkpoints"))
    assert load_common(folder)["step"] >= 2 and load(os.path.join(folder, "rank_00000.pt"))
    code, out, _ = Run(train_argv(root, run, "train.steps=6", "train.val_every=0", "--resume")).finish()
    assert code == 0, out[-2000:]


@pytest.mark.dali
def test_dali_loader_run_finishes_and_preempts(tiny_shards, tmp_path):
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        require(False, "nvidia-dali")
    root, _ = tiny_shards
    run = tmp_path / "run"
    code, out, t_exit = Run(train_argv(root, run, "train.steps=4", "data.loader=dali")).finish()
    assert code == 0, out[-2000:]
    check_prompt(run, t_exit)
    run2 = tmp_path / "run2"
    r = Run(train_argv(root, run2, "train.steps=100000", "train.val_every=0", "data.loader=dali"))
    r.wait_for(training_started(run2), "the first training step")
    r.signal_group(signal.SIGTERM)
    code, out, t_exit = r.finish()
    assert code == 3, out[-2000:]
    check_prompt(run2, t_exit)


# ----------------------------------------------------------------------------------- two ranks (gloo)
def torchrun_argv(script_and_args, port_offset):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={29700 + port_offset + os.getpid() % 200}", *script_and_args]


def test_two_ranks_finish_preempt_and_fail_exit(tiny_shards, tmp_path, driver):
    """torchrun, 2 gloo ranks, 1 DataLoader worker each: a finished run exits 0; a SIGTERM to the whole
    group exits 3; an error on rank 1 alone ends both ranks (no survivor waits in a collective) -- each
    within 30 s, nothing left behind."""
    root, _ = tiny_shards
    run = tmp_path / "fin"
    args = train_argv(root, run, "train.steps=4", "data.workers=1", driver=driver)[1:]
    code, out, t_exit = Run(torchrun_argv(args, 0)).finish()
    assert code == 0 and (run / "summary.json").exists(), out[-3000:]
    check_prompt(run, t_exit)

    run = tmp_path / "pre"
    args = train_argv(root, run, "train.steps=100000", "train.val_every=0", "data.workers=1", driver=driver)[1:]
    r = Run(torchrun_argv(args, 1))
    r.wait_for(training_started(run), "the first training step")
    r.signal_group(signal.SIGTERM)                      # torchrun too: it exits 1 once its workers have ended
    code, out, t_exit = r.finish()
    assert code != 0 and "preemption signal: saved" in out and "exiting with 3" in out, out[-3000:]
    assert (run / "checkpoints" / "latest").exists()
    check_prompt(run, t_exit)

    run = tmp_path / "fail"
    args = train_argv(root, run, "train.steps=20", "train.val_every=0", "data.workers=1", driver=driver,
                      mode="fail")[1:]
    r = Run(torchrun_argv(args, 2), env=dict(ENV, FAIL_RANK="1"))
    code, out, t_exit = r.finish(timeout=120)
    assert code != 0 and "injected failure" in out, out[-3000:]
    check_prompt(run, t_exit)


# ------------------------------------------------------------------------- the other long-running commands
def test_evaluate_and_predict_interrupted_exit(tiny_shards, tiny_archive, tmp_path):
    """evaluate and predict start no worker or subprocess; interrupted, they end at once and predict leaves no
    half-written cube (it writes beside the output and renames)."""
    root, _ = tiny_shards
    from sgmagnet.config import load_config
    from sgmagnet.train import run_training

    run = tmp_path / "run"
    run_training(load_config(TINY, [f"data.shards={root}", f"train.run_dir={run}", "train.steps=2",
                                    "model.name=unet"]), log=lambda m: None)
    # SIGINT: 130 from sgmagnet's handler; SIGTERM: 143 (sgmagnet turns it into an exit that runs the clean-ups);
    # the signal's own action while the interpreter is still starting or already ending; 0: it finished first
    SIGS = ((signal.SIGINT, (130, -signal.SIGINT)), (signal.SIGTERM, (143, -signal.SIGTERM)))
    for sig, codes in SIGS:
        r = Run([sys.executable, "-m", "sgmagnet.cli", "evaluate", "--checkpoint", str(run), "--shards", str(root),
                 "--out", str(tmp_path / "ev")])
        while r.p.poll() is None and time.time() - r.t0 < 2.5:   # mid-evaluation (it may also finish first)
            time.sleep(0.05)
        if r.p.poll() is None:
            r.signal_group(sig)
        got, out, _ = r.finish(timeout=60)
        assert got in codes + (0,), f"{sig}: exit {got}\n{out[-2000:]}"
    scene = sorted(glob.glob(str(tiny_archive[0] / "ahi" / "**" / "*.nc"), recursive=True))[0]
    for sig, codes in SIGS:
        cube = tmp_path / f"cube_{sig}.nc"
        r = Run([sys.executable, "-m", "sgmagnet.cli", "predict", "--checkpoint", str(run), "--ahi", scene, "--out",
                 str(cube), "--tile", "32", "--overlap", "8"])
        while r.p.poll() is None and time.time() - r.t0 < 2:
            time.sleep(0.05)
        if r.p.poll() is None:
            r.signal_group(sig)
        got, out, _ = r.finish(timeout=60)
        assert got in codes + (0,), f"{sig}: exit {got}\n{out[-2000:]}"
        if cube.exists():                                  # written whole before the signal, or not at all
            import xarray as xr
            with xr.open_dataset(cube) as ds:
                assert "cloud_phase" in ds and ds["cloud_phase"].size > 0
        assert not glob.glob(str(tmp_path / "*.partial*")), "a half-written cube was left"


@pytest.mark.mpi
def test_mpi_build_rank_failure_ends_every_rank(tiny_archive, tmp_path, driver):
    """Under mpirun, an unexpected error on rank 1 (outside the per-granule error capture, which the ranks
    agree on) aborts the job: rank 0 does not wait forever in the collective that follows."""
    require(have_mpirun(), "mpirun + mpi4py")
    archive, _ = tiny_archive
    argv = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable, driver,
            "rank-fails-in-build", "build", "--ahi", str(archive / "ahi"), "--cloudsat", str(archive / "cloudsat"),
            "--out", str(tmp_path / "shards"), "--patch-size", "32", "--min-labelled", "16", "--split-days", "1,0,1",
            "--quiet"]
    code, out, _ = Run(argv).finish(timeout=120)
    assert code != 0 and "injected failure on rank 1" in out, out[-3000:]
    assert not (tmp_path / "shards" / "manifest.json").exists()


LEFT_AT_EXIT = r"""
import sys
from sgmagnet.data import LoaderConfig, Normaliser
from sgmagnet.loaders import make_loader
from sgmagnet.shards import split_urls
root = sys.argv[1]
it = iter(make_loader(split_urls(root, "train"), Normaliser.from_manifest(root), LoaderConfig(batch_size=2, workers=2),
                      train=True))
next(it)
KEEP = [it]
KEEP.append(KEEP)          # a reference cycle: only the cyclic GC would free the iterator, after atexit
print("leaving with 2 workers alive", flush=True)
"""


def test_loader_left_alive_at_interpreter_exit_does_not_hang(tiny_shards):
    """The mechanism behind the hang: workers that ignore SIGTERM, an iterator still referenced at interpreter
    exit, and multiprocessing's exit handler, which sends SIGTERM and then joins forever. sgmagnet.loaders' exit
    hook shuts such an iterator down first (SIGKILL as the last resort). Before it, this never exited."""
    root, _ = tiny_shards
    code, out, _ = Run([sys.executable, "-c", LEFT_AT_EXIT, str(root)]).finish(timeout=60)
    assert code == 0 and "leaving" in out, out[-2000:]


STUDY = r"""
import sys
sys.path.insert(0, sys.argv[1])
from hpc import study
study.PRESETS["tiny"].update(sweep_steps=100000, max_steps=100000, patience=0, workers=1)     # a sweep trial long enough to be signalled
sys.exit(study.main(sys.argv[2:]))
"""


def test_study_preempted_exits_3(tiny_shards, tmp_path):
    """hpc/study.py trains in-process: a SIGTERM to its group ends the trial with a checkpoint, the study exits
    3 (as `sgmagnet train`; a rerun resumes), its loader worker gone."""
    root, _ = tiny_shards
    runs = tmp_path / "runs"
    r = Run([sys.executable, "-c", STUDY, ROOT, "--shards", str(root), "--out", str(tmp_path / "res"), "--runs",
             str(runs), "--config", "tiny", "--seeds", "0", "--only", "unet", "--phase", "sweep"])

    def training():
        return any('"kind": "train"' in open(p).read() for p in glob.glob(str(runs / "**" / "log.jsonl"),
                                                                           recursive=True))
    r.wait_for(training, "the first sweep step")
    r.signal_group(signal.SIGTERM)
    code, out, t_exit = r.finish()
    assert code == 3 and "study: preempted" in out, out[-2000:]
    check_prompt(runs, t_exit)


def test_study_data_stops_its_children(tmp_path):
    """hpc/study_data.py killed with SIGTERM (itself only, as `timeout` or `kill PID` do) while two chunks are
    being synthesised: it terminates them and exits 143; no synth process outlives it."""
    out = tmp_path / "sd"
    r = Run([sys.executable, os.path.join(ROOT, "hpc", "study_data.py"), "--out", str(out), "--days", "4", "--chunk",
             "2", "--jobs", "2", "--region", "125,145,-30,30", "--res", "0.05", "--np", "1"])
    r.wait_for(lambda: len(subprocess.run(["pgrep", "-P", str(r.p.pid)], capture_output=True,
                                          text=True).stdout.split()) >= 2, "two synth processes")
    time.sleep(1.0)
    os.kill(r.p.pid, signal.SIGTERM)
    code, out_text, _ = r.finish(timeout=60)
    assert code == 143, out_text[-2000:]


def test_shard_truncated_while_training_streams_it(tiny_shards, tmp_path):
    """A training shard cut short while the run reads it (a file system hiccup, a copy still in flight): its
    unreadable samples are skipped with one WARNING line each, the other shards carry the run to its end
    (exit 0), and nothing is left behind."""
    import shutil

    root, _ = tiny_shards
    shards = tmp_path / "shards"
    shutil.copytree(root, shards)
    run = tmp_path / "run"
    r = Run(train_argv(shards, run, "train.steps=40", "train.val_every=0", "data.workers=2"))
    r.wait_for(training_started(run), "the first training step")
    victim = sorted((shards / "train").glob("*.tar"))[0]
    victim.write_bytes(victim.read_bytes()[:3000])
    code, out, t_exit = r.finish()
    assert code == 0 and (run / "summary.json").exists(), out[-2000:]
    assert "WARNING: skipped an unreadable sample" in out and "Traceback" not in out, out[-2000:]
    check_prompt(run, t_exit)
