"""Checks before any Ray work starts: each failure is one ValueError line naming the value.

``danp-protect run``/``ingest`` (and the jobs/ entrypoints, through the same handlers) call
:func:`check` first: the input prefix exists and holds objects and can be listed with the given
credentials, OUTPUT takes a probe object (created, written, removed), the prompts file reads, the
model can be found as safetensors (without loading any weights: tiny/micro names, a local
diffusers directory, or a Hub repo id in the local cache or on the Hub), and C2PA credentials load
and sign. The CLI turns the ValueError into exit status 2.
Nothing here imports torch, diffusers or Ray.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

from .. import config as C
from .. import storage
from ..config import PipelineConfig

logger = logging.getLogger(__name__)

#: Built-in editors: the tiny random ones (no files), and the trained micro-editors shipped under
#: assets/editors/ (checked to be installed).
BUILTIN_MODELS = frozenset(C.TINY_MODELS) | frozenset(C.MICRO_MODELS) | frozenset(C.PROXY_MODELS)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check(cfg: PipelineConfig) -> None:
    check_input(cfg)
    check_output(cfg)
    if cfg.prompts_file:
        from .reader import load_prompts_file

        load_prompts_file(cfg.prompts_file, cfg.storage_options)
    check_model(cfg.model, cfg.revision)
    for model in cfg.ensemble:
        check_model(model)
    if cfg.c2pa_cert and cfg.c2pa_key:
        from ..manifest.credentials import Signer

        Signer.load(cfg.c2pa_cert, cfg.c2pa_key, cfg.storage_options)


def check_input(cfg: PipelineConfig) -> None:
    """INPUT exists, can be listed, and holds at least one object."""
    options = storage.resolve_options(cfg.input_uri, cfg.storage_options)
    try:
        fs, root = storage.filesystem(cfg.input_uri, options)
        if not fs.exists(root):
            raise ValueError(f"input {cfg.input_uri!r} does not exist")
        if cfg.input_list:         # the list names the objects; INPUT is only their root
            return
        first = _any_object(fs, root)
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(storage.scrub(f"cannot list input {cfg.input_uri!r}: {type(exc).__name__}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else ''}", options)) from exc
    if first is None:
        raise ValueError(f"input {cfg.input_uri!r} holds no objects: nothing to protect")


def check_output(cfg: PipelineConfig) -> None:
    """OUTPUT can be written: a probe object is created there and removed (a local OUTPUT's folder is
    created), so that a read-only or impossible OUTPUT fails now, not after minutes of protection."""
    from fsspec.implementations.local import LocalFileSystem

    options = storage.resolve_options(cfg.output_uri, cfg.storage_options)
    try:
        fs, root = storage.filesystem(cfg.output_uri, options)
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(root, exist_ok=True)
        probe = storage.join(root, f".danp-probe-{uuid.uuid4().hex[:12]}")
        fs.pipe_file(probe, b"danp-pipeline write probe\n")
        fs.rm(probe)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(storage.scrub(f"output {cfg.output_uri!r} is not writable: {type(exc).__name__}: {first}",
                                       options)) from exc


def _any_object(fs, root: str) -> str | None:
    """One object under ``root``, found with one small request (an archive of 100 M keys is not listed
    on the driver: job/listing.py lists it in Ray tasks)."""
    if fs.isfile(root):
        return root
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    if "s3" in protocols:
        from fsspec.asyn import sync

        bucket, key, _ = fs.split_path(root)
        prefix = key.rstrip("/") + "/" if key else ""
        page = sync(fs.loop, fs._call_s3, "list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return next((item["Key"] for item in page.get("Contents", [])), None)
    for dirpath, _, files in fs.walk(root, maxdepth=None):
        if files:
            return f"{dirpath}/{files[0]}"
    return None


def check_model(model: str, revision: str | None = None) -> None:
    """The editor can be found as safetensors; no weights are read."""
    if model in C.MICRO_MODELS or model in C.PROXY_MODELS:
        if not (C.MICRO_EDITORS_DIR / model / "model_index.json").is_file():
            raise ValueError(f"micro-editor {model!r} is not installed in this package "
                             f"({C.MICRO_EDITORS_DIR / model}); "
                             "train one with `danp-protect train-editor` and pass its directory as --model")
        return
    if model in BUILTIN_MODELS:
        return
    path = Path(model).expanduser()
    if path.is_dir():
        _check_dir(model, path)
        return
    if path.exists() or model.startswith((".", "/", "~")) or not _REPO_ID.match(model):
        raise ValueError(f"model {model!r} is not a directory, a Hub repo id (org/name) or a built-in editor "
                         f"({', '.join(sorted(BUILTIN_MODELS))})")
    _check_hub(model, revision)


def _check_dir(model: str, path: Path) -> None:
    if not (path / "model_index.json").is_file():
        raise ValueError(f"model directory {model!r} has no model_index.json (not a diffusers pipeline)")
    unet = path / "unet"
    if not any(unet.glob("*.safetensors")):
        found = sorted(p.name for p in unet.glob("*")) if unet.is_dir() else []
        raise ValueError(f"model directory {model!r} has no unet/*.safetensors (only safetensors load; "
                         f"found {found or 'no unet/'})")


def _check_hub(model: str, revision: str | None) -> None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "model_index.json", revision=revision)
    if isinstance(cached, str):
        _check_dir(model, Path(cached).parent)
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ValueError(f"model {model!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(model, revision=revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ValueError(f"model {model!r} (revision {revision!r}) not found on the Hugging Face Hub: "
                         f"{type(exc).__name__}") from exc
    except Exception as exc:  # offline: the actors could not download it either
        raise ValueError(f"model {model!r} is not in the local Hugging Face cache and the Hub cannot be reached "
                         f"({type(exc).__name__})") from exc
    files = [s.rfilename for s in info.siblings or []]
    if not any(f.startswith("unet/") and f.endswith(".safetensors") for f in files):
        raise ValueError(f"model {model!r} has no unet/*.safetensors on the Hub (only safetensors load)")
