"""Run configuration: YAML files mapped onto dataclasses, overridable with `section.key=value`.

    cfg = load_config("configs/demo_sgmagnet.yaml", ["train.steps=50", "model.name=unet"])

Unknown sections or keys are errors naming the key (a typo never silently does nothing). Values given
on the command line are parsed as YAML scalars/lists (`optim.betas=[0.9,0.99]`, `train.bf16=true`).
`to_dict` / `from_dict` round-trip exactly; the resolved config is saved in every run folder and
checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml


@dataclass
class DataConfig:
    shards: str = "demo_out/shards"   # folder made by `sgmagnet build` (with manifest.json)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 8               # per process
    workers: int = 0                  # DataLoader worker processes (0 = read in the training process)
    shuffle_buffer: int = 64          # samples in the shuffle buffer
    val_batches: int = 0              # cap on validation batches (0 = the whole split)
    loader: str = "torch"             # torch (WebDataset + DataLoader workers) | dali | auto (dali on CUDA)
    resample: bool = False            # endless resampled shards + fixed epoch length (forced on across ranks)
    epoch_batches: int = 0            # batches per rank per epoch with resampling (0 = train samples / global batch)


@dataclass
class ModelConfig:
    name: str = "sgmagnet"            # sgmagnet | unet | unet3d | segnet | transformer
    size: str = "demo"                # tiny | demo | paper
    options: dict = field(default_factory=dict)   # constructor overrides, e.g. {height: static}


@dataclass
class OptimConfig:
    name: str = "adamw"               # adam | adamw | sgd (momentum = betas[0])
    lr: float = 2e-3
    weight_decay: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    schedule: str = "cosine"          # cosine | constant (both after a linear warm-up)
    warmup_steps: int = 20
    min_lr_ratio: float = 0.05
    clip: float = 1.0                 # max gradient norm (0 = no clipping)
    accum: int = 1                    # micro-batches per optimizer step (gradient accumulation)


@dataclass
class LossConfig:
    weights: object = "manifest"      # manifest (w ~ freq^-power of the training split, mean 1) | none | [w0,w1,w2,w3]
    power: float = 0.5
    gamma: float = 0.0                # focal-loss exponent (0 = the normative cross-entropy)
    impl: str = "auto"                # auto | torch | triton  (auto = triton on CUDA, torch elsewhere)
    form: str = "gated"               # gated (phase-gated softmax, normative) | softmax (plain 4-way: ablation)


@dataclass
class TrainConfig:
    run_dir: str = "runs/demo"
    steps: int = 200
    seed: int = 0
    bf16: bool = False                # autocast to bfloat16
    log_every: int = 10
    val_every: int = 100              # 0 = only at the end
    ckpt_every: int = 100             # 0 = only at the end
    keep_checkpoints: int = 2
    threads: int = 0                  # torch intra-op threads (0 = torch's default)
    device: str = "auto"              # auto | cpu | cuda
    progress: bool = True
    deepspeed: str = ""               # DeepSpeed JSON (configs/deepspeed/); empty = plain loop (DDP across ranks)
    init_from: str = ""               # start from these weights only (e.g. after changing the world size)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    pass


def _section(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            raise ConfigError(f"{where}: unknown key {k!r} (known: {', '.join(names)})")
    out = {}
    for k, v in d.items():
        kind = names[k].type          # annotation string (from __future__ import annotations)
        if kind == "bool" and not isinstance(v, bool):
            raise ConfigError(f"{where}.{k}: expected true/false, got {v!r}")
        if kind in ("int", "float"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{where}.{k}: expected a number, got {v!r}")
            if kind == "int" and not float(v).is_integer():
                raise ConfigError(f"{where}.{k}: expected an integer, got {v!r}")
            v = int(v) if kind == "int" else float(v)
        if kind == "str" and not isinstance(v, str):
            raise ConfigError(f"{where}.{k}: expected a string, got {v!r}")
        out[k] = v
    return cls(**out)


def from_dict(d: dict, where: str = "config") -> Config:
    d = d or {}
    secs = {f.name: f.type for f in dataclasses.fields(Config)}
    for k in d:
        if k not in secs:
            raise ConfigError(f"{where}: unknown section {k!r} (known: {', '.join(secs)})")
    classes = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "loss": LossConfig, "train": TrainConfig}
    return Config(**{k: _section(classes[k], d.get(k, {}), f"{where}: {k}") for k in classes})


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    for o in overrides or []:
        if "=" not in o or "." not in o.split("=", 1)[0]:
            raise ConfigError(f"override {o!r}: expected section.key=value (e.g. train.steps=100)")
        key, val = o.split("=", 1)
        parts = key.split(".")
        node = d
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {o!r}: {p} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(val) if val.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {o!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return d


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    d = {}
    if path:
        try:
            with open(path) as f:
                d = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return from_dict(apply_overrides(d, overrides), where=path or "config")


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
