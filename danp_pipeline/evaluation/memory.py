"""Peak memory of a block of work, the one definition that ``eval`` and ``bench`` report.

On CUDA: ``torch.cuda.max_memory_allocated`` since the block started. On CPU: the process's peak
resident memory (Linux VmHWM), reset to the current RSS when the block starts by writing 5 to
``/proc/self/clear_refs``; so it includes what the process already holds (weights, allocator
caches). Where the reset is not possible the peak is the process's since it started, and
:attr:`PeakMemory.kind` says so. Without a measurement (``bench`` on the meta device), the figure is the
editors' weights plus the host-memory rule per pixel of the batch (:func:`host_estimate_bytes`).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import ACTOR_BYTES_PER_PIXEL

if TYPE_CHECKING:
    from ..protect.models import EditorBundle

#: What each kind of figure means, for reports.
MEANING = {
    "cuda_max_allocated": "CUDA memory allocated by torch at its peak",
    "rss_peak": "peak resident memory of the whole process (editor included)",
    "rss_peak_since_start": "peak resident memory of the process since it started (no per-block reset)",
    "host_estimate": f"the editors' weights plus {ACTOR_BYTES_PER_PIXEL} bytes per pixel of the batch, the editor "
                     "actor's host-memory rule; a full-size editor's activations are not in it",
}


def weights_bytes(editor: EditorBundle) -> int:
    """Bytes of an editor's parameters and buffers (UNet, VAE, text encoder) in their dtype, on any device
    (meta too)."""
    modules = (editor.unet, editor.vae, editor.text_encoder)
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def host_estimate_bytes(weights: int, pixels: int) -> int:
    """Host memory of a protection by the rule an editor actor asks Ray for (job/resources.py): the
    editors' ``weights`` plus config.ACTOR_BYTES_PER_PIXEL per pixel of the batch."""
    return weights + pixels * ACTOR_BYTES_PER_PIXEL


@dataclass
class PeakMemory:
    """The block's peak: :meth:`bytes` reads it live inside the block and gives the value at its end
    after it; ``kind`` is a key of :data:`MEANING`."""

    device: torch.device
    kind: str
    final: int | None = None

    def bytes(self) -> int:
        if self.final is not None:
            return self.final
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return _peak_rss_bytes()

    @property
    def mib(self) -> float:
        return self.bytes() / 2**20


@contextlib.contextmanager
def peak_memory(device: torch.device, reset: bool = True) -> Iterator[PeakMemory]:
    """Measure the peak memory of the ``with`` block (``reset=False`` keeps counting from before)."""
    if device.type == "cuda":
        if reset:
            torch.cuda.reset_peak_memory_stats(device)
        peak = PeakMemory(device, "cuda_max_allocated")
    else:
        kind = "rss_peak"
        if reset:
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                kind = "rss_peak_since_start"
        peak = PeakMemory(device, kind)
    yield peak
    peak.final = peak.bytes()


def _peak_rss_bytes() -> int:
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
