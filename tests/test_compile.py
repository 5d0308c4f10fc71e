"""The compiled training step (train.compile, sgmagnet/train/compiled.py): the padded static index changes no
loss or gradient, the switch falls back with one line where it cannot hold, and compiled training gives the
eager losses over 20 steps on CPU (CUDA graphs: make gpu-check)."""
import json

import pytest
import torch

from sgmagnet.config import ConfigError, load_config
from sgmagnet.grid import IGNORE
from sgmagnet.losses import SparseLoss, compact_view
from sgmagnet.models import build_model
from sgmagnet.runtime import Runtime
from sgmagnet.train import Trainer
from sgmagnet.train.compiled import pad_columns, resolve
from ci import TINY


def _cfg(*over):
    return load_config(TINY, list(over))


def test_pad_columns_shapes_and_invalid_rows():
    index = torch.tensor([[0, 1, 2], [1, 3, 3], [1, 9, 0]])            # the last row is outside a 4 x 4 patch
    prof = torch.tensor([[1, 2, IGNORE], [0, 3, 3], [2, 2, IGNORE]], dtype=torch.uint8)
    idx, p, bad = pad_columns(index, prof, 8, (2, 4, 4))
    assert idx.shape == (8, 3) and p.shape == (8, 3) and bad == 2      # two labelled voxels in the bad row
    assert (p[2:] == IGNORE).all() and idx[:2].tolist() == index[:2].tolist()
    assert ((idx >= 0) & (idx < torch.tensor([2, 4, 4]))).all()
    idx, p, bad = pad_columns(torch.zeros(9, 3, dtype=torch.long), torch.zeros(9, 3, dtype=torch.uint8), 8, (2, 4, 4))
    assert idx.shape[0] == 16 and bad == 0                             # the next multiple of the static N
    idx, p, _ = pad_columns(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3, dtype=torch.uint8), 8, (2, 4, 4))
    assert idx.shape[0] == 8 and (p == IGNORE).all()


@pytest.mark.parametrize("name", ["sgmagnet", "unet"])
def test_padding_changes_no_loss_or_gradient(name):
    torch.manual_seed(0)
    m = build_model(name, "tiny")
    x, geom = torch.randn(2, 16, 32, 32), torch.rand(2, 2, 32, 32) * 60
    index = torch.stack([torch.tensor([0, 1] * 16), torch.arange(32), torch.arange(32).flip(0)], 1)
    prof = torch.randint(0, 4, (32, 38), dtype=torch.uint8)
    prof[::5, 10:] = IGNORE
    loss_fn = SparseLoss([0.5, 1.0, 2.0, 1.5])
    out = []
    for idx, p in ((index, prof), pad_columns(index, prof, 40, (2, 32, 32))[:2]):
        m.zero_grad()
        loss = loss_fn(m(x, geom, columns=idx), None, p)
        loss.backward()
        out.append((loss.detach(), [q.grad.clone() for q in m.parameters() if q.grad is not None]))
    assert out[1][0] == pytest.approx(float(out[0][0]), rel=1e-6)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_compile_switch_resolves_and_falls_back_with_a_note():
    cpu = Runtime.resolve("cpu")
    assert resolve(_cfg(), cpu) == ("none", None)
    assert resolve(_cfg("train.compile=default"), cpu) == ("default", None)
    mode, note = resolve(_cfg("train.compile=graphs"), cpu)
    assert mode == "default" and "CUDA graphs need a CUDA device" in note and "\n" not in note
    for over, why in ((["train.columns=false"], "dense path"), (["loss.aux_weight=0.1"], "auxiliary"),
                      (["train.deepspeed=configs/deepspeed/zero1.json"], "DeepSpeed")):
        mode, note = resolve(_cfg("train.compile=default", *over), cpu)
        assert mode == "none" and why in note
    with pytest.raises(ConfigError, match="train.compile: must be one of none, default, graphs"):
        _cfg("train.compile=fast")


def _losses(run):
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_shards, tmp_path):
    """20 steps of the same run, eager and through torch.compile (CPU: Inductor's C++ kernels): the losses
    agree within float tolerance at every step, and both runs finish."""
    root, _ = tiny_shards
    got = {}
    for mode in ("none", "default"):
        run = tmp_path / mode
        cfg = load_config(TINY, [f"data.shards={root}", f"train.run_dir={run}", "train.steps=20", "train.log_every=1",
                                 "train.val_every=0", "train.ckpt_every=0", "data.val_split=", f"train.compile={mode}",
                                 "model.name=sgmagnet", "train.threads=1"])
        notes = []
        t = Trainer(cfg, log=notes.append)
        try:
            t.fit()
        finally:
            t.close()
        got[mode] = _losses(run)
        if mode == "default":
            assert any("compiled (default" in n for n in notes), notes
    assert len(got["none"]) == len(got["default"]) == 20
    torch.testing.assert_close(torch.tensor(got["default"]), torch.tensor(got["none"]), rtol=2e-4, atol=1e-5)


def test_profile_writes_trace_and_summary(tiny_shards, tmp_path, capsys):
    """`sgmagnet train --profile 2:2`: a Chrome trace and a summary of steps 2-3 in the run folder (CPU: host
    operators; on a GPU also kernels, launches per step and the busy fraction); a bad spec is exit 2, one line."""
    from sgmagnet import cli

    root, _ = tiny_shards
    run = tmp_path / "run"
    code = cli.main(["train", "--config", TINY, f"data.shards={root}", f"train.run_dir={run}", "train.steps=4",
                     "train.val_every=0", "--no-progress", "--profile", "2:2"])
    assert code == 0
    trace = json.loads((run / "profile" / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"forward", "loss", "backward", "optimizer"} <= names
    s = json.loads((run / "profile" / "summary.json").read_text())
    assert s["steps"] == 2 and s["wall_ms_per_step"] > 0 and s["host_ops_per_step"] > 0 and s["top"]
    assert set(s["host_ms_per_step"]) == {"forward", "loss", "backward", "optimizer"}
    assert "host operators per step" in (run / "profile" / "summary.txt").read_text()
    capsys.readouterr()
    assert cli.main(["train", "--config", TINY, f"data.shards={root}", f"train.run_dir={tmp_path / 'b'}",
                     "--profile", "0:2"]) == 2
    err = capsys.readouterr().err
    assert "train.profile" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
