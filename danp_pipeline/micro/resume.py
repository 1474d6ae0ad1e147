"""Resumable training state of an editor's denoiser (UNet + text encoder), in safetensors files of a few MB.

A run on 2 CPU cores can outlast a working session, so training is checkpointed to a folder that is
committed as it appears and resumed by a later session (``danp-protect train-editor ... --resume``). The
checkpoint folder holds the frozen VAE (``vae/``, fp32, the only copy a resumed run reads) and ``resume/``:

* ``model.safetensors``: the raw (non-EMA) UNet and text encoder weights, keys ``unet.*``/``text.*``;
* ``ema.safetensors``: their EMA copies;
* ``rng.safetensors``: the batch sampler's RNG state;
* ``state.json``: the step reached, the wall time spent, the loss and attention-share history.

Both weight files are stored in bfloat16 and AdamW's moments are not stored at all: a checkpoint of the
proxy editors (about 1.5 M parameters) is then 3.3 MB of VAE + 2 x 3.1 MB, under the 10 MB that one
committed checkpoint may take (fp32 weights, EMA and bf16 moments made 22 MB). A resumed run rebuilds the
moments with :data:`MOMENT_STEPS` optimizer steps at learning rate 0 on batches of its own RNG, then goes on
with the step it stopped at; it follows the uninterrupted run up to the weights' rounding (2^-8 relative)
and the rebuilt moments. Checkpoints of the older layout (fp32 weights, ``optimizer.safetensors`` with
bf16 moments) still load. Written to a temporary folder and renamed, so a run killed mid-write leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE = "state.json"
MOMENT_STEPS = 20  # optimizer steps at lr 0 that rebuild AdamW's moments on resume (beta2 = 0.999: bias-corrected)


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
    moments_missing: bool = False  # resumed from a checkpoint without AdamW's moments: rebuild them first


def _weights(unet: torch.nn.Module, text: torch.nn.Module) -> dict[str, torch.Tensor]:
    def stored(v: torch.Tensor) -> torch.Tensor:
        return (v.to(torch.bfloat16) if v.is_floating_point() else v).detach().contiguous()

    out = {f"unet.{k}": stored(v) for k, v in unet.state_dict().items()}
    out.update({f"text.{k}": stored(v) for k, v in text.state_dict().items()})
    return out


def _load_weights(path: Path, unet: torch.nn.Module, text: torch.nn.Module) -> None:
    tensors = load_file(path)
    unet.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("unet.")})
    text.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("text.")})


def save(folder: str | Path, s: DenoiserState, extra: dict | None = None) -> None:
    """Write ``s`` to ``folder`` (replaced whole)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_weights(s.unet, s.text), tmp / "model.safetensors")
    save_file(_weights(s.ema_unet, s.ema_text), tmp / "ema.safetensors")
    save_file({"generator": s.generator.get_state()}, tmp / "rng.safetensors")
    state = {"step": s.step, "elapsed_s": s.elapsed_s, "losses": s.losses,
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
    old_layout = (folder / "optimizer.safetensors").is_file()
    stored = load_file(folder / ("optimizer.safetensors" if old_layout else "rng.safetensors"))
    s.generator.set_state(stored["generator"])
    params = [p for group in s.opt.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        if f"m.{i}" in stored:
            s.opt.state[p] = {"step": torch.tensor(state["adam_step"]),
                              "exp_avg": stored[f"m.{i}"].to(p.dtype), "exp_avg_sq": stored[f"v.{i}"].to(p.dtype)}
    s.moments_missing = not s.opt.state
    s.step, s.elapsed_s = int(state["step"]), float(state["elapsed_s"])
    s.losses, s.attention_shares = list(state["losses"]), list(state["attention_shares"])
    return s
