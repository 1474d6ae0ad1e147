"""``eval``, ``micro-bench``, ``bench`` and ``train-editor``: measuring protection and its cost."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .. import config as C
from ..config import (
    EditConfig,
    EvalConfig,
    MicroSuiteConfig,
    PurifyConfig,
)
from .options import _csv_list, _default, _parse_value, _weights, add_attack_options, attack_config

logger = logging.getLogger("danp_pipeline")


# -- eval, micro-bench, bench -------------------------------------------------------------------------

def add_comparison_options(parser: argparse.ArgumentParser, cls: type, size_variants_help: str) -> None:
    """What eval and micro-bench compare, on which device; defaults from ``cls`` (EvalConfig or
    MicroSuiteConfig)."""
    methods = _default(cls, "methods")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when present)")
    parser.add_argument("--methods", type=_csv_list(str), default=methods,
                        help=f"comma-separated (default: all of {','.join(methods)})")
    parser.add_argument("--seeds", type=_csv_list(int), default=_default(cls, "seeds"),
                        help=f"edit seeds (default {','.join(map(str, _default(cls, 'seeds')))})")
    parser.add_argument("--transforms", type=_csv_list(str), default=_default(cls, "transforms"),
                        help=f"robustness transforms of the protected file, from {','.join(C.ROBUSTNESS_TRANSFORMS)} "
                             f"(default {','.join(_default(cls, 'transforms'))})")
    parser.add_argument("--view", choices=("editor", "attacker"), default=_default(cls, "view"),
                        help="editor: photos at the editor's size; attacker: full-size photos protected at full "
                             f"size, then resized by the attacker (default {_default(cls, 'view')})")
    parser.add_argument("--size-variants", type=_csv_list(str), default=_default(cls, "size_variants"),
                        help=f"from {','.join(C.SIZE_VARIANTS)}: {size_variants_help} "
                             f"(default {','.join(_default(cls, 'size_variants'))})")
    parser.add_argument("--purifiers", type=_csv_list(str), default=(),
                        help=f"purifiers the attacker may run on the downloaded file before the edit, from "
                             f"{','.join(C.PURIFIERS[1:])}; each is evaluated beside the unpurified file, and the "
                             "summary reports the attacker's best choice per photo (default: none)")
    parser.add_argument("--purify-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a purifier setting (repeatable), one of: " + ", ".join(PurifyConfig.__dataclass_fields__))


def purify_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``purifiers`` (the unpurified file first) and ``purify`` for EvalConfig and MicroSuiteConfig."""
    d, options = PurifyConfig(), {}
    for item in args.purify_option:
        key, sep, raw = item.partition("=")
        if not sep or key not in PurifyConfig.__dataclass_fields__:
            raise ValueError(f"--purify-option expects KEY=VALUE with KEY one of "
                             f"{', '.join(PurifyConfig.__dataclass_fields__)}; got {item!r}")
        options[key] = _parse_value(raw, getattr(d, key))
    return {"purifiers": ("none", *(p for p in args.purifiers if p != "none")), "purify": d.replace(**options)}


def add_workers_option(parser: Any, default: int) -> None:
    """``--workers``: the same meaning wherever it is offered (evaluation/workers.py)."""
    parser.add_argument("--workers", type=int, default=default,
                        help="parallel workers: Ray actors, each loading the editor(s) once and evaluating whole "
                             f"photos or scenes; fractional CPUs, GPUs only where the cluster has them (default "
                             f"{default}{': in this process' if default == 1 else ''})")


def configure_eval(parser: argparse.ArgumentParser) -> None:
    e = EditConfig()
    parser.add_argument("input", metavar="INPUT",
                        help="folder of photos (with --prompt) or a JSON/JSONL/CSV file of {photo, instruction} "
                             "pairs, photo paths relative to the file")
    parser.add_argument("output", metavar="OUTPUT", help="folder for results.parquet, summary.md and grids/")
    parser.add_argument("--model", default=_default(EvalConfig, "model"),
                        help="diffusers repo id, local dir, or a tiny test editor (tiny-<kind>)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--prompt", action="append", default=[], help="instruction for a folder INPUT (repeatable)")
    parser.add_argument("--protect-prompt", action="append", default=[],
                        help="protect against these instead of each pair's own instruction (unseen-prompt setting)")
    add_comparison_options(parser, EvalConfig, "the full-size photos of the attacker view")
    parser.add_argument("--attacker-filters", type=_csv_list(str), default=_default(EvalConfig, "attacker_filters"),
                        help="attacker view: the attacker's Pillow resize filters (default lanczos,bicubic,bilinear)")
    g = parser.add_argument_group("the attacker's edit")
    g.add_argument("--editor-steps", type=int, default=e.steps, help="inference steps (default: the pipeline's)")
    g.add_argument("--guidance-scale", type=float, default=e.guidance_scale)
    g.add_argument("--image-guidance-scale", type=float, default=e.image_guidance_scale, help="InstructPix2Pix kinds")
    g.add_argument("--strength", type=float, default=e.strength, help="img2img strength (SD, SDXL)")
    g.add_argument("--scheduler", choices=C.EDIT_SCHEDULERS, default=e.scheduler)
    parser.add_argument("--lpips-weights", default=None, help="local safetensors file of LPIPS weights "
                        "(default: $DANP_LPIPS_WEIGHTS); without it LPIPS is reported as unavailable")
    add_attack_options(parser, omit=("method",))


def eval_config(args: argparse.Namespace) -> EvalConfig:
    edit = EditConfig(steps=args.editor_steps, guidance_scale=args.guidance_scale,
                      image_guidance_scale=args.image_guidance_scale, strength=args.strength,
                      scheduler=args.scheduler)
    return EvalConfig(model=args.model, revision=args.revision, methods=tuple(args.methods), attack=attack_config(args),
                      edit=edit, seeds=tuple(args.seeds), transforms=tuple(args.transforms),
                      protect_prompts=tuple(args.protect_prompt), lpips_weights=args.lpips_weights,
                      device=args.device, view=args.view, attacker_filters=tuple(args.attacker_filters),
                      size_variants=tuple(args.size_variants), **purify_settings(args))


def eval_inputs(args: argparse.Namespace) -> tuple[EvalConfig, list]:
    """The evaluation's config and its (photo, instruction) pairs, for ``eval`` and jobs/evaluate.py."""
    import json

    from ..evaluation.evaluate import load_pairs

    config = eval_config(args)
    resolution = config.attack.resolution if config.view == "editor" else None   # attacker: full size
    pairs = load_pairs(args.input, tuple(args.prompt), resolution, config.attack.resolution_multiple)
    logger.info("evaluating %d pair(s) × %d method(s) × %d seed(s): %s", len(pairs), len(config.methods),
                len(config.seeds), json.dumps(config.settings(), sort_keys=True, default=str))
    return config, pairs


def run_eval(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import run

    config, pairs = eval_inputs(args)
    paths = run(config, pairs, args.output)
    logger.info("report: %s (table), %s (summary)", paths["parquet"], paths["summary"])
    return 0


def configure_eval_job(parser: argparse.ArgumentParser) -> None:
    """``eval`` plus its workers, for jobs/evaluate.py."""
    configure_eval(parser)
    pool = parser.add_argument_group("Ray")
    add_workers_option(pool, 1)
    pool.add_argument("--address", default=None, help="Ray cluster address (default: the job's cluster or a local one)")
    pool.add_argument("--cpus-per-worker", type=float, default=0.5, help="CPUs each worker asks Ray for (default 0.5)")
    pool.add_argument("--gpus-per-worker", type=float, default=None,
                      help="default: 1 when the cluster has GPUs, else 0")


def configure_micro_bench(parser: argparse.ArgumentParser) -> None:
    m = MicroSuiteConfig()
    parser.add_argument("output", metavar="OUTPUT", help="folder for results.parquet, summary.md and grids/")
    parser.add_argument("--scenes", type=int, default=m.scenes, help=f"scenes (default {m.scenes})")
    parser.add_argument("--scene-seed", type=int, default=m.scene_seed, help="which scenes of the split (default 0)")
    parser.add_argument("--split", choices=("heldout", "train"), default=m.split,
                        help="held-out scenes and wordings (the benchmark; default), or training scenes with the "
                             "other training wording as the unseen one (development: choose methods here)")
    parser.add_argument("--world", choices=tuple(C.MICRO_WORLDS), default=m.world,
                        help="flat: the 64x64 micro world; textured: the same scenes at 128x128 with texture, for "
                             f"the SD-like proxy editors, square scenes only (default {m.world})")
    defaults = "; ".join(f"{name}: {','.join(editors)}" for name, (editors, _) in C.MICRO_WORLDS.items())
    parser.add_argument("--editors", type=_csv_list(str), default=(),
                        help=f"protect against the first, edit with each (default: the world's; {defaults})")
    parser.add_argument("--ensemble", type=int, default=m.ensemble,
                        help="protect against the first N editors at once (one perturbation, the mean of their "
                             f"objectives); the others still measure transfer (default {m.ensemble})")
    parser.add_argument("--protect-set", choices=("own", "kinds"), default=m.protect_set,
                        help="protect against the attacker's instruction (own) or it and one edit of every other "
                             "kind on the same object (kinds: several prompts per photo; default own)")
    add_comparison_options(parser, MicroSuiteConfig, "the scenes' sizes and aspects, in either view")
    add_workers_option(parser, m.workers)
    add_attack_options(parser, omit=("method", "resolution"), budgets=True)    # the world's size is the resolution


def micro_suite_config(args: argparse.Namespace) -> MicroSuiteConfig:
    from ..micro import worlds

    size = worlds.get(args.world).size      # the world's photos and editors
    if not args.eps:
        raise ValueError("--eps must name at least one budget, got none")
    # the profile's step size at each budget; an explicit --step-size at all of them
    attacks = tuple(attack_config(args, eps=eps).replace(resolution=size) for eps in args.eps)
    return MicroSuiteConfig(world=args.world, editors=tuple(args.editors), ensemble=args.ensemble, scenes=args.scenes,
                            scene_seed=args.scene_seed, methods=tuple(args.methods), attack=attacks[0],
                            budgets=attacks if len(attacks) > 1 else (), seeds=tuple(args.seeds),
                            transforms=tuple(args.transforms), view=args.view, device=args.device,
                            workers=args.workers, size_variants=tuple(args.size_variants),
                            protect_set=args.protect_set, split=args.split, **purify_settings(args))


def run_micro_bench(args: argparse.Namespace) -> int:
    from ..evaluation import micro_suite

    config = micro_suite_config(args)
    logger.info("micro benchmark, %s world: %d scene(s) × %d method(s) × %d budget(s) × %d seed(s), editors %s",
                config.world, config.scenes, len(config.methods), len(config.attacks), len(config.seeds),
                ", ".join(config.editors))
    paths = micro_suite.run(config, args.output)
    logger.info("report: %s (table), %s (summary)", paths["parquet"], paths["summary"])
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=list(C.BENCH_ARCHS), action="append", default=None,
                        help="editor architecture; those without tiny- are full size with random weights (no "
                             "download); repeat it to protect against several at once, as run's --model (an "
                             f"ensemble: its FLOPs are the sum of each editor's; default {C.BENCH_DEFAULT_ARCH})")
    parser.add_argument("--model-weights", type=_weights, default=None, metavar="W1,W2,…",
                        help="with several --arch: their weights, in order, as run's (default equal; they change "
                             "no work)")
    parser.add_argument("--batch-size", type=int, default=1, help="photos per immunizer call")
    parser.add_argument("--prompts", type=int, default=1, help="edit instructions per photo (default 1)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="editor weights: auto = bf16 on GPU, fp32 on CPU (the attack's precision: bench sets "
                             "it here, not with --attack-option)")
    parser.add_argument("--path", choices=("fast", "reference", "both"), default=None,
                        help="which implementation to time; both (the default) alternate iteration by iteration; "
                             "with --device meta the default is fast alone, as the reference traces one UNet pass "
                             "per timestep (the attack's path: bench sets it here, not with --attack-option)")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per path (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per path first (default 1)")
    parser.add_argument("--device", default=None,
                        help="cpu or cuda (default: cuda when present); meta: count FLOPs per photo only, time "
                             "nothing (one traced iteration of each kind, not all --steps; no memory)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--no-flops", dest="flops", action="store_false",
                        help="skip counting FLOPs (counted on a copy of the architecture on the meta device)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON ('-': stdout)")
    add_attack_options(parser, omit=("precision", "path"))


def run_bench(args: argparse.Namespace) -> int:
    import json

    from ..evaluation import bench
    from ..storage import write_local

    cfg = attack_config(args).replace(precision=args.precision)
    path = args.path or ("fast" if args.device == "meta" else "both")
    paths = ["reference", "fast"] if path == "both" else [path]
    report = bench.run(args.arch or [C.BENCH_DEFAULT_ARCH], {p: cfg.replace(path=p) for p in paths},
                       device=args.device, precision=args.precision, threads=args.threads, batch_size=args.batch_size,
                       prompts=args.prompts, iterations=args.iterations, warmup=args.warmup, count_flops=args.flops,
                       editor_weights=args.model_weights)
    sys.stdout.write(bench.format_report(report) + "\n")
    if args.json == "-":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif args.json:
        write_local(args.json, json.dumps(report, indent=2).encode())
    return 0


# -- train-editor ------------------------------------------------------------------------------------

def configure_train_editor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT", help="folder for the run; the editor goes to OUT/editor")
    parser.add_argument("--variant", choices=("a", "b", "proxy", "proxy-b", "proxy-inpaint"), default="a",
                        help="a: micro-ip2p; b: micro-ip2p-b (other seeds and widths, for transfer); proxy: proxy-ip2p "
                             "(textured 128x128 world, 8x VAE); proxy-b: proxy-ip2p-b (its transfer editor); "
                             "proxy-inpaint: an SD inpainting editor of that world (held out: transfer only)")
    parser.add_argument("--quick", action="store_true", help="a few-minute run (smoke test; the editor will not edit)")
    parser.add_argument("--vae-from", default=None, help="folder of a saved AutoencoderKL to reuse")
    parser.add_argument("--vae-train-s", type=float, default=0.0, help="with --vae-from: the time it took to train")
    parser.add_argument("--steps", type=int, default=None, help="UNet steps (default: the variant's)")
    parser.add_argument("--vae-steps", type=int, default=None, help="VAE steps (default: the variant's)")
    parser.add_argument("--batch", type=int, default=None, help="UNet batch (default: the variant's)")
    parser.add_argument("--center-latents", action="store_true", help="fold the latent mean into the VAE")
    parser.add_argument("--time-budget", type=float, default=None, help="UNet training wall-time budget, seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="resumable checkpoint folder, replaced at every checkpoint (default OUT/checkpoint)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --checkpoint-dir (same variant), if it holds one")


def run_train_editor(args: argparse.Namespace) -> int:
    import torch

    from ..micro import training

    torch.set_num_threads(args.threads)
    cfg = training.VARIANTS[args.variant](training.EditorConfig())
    cfg = training.quick(cfg) if args.quick else cfg
    for name, value in (("steps", args.steps), ("batch", args.batch), ("time_budget_s", args.time_budget)):
        if value is not None:
            setattr(cfg, name, value)
    if args.vae_steps is not None:
        cfg.vae.steps = args.vae_steps
    cfg.vae.center_latents = cfg.vae.center_latents or args.center_latents
    info = training.train(cfg, args.output, vae_from=args.vae_from, vae_train_s=args.vae_train_s,
                          checkpoint_dir=args.checkpoint_dir, resume_run=args.resume)
    logger.info("trained %s in %.0f s: %d weight bytes, VAE %.2f dB, last loss %.4f; saved to %s/editor",
                cfg.name, info["total_train_s"], info["weights_total_bytes"], info["vae_recon_psnr_heldout"],
                info["loss_last100"], args.output)
    return 0
