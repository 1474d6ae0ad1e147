"""danp-pipeline: bulk-protect photo archives against malicious diffusion editing (DANP)."""

from importlib.metadata import PackageNotFoundError, version

from .config import AttackConfig, PipelineConfig
from .immunizer import Immunizer, ProtectedImage
from .models import EditorBundle, load_editor

try:
    __version__ = version("danp-pipeline")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["AttackConfig", "PipelineConfig", "Immunizer", "ProtectedImage", "EditorBundle", "load_editor",
           "__version__"]
