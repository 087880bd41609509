"""One dataclass config for every stage, with presets and ``key=value`` overrides.

The whole config is stored inside each checkpoint, so a checkpoint alone says how to
rebuild its model and how it was trained.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    """The procedural sprite world (see data.py)."""
    image_size: int = 32
    num_frames: int = 12
    max_sprites: int = 3
    action_mode: bool = False
    sprite_radius: float = 3.5      # pixels; every shape fits in a box of this half-size
    min_speed: float = 0.6          # pixels per frame
    max_speed: float = 1.8
    accel: float = 0.5              # action acceleration, pixels per frame^2
    agent_max_speed: float = 2.5


@dataclass
class ModelConfig:
    """The causal video DiT (see model.py)."""
    patch_size: int = 4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    frames_per_chunk: int = 3
    first_chunk_frames: int | None = None
    window: int | None = None       # attention window in chunks, counting the query's own
    sink: int = 0                   # first chunks always visible under a window


@dataclass
class TrainConfig:
    """Optimisation and the flow-matching objective (see losses.py)."""
    steps: int = 1000
    max_minutes: float = 0.0        # stop early when this wall-clock budget is spent (0: no limit)
    batch_size: int = 32            # global batch, split over ranks
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    t_sampling: str = "logit_normal"  # logit_normal | shift | uniform
    t_mean: float = 0.0
    t_std: float = 1.0
    t_shift: float = 1.0
    cond_dropout: float = 0.1
    amp: bool = True                # bf16 autocast on CUDA
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000


@dataclass
class SampleConfig:
    """Streaming sampler (see sample.py)."""
    teacher: str = "teacher_causal"   # stage whose checkpoint is sampled
    num_samples: int = 64
    batch_size: int = 64
    steps: list = field(default_factory=lambda: [32])   # per chunk; the last entry repeats
    solver: str = "euler"             # euler | consistency
    t_shift: float = 3.0
    cfg_scale: float = 2.0
    noisy_context: bool = False
    seed: int = 1234
    num_filmstrip: int = 8


@dataclass
class EvalConfig:
    """Metrics and the Fréchet feature encoder (see evaluate.py, encoder.py)."""
    num_real: int = 256
    real_seed: int = 987654
    encoder_steps: int = 1500
    encoder_batch: int = 64
    encoder_lr: float = 1e-3
    encoder_width: int = 32


@dataclass
class Config:
    preset: str = "small"
    out_dir: str = "runs/small"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, value in d.items():
            if name not in sections:
                raise ValueError(f"config: unknown section or key {name!r}")
            sub = _SECTIONS.get(name)
            kwargs[name] = sub(**value) if sub is not None else value
        return cls(**kwargs)


_SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig,
             "sample": SampleConfig, "eval": EvalConfig}


def _tiny() -> Config:
    """Every stage as a CPU smoke run: seconds per stage, quality irrelevant."""
    return Config(
        preset="tiny", out_dir="runs/tiny",
        data=DataConfig(image_size=16, num_frames=6, max_sprites=2, sprite_radius=2.5,
                        min_speed=0.4, max_speed=1.0),
        model=ModelConfig(patch_size=4, dim=32, depth=2, heads=2, frames_per_chunk=2),
        train=TrainConfig(steps=20, batch_size=4, lr=1e-3, warmup=5, ema_decay=0.9,
                          log_every=5, ckpt_every=10),
        sample=SampleConfig(num_samples=4, batch_size=4, steps=[4, 2], num_filmstrip=2),
        eval=EvalConfig(num_real=16, encoder_steps=20, encoder_batch=8, encoder_width=8),
    )


def _small() -> Config:
    """Teachers of useful quality on one H200 within its time budget."""
    return Config(
        preset="small", out_dir="runs/small",
        data=DataConfig(),
        model=ModelConfig(patch_size=4, dim=256, depth=8, heads=4, frames_per_chunk=3),
        train=TrainConfig(steps=30000, max_minutes=9.0, batch_size=64, lr=4e-4, warmup=500,
                          ema_decay=0.999, log_every=100, ckpt_every=2000),
        sample=SampleConfig(num_samples=256, batch_size=128, steps=[32], cfg_scale=2.0),
        eval=EvalConfig(num_real=512, encoder_steps=1500, encoder_batch=64),
    )


PRESETS = {"tiny": _tiny, "small": _small}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return a copy with ``section.key=value`` overrides; values are parsed as JSON when they can be."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override must look like section.key=value, got {item!r}")
        path, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        parts = path.split(".")
        target = cfg
        for p in parts[:-1]:
            if not hasattr(target, p):
                raise ValueError(f"override {item!r}: unknown section {p!r}")
            target = getattr(target, p)
        if not hasattr(target, parts[-1]):
            raise ValueError(f"override {item!r}: unknown key {parts[-1]!r}")
        setattr(target, parts[-1], value)
    return cfg
