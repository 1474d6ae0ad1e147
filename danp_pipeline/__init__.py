"""danp-pipeline: bulk-protect photo archives against malicious diffusion editing (DANP).

The public names are imported lazily, so that modules which need no model (the Ray read tasks,
``danp-protect verify``) do not pay for importing torch and diffusers.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("danp-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

_EXPORTS = {
    "AttackConfig": "config", "PipelineConfig": "config",
    "Immunizer": "protect.immunizer", "ProtectedImage": "protect.immunizer",
    "EditorBundle": "protect.models", "load_editor": "protect.models",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
