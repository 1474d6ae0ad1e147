"""The ``danp-protect`` command. It only parses arguments into configs and calls the library.

Subcommands: ``run`` (protect an archive), ``demo`` (the whole pipeline offline on bundled photos),
``verify`` (re-hash outputs against the manifest), ``eval`` (protection efficacy and fidelity) and
``bench`` (speed). Each lives in its own module exposing ``configure(parser)`` and ``main(args)``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .config import AttackConfig, PipelineConfig
from .storage import parse_options

logger = logging.getLogger("danp_pipeline")

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("danp_pipeline.cli", "protect every photo under INPUT, writing to OUTPUT"),
    "ingest": ("danp_pipeline.ingest", "protect only what is new or changed under INPUT since the last run (scheduled)"),
    "demo": ("danp_pipeline.demo", "run the whole pipeline offline on bundled photos with a tiny editor"),
    "verify": ("danp_pipeline.verify", "re-hash protected outputs against the manifest"),
    "compact": ("danp_pipeline.writer", "merge the manifest's small Parquet parts (runs do it past 256 of them)"),
    "eval": ("danp_pipeline.evaluate", "measure protection efficacy, fidelity, robustness and cost"),
    "bench": ("danp_pipeline.bench", "time the immunizer and report photos/hour and peak memory"),
}


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs the immunizer; defaults come from AttackConfig."""
    d = AttackConfig()
    g = parser.add_argument_group("attack (DANP_SPEC.md)")
    g.add_argument("--method", default=d.method, help=f"objective (default {d.method})")
    g.add_argument("--eps", type=float, default=d.eps, help=f"L∞ budget γ on the [0,1] scale (default {d.eps})")
    g.add_argument("--steps", type=int, default=d.steps, help=f"PGD iterations N (default {d.steps})")
    g.add_argument("--step-size", type=float, default=d.step_size, help="PGD step α (default 1/255)")
    g.add_argument("--timesteps", type=int, default=d.num_timesteps, help=f"|𝒯| per iteration (default {d.num_timesteps})")
    g.add_argument("--timestep-mode", choices=("centres", "random"), default=d.timesteps)
    g.add_argument("--resolution", type=int, default=d.resolution, help=f"working resolution, longer side (default {d.resolution})")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other AttackConfig field, e.g. nba_target=noise, balance=raw (repeatable)")


def attack_config(args: argparse.Namespace) -> AttackConfig:
    fields = {
        "method": args.method, "eps": args.eps, "steps": args.steps, "step_size": args.step_size,
        "num_timesteps": args.timesteps, "timesteps": args.timestep_mode, "resolution": args.resolution,
        "seed": args.seed,
    }
    known = AttackConfig.__dataclass_fields__
    for item in args.attack_option:
        key, sep, raw = item.partition("=")
        if not sep or key not in known:
            raise ValueError(f"--attack-option expects KEY=VALUE with KEY an AttackConfig field, got {item!r}")
        fields[key] = _parse_value(raw, type(getattr(AttackConfig(), key)))
    return AttackConfig(**fields).validate()


def _parse_value(raw: str, kind: type) -> object:
    if kind is bool:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected a boolean, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    return kind(raw)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="INPUT", help="fsspec URI or path of the photos (s3://bucket/prefix, ./dir)")
    parser.add_argument("output", metavar="OUTPUT", help="fsspec URI or path for images/ and manifest/")
    parser.add_argument("--model", default="tiny-ip2p", help="diffusers repo id, local dir, tiny-ip2p or tiny-sd")
    parser.add_argument("--revision", default=None, help="model revision (branch, tag or commit)")
    parser.add_argument("--prompt", action="append", default=[], help="edit instruction to protect against (repeatable)")
    parser.add_argument("--prompts-file", default=None, help="JSON or CSV sidecar mapping object keys to prompts")
    parser.add_argument("--actors", type=int, default=1, help="size of the GPU actor pool")
    parser.add_argument("--gpus-per-actor", type=float, default=None, help="default: 1 when a GPU is present, else 0")
    parser.add_argument("--cpus-per-actor", type=float, default=0.5)
    parser.add_argument("--batch-size", type=int, default=1, help="photos per immunizer call")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger photos")
    parser.add_argument("--storage-options", default="{}", help="JSON passed to fsspec (endpoint_url, key, …)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="redo photos whose manifest row is an error (default: a rerun skips them)")
    attempts = PipelineConfig.__dataclass_fields__["max_photo_attempts"].default
    parser.add_argument("--max-photo-attempts", type=int, default=attempts,
                        help="a photo whose protection kills its worker process this many times becomes an "
                             f"error row instead of being retried again (default {attempts})")
    add_attack_options(parser)


def pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    storage = parse_options(args.storage_options)
    gpus = args.gpus_per_actor
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    return PipelineConfig(
        input_uri=args.input, output_uri=args.output, model=args.model, revision=args.revision,
        prompts=tuple(args.prompt), prompts_file=args.prompts_file, attack=attack_config(args),
        actors=args.actors, gpus_per_actor=gpus, cpus_per_actor=args.cpus_per_actor,
        batch_size=args.batch_size, max_pixels=args.max_pixels, storage_options=storage,
        retry_errors=args.retry_errors, max_photo_attempts=args.max_photo_attempts,
    ).validate()


def main(args: argparse.Namespace) -> int:
    from .pipeline import run

    run(pipeline_config(args))
    return 0


def _verbosity(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v for debug logs")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _verbosity(argparse.ArgumentParser(prog="danp-protect", description=__doc__.split("\n")[0]))
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).configure(p)
    return parser


def command_parser(module: str, prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of one subcommand on its own, for the ``jobs/`` entrypoints of ``ray job submit``."""
    parser = _verbosity(argparse.ArgumentParser(prog=prog, description=description))
    importlib.import_module(module).configure(parser)
    return parser


def run_command(module: str, args: argparse.Namespace) -> int:
    """Set up logging once and run a subcommand module; invalid settings exit 2 with the reason."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return importlib.import_module(module).main(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2


def entrypoint(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(SUBCOMMANDS[args.command][0], args)


def cli_main() -> None:
    sys.exit(entrypoint())
