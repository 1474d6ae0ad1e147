"""Protection against several editors at once: one δ, the weighted mean of their objectives.

An archive owner does not know which editor an attacker will use. :class:`EnsembleObjective` turns the
objectives of several frozen editors (each on its own attacker views: protect/views.py) into one that
:func:`~.pgd.pgd` optimizes like any other. Each member's terms are first combined by the one balancing
rule (:class:`~.pgd.Balancer`, with the member's own term weights), and the members' gradients are then
balanced again with the editor weights: under ``balance="grad"`` every editor pulls δ with the share its
weight gives it, whatever the scale of its gradients (a UNet of another width or resolution), and under
``balance="raw"`` the gradient is the weighted sum of the members' losses' gradients.

Terms are named ``<member>`` (the member's weighted total, the ensemble's term) and ``<member>/<term>``
(its own terms, recorded for the history only); members are numbered in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .pgd import COMBINED, Balancer, Objective


def editor_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Editor weights normalized to sum 1 (equal when None); ValueError naming a bad list."""
    if weights is None:
        return [1.0 / n] * n
    weights = [float(w) for w in weights]
    if len(weights) != n or any(not w > 0 or w != w or w == float("inf") for w in weights):
        raise ValueError(f"editor weights must be {n} positive finite numbers, got {list(weights)!r}")
    total = sum(weights)
    return [w / total for w in weights]


class EnsembleObjective:
    """The weighted mean of several editors' objectives on the same photos (see the module docstring)."""

    def __init__(self, members: Sequence[Objective], weights: Sequence[float] | None = None,
                 balance: str = "grad") -> None:
        if not members:
            raise ValueError("an ensemble needs at least one editor's objective")
        self.members = list(members)
        shares = editor_weights(weights, len(self.members))
        self.weights = {str(k): share for k, share in enumerate(shares)}
        self.balancers = [Balancer(m.weights, balance) for m in self.members]

    def gradients(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        grads: dict[str, torch.Tensor] = {}
        values: dict[str, torch.Tensor] = {}
        for k, (member, balancer) in enumerate(zip(self.members, self.balancers)):
            member_grads, member_values = member.gradients(x)
            # A member that backpropagated its balanced terms at once (balance_every > 1) hands over one
            # gradient already weighted; otherwise its terms are weighted here by the same rule.
            grads[str(k)] = member_grads[COMBINED] if COMBINED in member_grads else \
                balancer.combine(member_grads, reuse=True)
            del member_grads
            values[str(k)] = sum(member.weights[name] * member_values[name] for name in member.weights)
            values.update({f"{k}/{name}": value for name, value in member_values.items()})
        return grads, values
