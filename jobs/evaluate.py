"""Run the protection evaluation as a Ray job over a dataset of (photo, instruction) pairs.

    ray job submit --working-dir . -- python jobs/evaluate.py pairs.json out/ \\
        --model timbrooks/instruct-pix2pix --workers 4 --gpus-per-worker 1

Same options and report as ``danp-protect eval`` (see danp_pipeline/evaluation/evaluate.py), plus the
workers (evaluation/workers.py): ``--workers`` Ray actors each load the editor once and evaluate whole
pairs; the driver reads the photos, ships them to the actors and writes results.parquet, summary.md and
grids/. On a CPU-only machine give workers a fraction of a CPU so that they never claim them all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import ray

from danp_pipeline import cli
from danp_pipeline.config import EvalConfig
from danp_pipeline.evaluation import evaluate
from danp_pipeline.evaluation.workers import run_on_workers
from danp_pipeline.job.pipeline import default_gpus_per_actor

logger = logging.getLogger("danp_pipeline.jobs.evaluate")


def build_parser() -> argparse.ArgumentParser:
    return cli.command_parser("eval-job", "jobs/evaluate.py", __doc__.split("\n")[0])


def run(config: EvalConfig, pairs: list[evaluate.Pair], output: str, *, workers: int = 1,
        cpus_per_worker: float = 0.5, gpus_per_worker: float | None = None):
    """Evaluate the pairs on Ray actors (Ray must be initialized) and write the report."""
    if gpus_per_worker is None:
        gpus_per_worker = default_gpus_per_actor()
    results = run_on_workers(evaluate.Evaluator, (config,), pairs, workers=workers, num_cpus=cpus_per_worker,
                             num_gpus=gpus_per_worker, label="pair")
    return evaluate.write_results(config, results, output)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    try:
        config, pairs = cli.eval_inputs(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    if not ray.is_initialized():
        ray.init(address=args.address, logging_level="WARNING")
    paths = run(config, pairs, args.output, workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                gpus_per_worker=args.gpus_per_worker)
    logger.info("report: %s, %s", paths["parquet"], paths["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
