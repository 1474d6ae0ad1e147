"""Options several subcommands share: storage options, the attack's settings (and ``--attack-option``),
and small parsers of comma-separated lists. Defaults come from config.py, never spelled twice."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from .. import config as C
from ..config import (
    AttackConfig,
)

logger = logging.getLogger("danp_pipeline")


def _default(cls: type, name: str) -> Any:
    """A config field's default, so that no default is spelled twice."""
    fld = cls.__dataclass_fields__[name]
    return fld.default_factory() if callable(fld.default_factory) else fld.default


def _storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-options", default="{}", help="JSON passed to fsspec (endpoint_url, key, …)")


def _budget(text: str) -> float:
    """An L∞ budget on the [0,1] scale: a number (``0.03``) or 8-bit levels over 255 (``8/255``)."""
    number, sep, denominator = text.strip().partition("/")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a budget is a number on the [0,1] scale or levels as N/255, got {text!r}")
    if sep and denominator.strip() != "255":
        raise argparse.ArgumentTypeError(f"a budget in 8-bit levels is written N/255, got {text!r}")
    return value / 255 if sep else value


def _weights(text: str) -> tuple[float, ...]:
    """Editor weights of an ensemble (``--model-weights``), comma-separated numbers."""
    try:
        return tuple(float(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _csv_list(kind: Callable[[str], Any]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        return tuple(kind(item.strip()) for item in text.split(",") if item.strip())
    return parse


# -- attack options (run, ingest, eval, micro-bench, bench) ----------------------------------------

def add_attack_options(parser: argparse.ArgumentParser, omit: tuple[str, ...] = (), budgets: bool = False) -> None:
    """Options shared by every command that runs the immunizer; defaults come from AttackConfig. ``omit``:
    attack settings the command decides itself (eval's ``--methods`` decides ``method``; bench's own
    ``--path`` and ``--precision``), offered neither as a flag here nor as an ``--attack-option`` key.
    ``budgets``: ``--eps`` takes a comma-separated list (a budget curve; attack_config(args, eps=…) per item)."""
    d = AttackConfig()
    parser.set_defaults(attack_omitted=tuple(omit))
    g = parser.add_argument_group("attack (docs/method.md)")
    if "method" not in omit:
        g.add_argument("--method", default=d.method, choices=C.METHODS, help=f"objective (default {d.method})")
    if budgets:
        g.add_argument("--eps", type=_csv_list(_budget), default=(d.eps,),
                       help="L∞ budgets γ, comma-separated: each on the [0,1] scale or in 8-bit levels as N/255 "
                            f"(2/255,4/255,8/255,16/255 runs every method at each; default {d.eps})")
    else:
        g.add_argument("--eps", type=_budget, default=d.eps,
                       help=f"L∞ budget γ on the [0,1] scale, or in 8-bit levels as N/255 (default {d.eps})")
    g.add_argument("--steps", type=int, default=d.steps, help=f"PGD iterations N (default {d.steps})")
    g.add_argument("--step-size", type=float, default=None,
                   help="PGD step α (default 1/255; --profile fast: a fixed fraction of --eps). An explicit "
                        "value is always kept")
    g.add_argument("--timesteps", type=int, default=d.num_timesteps,
                   help=f"|𝒯| per iteration (default {d.num_timesteps})")
    g.add_argument("--timestep-mode", choices=("centres", "random"), default=d.timesteps,
                   help="the |𝒯| timesteps of an iteration: the centres of equal bins, or a random draw per bin "
                        f"(default {d.timesteps})")
    if "resolution" not in omit:
        g.add_argument("--resolution", type=int, default=d.resolution,
                       help=f"working resolution, longer side (default {d.resolution})")
    g.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the attack's noise and timestep draws; recorded in each row (default {d.seed})")
    g.add_argument("--profile", choices=C.PROFILES, default=C.PROFILES[0],
                   help="paper: the published method (default); fast: ~30%% of the iterations with a decaying step "
                        "(α a fixed fraction of --eps), fresh noise, half the timesteps per iteration, one backward "
                        "between norm measurements (scales --steps and --timesteps; --attack-option still "
                        "overrides)")
    g.add_argument("--attack-option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other attack setting (repeatable), one of: " + ", ".join(_attack_option_keys(omit)))


#: Attack settings with options of their own (not repeated in --attack-option's list).
_ATTACK_FLAGS = ("method", "eps", "steps", "step_size", "num_timesteps", "timesteps", "resolution", "seed")


def _attack_option_keys(omit: tuple[str, ...] = ()) -> list[str]:
    return [name for name in AttackConfig.__dataclass_fields__ if name not in _ATTACK_FLAGS + tuple(omit)]


def attack_config(args: argparse.Namespace, eps: float | None = None) -> AttackConfig:
    """The attack the options describe (at budget ``eps`` if given, else ``--eps``), under ``--profile``; logs a
    warning when its steps cannot reach the budget."""
    d, omitted = AttackConfig(), getattr(args, "attack_omitted", ())
    fields = {
        "method": getattr(args, "method", d.method), "eps": args.eps if eps is None else eps, "steps": args.steps,
        "num_timesteps": args.timesteps, "timesteps": args.timestep_mode,
        "resolution": getattr(args, "resolution", d.resolution), "seed": args.seed,
    }
    known = AttackConfig.__dataclass_fields__
    options = {}
    for item in args.attack_option:
        key, sep, raw = item.partition("=")
        if not sep or key not in known or key in omitted:
            raise ValueError(f"--attack-option expects KEY=VALUE with KEY one of "
                             f"{', '.join(_attack_option_keys(omitted))}; got {item!r}")
        options[key] = _parse_value(raw, getattr(d, key))
    base = C.profile_config(getattr(args, "profile", C.PROFILES[0]), AttackConfig(**fields),
                            step_size=args.step_size)
    cfg = base.replace(**options)
    warning = cfg.reach_warning()
    if warning:
        logger.warning("%s", warning)
    return cfg


def _parse_value(raw: str, default: object) -> object:
    """``raw`` as the type of the field's default: bool, number, a comma-separated tuple, None."""
    if isinstance(default, bool):
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"expected a boolean, got {raw!r}")
        return raw.lower() in ("true", "1", "yes")
    if isinstance(default, tuple):
        return tuple(_scalar(item.strip()) for item in raw.split(",") if item.strip())
    if default is None:
        return None if raw.lower() in ("", "none") else _scalar(raw)
    return type(default)(raw)


def _scalar(raw: str) -> object:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            continue
    return raw
