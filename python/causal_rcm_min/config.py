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
    two_times: bool = False         # second time input r (MeanFlow students)


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
    fused_pointwise: bool = True    # teachers: compiled norms/rotary/gates on CUDA (pointwise.py)
    seed: int = 0
    log_every: int = 50
    ckpt_every: int = 1000


@dataclass
class SampleConfig:
    """Streaming sampler (see sample.py)."""
    teacher: str = "teacher_causal"   # stage folder whose checkpoint is sampled (a teacher or a student)
    num_samples: int = 64
    batch_size: int = 64
    steps: list = field(default_factory=lambda: [32])   # per chunk; the last entry repeats
    solver: str = "euler"             # euler | consistency
    t_shift: float = 3.0
    cfg_scale: float = 2.0
    noisy_context: bool = False
    seed: int = 1234
    num_filmstrip: int = 8
    student_steps: list | None = None   # a student's per-chunk steps here instead of its own schedule


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
class DistillConfig:
    """Causal-rCM students: teacher-forcing distillation and self-forcing DMD (see losses.py, distill.py)."""
    teacher: str = "teacher_causal"    # stage folder of the flow-matching teacher
    init: str = "teacher"              # "teacher", or the stage folder of a student to start from
    tag: str = ""                      # output folder <stage>_<tag> (several runs of one objective)
    steps: int = 2000                  # training steps
    max_minutes: float = 0.0           # wall-clock cap (0: none); evaluation time is not counted
    ckpt_every: int = 200              # checkpoint (for --resume) every this many steps, and at the end
    batch_size: int = 64
    lr: float = 1e-4
    warmup: int = 50
    ema_decay: float = 0.99
    student_steps: list = field(default_factory=lambda: [4])   # per-chunk sampling steps; the last repeats
    schedule: list | None = None       # custom per-chunk time lists (1 -> 0); replaces student_steps
    t_shift: float = 3.0               # warp of the student schedule (>1: more steps near noise)
    noisy_context: bool = False        # cache the last step's noisy K/V instead of re-encoding at t = 0
    cfg_scale: float = 2.0             # teacher guidance baked into the student
    teacher_steps: int = 16            # Euler steps of the teacher ODE (TF-KD pairs)
    kd_pairs: int = 256                # TF-KD: teacher ODE pairs, made once per run
    dcm_intervals: int = 32            # TF-dCM: discretisation of [0, 1]
    dcm_target_ema: float = 0.95       # TF-dCM: EMA rate of the target network
    scm_tangent_warmup: int = 200      # TF-sCM: steps over which the dF/dt term ramps from 0 to 1
    scm_norm_c: float = 0.1            # TF-sCM: g / (||g|| + c)
    reuse_primal: bool = True          # sCM/MeanFlow: the JVP pass's primal carries the gradient
    mf_r_fraction: float = 0.5         # TF-MeanFlow: share of samples with r < t
    dmd_fake_ratio: int = 5            # SF-DMD: fake-score updates per generator update
    dmd_fake_lr: float = 2e-4
    dmd_t_min: float = 0.02
    dmd_t_max: float = 0.98
    eval_every: int = 0                # quick metric (FD, physics) every this many steps (0: never)
    eval_samples: int = 64
    eval_steps: int = 1                # student steps of the quick metric


@dataclass
class Config:
    preset: str = "small"
    out_dir: str = "runs/small"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

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
             "sample": SampleConfig, "eval": EvalConfig, "distill": DistillConfig}


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
        distill=DistillConfig(steps=4, ckpt_every=2, batch_size=2, lr=1e-3, warmup=2, ema_decay=0.5, student_steps=[2, 1],
                              teacher_steps=3, kd_pairs=4, dcm_intervals=4, scm_tangent_warmup=2,
                              dmd_fake_ratio=2, eval_every=2, eval_samples=4),
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
        distill=DistillConfig(steps=600, batch_size=64, lr=1e-4, warmup=50, ema_decay=0.99,
                              scm_tangent_warmup=100, dmd_fake_ratio=3, eval_every=0, eval_samples=128),
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
