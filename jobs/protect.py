"""Bulk protect as a Ray job: the same options as ``danp-protect run``, on the cluster that runs it.

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/protect.py s3://archive/photos s3://protected/run1 --actors 8 --gpus-per-actor 1

Inside a submitted job ``RAY_ADDRESS`` is set, so the pipeline joins that cluster instead of
starting one. A thin wrapper: it parses with the CLI's ``run`` parser and calls
``danp_pipeline.job.pipeline.run``; everything else (skipping work already done, error rows, the
manifest) is the library's. Exit status 0 when the job ran (bad photos are rows, not failures),
2 on invalid options.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from danp_pipeline import cli

COMMAND = "run"


def build_parser() -> argparse.ArgumentParser:
    return cli.command_parser(COMMAND, "jobs/protect.py", __doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run_command(COMMAND, build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
