"""Shared fixtures: tiny random editors built once per session (real diffusers classes, no downloads)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from danp_pipeline.protect.models import load_editor


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models on a 2-core machine: a second intra-op thread only adds contention (measured 30x slower
    under load), and Ray workers started by the tests need the other core."""
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


def photo(name: str = "astronaut", size: tuple[int, int] | None = (64, 64)) -> np.ndarray:
    """A real photo from scikit-image's bundled data, RGB uint8, optionally resized to (w, h)."""
    from skimage import data

    arr = getattr(data, name)()
    img = Image.fromarray(arr)
    if size is not None:
        img = img.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(img)


def encode(arr: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def as_batch(*arrays: np.ndarray) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255 for a in arrays])
