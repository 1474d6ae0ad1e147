"""The ``danp-protect`` command: all argument parsing of the project, and nothing else.

One parser per subcommand, each paired with a handler that turns the parsed arguments into the
library's typed configs and calls the library: ``run``, ``ingest``, ``demo``, ``verify``, ``report``, ``compact``
(cli/protect.py), ``eval``, ``micro-bench``, ``bench``, ``train-editor`` (cli/measure.py), with the
options they share in cli/options.py. ``jobs/*.py`` ask :func:`command_parser` for a parser by name.
Defaults come from ``config.py``; the library is imported only inside handlers, so ``--help`` and
``verify`` do not pay for torch and diffusers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import config as C
from .measure import (
    configure_bench,
    configure_eval,
    configure_eval_job,
    configure_micro_bench,
    configure_train_editor,
    eval_inputs,
    micro_suite_config,
    run_bench,
    run_eval,
    run_micro_bench,
    run_train_editor,
)
from .protect import (
    EXIT_FAILED,
    EXIT_REFUSED,
    configure_compact,
    configure_demo,
    configure_ingest,
    configure_report,
    configure_run,
    configure_verify,
    pipeline_config,
    run_compact,
    run_demo,
    run_ingest,
    run_report,
    run_run,
    run_verify,
)

__all__ = ["COMMANDS", "build_parser", "cli_main", "command_parser", "entrypoint", "eval_inputs",
           "micro_suite_config", "pipeline_config", "run_command", "setup_logging"]

logger = logging.getLogger("danp_pipeline")


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
    "report": Command(configure_report, run_report,
                      "write OUTPUT/report/index.html: what was protected, how well, what failed, how fast"),
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
