"""Trainer components: config round-trip, overfitting, exact resume, atomic checkpoints, CLI."""
import json
import os

import pytest
import torch

from sgmagnet import cli
from sgmagnet.config import ConfigError, dump, from_dict, load_config, to_dict
from sgmagnet.losses import sparse_ce
from sgmagnet.models import build_model
from sgmagnet.checkpoint import Checkpointer, load_common
from sgmagnet.train import Trainer
from ci import ROOT, TINY



def tiny_cfg(shards, run_dir, *over):
    return load_config(TINY, [f"data.shards={shards}", f"train.run_dir={run_dir}", *over])


def test_config_round_trip_and_errors(tmp_path):
    for name in os.listdir(os.path.join(ROOT, "configs")):
        if name.endswith(".yaml"):
            cfg = load_config(os.path.join(ROOT, "configs", name))
            p = tmp_path / name
            p.write_text(dump(cfg))
            assert load_config(str(p)) == cfg and from_dict(to_dict(cfg)) == cfg
    cfg = load_config(TINY, ["train.steps=11", "optim.betas=[0.8,0.9]", "model.options={height: static}"])
    assert cfg.train.steps == 11 and cfg.optim.betas == [0.8, 0.9] and cfg.model.options == {"height": "static"}
    for bad, msg in ((["train.stepz=3"], "unknown key 'stepz'"), (["trainer.steps=3"], "unknown section"),
                     (["train.steps=many"], "expected a number"), (["train.steps=1.5"], "expected an integer"),
                     (["train.bf16=3"], "true/false"), (["steps=3"], "section.key=value")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TINY, bad)


@pytest.mark.parametrize("name", ["sgmagnet", "unet"])
def test_tiny_model_overfits_tiny_batch(name):
    torch.manual_seed(0)
    m = build_model(name, "tiny")
    x = torch.randn(2, 16, 32, 32)
    idx = torch.stack([torch.tensor([0, 1] * 16), torch.arange(32), torch.arange(32).flip(0)], 1)
    prof = torch.zeros(32, 38, dtype=torch.uint8)
    prof[:, 10:16] = 1 + (torch.arange(32) % 3)[:, None].to(torch.uint8)   # cloudy slab, varying phase
    prof[:, 30:] = 255
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss = sparse_ce(m(x), idx, prof)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_resume_is_exact(tiny_shards, tmp_path, monkeypatch):
    root, _ = tiny_shards
    a = Trainer(tiny_cfg(root, tmp_path / "a"), log=lambda m: None)
    a.fit()
    want = _params(a.model)

    b = Trainer(tiny_cfg(root, tmp_path / "b"), log=lambda m: None)
    real = Trainer.train_step

    def crash(self, batch):
        if self.step == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(self, batch)
    monkeypatch.setattr(Trainer, "train_step", crash)
    with pytest.raises(KeyboardInterrupt):
        b.fit()
    b.close()                       # as the killed process would: its run folder's lock is released
    monkeypatch.setattr(Trainer, "train_step", real)
    assert b.ckpt.latest().endswith("step_0000003")
    c = Trainer(tiny_cfg(root, tmp_path / "b"), resume=True, log=lambda m: None)
    assert c.step == 3
    c.fit()
    got = _params(c.model)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k
    log = [json.loads(line) for line in open(tmp_path / "a" / "log.jsonl")]
    assert {r["kind"] for r in log} == {"header", "train", "val"}
    head = log[0]
    assert head["kind"] == "header" and head["step"] == 0 and head["config_hash"] and head["versions"]["torch"]
    assert head["time_iso"].endswith("+00:00")


def test_trainer_columns_path_equals_dense_path(tiny_shards, tmp_path):
    """The trainer's column path (train.columns, the default) and its dense path (decode the volume, the loss
    gathers the labelled columns) reach the same parameters and validation scores (float32 rounding; SGD,
    whose update is linear in the gradient -- Adam would amplify rounding in near-zero gradients)."""
    root, _ = tiny_shards
    runs = {}
    for flag in ("true", "false"):
        t = Trainer(tiny_cfg(root, tmp_path / flag, f"train.columns={flag}", "optim.name=sgd", "optim.lr=0.05"),
                    log=lambda m: None)
        summary = t.fit()
        runs[flag] = (_params(t.model), summary["final_val"])
    (pa, va), (pb, vb) = runs["true"], runs["false"]
    for k in pa:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-3, atol=1e-5, msg=k)
    assert abs(va["val_loss"] - vb["val_loss"]) < 1e-4


def test_checkpoint_interrupted_mid_write_keeps_previous(tmp_path, monkeypatch):
    ck = Checkpointer(str(tmp_path), keep=2)
    common = {"format": 2, "model": {"w": torch.ones(3)}, "step": 1}
    first = ck.save(1, common, {"rng": {}})
    real = torch.save
    calls = []

    def broken(obj, path):
        calls.append(path)
        if len(calls) == 2:            # state.pt written, the rank file dies half-way
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError("disk full")
        real(obj, path)
    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full.*the previous checkpoint .*step_0000001 is intact"):
        ck.save(2, {**common, "step": 2}, {"rng": {}})
    monkeypatch.undo()
    assert ck.latest() == first and load_common(str(tmp_path.parent / tmp_path.name / "step_0000001"))["step"] == 1
    assert not os.path.exists(tmp_path / "step_0000002.partial")   # a failed write cleans up after itself
    (tmp_path / "step_0000002.partial").mkdir()                    # what a process killed mid-write leaves
    for s in (3, 4, 5):
        ck.save(s, {**common, "step": s}, {"rng": {}})
    assert sorted(os.listdir(tmp_path)) == ["latest", "step_0000002.partial", "step_0000004", "step_0000005"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="state.pt"):
        load_common(str(tmp_path / "bad"))


def test_cli_train_evaluate_report(tiny_shards, tmp_path, capsys):
    root, _ = tiny_shards
    run = tmp_path / "run"
    assert cli.main(["train", "--config", TINY, f"data.shards={root}", f"train.run_dir={run}", "train.steps=2",
                     "model.name=unet"]) == 0
    assert cli.main(["evaluate", "--checkpoint", str(run), "--shards", str(root), "--split", "test",
                     "--curtains", "1"]) == 0
    out = capsys.readouterr().out
    assert "| unet |" in out and "| climatology |" in out and "| all clear |" in out
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = EventAccumulator(str(run / "tb"))
    tb.Reload()                                    # scalars without repeated prefixes, and the images
    assert "val/macro_f1" in tb.Tags()["scalars"] and {"val/confusion", "val/curtain"} <= set(tb.Tags()["images"])
    assert "| top-layer oracle (±1 km) |" in out and "micro-phase F1" in out
    for f in ("eval_test.json", "eval_test.md", "confusion_test.png", "curtain_test_0.png", "loss_curves.png",
              "reliability_test.png"):
        assert (run / f).exists(), f
    res = json.loads((run / "eval_test.json").read_text())
    assert res["metrics"]["overall"]["voxels"] == res["references"]["all_clear"]["overall"]["voxels"] > 0
    assert res["voxels"] == res["references"]["oracle"]["overall"]["voxels"] and res["samples"] > 0
    assert len(res["manifest_sha256"]) == 64 and res["verified"] and res["checksum_failures"] == []
    oracle, clim = res["references"]["oracle"]["overall"], res["references"]["climatology"]["overall"]
    assert oracle["macro"]["f1"] > clim["macro"]["f1"]          # knowing the top beats the climatology
    cal = res["calibration"]
    assert 0 <= cal["ece_mean"] <= 1 and sum(cal["reliability"]["clear"]["count"]) == res["voxels"]
    assert cli.main(["evaluate", "--checkpoint", str(run), "--shards", str(root), "--split", "test", "--curtains", "0",
                     "--decision", "prior", "--out", str(tmp_path / "prior")]) == 0
    d = json.loads((tmp_path / "prior" / "eval_test.json").read_text())["decision"]
    assert d["rule"] == "prior" and d["alpha"] in (0.0, 0.25, 0.5, 0.75, 1.0) and len(d["val_macro_f1"]) == 5
    assert d["val_macro_f1"][str(d["alpha"])] == max(d["val_macro_f1"].values())
    assert cli.main(["report", str(run / "eval_test.json"), "--out", str(tmp_path / "t.md")]) == 0
    assert "| unet |" in (tmp_path / "t.md").read_text()
    # bad input: exit 2 with a one-line reason
    for argv in (["train", "--config", TINY, "train.nosuch=1"], ["train", "--config", str(tmp_path / "none.yaml")],
                 ["evaluate", "--checkpoint", str(tmp_path / "x.pt"), "--shards", str(root)],
                 ["train", "--config", TINY, "--deepspeed", str(tmp_path / "ds.json")]):
        assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "none.yaml" in err and "x.pt" in err and "ds.json" in err


def test_config_names_match_the_model_registry():
    from sgmagnet.config import MODEL_NAMES, MODEL_SIZES
    from sgmagnet.models import MODELS

    assert set(MODEL_NAMES) == set(MODELS)
    assert all(set(MODEL_SIZES) == set(cls.SIZES) for cls in MODELS.values())


@pytest.mark.parametrize("override,msg", [
    ("train.steps=0", "train.steps: must be >= 1"), ("optim.lr=.nan", "finite"), ("optim.betas=[0.9, 1.5]", "pair"),
    ("optim.accum=0", "optim.accum"), ("train.keep_checkpoints=0", "keep_checkpoints"), ("loss.gamma=-1", "loss.gamma"),
    ("optim.min_lr_ratio=2", "min_lr_ratio"), ("data.loader=fast", "data.loader"), ("loss.weights=[0,0,0,0]", "not all 0"),
    ("train.seed=1.5", "expected an integer"), ("train.bf16=1", "true/false"), ("model.options=3", "mapping")])
def test_every_config_value_is_checked(override, msg):
    from sgmagnet.config import ConfigError, load_config, validate

    with pytest.raises(ConfigError, match=msg.replace("[", r"\[")):
        load_config(None, [override])
    cfg = load_config(None, [])
    validate(cfg)                                 # the defaults are valid; code-built configs are checked too
    cfg.train.steps = -3
    with pytest.raises(ConfigError, match="train.steps"):
        validate(cfg)


def test_best_checkpoint_and_patience(tiny_shards, tmp_path, monkeypatch):
    """checkpoints/best holds the weights of the best validation macro F1 (model selection by validation);
    train.patience stops after that many validations without a better one; a resumed run keeps the best."""
    from sgmagnet.checkpoint import load_common

    root, _ = tiny_shards
    scores = iter([0.30, 0.50, 0.40, 0.45, 0.20, 0.10])
    real = Trainer.validate

    def fake(self):
        rec = real(self)
        rec["val_macro_f1"] = next(scores)
        return rec
    monkeypatch.setattr(Trainer, "validate", fake)
    t = Trainer(tiny_cfg(root, tmp_path / "r", "train.steps=30", "train.val_every=2", "train.ckpt_every=2",
                         "train.patience=2"), log=lambda m: None)
    summary = t.fit()
    assert summary["steps"] == 8                      # best at step 4, then 2 validations (6, 8) without gain
    assert summary["best"]["step"] == 4 and summary["best"]["val_macro_f1"] == 0.50
    best = load_common(str(tmp_path / "r" / "checkpoints" / "best"))
    assert best["step"] == 4 and "optimizer" not in best
    assert json.load(open(tmp_path / "r" / "checkpoints" / "best" / "best.json"))["step"] == 4
    t.close()
    again = Trainer(tiny_cfg(root, tmp_path / "r", "train.steps=30", "train.val_every=2", "train.patience=2"),
                    resume=True, log=lambda m: None)
    assert again.best["step"] == 4 and again.plateau()


@pytest.mark.parametrize("overrides,msg", [
    (["loss.aux_weight=0.5", "model.name=unet"], "need model.name=sgmagnet"),
    (["loss.aux_weight=0.5", "train.columns=false"], "train.columns=true"),
    (["loss.aux_weight=0.5", "model.options={scales: [1]}"], "coarse scale"),
    (["model.options={aux: true}"], "loss.aux_weight > 0"),
    (["loss.aux_weight=-1"], "loss.aux_weight: must be >= 0")])
def test_aux_loss_config_combinations_are_checked(overrides, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(None, overrides)
    cfg = load_config(None, [])
    cfg.loss.aux_weight = 0.5
    cfg.model.name = "segnet"
    from sgmagnet.config import validate
    with pytest.raises(ConfigError, match="sgmagnet"):   # code-built configs get the same check
        validate(cfg)


def test_aux_losses_train_the_coarse_heads(tiny_shards, tmp_path):
    """loss.aux_weight > 0 builds SGMAGNet's coarse-scale heads, adds their loss on pooled labels (so the
    training loss and the parameters differ from aux_weight=0 from the first step), the checkpoint loads
    for evaluation, and aux_weight=0 trains exactly as before (no heads, same parameters as the default)."""
    from sgmagnet.runtime import load_model_from_checkpoint

    root, _ = tiny_shards
    runs, init = {}, {}
    for w in ("0.0", "1.0"):
        t = Trainer(tiny_cfg(root, tmp_path / w, f"loss.aux_weight={w}", "train.steps=3", "train.val_every=0",
                             "optim.name=sgd", "optim.lr=0.05"), log=lambda m: None)   # SGD: no Adam rounding noise
        init[w] = _params(t.model)
        t.fit()
        runs[w] = (t, _params(t.model))
    t0, p0 = runs["0.0"]
    t1, p1 = runs["1.0"]
    assert all(torch.equal(init["0.0"][k], init["1.0"][k]) for k in p0)   # same start (heads built last) ...
    assert t0.model.aux is None and t1.model.aux is not None
    assert set(p1) - set(p0) and all(k.startswith("aux.") for k in set(p1) - set(p0))
    assert max((p0[k] - p1[k]).abs().max().item() for k in p0) > 1e-3     # ... the aux loss moved shared weights
    assert any(p1[k].abs().sum() > 0 and k.startswith("aux.") for k in p1)
    model, _ = load_model_from_checkpoint(str(tmp_path / "1.0"), "cpu")
    assert model.aux is not None


def test_trainer_needs_the_process_group_run_training_starts(tiny_shards, tmp_path):
    """The process group is started once, by run_training (CLI, Slurm, study): a Trainer built directly for 2
    ranks or for DeepSpeed without one is refused before it touches the run folder."""
    from sgmagnet.dist import DistEnv

    root, _ = tiny_shards
    with pytest.raises(RuntimeError, match="run_training"):
        Trainer(tiny_cfg(root, tmp_path / "two"), env=DistEnv(rank=0, world_size=2, launcher="torchrun"))
    ds = os.path.join(ROOT, "configs", "deepspeed", "zero1.json")
    with pytest.raises(RuntimeError, match="DeepSpeed"):
        Trainer(tiny_cfg(root, tmp_path / "ds", f"train.deepspeed={ds}"))
    assert not (tmp_path / "two").exists() and not (tmp_path / "ds").exists()
