"""Scheduled ingestion as a Ray job: the same options as ``danp-protect ingest``.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/ingest.py s3://archive/incoming s3://protected/archive --actors 4 --gpus-per-actor 1

Protects only the objects that are new or changed since the last successful run (the manifest
under OUTPUT is the ledger) while holding ``OUTPUT/_ingest.lock``, so that a run started while
another still holds the lock exits at once (status 0, "another ingest run holds the lock …")
instead of protecting the same photos twice. Schedule it with a Kubernetes CronJob
(cluster/kuberay/cronjob.yaml) or plain cron (cluster/README.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from danp_pipeline import ingest

logger = logging.getLogger("danp_pipeline.jobs.ingest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jobs/ingest.py", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v for debug logs")
    ingest.configure(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return ingest.main(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
