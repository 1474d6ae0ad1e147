"""``danp-protect bench``: how fast the immunizer runs, per iteration and per photo, and at what memory.

Builds an editor (the tiny test editors of every kind, or the full-size SD v1.5 / InstructPix2Pix / SD
inpainting / SDXL / SDXL InstructPix2Pix architectures with random weights, which cost exactly what the real
models cost and need no download), then times
``gradients()`` — one PGD iteration: VAE encode, |𝒯| UNet passes with their backward, VAE backward —
on a fixed protected photo. With ``--path both`` the reference and fast paths alternate iteration by
iteration, so that both see the same machine load; medians are reported. Per-photo time is
``setup + steps × iteration`` over the batch. Several editors are an ensemble protected against at once
(protect/ensemble.py): each iteration does every editor's work. Only the asked iterations run on the
device: FLOPs are counted on copies of the editors on the "meta" device (shapes only, no arithmetic) with
torch's FlopCounterMode, one traced iteration per kind of iteration (:class:`Work`), each distinct op
traced once (evaluation/flops.py), and set against the device's dense bf16 peak where it is known.
Memory: the editors' weights, the peak of the timed iterations where measured, and the host-memory
rule's estimate (evaluation/memory.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..config import BENCH_ARCHS, DEFAULT_PROMPTS, AttackConfig
from ..protect import ensemble
from ..protect.devices import pick_device, resolve_dtype
from ..protect.diffusion import set_memory_format
from ..protect.immunizer import Immunizer
from ..protect.models import EditorBundle, full_size_editor, load_editor
from .flops import FlopTable, count_flops_of
from .memory import MEANING, host_estimate_bytes, peak_memory, weights_bytes

logger = logging.getLogger(__name__)

#: Dense bf16/fp16 tensor-core peaks in TFLOP/s, by substring of the CUDA device name (first match wins).
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
)


def run(archs: str | Sequence[str], configs: dict[str, AttackConfig], *, device: str | None = None,
        precision: str = "auto", threads: int | None = None, count_flops: bool = True,
        **options: Any) -> dict[str, Any]:
    """Build the editors of ``archs`` (one, or several protected against at once) and :func:`benchmark` the
    named configs on them (``danp-protect bench``); with ``count_flops``, the work is counted on copies of the
    editors built on the meta device."""
    archs = [archs] if isinstance(archs, str) else list(archs)
    if not archs:
        raise ValueError("bench needs at least one architecture (--arch), got none")
    if threads:
        torch.set_num_threads(threads)
    first = next(iter(configs.values()))
    target = pick_device(device)
    editors = [build_editor(arch, target, precision, first.seed + k) for k, arch in enumerate(archs)]
    counter = None
    if count_flops and target.type != "meta":
        counter = [build_editor(arch, torch.device("meta"), precision, first.seed + k) for k, arch in enumerate(archs)]
    report = benchmark(editors, configs, counter=counter, **options)
    report["arch"], report["archs"] = "+".join(archs), archs
    return report


def build_editor(arch: str, device: torch.device, precision: str, seed: int = 0) -> EditorBundle:
    """The editor to time: a tiny one, or a full-size architecture with random weights built on ``device``."""
    if arch not in BENCH_ARCHS:
        raise ValueError(f"arch must be one of {list(BENCH_ARCHS)}, got {arch!r}")
    kind, size = BENCH_ARCHS[arch]
    if size == "tiny":
        return load_editor(arch, device=device, precision=precision, seed=seed)
    start = time.perf_counter()
    bundle = full_size_editor(kind, seed=seed, device=device).to(device, resolve_dtype(precision, device)).freeze()
    logger.info("built full-size %s architecture (random weights) on %s in %.1f s", arch, device,
                time.perf_counter() - start)
    return bundle


def benchmark(editors: EditorBundle | Sequence[EditorBundle], configs: dict[str, AttackConfig], *,
              batch_size: int = 1, prompts: int = 1, iterations: int = 3, warmup: int = 1,
              counter: EditorBundle | Sequence[EditorBundle] | None = None,
              editor_weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Time ``warmup + iterations`` PGD iterations of each named config against ``editors`` (one, or an
    ensemble with ``editor_weights``), alternating between the configs, and count their work on ``counter``
    (the same editors on the meta device; None: not counted); on meta ``editors``, count only. Returns a
    JSON-able report."""
    editors = [editors] if isinstance(editors, EditorBundle) else list(editors)
    ensemble.editor_weights(editor_weights, len(editors))            # a ValueError naming a bad list, before any work
    if any(cfg.method == "random" for cfg in configs.values()):
        raise ValueError("method 'random' draws noise once and runs no PGD iterations: nothing to time")
    if batch_size < 1 or prompts < 1 or iterations < 1 or warmup < 0:
        raise ValueError(f"batch_size, prompts and iterations must be >= 1 and warmup >= 0, got "
                         f"{batch_size}, {prompts}, {iterations}, {warmup}")
    bundle, first = editors[0], next(iter(configs.values()))
    size = first.resolution
    gen = torch.Generator().manual_seed(first.seed)
    x0 = torch.rand(batch_size, 3, size, size, generator=gen).to(bundle.device)
    x = (x0 + first.eps * torch.randn(x0.shape, generator=gen).sign().to(x0.device)).clamp(0, 1)
    prompt_lists = [[DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)] for i in range(prompts)]] * batch_size
    seeds = list(range(batch_size))
    sync = torch.cuda.synchronize if bundle.device.type == "cuda" else (lambda: None)
    report: dict[str, Any] = {
        "dtype": str(bundle.dtype).replace("torch.", ""), "model_id": " + ".join(e.model_id for e in editors),
        "resolution": [size, size], "batch_size": batch_size, "prompts_per_photo": prompts,
        "steps": first.steps, "timesteps": first.num_timesteps, "memory": _memory(editors, batch_size * size * size),
    }
    table = FlopTable()                    # every count of this run replays the ops its predecessors traced

    if bundle.device.type == "meta":       # shapes only: count the work, time nothing
        results = {name: {"config": _knobs(cfg), **count_photo_flops(editors, cfg, x0, x, prompt_lists, seeds,
                                                                     table=table)}
                   for name, cfg in configs.items()}
        return {"device": {"type": "meta", "name": "meta (FLOPs counted, nothing timed)"}, **report,
                "results": results}
    results: dict[str, dict[str, Any]] = {}
    objectives = {}
    for name, cfg in configs.items():
        start = time.perf_counter()
        objectives[name] = Immunizer(editors, cfg, editor_weights).objective(x0, prompt_lists, seeds)
        sync()
        setup = time.perf_counter() - start
        _layout(editors, cfg)
        with peak_memory(bundle.device) as peak:
            for it in range(warmup):
                objectives[name].gradients(x)
            sync()
        results[name] = {"config": _knobs(cfg), "setup_s": setup, "peak_memory_bytes": peak.bytes(),
                         "iteration_s": [], "iteration_cpu_s": []}
        report["memory"]["peak"] = MEANING[peak.kind]
    for rnd in range(iterations):          # alternate configs iteration by iteration: same machine load for all
        for name, objective in objectives.items():
            _layout(editors, configs[name])
            with peak_memory(bundle.device, reset=warmup == 0 and rnd == 0) as peak:
                sync()
                wall, cpu = time.perf_counter(), time.process_time()
                objective.gradients(x)
                sync()
                results[name]["iteration_s"].append(time.perf_counter() - wall)
                results[name]["iteration_cpu_s"].append(time.process_time() - cpu)
            if warmup == 0 and rnd == 0:
                results[name]["peak_memory_bytes"] = peak.bytes()
    device = describe_device(bundle.device)
    for name, res in results.items():
        res.update(summarize(res, configs[name].steps, batch_size))
        if counter is not None:
            work = count_work(counter, configs[name], x0, x, prompt_lists, seeds, table=table,
                              iterations=max(configs[name].steps, warmup + iterations))
            res.update(work.photo(configs[name].steps, len(x0)))
            res.update(_by_editor(counter, configs[name], x0, x, prompt_lists, seeds, table))
            timed = range(warmup, warmup + iterations)           # the iterations the clock measured
            res["flop_per_iteration"] = sum(work.flop(i) for i in timed) / len(timed)
            res["achieved_tflops"] = res["flop_per_iteration"] / res["sec_per_iteration"] / 1e12
            if device["peak_tflops"] and bundle.dtype in (torch.bfloat16, torch.float16):
                res["fraction_of_peak"] = res["achieved_tflops"] / device["peak_tflops"]
    report = {"device": device, **report, "iterations": iterations, "warmup": warmup, "results": results}
    if "reference" in results and "fast" in results:
        report["speedup_fast_over_reference"] = (results["reference"]["sec_per_iteration"]
                                                 / results["fast"]["sec_per_iteration"])
    return report


def _memory(editors: list[EditorBundle], pixels: int) -> dict[str, Any]:
    """The weights every editor holds, and the host-memory rule's figure for them and a batch of ``pixels``."""
    held = [weights_bytes(e) for e in editors]
    return {"weights_bytes": sum(held), "weights_bytes_by_editor": held,
            "estimate_bytes": host_estimate_bytes(sum(held), pixels), "estimate": MEANING["host_estimate"]}


def _knobs(cfg: AttackConfig) -> dict[str, Any]:
    """The config fields that change how much work an iteration does or how it is laid out."""
    return {k: getattr(cfg, k) for k in ("path", "timestep_batch", "channels_last", "compile", "gradient_checkpointing",
                                         "vae_recompute", "steps", "num_timesteps", "timestep_subset", "prompt_subset",
                                         "noise", "balance_every", "step_decay", "step_size")}


@dataclass
class Work:
    """The counted work of protecting a batch: building the objective, and each traced gradient evaluation
    (iteration index -> FLOPs). Iterations of one kind do the same work: the first (which also derives the
    clean branch), and then, with ``balance_every`` = k > 1, the measuring ones (every k-th) and those with
    a single backward in between; ``flop(i)`` is the traced iteration of i's kind."""

    setup_flop: int
    traced: dict[int, int]
    period: int = 1

    def kind(self, i: int) -> int:
        """The first iteration of i's kind."""
        if i == 0:
            return 0
        return self.period if self.period > 1 and i % self.period == 0 else 1

    def flop(self, i: int) -> int:
        return self.traced[i] if i in self.traced else self.traced[self.kind(i)]

    def photo(self, steps: int, photos: int) -> dict[str, float]:
        """Per photo: the setup and ``steps`` gradient evaluations (the PGD update, elementwise, is not counted)."""
        iterations = sum(self.flop(i) for i in range(steps))
        return {"setup_flop": self.setup_flop, "iterations_flop": iterations,
                "tflop_per_photo": (self.setup_flop + iterations) / photos / 1e12,
                "traced_iterations": len(self.traced)}


def count_work(editors: EditorBundle | Sequence[EditorBundle], cfg: AttackConfig, x0: torch.Tensor,
               x: torch.Tensor, prompt_lists: list[list[str]], seeds: list[int], *, every: bool = False,
               iterations: int | None = None, table: FlopTable | None = None, replay: bool = True) -> Work:
    """Trace building the objective of x0 against ``editors`` (one, or their ensemble) and its gradient
    evaluations at x (which photo does not change the count), for iterations 0 … ``iterations`` - 1 (default
    ``cfg.steps``). On the meta device, where no branch depends on values, one iteration of each kind is traced
    (the first, the second and, when ``balance_every`` = k > 1, the k-th; those between run uncounted); every
    one where the kinds are not known ahead: fixed noise drawn for a subset of timesteps or prompts (its clean
    cache fills at random), several attacker views, a device with values, or ``every``. On meta each distinct
    op is traced once into ``table`` (a new one by default) and replayed after (evaluation/flops.py; the same
    count); ``replay=False`` traces every op."""
    editors = [editors] if isinstance(editors, EditorBundle) else list(editors)
    device = editors[0].device
    x0, x = x0.to(device), x.to(device)
    table = (table if table is not None else FlopTable()) if replay and device.type == "meta" else None
    objective = None

    def setup() -> None:
        nonlocal objective
        objective = Immunizer(editors, cfg).objective(x0, prompt_lists, seeds)

    setup_flop = count_flops_of(setup, table)
    period = max(1, cfg.balance_every)
    random_cache = cfg.noise == "fixed" and (cfg.timestep_subset or cfg.prompt_subset)
    views = max(len(getattr(m, "views", ())) for m in getattr(objective, "members", [objective]))
    kinds_known = device.type == "meta" and not random_cache and views <= 1
    needed = cfg.steps if iterations is None else iterations
    work = Work(setup_flop, {}, period)
    for i in range(needed if every or not kinds_known else min(needed, period + 1 if period > 1 else 2)):
        if every or not kinds_known or work.kind(i) == i:
            work.traced[i] = count_flops_of(lambda: objective.gradients(x), table)
        elif table is not None:     # of a kind already traced: replayed, uncounted, to reach the next kind
            count_flops_of(lambda: objective.gradients(x), table)
        else:
            objective.gradients(x)
    return work


def count_photo_flops(editors: EditorBundle | Sequence[EditorBundle], cfg: AttackConfig, x0: torch.Tensor,
                      x: torch.Tensor, prompt_lists: list[list[str]], seeds: list[int], *, every: bool = False,
                      table: FlopTable | None = None) -> dict[str, Any]:
    """The counted work of protecting the photos x0 against ``editors`` (:func:`count_work`), per photo:
    building the objective (clean latents, masks) and every one of ``cfg.steps`` gradient evaluations; for
    an ensemble, each editor's share counted alone too."""
    work = count_work(editors, cfg, x0, x, prompt_lists, seeds, every=every, table=table).photo(cfg.steps, len(x0))
    return {**work, **_by_editor(editors, cfg, x0, x, prompt_lists, seeds, table, every=every)}


def _by_editor(editors: EditorBundle | Sequence[EditorBundle], cfg: AttackConfig, x0: torch.Tensor,
               x: torch.Tensor, prompt_lists: list[list[str]], seeds: list[int], table: FlopTable | None, *,
               every: bool = False) -> dict[str, list[float]]:
    """An ensemble's per-photo TFLOP of each editor protected against alone (nothing for one editor)."""
    if isinstance(editors, EditorBundle) or len(editors) < 2:
        return {}
    return {"tflop_per_photo_by_editor": [
        count_work(e, cfg, x0, x, prompt_lists, seeds, every=every, table=table).photo(cfg.steps, len(x0))
        ["tflop_per_photo"] for e in editors]}


def _layout(editors: list[EditorBundle], cfg: AttackConfig) -> None:
    """Convert the weights' memory layout for this config before the clock starts, not inside gradients()."""
    for bundle in editors:
        set_memory_format(bundle, cfg.path == "fast" and cfg.channels_last)


def summarize(res: dict[str, Any], steps: int, batch_size: int) -> dict[str, float]:
    per_iteration = statistics.median(res["iteration_s"])
    per_photo = (res["setup_s"] + steps * per_iteration) / batch_size
    return {"sec_per_iteration": per_iteration, "cpu_sec_per_iteration": statistics.median(res["iteration_cpu_s"]),
            "sec_per_photo": per_photo, "photos_per_hour": 3600.0 / per_photo}


def describe_device(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((value for key, value in PEAK_TFLOPS if key in name), None)
        return {"type": "cuda", "name": name, "peak_tflops": peak, "torch": torch.__version__}
    return {"type": "cpu", "name": _cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count(),
            "peak_tflops": None, "torch": torch.__version__}


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def format_report(report: dict[str, Any]) -> str:
    dev, memory = report["device"], report["memory"]
    lines = [f"{report['model_id']} on {dev['name']} ({report['dtype']}), {report['resolution'][0]}² working "
             f"resolution, batch {report['batch_size']}, {report['prompts_per_photo']} prompt(s), "
             f"{report['timesteps']} timesteps, {report['steps']} steps per photo"]
    for name, res in report["results"].items():
        parts = res.get("tflop_per_photo_by_editor")
        shares = f" = {' + '.join(f'{p:.4g}' for p in parts)} by editor" if parts else ""
        if "sec_per_iteration" not in res:     # meta device: counted, not timed
            lines.append(f"  {name:<10} {res['tflop_per_photo']:.4g} TFLOP/photo{shares} "
                         f"(setup {res['setup_flop'] / 1e12:.3g}; {res['traced_iterations']} iteration(s) traced)")
            continue
        flops = ""
        if "achieved_tflops" in res:
            flops = (f"  {res['flop_per_iteration'] / 1e12:.3g} TFLOP/it  {res['tflop_per_photo']:.4g} TFLOP/photo"
                     f"{shares}  {res['achieved_tflops']:.3g} TFLOP/s")
            if "fraction_of_peak" in res:
                flops += f" ({100 * res['fraction_of_peak']:.0f}% of {dev['peak_tflops']:.0f})"
        lines.append(f"  {name:<10} {res['sec_per_iteration']:8.3f} s/it  {res['sec_per_photo']:9.1f} s/photo  "
                     f"{res['photos_per_hour']:9.1f} photos/h  peak {res['peak_memory_bytes'] / 2**30:.2f} GiB{flops}")
    if "speedup_fast_over_reference" in report:
        lines.append(f"  fast is {report['speedup_fast_over_reference']:.2f}x the reference (median s/it)")
    held = memory["weights_bytes_by_editor"]
    each = f" ({' + '.join(_size(b) for b in held)})" if len(held) > 1 else ""
    lines.append(f"  memory: weights {_size(memory['weights_bytes'])}{each}; estimate "
                 f"{_size(memory['estimate_bytes'])} ({memory['estimate']})"
                 + (f"; each peak: {memory['peak']}" if "peak" in memory else ""))
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
