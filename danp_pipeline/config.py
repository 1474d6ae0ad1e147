"""Typed, validated configuration: the one place where defaults live.

Every paper setting and every project choice of ../shared/docs/DANP_SPEC.md is a field of
:class:`AttackConfig`; :class:`PipelineConfig` adds what the distributed job needs. Configs are
frozen dataclasses; ``validate()`` raises ``ValueError`` naming the field and the value received,
and runs before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

#: Edit instructions used when the user gives none: generic edits an attacker is likely to try.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "make it look like a painting",
    "put the person in a prison cell",
    "change the background to a city at night",
    "add fire and smoke",
)

#: Objectives the PGD loop knows (protect/danp.py and protect/baselines.py; "random" runs no loop).
METHODS: tuple[str, ...] = ("danp", "pge", "pgd-e2e", "sa", "advdm", "mist", "sds", "random")

#: Evaluation names -> AttackConfig changes: every objective, plus DANP's ablations, which are
#: configurations rather than objectives. The first entry is the method itself.
EVAL_METHODS: dict[str, dict[str, Any]] = {
    "danp": {"method": "danp"},
    "danp-no-daa": {"method": "danp", "use_daa": False, "init": "uniform"},   # NBA is flat at δ = 0
    "danp-no-nba": {"method": "danp", "use_nba": False},
    "danp-fixed-mask": {"method": "danp", "mask": "fixed"},
    **{name: {"method": name} for name in METHODS if name != "danp"},
}

#: Robustness transforms the evaluation applies to a protected photo before the edit ("none": efficacy).
ROBUSTNESS_TRANSFORMS: tuple[str, ...] = ("none", "jpeg95", "jpeg75", "jpeg50", "resize", "blur")

#: Schedulers the attacker's edit can use ("auto": euler-ancestral for ip2p, pndm for sd).
EDIT_SCHEDULERS: tuple[str, ...] = ("auto", "euler-ancestral", "pndm", "ddim")

#: ``danp-protect bench --arch``: name -> (editor kind, "tiny" random editor or "full" size architecture).
BENCH_ARCHS: dict[str, tuple[str, str]] = {
    "tiny-ip2p": ("ip2p", "tiny"), "tiny-sd": ("sd", "tiny"), "ip2p": ("ip2p", "full"), "sd15": ("sd", "full"),
}

#: Manifest compaction (manifest/writer.py): parts with fewer rows than COMPACT_ROWS are small, and
#: merged parts hold at most that many. A run compacts at its end once COMPACT_MIN_PARTS small parts
#: exist; ``danp-protect compact`` (on demand) merges as soon as COMPACT_MIN_PARTS_ON_DEMAND exist.
COMPACT_ROWS = 50_000
COMPACT_MIN_PARTS = 256
COMPACT_MIN_PARTS_ON_DEMAND = 2

#: Seconds an ingest lease lasts without renewal on object stores (job/ingest.py).
INGEST_LOCK_TTL_S = 3600.0

EDITOR_KINDS: tuple[str, ...] = ("ip2p", "sd")
TINY_MODELS: dict[str, str] = {"tiny-ip2p": "ip2p", "tiny-sd": "sd"}


def _choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _integer(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class AttackConfig:
    """How one photo is immunized. Defaults follow DANP_SPEC.md."""

    method: str = "danp"
    eps: float = 0.03                   # γ, L∞ budget on the [0,1] scale
    steps: int = 100                    # N, PGD iterations
    step_size: float = 1 / 255          # α (project choice)
    num_timesteps: int = 10             # |𝒯|
    timesteps: str = "centres"          # "centres" of equal bins, or "random" draw per bin per iteration
    strength: float = 1.0               # img2img strength s: timesteps restricted to [0, s·T)
    token_reduction: str = "content"    # "content" tokens only, or "all" 77 positions
    upsample: str = "bilinear"          # how per-layer maps reach the largest grid
    threshold_bins: int = 128           # L, Kapur histogram bins
    mask: str = "dynamic"               # "dynamic" (Eq. 7-10 every step) or "fixed" (from the clean photo once)
    lambda_daa: float = 1.0             # weight of the outside-mask term inside DAA
    lambda_nba: float = 1.0             # weight of NBA in the total loss
    use_daa: bool = True                # ablation switches
    use_nba: bool = True
    nba_target: str = "clean"           # Eq. 12 "clean" branch, or "noise" (abstract's reading)
    balance: str = "grad"               # "grad": unit-L1 gradient per term; "raw": add raw losses
    init: str = "zero"                  # δ start: "zero" (Algorithm 1) or "uniform" in [−γ, γ] (seeded)
    resolution: int = 512               # working resolution: longer side
    resolution_multiple: int = 64
    path: str = "fast"                  # "fast" (batched, see danp.py) or "reference" (Algorithm 1 literally)
    timestep_batch: int = 0             # fast path: timesteps per UNet call; 0 = auto (see max_unet_batch)
    max_unet_batch: int = 16            # fast path, auto: fewest UNet calls of at most this many (photo, prompt, t)
    channels_last: bool = False         # fast path: NHWC convolutions (no gain measured on CPU; a GPU option)
    compile: bool = False               # fast path: torch.compile the UNet (slow first iteration)
    gradient_checkpointing: bool = False  # fast path: recompute UNet/VAE activations in backward (memory)
    vae_recompute: bool = False         # fast path: Mist-v2 two-pass VAE, no VAE graph held during UNet passes
    precision: str = "auto"             # "auto" (bf16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"
    seed: int = 0

    def validate(self) -> "AttackConfig":
        _choice("method", self.method, METHODS)
        _positive("eps", self.eps)
        if self.eps > 1:
            raise ValueError(f"eps is on the [0,1] pixel scale and must be <= 1, got {self.eps!r}")
        _integer("steps", self.steps, 1)
        _positive("step_size", self.step_size)
        _integer("num_timesteps", self.num_timesteps, 1)
        _choice("timesteps", self.timesteps, ("centres", "random"))
        _positive("strength", self.strength)
        if self.strength > 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        _choice("token_reduction", self.token_reduction, ("content", "all"))
        _choice("upsample", self.upsample, ("bilinear", "nearest"))
        _integer("threshold_bins", self.threshold_bins, 2)
        _choice("mask", self.mask, ("dynamic", "fixed"))
        _positive("lambda_daa", self.lambda_daa, allow_zero=True)
        _positive("lambda_nba", self.lambda_nba, allow_zero=True)
        if not (self.use_daa or self.use_nba):
            raise ValueError("use_daa and use_nba are both False: the DANP objective would be empty")
        _choice("nba_target", self.nba_target, ("clean", "noise"))
        _choice("balance", self.balance, ("grad", "raw"))
        _choice("init", self.init, ("zero", "uniform"))
        _integer("resolution_multiple", self.resolution_multiple, 8)
        _integer("resolution", self.resolution, self.resolution_multiple)
        _choice("path", self.path, ("fast", "reference"))
        _integer("timestep_batch", self.timestep_batch, 0)
        _integer("max_unet_batch", self.max_unet_batch, 1)
        for name in ("channels_last", "compile", "gradient_checkpointing", "vae_recompute"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _integer("seed", self.seed, 0)
        return self

    @property
    def linf_levels_bound(self) -> int:
        """The guarantee on every output: per channel, per pixel, |out − in| ≤ this many 8-bit levels."""
        return math.ceil(255 * self.eps - 1e-9)

    def replace(self, **changes: Any) -> "AttackConfig":
        return dataclasses.replace(self, **changes).validate()


@dataclass(frozen=True)
class PipelineConfig:
    """A whole job: where photos come from and go, which editor, which prompts, how many actors."""

    input_uri: str
    output_uri: str
    model: str = "tiny-ip2p"
    revision: str | None = None
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None     # JSON/CSV sidecar mapping object keys to prompts
    attack: AttackConfig = field(default_factory=AttackConfig)
    actors: int = 1
    gpus_per_actor: float | None = None  # None: 1 where a GPU is present, else 0 (resolved by the job)
    cpus_per_actor: float = 0.5
    batch_size: int = 1
    max_pixels: int = 40_000_000
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials
    retry_errors: bool = False          # rerun redoes photos whose row is "error" (default: skip them)
    detect_changes: bool = False        # also redo objects whose bytes changed since their row (ingest.py)
    max_photo_attempts: int = 3         # a photo whose protection kills its actor this often becomes an error row

    def validate(self) -> "PipelineConfig":
        for name in ("input_uri", "output_uri", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.prompts, tuple) or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError(f"prompts must be a tuple of non-empty strings, got {self.prompts!r}")
        self.attack.validate()
        _integer("actors", self.actors, 1)
        if self.gpus_per_actor is not None:
            _positive("gpus_per_actor", self.gpus_per_actor, allow_zero=True)
        _positive("cpus_per_actor", self.cpus_per_actor)
        _integer("batch_size", self.batch_size, 1)
        _integer("max_pixels", self.max_pixels, 64)
        _integer("max_photo_attempts", self.max_photo_attempts, 1)
        if not isinstance(self.storage_options, dict):
            raise ValueError(f"storage_options must be a JSON object, got {self.storage_options!r}")
        return self

    @property
    def run_prompts(self) -> tuple[str, ...]:
        """What a photo without its own (sidecar) prompts is protected against."""
        return self.prompts or DEFAULT_PROMPTS

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes).validate()


def method_config(name: str, base: AttackConfig) -> AttackConfig:
    """The AttackConfig an evaluation method name stands for: ``base`` with that method's changes."""
    if name not in EVAL_METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {list(EVAL_METHODS)}")
    return base.replace(**EVAL_METHODS[name])


@dataclass(frozen=True)
class EditConfig:
    """How the attacker edits (evaluation/editing.py). ``steps=None`` means the pipeline's own default."""

    steps: int | None = None
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5   # InstructPix2Pix only
    strength: float = 0.8               # SD img2img only
    scheduler: str = "auto"             # auto: euler-ancestral for ip2p, pndm for sd

    def validate(self) -> "EditConfig":
        if self.steps is not None and (not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1):
            raise ValueError(f"steps must be None or an integer >= 1, got {self.steps!r}")
        _positive("guidance_scale", self.guidance_scale, allow_zero=True)
        _positive("image_guidance_scale", self.image_guidance_scale, allow_zero=True)
        if not isinstance(self.strength, (int, float)) or isinstance(self.strength, bool) or not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        _choice("scheduler", self.scheduler, EDIT_SCHEDULERS)
        return self

    def replace(self, **changes: Any) -> "EditConfig":
        return dataclasses.replace(self, **changes).validate()


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation (evaluation/evaluate.py): the editor, the methods, the shared attack budget and
    the attacker's edit."""

    model: str = "tiny-ip2p"
    revision: str | None = None
    methods: tuple[str, ...] = tuple(EVAL_METHODS)
    attack: AttackConfig = field(default_factory=AttackConfig)
    edit: EditConfig = field(default_factory=EditConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    transforms: tuple[str, ...] = ROBUSTNESS_TRANSFORMS
    protect_prompts: tuple[str, ...] = ()   # protect against these instead of each pair's own instruction
    lpips_weights: str | None = None
    device: str | None = None

    def validate(self) -> "EvalConfig":
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be a non-empty list without repeats, got {list(self.methods)}")
        for m in self.methods:
            method_config(m, self.attack)
        self.edit.validate()
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)}")
        unknown = [t for t in self.transforms if t not in ROBUSTNESS_TRANSFORMS]
        if unknown or "none" not in self.transforms:
            raise ValueError(f"transforms must include 'none' and come from {list(ROBUSTNESS_TRANSFORMS)}, "
                             f"got {list(self.transforms)}")
        if self.protect_prompts:
            validate_prompts(self.protect_prompts)
        return self

    def settings(self) -> dict:
        return dataclasses.asdict(self)


def validate_prompts(prompts: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Refuse an empty prompt list or blank prompts before any work starts."""
    if isinstance(prompts, str):
        prompts = (prompts,)
    prompts = tuple(prompts)
    if not prompts:
        raise ValueError("prompts is empty: give at least one edit instruction to protect against")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"every prompt must be a non-empty string, got {p!r}")
    return prompts


def config_json(attack: AttackConfig, model_id: str, model_revision: str | None) -> str:
    """Canonical JSON of everything that determines a protected photo (sorted keys, no spaces)."""
    payload = {"attack": dataclasses.asdict(attack), "model_id": model_id, "model_revision": model_revision}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def config_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
