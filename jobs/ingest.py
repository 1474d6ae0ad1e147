"""Scheduled ingestion as a Ray job: the same options as ``danp-protect ingest``.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/ingest.py s3://archive/incoming s3://protected/archive --actors 4 --gpus-per-actor 1

Protects only the objects that are new or changed since the last successful run (the manifest
under OUTPUT is the ledger) while holding ``OUTPUT/_run.lock`` (the lease every run holds), so that a run started while
another still holds the lock exits at once (status 0, "another ingest run holds the lock …")
instead of protecting the same photos twice. Schedule it with a Kubernetes CronJob
(cluster/kuberay/cronjob.yaml) or plain cron (cluster/README.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from danp_pipeline import cli

COMMAND = "ingest"


def build_parser() -> argparse.ArgumentParser:
    return cli.command_parser(COMMAND, "jobs/ingest.py", __doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_command(COMMAND, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
