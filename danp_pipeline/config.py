"""Typed, validated configuration: the one place where defaults live.

Every paper setting and every project choice of the method (docs/method.md) is a field of
:class:`AttackConfig`; :class:`PipelineConfig` adds what the distributed job needs. Configs are
frozen dataclasses validated on construction: ``validate()`` (run by ``__post_init__``, so by
``replace()`` too) raises ``ValueError`` naming the field and the value received.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
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
    "danp-focused": {"method": "danp", "token_reduction": "focused"},   # DAA on the words that localize
    **{name: {"method": name} for name in METHODS if name != "danp"},
}

#: Robustness transforms the evaluation applies to a protected photo before the edit ("none": efficacy).
ROBUSTNESS_TRANSFORMS: tuple[str, ...] = ("none", "jpeg95", "jpeg75", "jpeg50", "resize", "blur")

#: Purifiers the attacker may run on the protected file after downloading it and before the edit
#: (evaluation/purifiers.py, settings in PurifyConfig); "none" is the unpurified file.
PURIFIERS: tuple[str, ...] = ("none", "jpeg75", "noise-jpeg", "noisy-upscale", "diffpure", "gridpure", "reconstruct")
#: The other editor that `reconstruct` uses when PurifyConfig.reconstruct_editor is not given, by the attacker's
#: editor (test and micro editors; against a real editor the other one must be named).
RECONSTRUCT_EDITORS: dict[str, str] = {
    "tiny-ip2p": "tiny-sd", "tiny-sd": "tiny-ip2p", "micro-ip2p": "micro-ip2p-b", "micro-ip2p-b": "micro-ip2p",
    "proxy-ip2p": "proxy-ip2p-b", "proxy-ip2p-b": "proxy-ip2p",
}

#: Full-size photos of the attacker view (evaluation/attacker.py): 4× the editor's size, square and at
#: three aspect ratios, and one smaller than the editor's size.
SIZE_VARIANTS: tuple[str, ...] = ("4x-1:1", "4x-3:2", "4x-16:9", "4x-4:5", "small-3:2")
#: The evaluation's default set (the square one is the micro benchmark's default, see MicroSuiteConfig).
EVAL_SIZE_VARIANTS: tuple[str, ...] = ("4x-3:2", "4x-16:9", "4x-4:5", "small-3:2")

#: Schedulers the attacker's edit can use ("auto": the one the editor kind ships with, EditorKind.scheduler).
EDIT_SCHEDULERS: tuple[str, ...] = ("auto", "euler-ancestral", "euler", "pndm", "ddim")

#: ``danp-protect bench --arch``: name -> (editor kind, "tiny" random editor or "full" size architecture).
BENCH_ARCHS: dict[str, tuple[str, str]] = {
    "tiny-ip2p": ("ip2p", "tiny"), "tiny-sd": ("sd", "tiny"), "tiny-sdxl": ("sdxl", "tiny"),
    "tiny-sdxl-ip2p": ("sdxl-ip2p", "tiny"), "tiny-sd-inpaint": ("sd-inpaint", "tiny"),
    "ip2p": ("ip2p", "full"), "sd15": ("sd", "full"), "sdxl": ("sdxl", "full"), "sdxl-ip2p": ("sdxl-ip2p", "full"),
    "sd-inpaint": ("sd-inpaint", "full"),
}
#: ``bench``'s editor when no ``--arch`` is given.
BENCH_DEFAULT_ARCH = "tiny-ip2p"

#: Manifest compaction (manifest/writer.py): parts with fewer rows than COMPACT_ROWS are small, and
#: merged parts hold at most that many. A run compacts at its end once COMPACT_MIN_PARTS small parts
#: exist; ``danp-protect compact`` (on demand) merges as soon as COMPACT_MIN_PARTS_ON_DEMAND exist.
COMPACT_ROWS = 50_000
COMPACT_MIN_PARTS = 256
COMPACT_MIN_PARTS_ON_DEMAND = 2

#: The manifest's parts (job/committer.py): the driver commits the rows of finished photos as a part
#: once COMMIT_ROWS have arrived or COMMIT_SECONDS have passed since the last part, whichever comes
#: first. Planning reads every part, so at 100 M photos parts of this size are 100 k files instead of
#: 25 M per-batch parts (benchmarks/commit_parts.py); a driver killed outright loses at most this much
#: finished work (redone by the next run).
COMMIT_ROWS = 1000
COMMIT_SECONDS = 60.0

#: Seconds the lease on OUTPUT (storage/lease.py, held by every run and ingest) lasts without renewal
#: on object stores; it is renewed every third of it. A run killed outright (kill -9, a lost driver)
#: keeps the next run of its OUTPUT waiting this long at most (`--wait`); on local paths the kernel
#: frees the lease at once.
LEASE_TTL_S = 300.0

#: The run report (``danp-protect report``, report/): photos in its gallery (the worst PSNR among them),
#: the long side of its thumbnails in pixels, and the error reasons it lists with example keys.
REPORT_SAMPLE = 12
REPORT_THUMB_PX = 320
REPORT_TOP_REASONS = 10

#: The editor a run protects against unless told otherwise: InstructPix2Pix (Brooks et al.), loaded
#: from the local Hugging Face cache or downloaded. The tiny and micro editors are for tests, the
#: demo and the benchmark, and are used only when named.
DEFAULT_MODEL = "timbrooks/instruct-pix2pix"

#: Host memory an actor needs per pixel of the largest photo it may hold: 6.1 full-size float32 RGB
#: copies at peak (measured on a 24 MP photo, benchmarks/full_size_cost.py) plus the decoded 8-bit
#: source and output, rounded up.
ACTOR_BYTES_PER_PIXEL = 80
#: Concurrent tasks of each CPU stage (read and decode; encode and write) per editor actor. Two keep an
#: actor fed when a photo's CPU work takes less than twice its protection: 12 MP photos cost about 2.0
#: CPU-s in the write stage and 0.2 in decode (benchmarks/accelerator_share.py), the fast profile about
#: 1.2 s on an H100 (estimated from counted FLOPs). Raise it (``--tasks-per-actor``) for larger photos or
#: faster accelerators: about (CPU-s per photo) / (accelerator-s per photo), with the CPUs to run them.
TASKS_PER_ACTOR = 2
#: Calls an editor actor runs at once: while one batch is protected (under the actor's lock), the next
#: is converted and screened and the last one's rows are built, so the accelerator does not wait on
#: the actor's own CPU work (benchmarks/accelerator_share.py).
ACTOR_CALLS = 2
#: Host memory per pixel of a batch that waits in an actor beside the one being protected: its Arrow
#: input, the Python copy of the decoded bytes and, once protected, its pickled output and Arrow rows.
ACTOR_WAITING_BYTES_PER_PIXEL = 16
#: Host memory a CPU task needs per pixel of the largest photo allowed, above its worker's resting
#: memory, rounded up from the peaks measured on 12 MP JPEG photos (benchmarks/accelerator_share.py):
#: read and decode 13.6 (the source's bytes and its 8-bit pixels), encode, measure and write 54 (the
#: protected and source pixels, the encoder's buffers and the written file decoded back to measure it).
DECODE_TASK_BYTES_PER_PIXEL = 16
WRITE_TASK_BYTES_PER_PIXEL = 64
#: Host memory of an editor whose weights' size cannot be read from disk (not yet downloaded): an
#: SD 1.x editor's UNet, VAE and text encoder in float32, rounded up.
EDITOR_BYTES_UNKNOWN = 4_500_000_000

#: The attacker's img2img strength (EditConfig) and the attack's timestep range for img2img editors.
SD_EDIT_STRENGTH = 0.8
#: Inpainting masks (protect/inpaint_masks.py): the share of the frame the mask's region covers, drawn uniformly
#: in this range, for the protection (AttackConfig.inpaint_mask_area) and the evaluation's attacker alike.
INPAINT_MASK_AREA: tuple[float, float] = (0.1, 0.5)


@dataclass(frozen=True)
class EditorKind:
    """What the objectives, the loader and the attacker's edit need to know of one kind of editor."""

    pipeline: str           # the diffusers pipeline class the attacker edits with
    unet_channels: int      # the UNet's input channels
    condition: str          # how the photo reaches the UNet besides the noised latent z_t: "none"; "latent"
                            # (InstructPix2Pix: [z_t, E_img(x)]); "masked" (inpainting: [z_t, m, E(x ⊙ (1 − m))])
    xl: bool                # SDXL: two text encoders, a pooled text embedding and added time ids
    strength: float         # the attack's timesteps cover [0, strength·T) unless AttackConfig.strength says
                            # otherwise: the pipeline's own (1.0: its edit starts from pure noise)
    scheduler: str          # the attacker's scheduler under EditConfig.scheduler="auto": the one the kind ships with


#: Editor kinds by name; protect/models.py tells them apart by the UNet's input channels and SDXL's added
#: text-time embedding.
EDITOR_KINDS: dict[str, EditorKind] = {
    "ip2p": EditorKind("StableDiffusionInstructPix2PixPipeline", 8, "latent", False, 1.0, "euler-ancestral"),
    "sd": EditorKind("StableDiffusionImg2ImgPipeline", 4, "none", False, SD_EDIT_STRENGTH, "pndm"),
    "sdxl": EditorKind("StableDiffusionXLImg2ImgPipeline", 4, "none", True, SD_EDIT_STRENGTH, "euler"),
    "sdxl-ip2p": EditorKind("StableDiffusionXLInstructPix2PixPipeline", 8, "latent", True, 1.0, "euler"),
    "sd-inpaint": EditorKind("StableDiffusionInpaintPipeline", 9, "masked", False, 1.0, "pndm"),
}

#: Trained micro-editors shipped with the package (micro/, weights under assets/editors/<name>/), with the
#: attacker's sampler settings for each, tuned on 48 training scenes only (benchmarks/micro_editors.py --tune):
#: (steps, text guidance, image guidance). MICRO_SAMPLER serves editors trained into a directory.
MICRO_SAMPLER: tuple[int, float, float] = (20, 3.0, 1.2)
MICRO_EDITORS_DIR = Path(__file__).parent / "assets" / "editors"
MICRO_MODELS: dict[str, tuple[int, float, float]] = {"micro-ip2p": (20, 5.0, 1.5), "micro-ip2p-b": (20, 5.0, 1.2)}
#: SD-like proxy editors (textured 128x128 world, 8x VAE; micro/textures.py), installed like MICRO_MODELS:
#: proxy-ip2p (protected against), proxy-ip2p-b (its transfer editor) and proxy-inpaint (an SD inpainting editor,
#: held out from every choice: transfer to another kind of editor only).
PROXY_MODELS: dict[str, tuple[int, float, float]] = {"proxy-ip2p": MICRO_SAMPLER, "proxy-ip2p-b": MICRO_SAMPLER,
                                                     "proxy-inpaint": MICRO_SAMPLER}
#: The micro benchmark's edit worlds (micro/worlds.py): name -> (the trained editors of that world, the first
#: protected against and the others for transfer; the size variants its scenes can be drawn at). The textured
#: world is square only: its full-size photo is the 128x128 scene upscaled, not a scene drawn in another frame.
MICRO_WORLDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "flat": (tuple(MICRO_MODELS), SIZE_VARIANTS),
    "textured": (("proxy-ip2p", "proxy-ip2p-b"), ("4x-1:1",)),
}

#: Antialiased resize filters of the attacker's view (Pillow's; protect/views.py).
RESIZE_FILTERS: tuple[str, ...] = ("box", "bilinear", "bicubic", "lanczos")
#: Random test editors (protect/models.py tiny_editor): name -> editor kind.
TINY_MODELS: dict[str, str] = {f"tiny-{kind}": kind for kind in EDITOR_KINDS}

#: ``--output-format``: lossless formats keep every pixel (the L∞ guarantee holds on the file; png and
#: tiff keep 16 bits); lossy ones report the L∞ measured on the decoded file. "source": the input's
#: own format (imaging/formats.py), lossless where the source is. Default png: lossless, guaranteed.
OUTPUT_FORMATS: tuple[str, ...] = ("png", "webp-lossless", "tiff", "jpeg", "webp", "source")
LOSSLESS_FORMATS: tuple[str, ...] = ("png", "webp-lossless", "tiff")
#: Output format -> file extensions it answers to (the first is what outputs get). Disjoint sets:
#: manifest/output.py's naming relies on it.
FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "png": (".png",), "webp-lossless": (".webp",), "webp": (".webp",), "tiff": (".tiff", ".tif"),
    "jpeg": (".jpg", ".jpeg", ".jpe"), "heic": (".heic", ".heif"), "avif": (".avif",),
}
DEFAULT_QUALITY = 92                    # lossy formats (jpeg, webp, heic, avif)
#: Environment variables naming the C2PA signing chain and key (files, e.g. mounted secrets).
C2PA_CERT_ENV, C2PA_KEY_ENV = "DANP_C2PA_CERT", "DANP_C2PA_KEY"


def _choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok or not math.isfinite(value):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


def _tuple(name: str, value: Any, ok: Any, what: str, *, empty: bool = False) -> None:
    if not isinstance(value, tuple) or (not value and not empty) or not all(ok(v) for v in value):
        raise ValueError(f"{name} must be a {'' if empty else 'non-empty '}tuple of {what}, got {value!r}")


def _integer(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class AttackConfig:
    """How one photo is immunized. Defaults follow the paper (docs/method.md)."""

    method: str = "danp"
    eps: float = 0.03                   # γ, L∞ budget on the [0,1] scale
    steps: int = 100                    # N, PGD iterations
    step_size: float = 1 / 255          # α (project choice)
    num_timesteps: int = 10             # |𝒯|
    timesteps: str = "centres"          # "centres" of equal bins, or "random" draw per bin per iteration
    strength: float | None = None       # img2img strength s: timesteps in [0, s·T); None: the editor's own
                                        # (1.0 for ip2p, which edits from pure noise; SD_EDIT_STRENGTH for sd)
    token_reduction: str = "content"    # "content" tokens only, "all" 77 positions, or "focused": the content
                                        # tokens whose attention is at least as concentrated as their mean
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
    # Cheaper protection; the defaults are the paper's method, `--profile fast` changes them.
    step_decay: str = "none"            # "none": α every iteration; "cosine": α·½(1+cos(π·i/N)), larger early steps
    timestep_subset: int = 0            # 0: every |𝒯| timestep each iteration; m: a seeded random m of the |𝒯| bins
    prompt_subset: int = 0              # 0: every prompt of a photo each iteration; m: a seeded random m of them
    noise: str = "fresh"                # "fresh" noise every iteration, or "fixed": one draw per (photo, prompt, bin),
                                        # so NBA's clean branch ε_θ(z_t^clean) is computed once and reused
    balance_every: int = 1              # balance="grad": per-term gradient norms measured every k iterations; in
                                        # between one backward of the terms weighted by the last norms (k=1: two)
    resolution: int = 512               # the editor's input: the attacker resizes the photo's long side to this
    resolution_multiple: int = 64       # eval's pre-resized pairs snap to this (the optimization does not)
    # The attacker's view (protect/views.py): δ lives at full resolution; each PGD iteration computes the
    # objective on one of these transforms of the protected photo (expectation over transformations).
    view_scales: tuple[float, ...] = (1.0,)        # × resolution: the long sides the attacker resizes to
    view_filters: tuple[str, ...] = ("lanczos", "bicubic", "bilinear")   # the attacker's resize filters
    view_jpeg: tuple[int, ...] = ()     # JPEG qualities re-encoded before the resize (besides none)
    view_blur: tuple[float, ...] = ()   # Gaussian blur sigmas (editor pixels) after the resize (besides none)
    view_crop: float = 0.0              # also a centred crop of this fraction per side (0: never)
    # Inpainting editors: the attacker's mask is unknown; the objective averages over masks drawn from the
    # distribution of protect/inpaint_masks.py, seeded per photo.
    inpaint_masks: int = 2              # masks per photo per iteration; timestep bin i uses mask i mod this
    inpaint_mask_area: tuple[float, float] = INPAINT_MASK_AREA   # the subject region's share of the frame (uniform)
    path: str = "fast"                  # "fast" (batched, see danp.py) or "reference" (Algorithm 1 literally)
    timestep_batch: int = 0             # fast path: timesteps per UNet call; 0 = auto (see max_unet_batch)
    max_unet_batch: int = 16            # fast path, auto: fewest UNet calls of at most this many (photo, prompt, t)
    channels_last: bool = False         # fast path: NHWC convolutions (no gain measured on CPU; a GPU option)
    compile: bool = False               # fast path: torch.compile the UNet (slow first iteration)
    gradient_checkpointing: bool = False  # fast path: recompute UNet/VAE activations in backward (memory)
    vae_recompute: bool = False         # fast path: Mist-v2 two-pass VAE, no VAE graph held during UNet passes
    precision: str = "auto"             # "auto" (bf16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"
    fp16_loss_scale: float = 1024.0     # fp16: losses are scaled by this before backward (no underflow)
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "AttackConfig":
        _choice("method", self.method, METHODS)
        _positive("eps", self.eps)
        if self.eps > 1:
            raise ValueError(f"eps is on the [0,1] pixel scale and must be <= 1, got {self.eps!r} (on the command "
                             f"line, 8-bit levels can be given as {self.eps:g}/255)")
        _integer("steps", self.steps, 1)
        _positive("step_size", self.step_size)
        _integer("num_timesteps", self.num_timesteps, 1)
        _choice("timesteps", self.timesteps, ("centres", "random"))
        if self.strength is not None:
            _positive("strength", self.strength)
            if self.strength > 1:
                raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        _choice("token_reduction", self.token_reduction, ("content", "all", "focused"))
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
        _choice("step_decay", self.step_decay, ("none", "cosine"))
        _integer("timestep_subset", self.timestep_subset, 0)
        if self.timestep_subset > self.num_timesteps:
            raise ValueError(f"timestep_subset must be at most num_timesteps ({self.num_timesteps}), "
                             f"got {self.timestep_subset!r}")
        _integer("prompt_subset", self.prompt_subset, 0)
        _choice("noise", self.noise, ("fresh", "fixed"))
        if self.noise == "fixed" and self.timesteps == "random":
            raise ValueError("noise='fixed' reuses the clean branch per timestep bin and needs timesteps='centres', "
                             "got timesteps='random'")
        _integer("balance_every", self.balance_every, 1)
        _integer("resolution_multiple", self.resolution_multiple, 8)
        _integer("resolution", self.resolution, self.resolution_multiple)
        _tuple("view_scales", self.view_scales, lambda v: isinstance(v, (int, float)) and 0 < v <= 8,
               "numbers in (0, 8]")
        _tuple("view_filters", self.view_filters, lambda v: v in RESIZE_FILTERS, f"names from {list(RESIZE_FILTERS)}")
        _tuple("view_jpeg", self.view_jpeg, lambda v: isinstance(v, int) and 1 <= v <= 100, "qualities in 1..100",
               empty=True)
        _tuple("view_blur", self.view_blur, lambda v: isinstance(v, (int, float)) and 0 < v <= 10,
               "sigmas in (0, 10]", empty=True)
        _positive("view_crop", self.view_crop, allow_zero=True)
        _integer("inpaint_masks", self.inpaint_masks, 1)
        area = self.inpaint_mask_area
        if not (isinstance(area, tuple) and len(area) == 2 and all(isinstance(a, (int, float)) for a in area)
                and 0 < area[0] <= area[1] < 1):
            raise ValueError(f"inpaint_mask_area must be a tuple (low, high) with 0 < low <= high < 1, got {area!r}")
        if self.view_crop >= 0.5:
            raise ValueError(f"view_crop is a fraction per side and must be < 0.5, got {self.view_crop!r}")
        _choice("path", self.path, ("fast", "reference"))
        _integer("timestep_batch", self.timestep_batch, 0)
        _integer("max_unet_batch", self.max_unet_batch, 1)
        for name in ("channels_last", "compile", "gradient_checkpointing", "vae_recompute"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _choice("precision", self.precision, ("auto", "fp32", "bf16", "fp16"))
        _positive("fp16_loss_scale", self.fp16_loss_scale)
        _integer("seed", self.seed, 0)
        return self

    @property
    def step_reach(self) -> float:
        """Σα over the iterations: how far δ can move from its start. Below γ the budget is never used."""
        if self.step_decay == "cosine":
            return sum(self.step_size * 0.5 * (1 + math.cos(math.pi * i / self.steps)) for i in range(self.steps))
        return self.step_size * self.steps

    def reach_warning(self) -> str | None:
        """A warning when the steps cannot reach the budget (Σα < γ), else None."""
        if self.method != "random" and self.init == "zero" and self.step_reach < self.eps - 1e-12:
            return (f"the steps cannot reach the budget: Σα = {self.step_reach:.4g} < eps = {self.eps:.4g} "
                    f"(steps={self.steps}, step_size={self.step_size:.4g}, step_decay={self.step_decay}); "
                    "raise --steps or --step-size")
        return None

    @property
    def linf_levels_bound(self) -> int:
        """The guarantee on every output: per channel, per pixel, |out − in| ≤ this many 8-bit levels."""
        return math.ceil(255 * self.eps - 1e-9)

    def replace(self, **changes: Any) -> "AttackConfig":
        return dataclasses.replace(self, **changes)   # validated on construction


@dataclass(frozen=True)
class PipelineConfig:
    """A whole job: where photos come from and go, which editor, which prompts, how many actors."""

    input_uri: str
    output_uri: str
    model: str = DEFAULT_MODEL
    revision: str | None = None
    ensemble: tuple[str, ...] = ()      # further editors protected against at once with `model` (one δ)
    editor_weights: tuple[float, ...] = ()   # one per editor (model first); empty: equal
    prompts: tuple[str, ...] = ()
    prompts_file: str | None = None     # JSON/CSV sidecar mapping object keys to prompts
    attack: AttackConfig = field(default_factory=AttackConfig)
    actors: int = 1
    gpus_per_actor: float | None = None  # None: 1 where a GPU is present, else 0 (resolved by the job)
    cpus_per_actor: float = 0.5
    actor_memory: int | None = None      # bytes of host memory each actor asks Ray for; None: estimated
                                         # from the editor and the largest photo allowed (job/resources.py)
    batch_size: int = 1
    max_pixels: int = 40_000_000
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold credentials
    retry_errors: bool = False          # rerun redoes photos whose row is "error" (default: skip them)
    detect_changes: bool = False        # also redo objects whose bytes changed since their row (ingest.py)
    max_photo_attempts: int = 3         # a photo whose protection kills its actor this often becomes an error row
    output_format: str = "png"          # one of OUTPUT_FORMATS
    quality: int = DEFAULT_QUALITY      # lossy output formats, 1..100
    strip_gps: bool = False             # drop EXIF/XMP GPS from outputs
    strip_metadata: bool = False        # drop EXIF, XMP and IPTC (the ICC profile stays: it is colour data)
    c2pa_cert: str | None = None        # PEM chain (signing cert first) for content credentials; a path
    c2pa_key: str | None = None         # PEM private key path; never logged nor recorded
    input_list: str | None = None       # Parquet/CSV/JSONL list of object URIs or an S3 Inventory manifest.json
    list_fanout_depth: int = 2          # without a list: directory levels the driver walks to split the listing
    plan_partitions: int = 64           # hash partitions of the distributed plan (listing ⋈ manifest)
    progress_interval_s: float = 30.0   # progress log line and OUTPUT/_status.json every this many seconds
    commit_rows: int = COMMIT_ROWS      # manifest parts of at least this many rows…
    commit_seconds: float = COMMIT_SECONDS   # …or of what arrived within this many seconds
    cpus_per_task: float = 0.25         # CPUs each read/decode and write task asks Ray for (fractional: they
                                        # must fit beside the actors on any node; raise it on GPU nodes)
    tasks_per_actor: int = TASKS_PER_ACTOR  # concurrent tasks of each CPU stage per editor actor (see the constant)
    lease_ttl_s: float = LEASE_TTL_S    # the lease on OUTPUT: seconds it lasts without renewal (object stores)
    lease_wait_s: float = 0.0           # seconds to wait for a lease another run holds before giving up
    report: bool = True                 # write OUTPUT/report/index.html when the run ends (report/)
    report_sample: int = REPORT_SAMPLE  # photos in the report's gallery

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "PipelineConfig":
        for name in ("input_uri", "output_uri", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if not isinstance(self.ensemble, tuple) or any(not isinstance(m, str) or not m.strip() for m in self.ensemble):
            raise ValueError(f"ensemble must be a tuple of non-empty model names, got {self.ensemble!r}")
        if len(set(self.editors)) != len(self.editors):
            raise ValueError(f"an editor is named twice in {list(self.editors)}")
        if self.editor_weights and (len(self.editor_weights) != len(self.editors) or any(
                not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 < w < math.inf
                for w in self.editor_weights)):
            raise ValueError(f"editor_weights must be {len(self.editors)} positive finite numbers (one per editor: "
                             f"{list(self.editors)}), got {self.editor_weights!r}")
        if not isinstance(self.prompts, tuple) or any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise ValueError(f"prompts must be a tuple of non-empty strings, got {self.prompts!r}")
        if not isinstance(self.attack, AttackConfig):
            raise ValueError(f"attack must be an AttackConfig, got {self.attack!r}")
        _integer("actors", self.actors, 1)
        if self.gpus_per_actor is not None:
            _positive("gpus_per_actor", self.gpus_per_actor, allow_zero=True)
        _positive("cpus_per_actor", self.cpus_per_actor)
        if self.actor_memory is not None:
            _integer("actor_memory", self.actor_memory, 0)
        _integer("batch_size", self.batch_size, 1)
        _integer("max_pixels", self.max_pixels, 64)
        _integer("max_photo_attempts", self.max_photo_attempts, 1)
        _choice("output_format", self.output_format, OUTPUT_FORMATS)
        _integer("quality", self.quality, 1)
        if self.quality > 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality!r}")
        if (self.c2pa_cert is None) != (self.c2pa_key is None):
            raise ValueError("c2pa_cert and c2pa_key go together: give both or neither, got "
                             f"c2pa_cert={self.c2pa_cert!r} and {'a' if self.c2pa_key else 'no'} c2pa_key")
        if not isinstance(self.storage_options, dict):
            raise ValueError(f"storage_options must be a JSON object, got {self.storage_options!r}")
        if self.input_list is not None and (not isinstance(self.input_list, str) or not self.input_list.strip()):
            raise ValueError(f"input_list must be None or a non-empty URI, got {self.input_list!r}")
        _integer("list_fanout_depth", self.list_fanout_depth, 0)
        _integer("plan_partitions", self.plan_partitions, 1)
        _positive("progress_interval_s", self.progress_interval_s)
        _integer("commit_rows", self.commit_rows, 1)
        _positive("commit_seconds", self.commit_seconds)
        _positive("cpus_per_task", self.cpus_per_task)
        _integer("tasks_per_actor", self.tasks_per_actor, 1)
        _positive("lease_ttl_s", self.lease_ttl_s)
        _positive("lease_wait_s", self.lease_wait_s, allow_zero=True)
        if not isinstance(self.report, bool):
            raise ValueError(f"report must be True or False, got {self.report!r}")
        _integer("report_sample", self.report_sample, 0)
        return self

    @property
    def editors(self) -> tuple[str, ...]:
        """Every editor protected against: ``model``, then the ``ensemble``."""
        return (self.model, *self.ensemble)

    @property
    def run_prompts(self) -> tuple[str, ...]:
        """What a photo without its own (sidecar) prompts is protected against."""
        return self.prompts or DEFAULT_PROMPTS

    def replace(self, **changes: Any) -> "PipelineConfig":
        return dataclasses.replace(self, **changes)   # validated on construction


#: Cost profiles: "paper" is the method as published; "fast" cuts the counted work per photo
#: (see README, "Cheaper protection"). A profile scales the iterations and timesteps it is given.
PROFILES: tuple[str, ...] = ("paper", "fast")
FAST_STEPS_FRACTION = 0.3        # iterations kept, with a larger first step that decays (cosine)
FAST_STEP_FRACTION = (2 / 255) / 0.03   # α as a fraction of γ: 2/255 at the default budget, and as far at any other
FAST_BALANCE_EVERY = 5           # per-term gradient norms measured every 5th iteration, one backward between
FAST_TIMESTEP_FRACTION = 0.5     # of the |𝒯| bins, a random half each iteration
# Fresh noise every iteration, as the paper: a fast profile that held the noise fixed to reuse the clean branch
# (-21 % FLOPs) lost the unseen wordings (held-out: 0.9 vs 9.3 pts in the attacker's view); this one was chosen
# on training scenes (`micro-bench --split train`).
FAST_NOISE = "fresh"


def profile_config(name: str, base: AttackConfig, *, step_size: float | None = None) -> AttackConfig:
    """``base`` under cost profile ``name``. The fast profile's α is a fixed fraction of ``base.eps``
    unless ``step_size`` (the user's own α) is given: a profile never overrides an explicit α."""
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {name!r}")
    if name == "paper":
        return base if step_size is None else base.replace(step_size=step_size)
    alpha = step_size if step_size is not None else base.eps * FAST_STEP_FRACTION
    return base.replace(steps=max(1, round(base.steps * FAST_STEPS_FRACTION)), step_size=alpha,
                        step_decay="cosine", noise=FAST_NOISE, timesteps="centres",
                        balance_every=FAST_BALANCE_EVERY,
                        timestep_subset=max(1, round(base.num_timesteps * FAST_TIMESTEP_FRACTION)))


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
    strength: float = SD_EDIT_STRENGTH  # SD img2img only
    scheduler: str = "auto"             # auto: euler-ancestral for ip2p, pndm for sd

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "EditConfig":
        if self.steps is not None and (not isinstance(self.steps, int) or isinstance(self.steps, bool)
                                       or self.steps < 1):
            raise ValueError(f"steps must be None or an integer >= 1, got {self.steps!r}")
        _positive("guidance_scale", self.guidance_scale, allow_zero=True)
        _positive("image_guidance_scale", self.image_guidance_scale, allow_zero=True)
        if not isinstance(self.strength, (int, float)) or isinstance(self.strength, bool) or not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}")
        _choice("scheduler", self.scheduler, EDIT_SCHEDULERS)
        return self

    def replace(self, **changes: Any) -> "EditConfig":
        return dataclasses.replace(self, **changes)   # validated on construction


@dataclass(frozen=True)
class PurifyConfig:
    """The purifiers' parameters (evaluation/purifiers.py). ``jpeg75`` and ``noise-jpeg`` re-encode at JPEG
    quality 75 (their name); the model-based ones are seeded with ``seed`` and deterministic."""

    noise_sigma: float = 4 / 255        # noise-jpeg, noisy-upscale: Gaussian noise σ on the [0,1] pixel scale
    upscale_factor: int = 2             # noisy-upscale: down by this factor, noise, up again
    upscale_filter: str = "bicubic"     # noisy-upscale: the Pillow filter of both resizes
    strength: float = 0.3               # diffpure, gridpure: noised to t* = strength · T (the editor's T)
    steps: int = 20                     # diffpure, gridpure: deterministic DDIM steps from t* back to 0
    editor: str | None = None           # diffpure, gridpure: whose VAE and UNet; None: the attacker's editor
    tile: int | None = None             # gridpure: tile side in pixels; None: the editor's size (resolution)
    tile_overlap: float = 0.25          # gridpure: overlap of neighbouring tiles, a fraction of the tile in [0, 1)
    reconstruct_editor: str | None = None   # reconstruct: the other editor; None: RECONSTRUCT_EDITORS[attacker's]
    reconstruct_instruction: str = ""   # reconstruct: the identity instruction it edits with
    reconstruct_strength: float = 0.3   # reconstruct with an sd editor: img2img strength (ip2p has none)
    reconstruct_steps: int | None = None    # reconstruct: inference steps; None: the other editor's own
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "PurifyConfig":
        _positive("noise_sigma", self.noise_sigma, allow_zero=True)
        _integer("upscale_factor", self.upscale_factor, 1)
        _choice("upscale_filter", self.upscale_filter, RESIZE_FILTERS)
        for name in ("strength", "reconstruct_strength"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value!r}")
        _integer("steps", self.steps, 1)
        for name in ("editor", "reconstruct_editor"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be None or an editor name, got {value!r}")
        if self.tile is not None:
            _integer("tile", self.tile, 8)
        if not isinstance(self.tile_overlap, (int, float)) or not 0 <= self.tile_overlap < 1:
            raise ValueError(f"tile_overlap must be in [0, 1), got {self.tile_overlap!r}")
        if not isinstance(self.reconstruct_instruction, str):
            raise ValueError(f"reconstruct_instruction must be a string, got {self.reconstruct_instruction!r}")
        if self.reconstruct_steps is not None:
            _integer("reconstruct_steps", self.reconstruct_steps, 1)
        _integer("seed", self.seed, 0)
        return self

    def reconstruct_for(self, attacker: str) -> str:
        """The editor ``reconstruct`` uses against ``attacker``'s editor: never the attacker's own."""
        other = self.reconstruct_editor or RECONSTRUCT_EDITORS.get(attacker)
        if other is None:
            raise ValueError(f"purifier 'reconstruct' needs reconstruct_editor: an editor other than the "
                             f"attacker's {attacker!r} (defaults exist only for {list(RECONSTRUCT_EDITORS)})")
        if other == attacker:
            raise ValueError(f"reconstruct_editor must differ from the attacker's editor, got {other!r}")
        return other

    def replace(self, **changes: Any) -> "PurifyConfig":
        return dataclasses.replace(self, **changes)   # validated on construction


def _purifiers(value: Any, purify: Any, attacker: str) -> None:
    """``purifiers``: names from PURIFIERS, "none" (the unpurified file) among them, no repeats."""
    _tuple("purifiers", value, lambda v: v in PURIFIERS, f"names from {list(PURIFIERS)}")
    if "none" not in value or len(set(value)) != len(value):
        raise ValueError(f"purifiers must include 'none' and name each purifier once, got {list(value)}")
    if not isinstance(purify, PurifyConfig):
        raise ValueError(f"purify must be a PurifyConfig, got {purify!r}")
    if "reconstruct" in value:
        purify.reconstruct_for(attacker)


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
    view: str = "editor"                    # "editor": photos at the editor's size; "attacker": full size
    attacker_filters: tuple[str, ...] = ("lanczos", "bicubic", "bilinear")   # attacker view: Pillow filters
    size_variants: tuple[str, ...] = EVAL_SIZE_VARIANTS                    # attacker view: full-size photos
    purifiers: tuple[str, ...] = ("none",)  # what the attacker may run on the file before the edit (PURIFIERS)
    purify: PurifyConfig = field(default_factory=PurifyConfig)
    lpips_weights: str | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "EvalConfig":
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be a non-empty list without repeats, got {list(self.methods)}")
        for m in self.methods:
            method_config(m, self.attack)
        if not isinstance(self.edit, EditConfig):
            raise ValueError(f"edit must be an EditConfig, got {self.edit!r}")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)}")
        unknown = [t for t in self.transforms if t not in ROBUSTNESS_TRANSFORMS]
        if unknown or "none" not in self.transforms:
            raise ValueError(f"transforms must include 'none' and come from {list(ROBUSTNESS_TRANSFORMS)}, "
                             f"got {list(self.transforms)}")
        if self.protect_prompts:
            validate_prompts(self.protect_prompts)
        _choice("view", self.view, ("editor", "attacker"))
        _tuple("attacker_filters", self.attacker_filters, lambda v: v in RESIZE_FILTERS,
               f"names from {list(RESIZE_FILTERS)}")
        _tuple("size_variants", self.size_variants, lambda v: v in SIZE_VARIANTS, f"names from {list(SIZE_VARIANTS)}")
        _purifiers(self.purifiers, self.purify, self.model)
        return self

    def settings(self) -> dict:
        return dataclasses.asdict(self)


def micro_edit_config(name: str) -> "EditConfig":
    """The attacker's edit settings for a micro-editor: its own (MICRO_MODELS, PROXY_MODELS), else (a directory of an
    editor trained with ``train-editor``) MICRO_SAMPLER."""
    steps, guidance, image_guidance = {**MICRO_MODELS, **PROXY_MODELS}.get(name, MICRO_SAMPLER)
    return EditConfig(steps=steps, guidance_scale=guidance, image_guidance_scale=image_guidance)


#: The micro benchmark's attack: the paper's budget and iterations (γ = 0.03, N = 100, |𝒯| = 10,
#: α = 1/255) at the micro world's size (64 px).
MICRO_ATTACK = AttackConfig(resolution=64)


@dataclass(frozen=True)
class MicroSuiteConfig:
    """``danp-protect micro-bench`` (evaluation/micro_suite.py): held-out scenes of a micro edit world,
    protected against ``editors[0]``, edited by every editor (the others: transfer)."""

    # "flat": the 64x64 micro world (micro/world.py); "textured": the same scenes at 128x128 with texture
    # (micro/textures.py), for the SD-like proxy editors. The suite protects and edits at the world's size:
    # attack.resolution must be it (64 or 128).
    world: str = "flat"
    # Empty: the world's own editors (MICRO_WORLDS). Flat: protected against micro-ip2p, whose object words attend
    # to their objects as SD's do (trained in, see micro/training.py EditorConfig.attention_loss), so DANP's
    # attention term has something to act on; micro-ip2p-b (trained without it) is the independent transfer editor.
    # Textured: proxy-ip2p, and proxy-ip2p-b for transfer.
    editors: tuple[str, ...] = ()
    # How many of ``editors``, from the first, each photo is protected against at once: 1, or an ensemble (one δ,
    # the mean of their objectives, protect/ensemble.py). The attacker edits with every editor either way.
    ensemble: int = 1
    scenes: int = 24
    scene_seed: int = 0
    methods: tuple[str, ...] = tuple(EVAL_METHODS)
    attack: AttackConfig = MICRO_ATTACK
    # A budget curve: the attack at each of several budgets, every method run at each (empty: ``attack`` alone).
    # Each differs from ``attack`` in eps and step_size only; build them with profile_config at each γ so that the
    # step size follows the budget as the profile does (the CLI's --eps list does).
    budgets: tuple[AttackConfig, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)          # the attacker's edit seeds
    transforms: tuple[str, ...] = ("none",)     # robustness transforms of the protected file (none, jpeg75, …)
    view: str = "editor"                        # "attacker": full-size scenes, resized by the attacker
    # The scenes' sizes and aspects (config.SIZE_VARIANTS): in the attacker view the full-size photo; in the
    # editor view the attacker's copy of it (the same scene in the same frame, protected at the editor's size).
    size_variants: tuple[str, ...] = ("4x-1:1",)
    # What each photo is protected against: "own" = the attacker's instruction; "kinds" = it and one edit of
    # every other kind on the same object (micro/world.edits_of_object): several prompts per photo.
    protect_set: str = "own"
    # "heldout": the benchmark; "train": training scenes, for choosing methods and presets (the "unseen" wording
    # is then the edit's other training wording), so that nothing is tuned on held-out scenes or wordings.
    split: str = "heldout"
    device: str | None = None
    workers: int = 1                            # parallel Ray workers (evaluation/workers.py), one torch thread each
    # What the attacker may run on the protected file before the edit (PURIFIERS; model-based ones default to
    # editors[0], the editor protected against); every purified file is edited by every editor.
    purifiers: tuple[str, ...] = ("none",)
    purify: PurifyConfig = field(default_factory=PurifyConfig)

    def __post_init__(self) -> None:
        if self.editors == () and self.world in MICRO_WORLDS:
            object.__setattr__(self, "editors", MICRO_WORLDS[self.world][0])
        self.validate()

    def validate(self) -> "MicroSuiteConfig":
        _choice("world", self.world, tuple(MICRO_WORLDS))
        editors, variants = MICRO_WORLDS[self.world]
        _tuple("editors", self.editors, lambda v: isinstance(v, str) and bool(v.strip()),
               f"names from {list(editors)} or directories of trained micro-editors")
        for name in self.editors:
            other = next((w for w, (names, _) in MICRO_WORLDS.items() if name in names and w != self.world), None)
            if other is not None:
                raise ValueError(f"editors: {name!r} is trained on the {other} world, not on world={self.world!r} "
                                 f"(its editors: {', '.join(editors)})")
        _integer("ensemble", self.ensemble, 1)
        if self.ensemble > len(self.editors):
            raise ValueError(f"ensemble must be at most the {len(self.editors)} editor(s) given, got {self.ensemble}")
        _integer("scenes", self.scenes, 1)
        _integer("scene_seed", self.scene_seed, 0)
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be a non-empty list without repeats, got {list(self.methods)}")
        for m in self.methods:
            method_config(m, self.attack)
        _tuple("budgets", self.budgets, lambda v: isinstance(v, AttackConfig), "AttackConfigs", empty=True)
        if len({b.eps for b in self.budgets}) != len(self.budgets):
            raise ValueError(f"budgets must have distinct eps, got {[b.eps for b in self.budgets]}")
        for i, budget in enumerate(self.budgets):
            if budget.replace(eps=self.attack.eps, step_size=self.attack.step_size) != self.attack:
                changed = [f"{k}={v!r}" for k, v in dataclasses.asdict(budget).items()
                           if k not in ("eps", "step_size") and getattr(self.attack, k) != v]
                raise ValueError(f"budgets[{i}] must differ from attack in eps and step_size only, got "
                                 f"{', '.join(changed)}")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be a non-empty list of integers >= 0, got {list(self.seeds)}")
        _tuple("transforms", self.transforms, lambda v: v in ROBUSTNESS_TRANSFORMS,
               f"names from {list(ROBUSTNESS_TRANSFORMS)}")
        _choice("view", self.view, ("editor", "attacker"))
        _tuple("size_variants", self.size_variants, lambda v: v in SIZE_VARIANTS, f"names from {list(SIZE_VARIANTS)}")
        for variant in self.size_variants:
            if variant not in variants:
                raise ValueError(f"size_variants: {variant!r} is not drawn in the {self.world} world, which has "
                                 f"{', '.join(variants)} only (square frame)")
        _choice("protect_set", self.protect_set, ("own", "kinds"))
        _choice("split", self.split, ("heldout", "train"))
        _integer("workers", self.workers, 1)
        _purifiers(self.purifiers, self.purify, self.editors[0])
        return self

    @property
    def attacks(self) -> tuple[AttackConfig, ...]:
        """The attack at every budget run, smallest budget first."""
        return tuple(sorted(self.budgets, key=lambda b: b.eps)) or (self.attack,)

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


#: AttackConfig fields that concern some editor kinds only: config_json records them only when changed from
#: their defaults, so that a configuration's hash does not move for editors they do not concern.
KIND_SPECIFIC_ATTACK_FIELDS: tuple[str, ...] = ("inpaint_masks", "inpaint_mask_area")


def config_json(attack: AttackConfig, model_id: str, model_revision: str | None,
                output: dict[str, Any] | None = None, ensemble: dict[str, Any] | None = None) -> str:
    """Canonical JSON of everything that determines a protected photo (sorted keys, no spaces).
    ``output``: the output settings (output_settings()), ``ensemble``: the further editors and the weights
    (ensemble_settings()); each included only when set, so that manifests written before they existed
    keep their configuration hash (likewise KIND_SPECIFIC_ATTACK_FIELDS at their defaults)."""
    settings = dataclasses.asdict(attack)
    for name in KIND_SPECIFIC_ATTACK_FIELDS:
        if settings[name] == AttackConfig.__dataclass_fields__[name].default:
            del settings[name]
    payload = {"attack": settings, "model_id": model_id, "model_revision": model_revision}
    if output:
        payload["output"] = output
    if ensemble:
        payload["ensemble"] = ensemble
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def config_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def output_settings(cfg: PipelineConfig) -> dict[str, Any] | None:
    """What of the output settings changes an output file (for config_json); None when all default.
    Credentials are not part of it: only whether outputs are signed."""
    settings = {"output_format": cfg.output_format, "quality": cfg.quality, "strip_gps": cfg.strip_gps,
                "strip_metadata": cfg.strip_metadata, "c2pa": cfg.c2pa_cert is not None}
    defaults = {"output_format": "png", "quality": DEFAULT_QUALITY, "strip_gps": False, "strip_metadata": False,
                "c2pa": False}
    if settings["output_format"] in LOSSLESS_FORMATS:
        settings["quality"] = defaults["quality"]    # quality does not change a lossless file
    return None if settings == defaults else settings


def ensemble_settings(cfg: PipelineConfig) -> dict[str, Any] | None:
    """The editors protected against besides ``model``, and every editor's weight (normalized, model
    first): part of the configuration, so that a rerun with another set of editors redoes its photos."""
    if not cfg.ensemble:
        return None
    weights = cfg.editor_weights or (1.0,) * len(cfg.editors)
    return {"models": list(cfg.ensemble), "weights": [w / sum(weights) for w in weights]}
