"""Resumable training state of an editor's denoiser (UNet + text encoder), in safetensors files of a few MB.

A run on 2 CPU cores can outlast a working session, so training is checkpointed to a folder that is
committed as it appears and resumed by a later session (``danp-protect train-editor ... --resume``). The
folder holds, next to the loadable editor (EMA weights, diffusers layout, see training.save_editor),
``resume/``:

* ``model.safetensors``: the raw (non-EMA) UNet and text encoder weights, fp32, keys ``unet.*``/``text.*``;
* ``ema.safetensors``: the EMA copies, fp32, unless the checkpoint's editor folder holds them already (its
  ``unet/`` and ``text_encoder/`` weights, which ``load`` then reads);
* ``optimizer.safetensors``: AdamW's moments in bfloat16 (half the size; a resumed run's first steps differ
  from an uninterrupted one's by the rounding), keyed by parameter index, and the sampler's RNG state;
* ``state.json``: the step reached, the wall time spent, the loss and attention-share history.

Each file stays far below 10 MB for the proxy editors (about 1.2 M parameters). Written to a temporary folder
and renamed, so a run killed mid-write leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE = "state.json"


@dataclass
class DenoiserState:
    """Everything that :func:`training.train_denoiser` needs to continue where it stopped."""

    unet: torch.nn.Module
    text: torch.nn.Module
    ema_unet: torch.nn.Module
    ema_text: torch.nn.Module
    opt: torch.optim.Optimizer
    generator: torch.Generator
    step: int = 0
    elapsed_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    attention_shares: list[float] = field(default_factory=list)


def _weights(unet: torch.nn.Module, text: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {f"unet.{k}": v.detach().contiguous() for k, v in unet.state_dict().items()}
    out.update({f"text.{k}": v.detach().contiguous() for k, v in text.state_dict().items()})
    return out


def _load_weights(path: Path, unet: torch.nn.Module, text: torch.nn.Module) -> None:
    tensors = load_file(path)
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})


def save(folder: str | Path, s: DenoiserState, extra: dict | None = None, ema: bool = True) -> None:
    """Write ``s`` to ``folder`` (replaced whole); ``ema=False``: leave the EMA weights to the editor saved in
    ``folder``'s parent."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_weights(s.unet, s.text), tmp / "model.safetensors")
    if ema:
        save_file(_weights(s.ema_unet, s.ema_text), tmp / "ema.safetensors")
    params = [p for group in s.opt.param_groups for p in group["params"]]
    moments: dict[str, torch.Tensor] = {"generator": s.generator.get_state()}
    adam_step = 0.0
    for i, p in enumerate(params):
        st = s.opt.state.get(p)
        if st:
            moments[f"m.{i}"] = st["exp_avg"].to(torch.bfloat16).contiguous()
            moments[f"v.{i}"] = st["exp_avg_sq"].to(torch.bfloat16).contiguous()
            adam_step = float(st["step"])
    save_file(moments, tmp / "optimizer.safetensors")
    state = {"step": s.step, "adam_step": adam_step, "elapsed_s": s.elapsed_s, "losses": s.losses,
             "attention_shares": s.attention_shares, **(extra or {})}
    (tmp / STATE).write_text(json.dumps(state))
    replace_dir(tmp, folder)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, so that ``final`` is never half-written."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def exists(folder: str | Path) -> bool:
    return (Path(folder) / STATE).is_file()


def read_extra(folder: str | Path) -> dict:
    """The state's JSON (step, elapsed time, histories and whatever ``extra`` the run saved)."""
    return json.loads((Path(folder) / STATE).read_text())


def load(folder: str | Path, s: DenoiserState) -> DenoiserState:
    """Fill ``s`` (freshly built modules, optimizer and generator) from ``folder``; returns it."""
    folder = Path(folder)
    if not exists(folder):
        raise ValueError(f"no training state to resume in {folder} (it has no {STATE})")
    state = read_extra(folder)
    _load_weights(folder / "model.safetensors", s.unet, s.text)
    if (folder / "ema.safetensors").is_file():
        _load_weights(folder / "ema.safetensors", s.ema_unet, s.ema_text)
    else:  # the editor saved next to the state holds them (diffusers / transformers layout, same keys)
        s.ema_unet.load_state_dict(load_file(folder.parent / "unet" / "diffusion_pytorch_model.safetensors"))
        s.ema_text.load_state_dict(load_file(folder.parent / "text_encoder" / "model.safetensors"))
    moments = load_file(folder / "optimizer.safetensors")
    s.generator.set_state(moments["generator"])
    params = [p for group in s.opt.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        if f"m.{i}" in moments:
            s.opt.state[p] = {"step": torch.tensor(state["adam_step"]),
                              "exp_avg": moments[f"m.{i}"].to(p.dtype), "exp_avg_sq": moments[f"v.{i}"].to(p.dtype)}
    s.step, s.elapsed_s = int(state["step"]), float(state["elapsed_s"])
    s.losses, s.attention_shares = list(state["losses"]), list(state["attention_shares"])
    return s
