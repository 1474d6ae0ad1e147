"""A run's identity, built once by ``pipeline.run`` and handed to every stage.

Everything that names a run — its configuration (storage options resolved), its id, the canonical
configuration JSON and its hash that key every manifest row, and where its outputs go — is computed
here and nowhere else, so the planner, the actors and the progress report cannot disagree on it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cached_property

from .. import storage
from ..config import PipelineConfig, config_json, config_sha256, ensemble_settings, output_settings
from ..manifest.output import Output


@dataclass(frozen=True)
class Run:
    config: PipelineConfig
    run_id: str
    config_json: str                     # canonical JSON of everything that determines a protected photo
    config_sha256: str                   # its hash: with the source URI, the identity of a manifest row

    @classmethod
    def start(cls, cfg: PipelineConfig, run_id: str | None = None) -> "Run":
        """A new run of ``cfg``: storage options resolved for INPUT and OUTPUT, a fresh id."""
        cfg = cfg.replace(storage_options=storage.resolve_options(
            cfg.output_uri, storage.resolve_options(cfg.input_uri, cfg.storage_options)))
        text = config_json(cfg.attack, cfg.model, cfg.revision, output_settings(cfg), ensemble_settings(cfg))
        return cls(cfg, run_id or uuid.uuid4().hex[:12], text, config_sha256(text))

    @cached_property
    def output(self) -> Output:
        return Output.open(self.config.output_uri, self.config.storage_options)

    @property
    def prompts(self) -> tuple[str, ...]:
        """What a photo without its own (sidecar) prompts is protected against."""
        return self.config.run_prompts
