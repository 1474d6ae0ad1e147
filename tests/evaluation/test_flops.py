"""Counting FLOPs on the meta device with a table of distinct ops: the same count as FlopCounterMode alone."""

import torch
import torch.nn.functional as F

from danp_pipeline.evaluation.flops import FlopTable, count_flops_of


def block(device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """Convolutions, a group norm, linear layers and attention, forward and backward, as a UNet block has."""
    torch.manual_seed(0)
    net = torch.nn.ModuleDict({"conv": torch.nn.Conv2d(4, 8, 3, padding=1), "norm": torch.nn.GroupNorm(2, 8),
                               "qkv": torch.nn.Linear(8, 24), "out": torch.nn.Linear(8, 8)}).to(device)
    return net, torch.rand(2, 4, 6, 6, device=device)


def forward_backward(net: torch.nn.Module, x: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    h = F.silu(net["norm"](net["conv"](2 * x - 1)))        # (a leaf straight into a module trips FlopCounterMode)
    tokens = h.flatten(2).transpose(1, 2)                                      # [B, 36, 8]
    q, k, v = net["qkv"](tokens).view(2, 36, 3, 2, 4).permute(2, 0, 3, 1, 4)
    y = net["out"](F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 36, 8))
    for term in (y.pow(2).sum(), (y * 2).mean()):                              # two backward passes, as two loss terms
        torch.autograd.grad(term, x, retain_graph=True)


def test_a_table_counts_what_flop_counter_mode_counts_and_replays_each_distinct_op():
    net, x = block("meta")
    full = count_flops_of(lambda: forward_backward(net, x))
    table = FlopTable()
    assert count_flops_of(lambda: forward_backward(net, x), table) == full > 0
    distinct, traced = len(table.entries), table.traced
    assert count_flops_of(lambda: forward_backward(net, x), table) == full        # every replayable op replayed
    assert len(table.entries) == distinct and table.replayed > table.traced - traced


def test_tensors_with_values_are_never_replayed():
    net, x = block("cpu")
    table = FlopTable()
    assert count_flops_of(lambda: forward_backward(net, x), table) == count_flops_of(lambda: forward_backward(net, x))
    assert not table.entries and table.replayed == 0


def test_a_replayed_op_keeps_the_result_type_its_scalar_gives():
    x, results, table = torch.ones(3, dtype=torch.int64, device="meta"), [], FlopTable()
    for scalar in (2, 2.0, 2, 2.0):                  # equal as Python numbers, not as arguments
        count_flops_of(lambda: results.append(x * scalar), table)
    assert [r.dtype for r in results] == [torch.int64, torch.float32] * 2 and table.replayed == 2
