"""Scale-out: DDP and DeepSpeed ZeRO 0/1/2 on 2 gloo processes against one process on the same global
batch; kill + resume of a 2-rank run; DALI vs WebDataset loaders; preemption signal; launcher detection."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import live_processes, require
from ci import ROOT

WORKER = os.path.join(ROOT, "tests", "dist_worker.py")
ENV = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=ROOT,
           TORCH_EXTENSIONS_DIR=os.path.join(ROOT, ".torch_ext"), SGMAGNET_DIST_BACKEND="gloo")
ENV.pop("TRITON_INTERPRET", None)


def torchrun(n, *args, timeout=600, check=True, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}",
           f"--master_port={29500 + os.getpid() % 1000}", *args]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)
    if check and r.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def need_dali():
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        require(False, "nvidia-dali")


def params(path):
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def single_run(tiny_shards, tmp_path_factory):
    root, _ = tiny_shards
    out = tmp_path_factory.mktemp("single")
    torchrun(1, WORKER, str(root), str(out))
    return params(out / "params.pt")


@pytest.mark.slow
@pytest.mark.parametrize("ds,accum", [("", 1), ("", 2), ("zero0", 2), ("zero1", 1), ("zero2", 1)])
def test_two_ranks_match_one_process(tiny_shards, single_run, tmp_path, ds, accum):
    root, _ = tiny_shards
    extra = ["--deepspeed", os.path.join(ROOT, "configs", "deepspeed", f"{ds}.json")] if ds else []
    torchrun(2, WORKER, str(root), str(tmp_path), "--accum", str(accum), *extra)
    got = params(tmp_path / "params.pt")
    for k, v in single_run.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")


def _train_args(root, run, *extra):
    return ["--module", "sgmagnet.cli", "train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
            "--no-progress", f"data.shards={root}", f"train.run_dir={run}", "train.steps=24", "train.ckpt_every=2",
            "train.val_every=0", "train.keep_checkpoints=3", *extra]


def _final_params(run):
    return params(os.path.join(run, "checkpoints", "step_0000024", "state.pt"))["model"]


def kill_tree(pid: int, timeout: float = 30.0):
    """SIGKILL a process and all its descendants, and wait until they are gone. torchrun starts each rank in a
    session of its own, so a group kill reaches torchrun alone and the orphaned ranks train on (and hold the
    run folder's lock) -- not a killed job."""
    children = {}
    for q, (_, ppid, _) in live_processes().items():
        children.setdefault(ppid, []).append(q)
    tree, todo = [], [pid]
    while todo:
        q = todo.pop()
        tree.append(q)
        todo += children.get(q, [])
    for q in tree:
        try:
            os.kill(q, signal.SIGKILL)
        except ProcessLookupError:
            pass
    t0 = time.time()
    while set(tree[1:]) & set(live_processes()):
        assert time.time() - t0 < timeout, "killed ranks did not go away"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("ds", ["", "zero1"])
def test_kill_two_ranks_and_resume_is_bit_identical(tiny_shards, tmp_path, ds):
    root, _ = tiny_shards
    extra = ["--deepspeed", os.path.join(ROOT, "configs", "deepspeed", f"{ds}.json")] if ds else []
    torchrun(2, *_train_args(root, tmp_path / "full", *extra))
    want = _final_params(tmp_path / "full")
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={29600 + os.getpid() % 1000}", *_train_args(root, run, *extra)]
    p = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    t0 = time.time()
    while not (run / "checkpoints" / "latest").exists():
        assert p.poll() is None and time.time() - t0 < 300, "run ended before its first checkpoint"
        time.sleep(0.05)
    time.sleep(0.1)                                   # somewhere after a checkpoint, mid-step
    kill_tree(p.pid)                                  # the node dies: torchrun and both ranks at once
    p.wait()
    assert not (run / "summary.json").exists(), "the run finished before it was killed: nothing tested"
    killed_at = open(run / "checkpoints" / "latest").read().strip()
    # the kill landed before the last checkpoint: the resumed run has steps left to redo
    assert int(killed_at.split("_")[1]) < 24, f"killed after the final checkpoint ({killed_at}): nothing tested"
    torchrun(2, *_train_args(root, run, *extra), "--resume")
    got = _final_params(run)
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k} differs after resuming from {killed_at}"


@pytest.mark.slow
def test_uneven_validation_shards_do_not_hang(tiny_shards, tmp_path):
    """Rank 1 gets no validation shard at all: it runs label-free padding batches, the run ends normally."""
    root, manifest = tiny_shards
    few = tmp_path / "shards"
    (few / "test").mkdir(parents=True)
    os.symlink(root / "train", few / "train")
    os.symlink(root / "manifest.json", few / "manifest.json")
    one = sorted((root / "test").glob("*.tar"))[0]
    os.symlink(one, few / "test" / one.name)
    torchrun(2, *_train_args(few, tmp_path / "run"), "train.steps=2", timeout=300)
    import json
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["final_val"]["val_voxels"] > 0


@pytest.mark.parametrize("sig,workers,group", [(signal.SIGUSR2, 0, False), (signal.SIGTERM, 2, True),
                                               (signal.SIGUSR2, 2, True)])
@pytest.mark.slow
def test_preemption_signal_saves_and_exits_with_code_3(tiny_shards, tmp_path, sig, workers, group):
    """group: the signal goes to the whole process group -- the trainer and its DataLoader workers -- as Slurm
    and `kill -- -PGID` deliver it. Every case ends in a checkpoint at a step boundary and exit code 3."""
    root, _ = tiny_shards
    run = tmp_path / "pre"
    cmd = [sys.executable, "-m", "sgmagnet.cli", "train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
           "--no-progress", f"data.shards={root}", f"train.run_dir={run}", "train.steps=100000",
           "train.ckpt_every=0", "train.val_every=0", f"data.workers={workers}"]
    p = subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        t0 = time.time()
        while not (run / "log.jsonl").exists() or '"kind": "train"' not in open(run / "log.jsonl").read():
            assert p.poll() is None and time.time() - t0 < 300
            time.sleep(0.1)
        if group:
            # the tiny split is a few batches: workers end and restart every epoch, so wait for a moment when
            # they are all up (one snapshot could fall between two epochs)
            while len(subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True,
                                     text=True).stdout.split()) < workers:
                assert p.poll() is None and time.time() - t0 < 300, "the DataLoader workers never ran: nothing tested"
                time.sleep(0.05)
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        out, _ = p.communicate(timeout=300)
    finally:                     # a failed check must not leave a 100,000-step training behind
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    assert p.returncode == 3, out
    latest = open(run / "checkpoints" / "latest").read().strip()
    step = int(latest.split("_")[1])
    assert 0 < step < 100000 and "preemption signal" in out and "Traceback" not in out, out[-2000:]


@pytest.mark.dali
def test_dali_and_webdataset_loaders_agree(tiny_shards):
    need_dali()
    from sgmagnet.dali import epoch_batches_of
    from sgmagnet.data import LoaderConfig, Normaliser
    from sgmagnet.loaders import make_loader
    from sgmagnet.shards import split_urls

    root, manifest = tiny_shards
    norm, urls = Normaliser.from_manifest(str(root)), split_urls(str(root), "train")
    wds = {k: (b, i) for b in make_loader(urls, norm, LoaderConfig(batch_size=3), train=False)
           for i, k in enumerate(b["keys"])}
    seen = set()
    for rank in range(2):                                 # two ranks: disjoint halves covering the set
        for b in epoch_batches_of(urls, 3, rank, 2, norm):
            for i, k in enumerate(b["keys"]):
                assert k not in seen
                seen.add(k)
                w, j = wds[k]
                torch.testing.assert_close(b["x"][i], w["x"][j], equal_nan=True)
                torch.testing.assert_close(b["geom"][i], w["geom"][j])
                s1, s2 = b["index"][:, 0] == i, w["index"][:, 0] == j
                assert torch.equal(b["index"][s1][:, 1:], w["index"][s2][:, 1:])
                assert torch.equal(b["prof"][s1], w["prof"][s2])
                torch.testing.assert_close(b["lat"][s1], w["lat"][s2])
    assert seen == set(wds) and len(seen) == manifest.counts["train"]


@pytest.mark.dali
def test_dali_stream_resumes_exactly(tiny_shards):
    need_dali()
    from sgmagnet.dali import DaliStream
    from sgmagnet.data import LoaderConfig, Normaliser
    from sgmagnet.shards import split_urls

    root, _ = tiny_shards
    norm, urls = Normaliser.from_manifest(str(root)), split_urls(str(root), "train")
    a = DaliStream(urls, norm, LoaderConfig(batch_size=2), seed=3, epoch_batches=4)
    it = iter(a)
    [next(it) for _ in range(5)]
    state = a.state_dict()
    want = [next(it)["keys"] for _ in range(6)]
    b = DaliStream(urls, norm, LoaderConfig(batch_size=2), seed=3, epoch_batches=4)
    b.load_state_dict(state)
    it = iter(b)
    assert [next(it)["keys"] for _ in range(6)] == want and (b.epoch, b.batch) == (a.epoch, a.batch)


def test_too_few_shards_for_ranks_and_workers_is_a_clear_error(tiny_shards):
    from sgmagnet.data import Normaliser, make_pipeline
    from sgmagnet.shards import split_urls

    root, _ = tiny_shards
    urls = split_urls(str(root), "train")[:1]
    with pytest.raises(ValueError, match="cannot feed 2 ranks x 2 workers without resampling"):
        make_pipeline(urls, Normaliser.from_manifest(str(root)), 2, train=True, rank=0, world=2, workers=2)
    make_pipeline(urls, Normaliser.from_manifest(str(root)), 2, train=True, rank=0, world=2, workers=2, resample=True)


def test_launcher_detection(monkeypatch):
    from sgmagnet import dist

    assert dist.first_host("gpu[003-005,9],cpu1") == "gpu003" and dist.first_host("n7") == "n7"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(k, raising=False)
    assert dist.detect().world_size == 1
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    e = dist.detect()
    assert (e.rank, e.world_size, e.local_rank, e.launcher) == (3, 8, 1, "srun")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist.detect().launcher == "torchrun"


def test_deepspeed_batch_mismatch_is_a_clear_error(tmp_path):
    from sgmagnet.config import ConfigError, load_config
    from sgmagnet.train import deepspeed_config

    ds = tmp_path / "ds.json"
    ds.write_text('{"train_batch_size": 64, "zero_optimization": {"stage": 1}}')
    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"), [f"train.deepspeed={ds}", "optim.accum=2"])
    with pytest.raises(ConfigError, match="micro-batch x accumulation x world"):
        deepspeed_config(cfg, world=4)
    assert deepspeed_config(cfg, world=16)["gradient_accumulation_steps"] == 2


@pytest.mark.slow
def test_deepspeed_launcher_runs_the_cli(tiny_shards, tmp_path):
    """The deepspeed launcher passes --local_rank before the subcommand; the CLI must accept it."""
    root, _ = tiny_shards
    ds = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    require(os.path.exists(ds), "the deepspeed launcher")
    r = subprocess.run([ds, "--num_gpus", "2", f"--master_port={29700 + os.getpid() % 1000}", "--module",
                        "sgmagnet.cli", "train", "--config", os.path.join(ROOT, "configs", "tiny.yaml"),
                        "--deepspeed", os.path.join(ROOT, "configs", "deepspeed", "zero1.json"),
                        f"data.shards={root}", f"train.run_dir={tmp_path}", "train.steps=2", "model.name=unet"],
                       env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    import json
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["world_size"] == 2 and s["steps"] == 2 and s["final_val"]["val_voxels"] > 0


def test_one_master_port_formula_for_srun_and_submitit(monkeypatch):
    from sgmagnet import dist

    assert dist.slurm_master_port(123456) == 20000 + 123456 % 20000 == dist.slurm_master_port("123456_7")
    for k in ("MASTER_PORT", "MASTER_ADDR", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.setenv(k, "")      # recorded, so the values _slurm_rendezvous writes are undone after the test
        monkeypatch.delenv(k)          # (delenv alone records nothing for an unset variable: RANK would leak)
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[01-02]")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    dist._slurm_rendezvous()
    import os
    assert os.environ["MASTER_PORT"] == str(dist.slurm_master_port(123456)) and os.environ["RANK"] == "1"
