"""How much of DANP's objective reaches the attacker's editor: its terms on the copy the editor gets.

The attacker's editor never sees our optimization: it sees the protected file after the attacker's
resize (and re-encoding). :class:`ObjectiveProbe` evaluates DANP's NBA and DAA terms on that copy
against the clean copy made the same way, at one fixed draw of timesteps and noise, so runs, views and
configurations are compared on the same measure (more negative = stronger). The probe samples like the
paper's configuration whatever the protection's cost options were (every timestep-bin centre, every
prompt, fresh noise): a cheaper protection is judged by the full objective, not by its own subset.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import AttackConfig
from ..protect.danp import DanpObjective
from ..protect.models import EditorBundle

#: The probe's one draw of noise (the same for every photo, method and view).
PROBE_SEED = 1234


class ObjectiveProbe:
    """``probe(clean_seen, seen, prompts)`` -> {"nba": …, "daa": …} for uint8 HxWx3 copies of one size."""

    def __init__(self, bundle: EditorBundle, attack: AttackConfig) -> None:
        self.bundle = bundle
        self.config = attack.replace(method="danp", timesteps="centres", use_daa=True, use_nba=True,
                                     timestep_subset=0, prompt_subset=0, noise="fresh", balance_every=1)

    def tensor(self, pixels: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(pixels, dtype=np.float32)).permute(2, 0, 1)[None].div(255)
        return x.to(self.bundle.device)

    def __call__(self, clean_seen: np.ndarray, seen: np.ndarray, prompts: list[str]) -> dict[str, float]:
        if seen.shape != clean_seen.shape:
            return {"nba": float("nan"), "daa": float("nan")}
        objective = DanpObjective(self.bundle, self.config, [list(prompts)], [PROBE_SEED], self.tensor(clean_seen))
        _, values = objective.gradients(self.tensor(seen))
        return {"nba": float(values["nba"][0]), "daa": float(values["daa"][0])}
