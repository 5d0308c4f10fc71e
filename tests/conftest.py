import os

import pytest
import torch

# Triton kernels run on CPU through the interpreter; it must be chosen before triton is imported. Forced
# (not setdefault): a preset TRITON_INTERPRET=0 would otherwise make every kernel test skip.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

TINY_ARCHIVE = dict(start="2018-10-10", days=2, region=(125.0, 145.0, -30.0, 30.0), res=0.1, seed=3)


# one world written as P-Tree (0.05 deg) and as HSD (native 2 km), only near the tracks (about 45 s)
HSD_ARCHIVE = dict(start="2018-10-10", days=1, region=(125.0, 145.0, -30.0, 30.0), res=0.05, seed=0,
                   track_corridor=32, ahi_format="both")


@pytest.fixture(scope="session")
def hsd_archive(tmp_path_factory):
    from sgmagnet.synth.archive import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("hsd_archive")
    stats = synthesize(SynthConfig(out=str(out), **HSD_ARCHIVE), log=lambda m: None)
    return out, stats


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory):
    """A 2-day synthetic archive on a 0.1 deg grid (about 10 s)."""
    from sgmagnet.synth.archive import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("archive")
    stats = synthesize(SynthConfig(out=str(out), **TINY_ARCHIVE), log=lambda m: None)
    return out, stats


def build_cfg(archive, out, **kw):
    from sgmagnet.build import BuildConfig

    d = dict(ahi=str(archive / "ahi"), cloudsat=str(archive / "cloudsat"), out=str(out), patch_size=32,
             min_labelled=16, split_days=(1, 0, 1), gap_days=0, shard_maxcount=8)
    d.update(kw)
    return BuildConfig(**d)


@pytest.fixture(scope="session")
def tiny_shards(tiny_archive, tmp_path_factory):
    from hpc.mpi_build import build

    archive, _ = tiny_archive
    out = tmp_path_factory.mktemp("shards")
    r = build(build_cfg(archive, out), log=lambda m: None)
    return out, r["manifest"]


@pytest.fixture(scope="session")
def tiny_run(tiny_shards, tmp_path_factory):
    """A run folder with a trained tiny UNet (2 steps on the tiny shards): the checkpoint that evaluation,
    prediction and the bad-input rows read. Shared: a test must not write into it."""
    from ci import TINY
    from sgmagnet.config import load_config
    from sgmagnet.train import run_training

    shards, _ = tiny_shards
    run = tmp_path_factory.mktemp("tiny_run")
    run_training(load_config(TINY, [f"data.shards={shards}", f"train.run_dir={run}", "train.steps=2",
                                    "model.name=unet", "train.progress=false"]), log=lambda m: None)
    return run


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    """DeepSpeed's CPU all-reduce keeps its buffers in /dev/shm (deepspeed_allreduce_buffer_*) and a rank that is
    killed -- as the preemption and kill-and-resume tests do -- never unlinks them: remove the ones this session
    created, so repeated runs do not fill the machine's shared memory."""
    import glob

    pattern = "/dev/shm/deepspeed_allreduce_buffer_*"
    before = set(glob.glob(pattern))
    yield
    for p in set(glob.glob(pattern)) - before:
        try:
            os.remove(p)
        except OSError:
            pass
