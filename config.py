"""How a run is configured: a dataclass of defaults becomes a `--key=value` CLI (nanoGPT's configurator).

    python train_rm.py --stage_steps=0,60,60,200 --device=cuda --preset=gpu

Each script declares `@dataclass class Config` with one knob per line and a comment saying why, plus
`PRESETS = {"cpu": {...}, "gpu": {...}}` of named overrides; `parse(Config, argv, PRESETS)` fills it:
  --key=value      sets a field, parsed by the field's type (int, float, str, bool, tuple as 1,2,3)
  --key            for a bool field means True; --key=false means False
  --preset=NAME    applies a named set of defaults first; explicit flags always win
  an unknown key   is a one-line error naming the valid ones (a typo must never be silently ignored)
Beside the CLI: the device, the learning-rate schedule, and the run's named random streams.
"""

import dataclasses
import hashlib
import inspect
import math
import os
import re
import sys

import torch


class ConfigError(SystemExit):
    """A one-line user error. SystemExit so the CLI prints the message alone, never a traceback."""

    def __init__(self, msg: str):
        super().__init__(f"error: {msg}")


def _convert(name: str, typ, text: str):
    """Parse the string `text` as the field's type; a bad value is a one-line error naming the flag."""
    typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ)  # string annotations
    try:
        if typ is bool:
            if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError
            return text.lower() in ("1", "true", "yes", "on")
        if typ is int:
            return int(float(text)) if "e" in text.lower() else int(text)  # allow --steps=1e3
        if typ is float:
            return float(text)
        if typ in (tuple, "tuple") or str(typ).startswith("tuple"):
            return tuple(float(x) if "." in x else int(x) for x in text.split(",") if x)
        return text
    except ValueError:
        raise ConfigError(f"--{name}={text} is not a valid {getattr(typ, '__name__', typ)}") from None


def help_text(cls, presets: dict | None = None) -> str:
    """--help: every knob with its default and the comment on its line in the dataclass's source."""
    try:  # `    name: type = default  # why` -> {name: why}
        notes = dict(re.findall(r"(?m)^    (\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls)))
    except (OSError, TypeError):  # e.g. a class defined in a REPL: no source to read
        notes = {}
    script = os.path.basename(sys.argv[0]) if cls.__module__ == "__main__" else f"{cls.__module__}.py"
    lines = [f"{script} flags (--key=value; a bool also as --key):"]
    for f in dataclasses.fields(cls):
        value = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        lines.append(f"  --{f.name}={value}".ljust(34) + f"  {notes.get(f.name, '')}".rstrip())
    if presets:
        lines.append("  --preset=NAME".ljust(34) + f"  named defaults: {', '.join(presets)}")
    return "\n".join(lines)


def parse(cls, argv=None, presets=None, positional_ok: bool = False):
    """Build `cls` from `--key=value` flags (argv defaults to sys.argv[1:]). Returns the dataclass, or
    `(dataclass, positional_args)` when positional_ok (evaluate's subcommands take image paths)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fields, presets = {f.name: f for f in dataclasses.fields(cls)}, presets or {}
    if "--help" in argv or "-h" in argv:
        print(help_text(cls, presets))
        raise SystemExit(0)
    overrides, positional, preset = {}, [], None
    for arg in argv:
        if not arg.startswith("--"):
            if not positional_ok:
                raise ConfigError(f"unexpected argument '{arg}': flags look like --key=value")
            positional.append(arg)
            continue
        key, eq, value = arg[2:].partition("=")
        if key == "preset":
            if value not in presets:
                raise ConfigError(f"unknown preset '{value}'; choose one of: {', '.join(presets) or 'none'}")
            preset = value
        elif key not in fields:
            valid = ", ".join(f"--{k}" for k in sorted(set(fields) | {"preset"}))
            raise ConfigError(f"unknown config key '--{key}'; valid keys: {valid}")
        elif not eq and fields[key].type not in (bool, "bool"):  # a bare --flag: booleans only
            raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
        else:
            overrides[key] = _convert(key, fields[key].type, value if eq else "true")
    # Preset first, explicit flags last: `--preset=gpu --batch=8` means the gpu preset with batch 8.
    values = {k: v for k, v in presets.get(preset, {}).items() if k in fields} if preset else {}
    if preset and "preset" in fields:
        values["preset"] = preset  # remembered in config.json
    cfg = cls(**{**values, **overrides})
    return (cfg, positional) if positional_ok else cfg


def apply_preset(cfg, presets: dict, name: str):
    """In-process twin of --preset=NAME for tests and evaluate: returns a copy with the preset applied."""
    if name not in presets:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(presets)}")
    return dataclasses.replace(cfg, **{k: v for k, v in presets[name].items() if hasattr(cfg, k)})


# Flag checks, run where a Config is built (its __post_init__): check(cfg, name=(ok, allowed), ...) with
# `ok` a predicate on the value; a failure is one line naming the flag, its value and what is allowed.
def check(cfg, **rules) -> None:
    for name, (ok, allowed) in rules.items():
        if not ok(value := getattr(cfg, name)):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            raise ConfigError(f"--{name}={shown} is not allowed: {allowed}")


def at_least(n):
    return (lambda v: v >= n), f"use a value ≥ {n}"


def one_of(*values):
    return (lambda v: v in values), "use one of " + ", ".join(map(str, values))


def multiple_of(n: int):
    return (lambda v: v > 0 and v % n == 0), f"use a positive multiple of {n}"


POSITIVE = ((lambda v: v > 0), "use a value > 0")
FRACTION = ((lambda v: 0 < v <= 1), "use a value in (0, 1]")
UNIT = ((lambda v: 0 <= v <= 1), "use a value in [0, 1]")


def pick_device(name: str = "auto") -> torch.device:
    """`auto` = CUDA when present, else CPU: every script is device-agnostic from its first line."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device={name} but CUDA is not available here; use --device=cpu or auto")
    try:
        dev = torch.device(name)
    except RuntimeError:  # e.g. --device=gpu0
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device={name} unknown; use auto, cpu, cuda or cuda:N")
    return dev


def cosine_lr(peak: float, step: int, total: int) -> float:
    """The learning rate at `step` of `total`: a cosine from `peak` down to 2 % of it (SFT, each RM stage)."""
    return peak * (0.02 + 0.49 * (1 + math.cos(math.pi * step / total)))


# Random streams: every random draw comes from a generator named by what it is for and where it is (stream
# name, run seed, step, rank, …). A run is then a pure function of its seed, --resume continues every stream
# without storing generator state, and two streams never share a seed by an accident of arithmetic.
def seed(*parts) -> int:
    """A 63-bit seed from `parts` (strings and ints), e.g. seed("rl/draw", cfg.seed, step, rank). A stable
    hash: the same on every machine and Python run (Python's own hash() of a string is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes 64-bit values; keep it positive


def generator(*parts, device="cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with seed(*parts)."""
    return torch.Generator(device=device).manual_seed(seed(*parts))
