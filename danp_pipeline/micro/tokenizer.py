"""Build a real ``transformers.CLIPTokenizer`` whose every world word is exactly one token.

The CLIP BPE starts from the characters of a word, the last one carrying the ``</w>`` suffix,
and repeatedly merges the adjacent pair of lowest merge rank. We write a vocab.json holding the
256 byte-level base symbols (with and without ``</w>``), the special tokens and one entry per
word, and a merges.txt that assembles each word left to right. Merges of one word can break the
chain of another (``r e`` from "red" fires inside "green"), so merges are added iteratively:
tokenize each word with the current merges, and append merges that join the pieces it stopped
at, until every word is a single token.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import CLIPTokenizer

logger = logging.getLogger(__name__)

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def byte_symbols() -> list[str]:
    """The 256 byte-level base symbols of GPT-2/CLIP BPE: printable bytes stand for themselves,
    the others are shifted to code points from 256 up."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, shift = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + shift))
            shift += 1
    return out


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """The CLIP BPE of one lowercase word (same algorithm as CLIPTokenizer.bpe)."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(parts[i], parts[i + 1]) for i in range(len(parts) - 1)]
        best = min(pairs, key=lambda p: ranks.get(p, 10**9))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges under which every word of ``words`` BPE-encodes to the single token ``word</w>``."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for _ in range(100):
        changed = False
        for w in words:
            parts = _bpe(w, ranks)
            if len(parts) == 1:
                continue
            acc = parts[0]
            for p in parts[1:]:
                if (acc, p) not in ranks:
                    ranks[(acc, p)] = len(merges)
                    merges.append((acc, p))
                    changed = True
                acc = acc + p
        if not changed:
            break
    bad = [w for w in words if len(_bpe(w, ranks)) != 1]
    if bad:
        raise RuntimeError(f"could not make single tokens of {bad}")
    return merges


def build_tokenizer(words: list[str], out_dir: str | Path, model_max_length: int = 16) -> CLIPTokenizer:
    """Write vocab.json, merges.txt and tokenizer_config.json to ``out_dir`` and load them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    words = sorted({w.lower() for w in words})
    merges = build_merges(words)
    base = byte_symbols()
    tokens = base + [b + "</w>" for b in base]
    tokens += [a + b for a, b in merges if a + b not in tokens]
    tokens += [w + "</w>" for w in words if w + "</w>" not in tokens]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2 - micro world vocabulary"] + [f"{a} {b}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    tok = CLIPTokenizer.from_pretrained(str(out))
    logger.info("tokenizer: %d tokens, %d merges, max length %d", len(tok), len(merges), model_max_length)
    return tok


def check_single_tokens(tok: CLIPTokenizer, words: list[str]) -> list[str]:
    """Words that do not encode to exactly one id (empty list = all good)."""
    return [w for w in words if len(tok(w, add_special_tokens=False).input_ids) != 1]
