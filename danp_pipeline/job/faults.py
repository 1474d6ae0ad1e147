"""Fault injection for the tests that kill, stop and starve real jobs. Each hook does nothing unless
its environment variable is set (never in production); each is called at the one point of the job
where that fault must strike.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable

logger = logging.getLogger(__name__)

#: After committing this many manifest parts, the driver stops making progress (it sleeps), so a test
#: can kill the job at a known point (pipeline.py's commit stage).
HANG_AFTER_PARTS_ENV = "DANP_FAULT_HANG_AFTER_PARTS"
#: While the file this names does not exist, the editor actor holds each batch once its attempts are
#: recorded, before protecting it, so a test decides when work may proceed (and can kill a node, or stop
#: the run, while a photo is certainly in flight). ``{node_id}`` in the path becomes the Ray node's id,
#: so a test can release one node at a time.
HOLD_UNTIL_FILE_ENV = "DANP_FAULT_HOLD_UNTIL_FILE"
#: The process exits at once (``os._exit``, no cleanup, as a native crash would) when it is about to
#: protect the photo with this source key.
CRASH_ON_KEY_ENV = "DANP_FAULT_CRASH_ON_KEY"


def maybe_hang(parts_committed: int) -> None:
    limit = os.environ.get(HANG_AFTER_PARTS_ENV)
    if limit and parts_committed >= int(limit):
        logger.warning("%s=%s reached: this process stops here (fault injection)", HANG_AFTER_PARTS_ENV, limit)
        while True:
            time.sleep(3600)


def maybe_crash(keys: Iterable[str | None]) -> None:
    key = os.environ.get(CRASH_ON_KEY_ENV)
    if key and key in set(keys):
        logger.error("%s=%s: this process exits now (fault injection)", CRASH_ON_KEY_ENV, key)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(70)


def maybe_hold() -> None:
    path = os.environ.get(HOLD_UNTIL_FILE_ENV)
    if path and "{node_id}" in path:
        import ray

        path = path.replace("{node_id}", ray.get_runtime_context().get_node_id())
    if path and not os.path.exists(path):
        logger.warning("%s: holding this batch until %s exists (fault injection)", HOLD_UNTIL_FILE_ENV, path)
        while not os.path.exists(path):
            time.sleep(0.2)
