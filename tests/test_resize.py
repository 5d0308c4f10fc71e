"""Resume on another world size (train/state.py): the data layout's guarantee on the real training streams,
the refusals, old checkpoints, and the loss trajectory of resharded DDP / ZeRO-1 / ZeRO-2 runs against the
uninterrupted run on the same global batches."""
import json
import os
import shutil

import pytest
import torch

from ci import ROOT, TINY
from sgmagnet.config import ConfigError
from sgmagnet.train.state import DataLayout

from test_distributed import torchrun


def test_layout_shares_and_refusals():
    L = DataLayout(streams=2, stream_batch=2, per_step=1)
    assert L.global_batch == 4
    assert L.share(0, 1) == ([0, 1], 1, 0)
    assert L.share(1, 2) == ([1], 1, 0)
    assert L.share(3, 4) == ([1], 2, 1)
    L.check(1, 2, 2, "x")
    L.check(4, 1, 1, "x")
    with pytest.raises(ConfigError, match=r"global batch 4 .* this run's is 2 .* data.batch_size=2 optim.accum=2 on 1"):
        L.check(1, 2, 1, "x")
    with pytest.raises(ConfigError, match="need data.batch_size=2 optim.accum=2 .* other split"):
        L.check(1, 1, 4, "x")
    with pytest.raises(ConfigError, match="3 rank\\(s\\) can share them only when"):
        L.check(3, 1, 1, "x")
    with pytest.raises(ConfigError, match="only when"):               # 8 ranks would split 2-sample batches in 4
        L.check(8, 1, 1, "x")


def _stream(shards, layout, rank, world):
    from sgmagnet.data import Normaliser
    from sgmagnet.loaders import StreamShare, loader
    from sgmagnet.shards import split_urls

    urls = split_urls(str(shards), "train")
    norm = Normaliser.from_manifest(str(shards))
    mine, k, j = layout.share(rank, world)
    return StreamShare({v: loader("train", urls, norm, batch_size=layout.stream_batch, seed=5, rank=v,
                                  world=layout.streams, shuffle_buffer=8, resample=layout.streams > 1,
                                  epoch_batches=5) for v in mine}, k, j)


def _global_batches(shares, accum, steps):
    """The sample keys of each step's global batch, as lists in rank order (what the ranks would train on)."""
    its = [iter(s) for s in shares]
    out = []
    for _ in range(steps):
        out.append(sorted(k for it in its for _ in range(accum) for k in next(it)["keys"]))
    for it in its:
        it.close()
    return out


@pytest.mark.parametrize("start,to", [(2, 1), (2, 4), (1, 2)])
def test_every_global_batch_survives_a_resize(tiny_shards, start, to):
    """The real training streams (webdataset, resampled across 2 streams; 1 stream: plain epochs): run `start`
    ranks 7 steps, take each rank's positions, then continue on `to` ranks: steps 8-14 are the same global
    batches, sample for sample, as those of the uninterrupted run (across the 5-batch epoch boundaries)."""
    shards, _ = tiny_shards
    L = DataLayout(streams=start, stream_batch=2, per_step=1)
    accum = {(2, 1): 2}.get((start, to), 1)
    batch = L.stream_batch * L.streams // (to * accum)
    L.check(to, batch, accum, "test")
    want = _global_batches([_stream(shards, L, r, start) for r in range(start)], 1, 14)
    before = [_stream(shards, L, r, start) for r in range(start)]
    seen = _global_batches(before, 1, 7)
    assert seen == want[:7]
    pos = {}
    for s in before:
        pos.update(s.state_dict()["streams"])
    after = [_stream(shards, L, r, to) for r in range(to)]
    for s in after:
        s.load_state_dict({"streams": pos})
    got = _global_batches(after, accum, 7)
    assert got == want[7:], "a global batch after the resize differs from the uninterrupted run's"
    assert all(len(b) == L.global_batch for b in got)


def test_a_short_batch_split_gives_a_blank_sample_without_labels():
    from sgmagnet.loaders import slice_batch

    b = {"x": torch.randn(1, 16, 4, 4), "geom": torch.randn(1, 2, 4, 4),
         "index": torch.tensor([[0, 1, 2], [0, 3, 3]]), "prof": torch.zeros(2, 38, dtype=torch.uint8),
         "lat": torch.zeros(2), "lon": torch.zeros(2), "soz": torch.zeros(2), "ctype": torch.zeros(2, dtype=torch.uint8),
         "keys": ["a"]}
    a, z = slice_batch(b, 0, 2), slice_batch(b, 1, 2)
    assert a["keys"] == ["a"] and len(a["index"]) == 2 and torch.equal(a["x"], b["x"])
    assert z["keys"] == [] and z["x"].shape == (1, 16, 4, 4) and not z["x"].any()
    assert len(z["index"]) == len(z["prof"]) == len(z["lat"]) == 0


def _train(shards, run, *over, resume=False):
    from sgmagnet.config import load_config
    from sgmagnet.train import run_training

    cfg = load_config(TINY, [f"data.shards={shards}", f"train.run_dir={run}", "model.name=unet", "train.val_every=0",
                             "data.val_split=", "train.log_every=1", "train.ckpt_every=2", "train.keep_checkpoints=5",
                             *over])
    run_training(cfg, resume=resume, log=lambda m: None)


def losses(run) -> dict:
    with open(os.path.join(run, "log.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in recs if r.get("kind") == "train"}


def rewind(run, step: int):
    """The run folder as it was when checkpoint `step` was the latest (later checkpoints removed)."""
    ck = os.path.join(run, "checkpoints")
    for d in os.listdir(ck):
        if d.startswith("step_") and int(d[5:]) > step:
            shutil.rmtree(os.path.join(ck, d))
    with open(os.path.join(ck, "latest"), "w") as f:
        f.write(f"step_{step:07d}\n")


def test_checkpoint_of_before_layouts_resumes(tiny_shards, tmp_path):
    """A checkpoint written before data layouts were recorded (no data_layout; each rank file holds its one
    stream's (epoch, batch)) resumes and continues exactly as the uninterrupted run."""
    shards, _ = tiny_shards
    _train(shards, tmp_path / "full", "train.steps=4")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "full", old)
    rewind(old, 2)
    ck = old / "checkpoints" / "step_0000002"
    st = torch.load(ck / "state.pt", weights_only=True)
    del st["data_layout"]
    torch.save(st, ck / "state.pt")
    rs = torch.load(ck / "rank_00000.pt", weights_only=True)
    rs["data"] = rs["data"]["streams"][0]
    assert set(rs["data"]) == {"epoch", "batch"}
    torch.save(rs, ck / "rank_00000.pt")
    _train(shards, old, "train.steps=4", resume=True)
    want = torch.load(tmp_path / "full" / "checkpoints" / "step_0000004" / "state.pt", weights_only=True)["model"]
    got = torch.load(old / "checkpoints" / "step_0000004" / "state.pt", weights_only=True)["model"]
    for k in want:
        assert torch.equal(got[k], want[k]), k


def _args(shards, run, *extra):
    return ["-m", "sgmagnet.cli", "train", "--config", TINY, "--no-progress", *extra, f"data.shards={shards}",
            f"train.run_dir={run}", "model.name=unet", "train.val_every=0", "data.val_split=", "train.log_every=1",
            "train.steps=5", "train.ckpt_every=2", "train.keep_checkpoints=5"]


RESIZES = {2: [(1, ["optim.accum=2"]), (4, ["data.batch_size=1"])], 1: [(2, ["data.batch_size=1"])]}
# ZeRO-1 and ZeRO-2 share DeepSpeed's partitioning and universal-checkpoint code (stage_1_and_2.py): ZeRO-2
# runs every resize, ZeRO-1 the two that merge and split its optimizer partitions from 2 ranks
CASES = [("", 2), ("", 1), ("zero2", 2), ("zero2", 1), ("zero1", 2)]


@pytest.mark.slow
@pytest.mark.parametrize("ds,start", CASES, ids=[f"{d or 'ddp'}-from{s}" for d, s in CASES])
def test_resharded_resume_follows_the_same_trajectory(tiny_shards, tmp_path, ds, start):
    """An uninterrupted run of `start` ranks (batch 2 each, checkpoints every 2 steps) against the same run resumed
    from its step-2 checkpoint on other world sizes with the same global batch: the losses of steps 3-5 agree
    within 1e-5 (step 3 tests the weights, steps 4-5 the optimizer moments, the schedule and the data position).
    Not the weights element by element: AdamW turns the rounding noise of a near-zero gradient (a different
    summation order on another world size) into an update of up to lr. DeepSpeed reshards through its
    universal checkpoint."""
    shards, _ = tiny_shards
    extra = ["--deepspeed", os.path.join(ROOT, "configs", "deepspeed", f"{ds}.json")] if ds else []
    full = tmp_path / "full"
    torchrun(start, *_args(shards, full, *extra))
    want = losses(full)
    for world, over in RESIZES[start]:
        run = tmp_path / f"to{world}"
        shutil.copytree(full, run)
        rewind(run, 2)
        r = torchrun(world, *_args(shards, run, *extra), *over, "--resume")
        assert f"world_size {start} -> {world}" in r.stdout, r.stdout[-2000:]
        got = losses(run)
        for step in (3, 4, 5):
            assert abs(got[step] - want[step]) <= 1e-5, f"{start} -> {world} ranks: step {step} loss {got[step]} vs {want[step]}"
        if ds:
            assert (run / "checkpoints" / "step_0000002" / "universal").is_dir()
        with open(run / "log.jsonl") as f:
            rec = [json.loads(line) for line in f if '"resume"' in line][-1]
        assert rec["changes"]["world_size"] == [start, world] and rec["data_layout"]["streams"] == start
