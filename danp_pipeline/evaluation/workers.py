"""The evaluation's one parallel engine: Ray actors, each holding its own copy of the editor(s).

``run_on_workers(cls, args, items, workers=…)`` starts ``workers`` actors whose ``cls(*args)`` loads the
editors once, hands them the items one at a time as each becomes free, and returns ``cls(*args)(item)``
for every item in the items' order, so that the report does not depend on which worker ran what. Used by
``danp-protect micro-bench --workers N`` (micro_suite.py) and ``jobs/evaluate.py --workers N``.

Ray's workers share the fate of their driver: a killed command leaves no worker protecting scenes for
nobody on the cores of the next run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import ray
from ray.util import ActorPool

logger = logging.getLogger(__name__)


class Worker:
    """One worker process: logging as the driver's, ``threads`` torch threads when given, then ``cls(*args)``."""

    def __init__(self, cls: type, args: tuple, threads: int | None, log_level: int) -> None:
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.work = cls(*args)

    def __call__(self, index: int, item: Any) -> tuple[int, Any]:
        return index, self.work(item)

    def pid(self) -> int:
        return os.getpid()


def cpus_per_worker(workers: int) -> float:
    """A share of the cluster's CPUs (at most one each) small enough that all ``workers`` start at once: an
    actor that does not fit would hold its share of the items forever."""
    return min(1.0, ray.cluster_resources().get("CPU", 1.0) / workers)


def gpus_per_worker(device: str | None, workers: int) -> float:
    """A share of the cluster's GPUs unless ``device`` names another; none where the cluster has none."""
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if not gpus or (device is not None and not device.startswith("cuda")):
        return 0.0
    return min(1.0, gpus / workers)


def start(cls: type, args: tuple, workers: int, *, num_cpus: float, num_gpus: float = 0.0,
          threads: int | None = None) -> list:
    """``workers`` Ray actors holding ``cls(*args)`` each (Ray must be initialized)."""
    if workers < 1 or num_cpus <= 0 or num_gpus < 0:
        raise ValueError(f"workers must be >= 1, CPUs per worker > 0 and GPUs per worker >= 0, got {workers}, "
                         f"{num_cpus} and {num_gpus}")
    actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(Worker)
    level = logging.getLogger().getEffectiveLevel()
    logger.info("%d worker(s) × %.2g CPU, %.2g GPU", workers, num_cpus, num_gpus)
    return [actor.remote(cls, args, threads, level) for _ in range(workers)]


def run_on_workers(cls: type, args: tuple, items: Sequence[Any], *, workers: int, num_cpus: float,
                   num_gpus: float = 0.0, threads: int | None = None, label: str = "item") -> list[Any]:
    """``cls(*args)(item)`` for every item, on at most ``workers`` actors; results in the items' order."""
    actors = start(cls, args, min(workers, len(items)), num_cpus=num_cpus, num_gpus=num_gpus, threads=threads)
    results: dict[int, Any] = {}
    try:
        pool = ActorPool(actors)
        for index, result in pool.map_unordered(lambda a, job: a.__call__.remote(*job), list(enumerate(items))):
            results[index] = result
            logger.info("%d of %d %ss done", len(results), len(items), label)
    finally:
        for actor in actors:
            ray.kill(actor)
    return [results[i] for i in range(len(items))]


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Use the Ray already initialized in this process, else connect to ``RAY_ADDRESS`` or start a local
    instance, stopped on exit."""
    if ray.is_initialized():
        yield
        return
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()
