"""Run configuration: YAML files mapped onto dataclasses, overridable with `section.key=value`.

    cfg = load_config("configs/demo_sgmagnet.yaml", ["train.steps=50", "model.name=unet"])

Unknown sections or keys are errors naming the key (a typo never silently does nothing). Values given
on the command line are parsed as YAML scalars/lists (`optim.betas=[0.9,0.99]`, `train.bf16=true`).
`to_dict` / `from_dict` round-trip exactly; the resolved config is saved in every run folder and
checkpoint.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import yaml


MODEL_NAMES = ("sgmagnet", "sgmagnet_v1", "unet", "unet3d", "segnet", "transformer")   # = sgmagnet.models.MODELS (tested)
MODEL_SIZES = ("tiny", "demo", "paper")


def rule(default=None, *, factory=None, **check):
    """A config field with its checks (validated in `validate`, the one place config values are checked):
    ge/gt/le/lt bounds, finite, choices, nonempty, pair (a list of 2 numbers in [0, 1)), weights."""
    if factory is not None:
        return field(default_factory=factory, metadata=check)
    return field(default=default, metadata=check)


@dataclass
class DataConfig:
    shards: str = rule("demo_out/shards", nonempty=True)  # folder made by `sgmagnet build` (with manifest.json)
    train_split: str = rule("train", nonempty=True)
    val_split: str = "val"            # "" = no validation (explicitly switched off); else the split must hold shards
    batch_size: int = rule(8, ge=1)   # per process
    workers: int = rule(0, ge=0)      # DataLoader worker processes (0 = read in the training process)
    shuffle_buffer: int = rule(64, ge=0)   # samples in the shuffle buffer
    val_batches: int = rule(0, ge=0)  # cap on validation batches (0 = the whole split)
    loader: str = rule("torch", choices=("torch", "dali", "auto"))   # auto = dali on CUDA
    resample: bool = False            # endless resampled shards + fixed epoch length (forced on across ranks)
    epoch_batches: int = rule(0, ge=0)   # batches per rank per epoch with resampling (0 = train samples / global batch)


@dataclass
class ModelConfig:
    name: str = rule("sgmagnet", choices=MODEL_NAMES)
    size: str = rule("demo", choices=MODEL_SIZES)
    bands: str = rule("all", choices=("all", "ir"))   # ir: B07-B16 only, no solar zenith (a day-and-night model)
    options: dict = field(default_factory=dict)   # constructor overrides, e.g. {height: static}


@dataclass
class OptimConfig:
    name: str = rule("adamw", choices=("adam", "adamw", "sgd"))   # sgd: momentum = betas[0]
    lr: float = rule(2e-3, gt=0, finite=True)
    weight_decay: float = rule(1e-4, ge=0, finite=True)
    betas: list = rule(factory=lambda: [0.9, 0.999], pair=True)
    schedule: str = rule("cosine", choices=("cosine", "constant"))   # both after a linear warm-up
    warmup_steps: int = rule(20, ge=0)
    min_lr_ratio: float = rule(0.05, ge=0, le=1)
    clip: float = rule(1.0, ge=0, finite=True)   # max gradient norm (0 = no clipping)
    accum: int = rule(1, ge=1)        # micro-batches per optimizer step (gradient accumulation)


@dataclass
class LossConfig:
    weights: object = rule("manifest", weights=True)   # manifest (w ~ freq^-power, mean 1) | none | [w0,w1,w2,w3]
    power: float = rule(0.5, ge=0, finite=True)
    gamma: float = rule(0.0, ge=0, finite=True)   # focal-loss exponent (0 = the normative cross-entropy)
    impl: str = rule("auto", choices=("auto", "torch", "triton"))   # auto = triton on CUDA, torch elsewhere
    form: str = rule("gated", choices=("gated", "softmax"))   # gated (normative) | softmax (plain 4-way: ablation)
    aux_weight: float = rule(0.0, ge=0, finite=True)   # SGMAGNet: auxiliary losses at scales 2, 4 on vertically pooled labels


@dataclass
class TrainConfig:
    run_dir: str = rule("runs/demo", nonempty=True)
    steps: int = rule(200, ge=1)
    seed: int = rule(0, ge=0)
    bf16: bool = False                # autocast to bfloat16
    compile: str = rule("none", choices=("none", "default", "graphs"))   # column-path step: torch.compile; graphs = + CUDA graphs (train/compiled.py)
    profile: str = ""                 # START:STEPS: torch.profiler trace + summary of those steps in run_dir/profile/
    static_columns: int = rule(0, ge=0)   # compiled step: columns per patch the index is padded to (0 = 2 x patch side)
    columns: bool = True              # decode only the labelled columns (model(..., columns=index)); false = dense volume, then gather
    log_every: int = rule(10, ge=1)
    val_every: int = rule(100, ge=0)  # 0 = only at the end
    ckpt_every: int = rule(100, ge=0)   # 0 = only at the end
    patience: int = rule(0, ge=0)     # stop after this many validations without a better macro F1 (0 = never)
    keep_checkpoints: int = rule(2, ge=1)
    threads: int = rule(0, ge=0)      # torch intra-op threads (0 = torch's default)
    device: str = rule("auto", choices=("auto", "cpu", "cuda"))
    progress: bool = True
    deepspeed: str = ""               # DeepSpeed JSON (configs/deepspeed/); empty = plain loop (DDP across ranks)
    init_from: str = ""               # start a new run from these weights only (e.g. another model setup)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    pass


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_value(where: str, v, kind: str, check: dict):
    """Type (from the annotation) then the field's rules; returns the value in its declared type."""
    if kind == "bool" and not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true/false, got {v!r}")
    if kind in ("int", "float"):
        if not _is_number(v):
            raise ConfigError(f"{where}: expected a number, got {v!r}")
        if kind == "int" and not (math.isfinite(v) and float(v).is_integer()):
            raise ConfigError(f"{where}: expected an integer, got {v!r}")
        v = int(v) if kind == "int" else float(v)
    if kind == "str" and not isinstance(v, str):
        raise ConfigError(f"{where}: expected a string, got {v!r}")
    if kind == "dict" and not isinstance(v, dict):
        raise ConfigError(f"{where}: expected a mapping, got {v!r}")
    if kind == "list" and not isinstance(v, list):
        raise ConfigError(f"{where}: expected a list, got {v!r}")
    if check.get("finite") and not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    for op, test, word in (("ge", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                           ("le", lambda a, b: a <= b, "<="), ("lt", lambda a, b: a < b, "<")):
        if op in check and not test(v, check[op]):
            raise ConfigError(f"{where}: must be {word} {check[op]}, got {v!r}")
    if "choices" in check and v not in check["choices"]:
        raise ConfigError(f"{where}: must be one of {', '.join(check['choices'])}, got {v!r}")
    if check.get("nonempty") and not v.strip():
        raise ConfigError(f"{where}: must not be empty")
    if check.get("pair") and not (len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v)):
        raise ConfigError(f"{where}: expected a pair [b1, b2] of numbers in [0, 1), got {v!r}")
    if check.get("weights"):
        ok = v in ("manifest", "none") or (isinstance(v, list) and len(v) == 4 and all(
            _is_number(w) and math.isfinite(w) and w >= 0 for w in v) and any(w > 0 for w in v))
        if not ok:
            raise ConfigError(f"{where}: must be manifest, none or a list of 4 finite non-negative numbers "
                              f"(not all 0), got {v!r}")
        if isinstance(v, list):
            v = [float(w) for w in v]
    return [float(b) for b in v] if check.get("pair") else v


def _section(cls, d: dict, where: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in d:
        if k not in names:
            raise ConfigError(f"{where}: unknown key {k!r} (known: {', '.join(names)})")
    return cls(**{k: _check_value(f"{where}.{k}", v, names[k].type, names[k].metadata) for k, v in d.items()})


def validate(cfg: "Config") -> "Config":
    """Check every value of a Config built in code (from_dict checks what comes from YAML/overrides)."""
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        for f in dataclasses.fields(obj):
            setattr(obj, f.name, _check_value(f"config: {sec.name}.{f.name}", getattr(obj, f.name), f.type, f.metadata))
    return check_combinations(cfg)


def check_combinations(cfg: "Config", where: str = "config") -> "Config":
    """The checks that involve more than one value."""
    opts = cfg.model.options
    prof = cfg.train.profile
    if prof and not (len(prof.split(":")) == 2 and all(v.isdigit() and int(v) >= 1 for v in prof.split(":"))):
        raise ConfigError(f"{where}: train.profile: expected START:STEPS with both >= 1 (e.g. 10:5), got {prof!r}")
    if cfg.loss.aux_weight > 0:
        if cfg.model.name != "sgmagnet":
            raise ConfigError(f"{where}: loss.aux_weight: auxiliary losses need model.name=sgmagnet, got {cfg.model.name}")
        if not cfg.train.columns:
            raise ConfigError(f"{where}: loss.aux_weight: auxiliary losses need train.columns=true")
        if tuple(opts.get("scales", (1, 2, 4))) == (1,):
            raise ConfigError(f"{where}: loss.aux_weight: auxiliary losses need a coarse scale, got model.options.scales [1]")
    if opts.get("aux") and not cfg.loss.aux_weight > 0:
        raise ConfigError(f"{where}: model.options.aux: aux heads are trained only with loss.aux_weight > 0 (set it)")
    return cfg


def from_dict(d: dict, where: str = "config") -> Config:
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(d).__name__}")
    secs = {f.name: f.type for f in dataclasses.fields(Config)}
    for k in d:
        if k not in secs:
            raise ConfigError(f"{where}: unknown section {k!r} (known: {', '.join(secs)})")
    classes = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "loss": LossConfig, "train": TrainConfig}
    return check_combinations(Config(**{k: _section(classes[k], d.get(k) or {}, f"{where}: {k}") for k in classes}),
                              where)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


MAX_CONFIG_NODES = 10_000     # a real config has ~80 values; YAML aliases can make a few lines expand to billions


def expanded_nodes(obj, where: str, limit: int = MAX_CONFIG_NODES) -> int:
    """Values in a loaded YAML document counted as if every alias were written out (each shared node counted once
    per reference, in time linear in the distinct nodes), or a ConfigError beyond `limit` or for a document
    that contains itself: an alias bomb ("billion laughs") is refused before anything walks or prints it."""
    memo: dict[int, int] = {}
    active: set[int] = set()

    def count(o) -> int:
        if not isinstance(o, (dict, list)):
            return 1
        if id(o) in memo:
            return memo[id(o)]
        if id(o) in active:
            raise ConfigError(f"{where}: a YAML alias refers to a node that contains it (a recursive document)")
        active.add(id(o))
        n = 1 + sum(count(v) for v in (o.values() if isinstance(o, dict) else o))
        active.discard(id(o))
        if n > limit:
            raise ConfigError(f"{where}: the YAML expands to more than {limit:,} values through its aliases "
                              f"(an alias bomb?); write the values out")
        memo[id(o)] = n
        return n
    return count(obj)


def safe_load(text, where: str):
    """yaml.safe_load, then the expansion check above."""
    d = yaml.safe_load(text)
    expanded_nodes(d, where)
    return d


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
            node[parts[-1]] = safe_load(val, f"override {key}") if val.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {o!r}: value is not valid YAML ({e.__class__.__name__})") from None
    return d


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    d = {}
    if path:
        try:
            with open(path) as f:
                d = safe_load(f, path) or {}
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config ({getattr(e, 'strerror', None) or e.__class__.__name__})") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    return from_dict(apply_overrides(d, overrides), where=path or "config")


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
