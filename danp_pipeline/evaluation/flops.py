"""FLOPs of a block of work, counted by torch's FlopCounterMode; on the "meta" device, each distinct op once.

:func:`count_flops_of` counts matmuls, convolutions and attention (forward and backward) as
``torch.utils.flop_counter.FlopCounterMode`` does, plus CPU's fused attention kernels, which its table
lacks. On the meta device (shapes only) the same count is much cheaper with a :class:`FlopTable`: an op
depends on nothing but its inputs' shapes, strides and dtypes and its other arguments there, so the
first call of each distinct op signature is counted by FlopCounterMode and executed, and every later
call with the same signature adds the recorded FLOPs and returns fresh meta tensors of the recorded
layout, without running the op's Python meta kernel or FlopCounterMode's per-op bookkeeping again.
A UNet's second pass, the backward of its second loss term and every later iteration are then
replays. Ops that mutate or alias their inputs, and ops on tensors with values, always run; those that
FlopCounterMode would count (or decompose into counted ops) are counted by it one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode with CPU's fused attention kernels added (not in torch's table)."""
    from torch.utils.flop_counter import (
        FlopCounterMode,
        sdpa_backward_flop_count,
        sdpa_flop_count,
    )

    aten = torch.ops.aten
    custom = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda g, q, k, v, *a, **kw: sdpa_backward_flop_count(g, q, k, v),
    }
    return FlopCounterMode(display=False, custom_mapping=custom)


@dataclass
class FlopTable:
    """What the distinct ops seen so far cost and return, by signature (see the module docstring); share one
    between counts to replay their common ops. ``traced``: op calls executed (and counted by FlopCounterMode
    where it counts them); ``replayed``: op calls answered from ``entries``."""

    entries: dict[tuple, tuple[int, Any]] = field(default_factory=dict)
    traced: int = 0
    replayed: int = 0
    kinds: dict[int, tuple[bool, bool]] = field(default_factory=dict)  # id(op) -> (replayable, FLOPs counted)


def count_flops_of(work: Callable[[], Any], table: FlopTable | None = None) -> int:
    """FLOPs of ``work()`` (matmuls, convolutions, attention; forward and backward), e.g. one gradients()
    call: traced by FlopCounterMode op by op, or (``table``) with each distinct op on meta tensors traced
    once into the table and replayed from it after."""
    if table is None:
        with flop_counter() as counter:
            work()
        return int(counter.get_total_flops())
    with _ReplayMode(table) as mode:
        work()
    return mode.total


class _NotReplayable(Exception):
    """An argument or result whose op cannot be answered from a table (a tensor with values, an object)."""


_SCALARS = frozenset((int, float, bool, str, type(None), torch.dtype, torch.device, torch.layout,
                      torch.memory_format))
_TENSORS = frozenset((torch.Tensor, torch.nn.Parameter))
_SEQUENCES = frozenset((tuple, list, torch.Size))


def _freeze(values: Any) -> tuple:
    """A hashable signature of an op's arguments: each meta tensor's dtype and layout, each scalar with its
    type (``1`` and ``1.0`` promote differently), sequences item by item."""
    frozen = []
    for value in values:
        kind = type(value)
        if kind in _TENSORS:
            if not value.is_meta:
                raise _NotReplayable
            frozen.append((value.dtype, value.shape, value.stride(), value.storage_offset(), value.is_conj(),
                           value.is_neg()))
        elif kind in _SCALARS:
            frozen.append((kind, value))
        elif kind in _SEQUENCES:
            frozen.append(_freeze(value))
        else:
            raise _NotReplayable
    return tuple(frozen)


def _layout(out: Any) -> Any:
    """The recipe of an op's result to rebuild it: a meta tensor (fresh storage), None, or a tuple or list of
    those."""
    if type(out) is torch.Tensor:
        if not out.is_meta or out.storage_offset() != 0:
            raise _NotReplayable
        return out.shape, out.stride(), out.dtype
    if out is None:
        return None
    if type(out) in (tuple, list):
        return type(out), [_layout(o) for o in out]
    raise _NotReplayable


def _rebuild(layout: Any) -> Any:
    if layout is None:
        return None
    if type(layout[0]) is torch.Size:
        shape, stride, dtype = layout
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    kind, parts = layout
    return kind(_rebuild(p) for p in parts)


class _ReplayMode(TorchDispatchMode):
    """Counts the FLOPs of every op dispatched inside it into ``total`` (see the module docstring)."""

    def __init__(self, table: FlopTable) -> None:
        super().__init__()
        self.table = table
        self.total = 0
        self.counter = flop_counter()

    def _kind(self, func: Any) -> tuple[bool, bool]:
        """Whether an op's result may be replayed (it neither mutates nor aliases its inputs), and whether
        FlopCounterMode counts it or decomposes it into ops it may count. Ops live as long as the process,
        so their ids are stable keys."""
        kind = self.table.kinds.get(id(func))
        if kind is None:
            schema = func._schema
            functional = not schema.is_mutable and not func.is_view and all(
                r.alias_info is None for r in schema.returns)
            composite = torch._C.DispatchKey.CompositeImplicitAutograd      # what FlopCounterMode decomposes
            counted = func.overloadpacket in self.counter.flop_registry or composite in func.py_kernels \
                or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), composite)
            kind = self.table.kinds[id(func)] = (functional, counted)
        return kind

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not isinstance(func, torch._ops.OpOverload):     # a higher-order op: FlopCounterMode's own handling
            with self.counter:
                out = func(*args, **kwargs)
            self.total += int(self.counter.get_total_flops())
            return out
        functional, counted = self._kind(func)
        key = None
        if functional:
            try:
                key = (id(func), torch.get_default_dtype(), _freeze(args))     # factories read the default dtype
                if kwargs:
                    key += (_freeze(kwargs.values()), *kwargs)
            except _NotReplayable:
                key = None
        entry = None if key is None else self.table.entries.get(key)
        if entry is not None:
            flops, layout = entry
            self.table.replayed += 1
            self.total += flops
            return _rebuild(layout)
        flops = 0
        if counted:
            with self.counter:
                out = func(*args, **kwargs)
            flops = int(self.counter.get_total_flops())
        else:
            out = func(*args, **kwargs)
        self.table.traced += 1
        self.total += flops
        if key is not None:
            try:
                self.table.entries[key] = (flops, _layout(out))
            except _NotReplayable:
                pass
        return out
