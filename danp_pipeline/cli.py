"""The ``danp-protect`` command: all argument parsing of the project, and nothing else.

One parser per subcommand (``run``, ``ingest``, ``demo``, ``verify``, ``compact``, ``eval``,
``micro-bench``, ``bench``, ``train-editor``), each paired with a handler that turns the parsed
arguments into the library's typed configs and calls the library. ``jobs/*.py`` ask
:func:`command_parser` for a parser by name. Defaults come from ``config.py``; the library is
imported only inside handlers, so ``--help`` and ``verify`` do not pay for torch and diffusers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import config as C
from .config import (
    AttackConfig,
    EditConfig,
    EvalConfig,
    MicroSuiteConfig,
    PipelineConfig,
)

logger = logging.getLogger("danp_pipeline")


def _default(cls: type, name: str) -> Any:
    """A config field's default, so that no default is spelled twice."""
    fld = cls.__dataclass_fields__[name]
    return fld.default_factory() if callable(fld.default_factory) else fld.default


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-options", default="{}", help="JSON passed to fsspec (endpoint_url, key, …)")


def _csv_list(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    return parse


# -- attack options (run, ingest, eval, micro-bench, bench) ----------------------------------------

def add_attack_options(parser: argparse.ArgumentParser, omit: tuple[str, ...] = ()) -> None:
    """Options shared by every command that runs the immunizer; defaults come from AttackConfig. ``omit``:
    attack settings the command decides itself (eval's ``--methods`` decides ``method``; bench's own
    ``--path`` and ``--precision``), offered neither as a flag here nor as an ``--attack-option`` key."""
    d = AttackConfig()
    parser.set_defaults(attack_omitted=tuple(omit))
    g = parser.add_argument_group("attack (docs/method.md)")
    if "method" not in omit:
        g.add_argument("--method", default=d.method, choices=C.METHODS, help=f"objective (default {d.method})")
    g.add_argument("--eps", type=float, default=d.eps, help=f"L∞ budget γ on the [0,1] scale (default {d.eps})")
    g.add_argument("--steps", type=int, default=d.steps, help=f"PGD iterations N (default {d.steps})")
    g.add_argument("--step-size", type=float, default=None,
                   help="PGD step α (default 1/255; --profile fast: a fixed fraction of --eps). An explicit "
                        "value is always kept")
    g.add_argument("--timesteps", type=int, default=d.num_timesteps,
                   help=f"|𝒯| per iteration (default {d.num_timesteps})")
    g.add_argument("--timestep-mode", choices=("centres", "random"), default=d.timesteps,
                   help="the |𝒯| timesteps of an iteration: the centres of equal bins, or a random draw per bin "
                        f"(default {d.timesteps})")
    if "resolution" not in omit:
        g.add_argument("--resolution", type=int, default=d.resolution,
                       help=f"working resolution, longer side (default {d.resolution})")
    g.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the attack's noise and timestep draws; recorded in each row (default {d.seed})")
    g.add_argument("--profile", choices=C.PROFILES, default=C.PROFILES[0],
                   help="paper: the published method (default); fast: ~30%% of the iterations with a decaying step "
                        "(α a fixed fraction of --eps), fresh noise, half the timesteps per iteration, one backward "
                        "between norm measurements (scales --steps and --timesteps; --attack-option still "
                        "overrides)")
    g.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other attack setting (repeatable), one of: " + ", ".join(_attack_option_keys(omit)))


#: Attack settings with options of their own (not repeated in --attack-option's list).
_ATTACK_FLAGS = ("method", "eps", "steps", "step_size", "num_timesteps", "timesteps", "resolution", "seed")


def _attack_option_keys(omit: tuple[str, ...] = ()) -> list[str]:
    return [name for name in AttackConfig.__dataclass_fields__ if name not in _ATTACK_FLAGS + tuple(omit)]


def attack_config(args: argparse.Namespace) -> AttackConfig:
    d, omitted = AttackConfig(), getattr(args, "attack_omitted", ())
    fields = {
        "method": getattr(args, "method", d.method), "eps": args.eps, "steps": args.steps,
        "num_timesteps": args.timesteps, "timesteps": args.timestep_mode,
        "resolution": getattr(args, "resolution", d.resolution), "seed": args.seed,
    }
    known = AttackConfig.__dataclass_fields__
    options = {}
    for item in args.attack_option:
        key, sep, raw = item.partition("=")
        if not sep or key not in known or key in omitted:
            raise ValueError(f"--attack-option expects KEY=VALUE with KEY one of "
                             f"{', '.join(_attack_option_keys(omitted))}; got {item!r}")
        options[key] = _parse_value(raw, getattr(d, key))
    base = C.profile_config(getattr(args, "profile", C.PROFILES[0]), AttackConfig(**fields),
                            step_size=args.step_size)
    cfg = base.replace(**options)
    warning = cfg.reach_warning()
    if warning:
        logger.warning("%s", warning)
    return cfg


def _parse_value(raw: str, default: object) -> object:
    """``raw`` as the type of the field's default: bool, number, a comma-separated tuple, None."""
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected a boolean, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if isinstance(default, tuple):
        return tuple(_scalar(item.strip()) for item in raw.split(",") if item.strip())
    if default is None:
        return None if raw.lower() in ("", "none") else _scalar(raw)
    return type(default)(raw)


def _scalar(raw: str) -> object:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw


# -- run / ingest --------------------------------------------------------------------------------

def configure_run(parser: argparse.ArgumentParser) -> None:
    p = lambda name: _default(PipelineConfig, name)  # noqa: E731
    parser.add_argument("input", metavar="INPUT", help="fsspec URI or path of the photos (s3://bucket/prefix, ./dir)")
    parser.add_argument("output", metavar="OUTPUT", help="fsspec URI or path for images/ and manifest/")
    parser.add_argument("--model", default=p("model"),
                        help=f"the editor to protect against: a diffusers repo id (from the local Hugging Face cache, "
                             f"else downloaded) or local directory, safetensors only (default {p('model')}, "
                             "InstructPix2Pix). tiny-ip2p, tiny-sd (random weights) and the micro-editors are test "
                             "editors: outputs protected against them protect against nothing real")
    parser.add_argument("--revision", default=p("revision"), help="model revision (branch, tag or commit)")
    parser.add_argument("--prompt", action="append", default=[],
                        help="edit instruction to protect against (repeatable)")
    parser.add_argument("--prompts-file", default=p("prompts_file"),
                        help="JSON or CSV sidecar mapping object keys to prompts")
    parser.add_argument("--actors", type=int, default=p("actors"),
                        help=f"editor actors (one editor each; default {p('actors')})")
    parser.add_argument("--gpus-per-actor", type=float, default=p("gpus_per_actor"),
                        help="default: 1 when the cluster has a GPU, else 0")
    parser.add_argument("--cpus-per-actor", type=float, default=p("cpus_per_actor"),
                        help=f"CPUs each editor actor asks Ray for; keep it below the node's CPUs so that reads fit "
                             f"beside it (default {p('cpus_per_actor'):g})")
    parser.add_argument("--actor-memory", type=int, default=p("actor_memory"), metavar="BYTES",
                        help="host memory each editor actor asks Ray for (default: the editor's weights plus "
                             f"{C.ACTOR_BYTES_PER_PIXEL} bytes per pixel of a batch of photos of --max-pixels)")
    parser.add_argument("--cpus-per-task", type=float, default=p("cpus_per_task"),
                        help="CPUs each read/decode and write task asks Ray for; a fraction fits beside the actors "
                             "on any node, more keeps Ray from starting more tasks than a node has cores "
                             f"(default {p('cpus_per_task'):g})")
    parser.add_argument("--batch-size", type=int, default=p("batch_size"),
                        help=f"photos per immunizer call (default {p('batch_size')})")
    parser.add_argument("--max-pixels", type=int, default=p("max_pixels"),
                        help=f"refuse larger photos (an error row each; default {p('max_pixels'):,})")
    _storage_options(parser)
    parser.add_argument("--retry-errors", action="store_true",
                        help="redo photos whose manifest row is an error (default: a rerun skips them)")
    parser.add_argument("--max-photo-attempts", type=int, default=p("max_photo_attempts"),
                        help="a photo whose protection kills its worker process this many times becomes an "
                             f"error row instead of being retried again (default {p('max_photo_attempts')})")
    parser.add_argument("--commit-rows", type=int, default=p("commit_rows"),
                        help="manifest parts hold at least this many rows … (a driver killed outright loses at most "
                             f"one part of finished work; default {p('commit_rows')})")
    parser.add_argument("--commit-seconds", type=float, default=p("commit_seconds"),
                        help=f"… or what finished within this many seconds (default {p('commit_seconds'):g})")
    g = parser.add_argument_group("the lease on OUTPUT (one run at a time)")
    g.add_argument("--lease-ttl", type=float, default=p("lease_ttl_s"),
                   help="seconds the lease lasts without renewal; a dead holder's lease is taken over after it "
                        f"(object stores; local paths are freed when the holder exits; default {p('lease_ttl_s'):g})")
    g.add_argument("--wait", type=float, default=p("lease_wait_s"),
                   help="seconds to wait for a lease another run holds before giving up (default 0)")
    add_listing_options(parser)
    add_output_options(parser)
    add_attack_options(parser)


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """What the protected files look like: format, metadata, content credentials."""
    p = lambda name: _default(PipelineConfig, name)  # noqa: E731
    g = parser.add_argument_group("outputs")
    g.add_argument("--output-format", choices=C.OUTPUT_FORMATS, default=p("output_format"),
                   help="png (default), webp-lossless and tiff keep every pixel (L∞ guaranteed; png/tiff keep "
                        "16 bits); a lossless copy of a JPEG source is several times its size (about 9x as PNG); "
                        "jpeg and webp are lossy (L∞ measured and recorded, not bounded); source: the input's own "
                        "format")
    g.add_argument("--quality", type=int, default=p("quality"), help=f"lossy formats, 1..100 (default {p('quality')})")
    g.add_argument("--strip-gps", action="store_true", help="drop GPS from EXIF and XMP (default: keep all metadata)")
    g.add_argument("--strip-metadata", action="store_true",
                   help="drop EXIF, XMP and IPTC (the ICC profile stays: the pixels are in its colour space)")
    g.add_argument("--c2pa-cert", default=None, metavar="CHAIN.pem",
                   help=f"sign each output with C2PA content credentials: PEM chain, signing cert first "
                        f"(default ${C.C2PA_CERT_ENV})")
    g.add_argument("--c2pa-key", default=None, metavar="KEY.pem",
                   help=f"the signing key, PEM (default ${C.C2PA_KEY_ENV}); never logged or recorded")


def add_listing_options(parser: argparse.ArgumentParser) -> None:
    """Where the objects come from at scale, and how the run reports progress (job/listing.py, progress.py)."""
    p = lambda name: _default(PipelineConfig, name)  # noqa: E731
    g = parser.add_argument_group("listing and progress (large archives)")
    g.add_argument("--input-list", default=p("input_list"), metavar="URI",
                   help="Parquet/CSV/JSONL file (or folder of them) of object URIs under INPUT (columns uri or key; "
                        "optional size, etag, prompts), or an S3 Inventory manifest.json; read by Ray tasks "
                        "instead of listing INPUT")
    g.add_argument("--list-fanout-depth", type=int, default=p("list_fanout_depth"),
                   help="without --input-list: directory levels walked to split the listing across Ray tasks "
                        f"(default {p('list_fanout_depth')})")
    g.add_argument("--plan-partitions", type=int, default=p("plan_partitions"),
                   help=f"hash partitions of the distributed plan (default {p('plan_partitions')}; "
                        "about one per 200,000 objects)")
    g.add_argument("--progress-interval", type=float, default=p("progress_interval_s"),
                   help="seconds between progress lines and OUTPUT/_status.json updates "
                        f"(default {p('progress_interval_s'):g})")


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    import os

    from .storage import parse_options

    return PipelineConfig(
        input_uri=args.input, output_uri=args.output, model=args.model, revision=args.revision,
        prompts=tuple(args.prompt), prompts_file=args.prompts_file, attack=attack_config(args),
        actors=args.actors, gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
        batch_size=args.batch_size, max_pixels=args.max_pixels, storage_options=parse_options(args.storage_options),
        retry_errors=args.retry_errors, max_photo_attempts=args.max_photo_attempts,
        output_format=args.output_format, quality=args.quality, strip_gps=args.strip_gps,
        strip_metadata=args.strip_metadata,
        c2pa_cert=args.c2pa_cert or os.environ.get(C.C2PA_CERT_ENV) or None,
        c2pa_key=args.c2pa_key or os.environ.get(C.C2PA_KEY_ENV) or None,
        input_list=args.input_list, list_fanout_depth=args.list_fanout_depth, plan_partitions=args.plan_partitions,
        progress_interval_s=args.progress_interval, actor_memory=args.actor_memory, lease_ttl_s=args.lease_ttl,
        lease_wait_s=args.wait, commit_rows=args.commit_rows, commit_seconds=args.commit_seconds,
        cpus_per_task=args.cpus_per_task,
    )



#: Exit statuses of run and ingest (every command): all done; the run failed; refused before any
#: work; finished, but some photos ended as error rows. A stop by signal exits 128 + the signal.
EXIT_OK, EXIT_FAILED, EXIT_REFUSED, EXIT_SOME_ERRORS = 0, 1, 2, 3


def run_run(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)        # run() checks it first (job/preflight.py): one-line ValueErrors
    from .job.pipeline import LockHeld, run

    try:
        summary = run(cfg)
    except LockHeld as exc:
        logger.error("%s: this run does nothing (--wait SECONDS waits for it)", exc)
        return EXIT_REFUSED
    return _summary_status(summary)


def configure_ingest(parser: argparse.ArgumentParser) -> None:
    configure_run(parser)


def run_ingest(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    from .job.ingest import ingest

    return _summary_status(ingest(cfg))


def _summary_status(summary: Any) -> int:
    """0 when every photo is ok or skipped (or an ingest found the lease held), 3 with error rows."""
    if summary is None or not summary.errors:
        return EXIT_OK
    logger.error("%d photo(s) ended as error rows (reasons above; `--retry-errors` redoes them)", summary.errors)
    return EXIT_SOME_ERRORS


# -- demo, verify, compact -------------------------------------------------------------------------

def configure_demo(parser: argparse.ArgumentParser) -> None:
    from . import demo

    parser.add_argument("--dir", default=demo.DEMO_DIR, help="where originals/ and protected/ go")
    parser.add_argument("--model", default="tiny-ip2p", help="editor (default: the tiny random InstructPix2Pix)")
    parser.add_argument("--steps", type=int, default=demo.DEMO_STEPS, help="PGD iterations (the paper uses 100)")
    parser.add_argument("--timesteps", type=int, default=demo.DEMO_TIMESTEPS,
                        help="timesteps per iteration (the paper uses 10)")
    parser.add_argument("--resolution", type=int, default=demo.DEMO_RESOLUTION,
                        help="working resolution (the paper uses 512)")


def run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo as demo

    return demo(args.dir, model=args.model, steps=args.steps, timesteps=args.timesteps, resolution=args.resolution)


def configure_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the OUTPUT of a run (fsspec URI or path)")
    _storage_options(parser)
    parser.add_argument("--threads", type=int, default=8, help="parallel hashing threads")
    parser.add_argument("--c2pa-trust", default=None, metavar="ANCHORS.pem",
                        help="also require signed outputs' C2PA signers to chain to these PEM trust anchors "
                             "(default: signatures and hashes are checked, the signer's CA is not)")


def run_verify(args: argparse.Namespace) -> int:
    from .manifest.verify import log_report, verify
    from .storage import parse_options

    report = verify(args.output, parse_options(args.storage_options), threads=args.threads,
                    c2pa_trust=args.c2pa_trust)
    log_report(args.output, report)
    return 0 if report.ok else 1


def configure_compact(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the OUTPUT of a run (fsspec URI or path)")
    _storage_options(parser)
    parser.add_argument("--rows-per-part", type=int, default=C.COMPACT_ROWS,
                        help=f"rows per merged part (default {C.COMPACT_ROWS})")
    parser.add_argument("--min-parts", type=int, default=C.COMPACT_MIN_PARTS_ON_DEMAND,
                        help=f"merge once this many small parts exist (default {C.COMPACT_MIN_PARTS_ON_DEMAND}: "
                             f"now; runs merge on their own past {C.COMPACT_MIN_PARTS})")


def run_compact(args: argparse.Namespace) -> int:
    from .manifest.output import Output
    from .storage import parse_options

    Output.open(args.output, parse_options(args.storage_options)).compact(
        rows_per_part=args.rows_per_part, min_parts=args.min_parts)
    return 0


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
                        help="diffusers repo id, local dir, tiny-ip2p or tiny-sd")
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
    g.add_argument("--image-guidance-scale", type=float, default=e.image_guidance_scale, help="InstructPix2Pix")
    g.add_argument("--strength", type=float, default=e.strength, help="SD img2img strength")
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
                      size_variants=tuple(args.size_variants))


def eval_inputs(args: argparse.Namespace) -> tuple[EvalConfig, list]:
    """The evaluation's config and its (photo, instruction) pairs, for ``eval`` and jobs/evaluate.py."""
    import json

    from .evaluation.evaluate import load_pairs

    config = eval_config(args)
    resolution = config.attack.resolution if config.view == "editor" else None   # attacker: full size
    pairs = load_pairs(args.input, tuple(args.prompt), resolution, config.attack.resolution_multiple)
    logger.info("evaluating %d pair(s) × %d method(s) × %d seed(s): %s", len(pairs), len(config.methods),
                len(config.seeds), json.dumps(config.settings(), sort_keys=True, default=str))
    return config, pairs


def run_eval(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import run

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
    parser.add_argument("--editors", type=_csv_list(str), default=m.editors,
                        help=f"protect against the first, edit with each (default {','.join(m.editors)})")
    parser.add_argument("--protect-set", choices=("own", "kinds"), default=m.protect_set,
                        help="protect against the attacker's instruction (own) or it and one edit of every other "
                             "kind on the same object (kinds: several prompts per photo; default own)")
    add_comparison_options(parser, MicroSuiteConfig, "the scenes' sizes and aspects, in either view")
    add_workers_option(parser, m.workers)
    add_attack_options(parser, omit=("method", "resolution"))    # the micro world's size is the resolution


def micro_suite_config(args: argparse.Namespace) -> MicroSuiteConfig:
    from .micro.world import SIZE

    attack = attack_config(args).replace(resolution=SIZE)     # the micro world's photos and editors
    return MicroSuiteConfig(editors=tuple(args.editors), scenes=args.scenes, scene_seed=args.scene_seed,
                            methods=tuple(args.methods), attack=attack, seeds=tuple(args.seeds),
                            transforms=tuple(args.transforms), view=args.view, device=args.device, workers=args.workers,
                            size_variants=tuple(args.size_variants), protect_set=args.protect_set,
                            split=args.split)


def run_micro_bench(args: argparse.Namespace) -> int:
    from .evaluation import micro_suite

    config = micro_suite_config(args)
    logger.info("micro benchmark: %d scene(s) × %d method(s) × %d seed(s), editors %s", config.scenes,
                len(config.methods), len(config.seeds), ", ".join(config.editors))
    paths = micro_suite.run(config, args.output)
    logger.info("report: %s (table), %s (summary)", paths["parquet"], paths["summary"])
    return 0


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", choices=list(C.BENCH_ARCHS), default="tiny-ip2p",
                        help="editor architecture; ip2p and sd15 are full size with random weights (no download)")
    parser.add_argument("--batch-size", type=int, default=1, help="photos per immunizer call")
    parser.add_argument("--prompts", type=int, default=1, help="edit instructions per photo (default 1)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                        help="editor weights: auto = bf16 on GPU, fp32 on CPU (the attack's precision: bench sets "
                             "it here, not with --attack-option)")
    parser.add_argument("--path", choices=("fast", "reference", "both"), default="both",
                        help="which implementation to time; both alternate iteration by iteration (the attack's "
                             "path: bench sets it here, not with --attack-option)")
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

    from .evaluation import bench
    from .storage import write_local

    cfg = attack_config(args).replace(precision=args.precision)
    paths = ["reference", "fast"] if args.path == "both" else [args.path]
    report = bench.run(args.arch, {p: cfg.replace(path=p) for p in paths}, device=args.device,
                       precision=args.precision, threads=args.threads, batch_size=args.batch_size,
                       prompts=args.prompts, iterations=args.iterations, warmup=args.warmup, count_flops=args.flops)
    sys.stdout.write(bench.format_report(report) + "\n")
    if args.json == "-":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif args.json:
        write_local(args.json, json.dumps(report, indent=2).encode())
    return 0


# -- train-editor ------------------------------------------------------------------------------------

def configure_train_editor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output", metavar="OUT", help="folder for the run; the editor goes to OUT/editor")
    parser.add_argument("--variant", choices=("a", "b", "proxy", "proxy-b"), default="a",
                        help="a: micro-ip2p; b: micro-ip2p-b (other seeds and widths, for transfer); proxy: proxy-ip2p "
                             "(textured 128x128 world, 8x VAE); proxy-b: proxy-ip2p-b (its transfer editor)")
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

    from .micro import training

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


# -- the command -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str


COMMANDS: dict[str, Command] = {
    "run": Command(configure_run, run_run, "protect every photo under INPUT, writing to OUTPUT"),
    "ingest": Command(configure_ingest, run_ingest,
                      "protect only what is new or changed under INPUT since the last run (scheduled)"),
    "demo": Command(configure_demo, run_demo, "run the whole pipeline offline on bundled photos with a tiny editor"),
    "verify": Command(configure_verify, run_verify, "re-hash protected outputs against the manifest"),
    "compact": Command(configure_compact, run_compact,
                       f"merge the manifest's small Parquet parts (runs do it past {C.COMPACT_MIN_PARTS} of them)"),
    "eval": Command(configure_eval, run_eval,
                    "measure protection efficacy, fidelity, robustness and cost on your photos and editor"),
    "micro-bench": Command(configure_micro_bench, run_micro_bench,
                           "measure protection against trained micro-editors, with ground truth (the micro world)"),
    "bench": Command(configure_bench, run_bench, "time the immunizer and report photos/hour and peak memory"),
    "train-editor": Command(configure_train_editor, run_train_editor,
                            "train a micro-editor on the micro edit world (the benchmark's proxy editors)"),
}
#: Parsers that only the ``jobs/`` entrypoints use (they run the work themselves).
JOB_PARSERS: dict[str, Callable[[argparse.ArgumentParser], None]] = {"eval-job": configure_eval_job}


def _verbosity(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v for debug logs")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _verbosity(argparse.ArgumentParser(
        prog="danp-protect",
        description="Protect photo archives against malicious AI editing (DANP, arXiv 2512.14333)."))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.configure(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def command_parser(name: str, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The parser of one subcommand (or job parser) on its own, for the ``jobs/`` entrypoints."""
    if name in COMMANDS:
        configure, text = COMMANDS[name].configure, COMMANDS[name].help
    elif name in JOB_PARSERS:
        configure, text = JOB_PARSERS[name], None
    else:
        raise ValueError(f"unknown command {name!r}; expected one of {[*COMMANDS, *JOB_PARSERS]}")
    parser = _verbosity(argparse.ArgumentParser(prog=prog or f"danp-protect {name}", description=description or text))
    configure(parser)
    return parser


def setup_logging(verbose: int = 0) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_command(name: str, args: argparse.Namespace) -> int:
    """Set up logging once and run a subcommand. Invalid settings exit 2 with the reason in one line; a
    stop by SIGTERM/SIGINT exits 128 + the signal; any other failure exits 1 with one line (the
    traceback with -v)."""
    setup_logging(getattr(args, "verbose", 0))
    try:
        return COMMANDS[name].run(args)
    except ValueError as exc:
        logger.error("%s", exc)
        logger.debug("traceback (shown with -v)", exc_info=True)
        return EXIT_REFUSED
    except Exception as exc:
        logger.error("%s failed: %s", name, _one_line(exc))
        logger.debug("traceback (shown with -v)", exc_info=True)
        return EXIT_FAILED
    except BaseException as exc:
        stop = getattr(exc, "exit_status", None)       # job.pipeline.RunStopped (imported only by run/ingest)
        if stop is None:
            raise
        logger.error("%s: the run stopped cleanly; run the same command again to resume", exc)
        return int(stop)


def _one_line(exc: BaseException) -> str:
    """The root cause of ``exc`` in one line (Ray wraps a task's exception in its own)."""
    cause = exc
    while getattr(cause, "cause", None) is not None and cause.cause is not cause:    # ray.exceptions.RayTaskError
        cause = cause.cause
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")


def entrypoint(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, args)


def cli_main() -> None:
    sys.exit(entrypoint())
