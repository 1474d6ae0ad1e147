"""Fixtures for every test folder: one torch thread, tiny random editors built once per session (real
diffusers classes, no downloads), a moto S3 server and one local Ray instance; tests marked ``gpu`` are
skipped where CUDA is missing. Helper functions are in helpers.py."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import moto_endpoint

from danp_pipeline.protect.models import load_editor


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests run only where torch sees a CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False here")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """As in a Ray actor (OMP_NUM_THREADS=1 for num_cpus<2). Tiny models on a 2-core machine: a second
    intra-op thread only adds contention (measured 30x slower under load), and Ray workers started by the
    tests need the other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_ip2p():
    return load_editor("tiny-ip2p", device="cpu")


@pytest.fixture(scope="session")
def tiny_sd():
    return load_editor("tiny-sd", device="cpu")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    return moto_endpoint()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, no dashboard), shared by every module."""
    import ray

    from danp_pipeline.job.pipeline import SLOW_START_ENV

    for name, value in SLOW_START_ENV.items():
        os.environ.setdefault(name, value)
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    return ray
