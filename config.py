"""The tiny shared helper every script uses: a dataclass of defaults becomes a `--key=value` CLI.

    python train_rm.py --steps=200 --device=cuda --preset=gpu

Each script (train_rm.py, train_rl.py, evaluate.py, bench.py) declares `@dataclass class Config` with one
knob per line and a comment saying why, plus an optional `PRESETS = {"cpu": {...}, "gpu": {...}}` of named
overrides. `parse(Config, argv, PRESETS)` returns the filled dataclass. The rules (design.md):
  --key=value      sets a field; the value is parsed by the field's type (int, float, str, bool, tuple)
  --key            for a bool field means True; --key=false means False
  --preset=NAME    applies a named set of defaults first; explicit flags always win
  an unknown key   is an error that names the valid ones (a typo must never be silently ignored)

Beside the CLI, two run-directory chores live here because every script needs them and they are about a
run's configuration and files, not about any one stage: resolving `--device=auto`, and writing files and
checkpoint directories atomically (write to a temporary name, then rename), so an interrupted run never
leaves a half-written checkpoint where a good one was.
"""

import dataclasses
import hashlib
import inspect
import io
import math
import os
import sys
import tokenize
import warnings
from concurrent.futures import ThreadPoolExecutor

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
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(float(text)) if "e" in text.lower() else int(text)  # allow --steps=1e3
        if typ is float:
            return float(text)
        if typ in (tuple, "tuple") or str(typ).startswith("tuple"):
            return tuple(float(x) if "." in x else int(x) for x in text.split(",") if x)
        return text
    except ValueError:
        raise ConfigError(f"--{name}={text} is not a valid {getattr(typ, '__name__', typ)}") from None


def field_comments(cls) -> dict:
    """{field: the comment on its line} from the dataclass's source (the Configs are self-documenting: every
    knob has a one-line reason, and longer notes sit above it; --help prints the one-liners)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):  # e.g. a class defined in a REPL
        return {}
    names, out, line_field = {f.name for f in dataclasses.fields(cls)}, {}, {}
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string in names:
            line_field.setdefault(tok.start[0], tok.string)  # a field's definition starts this line
        elif tok.type == tokenize.COMMENT and tok.start[0] in line_field:
            out[line_field[tok.start[0]]] = tok.string.lstrip("#").strip()
    return out


def help_text(cls, presets: dict | None = None) -> str:
    """--help: every knob with its default and its comment, then the presets."""
    notes = field_comments(cls)
    script = os.path.basename(sys.argv[0]) if cls.__module__ == "__main__" else f"{cls.__module__}.py"
    lines = [f"{script} flags (--key=value; a bool also as --key):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        value = ",".join(map(str, default)) if isinstance(default, tuple) else default
        lines.append(f"  --{f.name}={value}".ljust(34) + f"  {notes.get(f.name, '')}".rstrip())
    if presets:
        lines.append("  --preset=NAME".ljust(34) + f"  named defaults: {', '.join(presets)}")
    return "\n".join(lines)


def parse(cls, argv=None, presets=None, positional_ok: bool = False):
    """Build `cls` from `--key=value` flags (argv defaults to sys.argv[1:]).

    Returns the dataclass, or `(dataclass, positional_args)` when positional_ok (evaluate's subcommands
    take image paths). --help / -h print help_text and exit 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    presets = presets or {}
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
            continue
        if key not in fields:
            valid = ", ".join(f"--{k}" for k in sorted(set(fields) | {"preset"}))
            raise ConfigError(f"unknown config key '--{key}'; valid keys: {valid}")
        typ = fields[key].type
        if not eq:  # a bare --flag is only meaningful for booleans
            if typ not in (bool, "bool"):
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
            value = "true"
        overrides[key] = _convert(key, typ, value)
    # Preset first, explicit flags last: `--preset=gpu --batch=8` means the gpu preset with batch 8.
    values = {k: v for k, v in presets.get(preset, {}).items() if k in fields} if preset else {}
    if preset and "preset" in fields:
        values["preset"] = preset  # remembered in config.json
    values.update(overrides)
    cfg = cls(**values)
    return (cfg, positional) if positional_ok else cfg


def check(cfg, **rules) -> None:
    """Validate flag values where they are parsed (a Config's __post_init__): rules name=(ok, allowed), ok a
    predicate on the value; a failure: one line naming the flag, its value and what is allowed."""
    for name, (ok, allowed) in rules.items():
        value = getattr(cfg, name)
        if not ok(value):
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            raise ConfigError(f"--{name}={shown} is not allowed: {allowed}")


def at_least(n):  # a rule for check(): value ≥ n
    return (lambda v: v >= n), f"use a value ≥ {n}"


POSITIVE = ((lambda v: v > 0), "use a value > 0")
FRACTION = ((lambda v: 0 < v <= 1), "use a value in (0, 1]")
UNIT = ((lambda v: 0 <= v <= 1), "use a value in [0, 1]")


def one_of(*values):  # a rule for check(): one of these values
    return (lambda v: v in values), "use one of " + ", ".join(map(str, values))


def multiple_of(n: int):  # a rule for check(): a positive multiple of n
    return (lambda v: v > 0 and v % n == 0), f"use a positive multiple of {n}"


def cosine_lr(peak: float, step: int, total: int) -> float:
    """The learning rate at `step` of `total`: a cosine from `peak` down to 2 % of it (SFT, each RM stage)."""
    return peak * (0.02 + 0.49 * (1 + math.cos(math.pi * step / total)))


def apply_preset(cfg, presets: dict, name: str):
    """In-process twin of --preset=NAME for tests and evaluate: returns a copy with the preset applied."""
    if name not in presets:
        raise ConfigError(f"unknown preset '{name}'; choose one of: {', '.join(presets)}")
    return dataclasses.replace(cfg, **{k: v for k, v in presets[name].items() if hasattr(cfg, k)})


def pick_device(name: str = "auto") -> torch.device:
    """`auto` = CUDA when present, else CPU (design.md: device-agnostic from the first line)."""
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


def fast_math(dev: torch.device, on: bool = True) -> None:
    """TF32 matmuls and convolutions on NVIDIA GPUs (~10-bit mantissa in the products, fp32 accumulate):
    several times the fp32 throughput for no visible change in these losses. No effect on CPU, or when off
    (--tf32 is a gpu-preset knob: these switches are process-wide, e.g. for evaluate.py's later metrics)."""
    if dev.type == "cuda" and on:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes in the loops: let cuDNN pick its fastest kernels


def amp_dtype(amp: str):
    """--amp=fp32 | bf16 -> None | torch.bfloat16: the dtype of the autocast regions (the networks only)."""
    if amp not in ("fp32", "bf16"):
        raise ConfigError(f"--amp={amp} unknown; use fp32 or bf16")
    return torch.bfloat16 if amp == "bf16" else None


def autocast(dev: torch.device, dtype):
    """Mixed precision where dtype is set (bf16 needs no loss scaling), a no-op context otherwise."""
    return torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


# ----------------------------------------------------------------------------------------------------
# Random streams: every random draw in the project comes from a generator named by what it is for and where
# it is (stream name, run seed, step, rank, …). A run is then a pure function of its seed, --resume continues
# every stream without storing generator state, and two streams can never share a seed by an accident of
# arithmetic (the hand-made `seed * 1_000_003 + step` formulas this replaced could collide).


def seed(*parts) -> int:
    """A 63-bit seed from `parts` (strings and ints), e.g. seed("rl/draw", cfg.seed, step, rank). A stable
    hash: the same on every machine and Python run (Python's own hash() of a string is salted per process)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # manual_seed takes 64-bit values; keep it positive


def generator(*parts, device="cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with seed(*parts)."""
    return torch.Generator(device=device).manual_seed(seed(*parts))


# ----------------------------------------------------------------------------------------------------
# Distributed data parallel: `torchrun --nproc_per_node=N train_rl.py` runs the same script N times.
# torchrun sets RANK / WORLD_SIZE / LOCAL_RANK in each process's environment; without them (plain `python`)
# everything below is a no-op and the scripts run as one process. Each rank draws its own data (seeds offset
# by rank), DistributedDataParallel averages the gradients, and rank 0 alone logs, validates and writes
# files, so the effective batch is N × --batch.


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a plain single-process run): the one process that logs and writes files."""
    return rank() == 0


def setup(device: str = "auto") -> torch.device:
    """pick_device, plus the process group when launched by torchrun: nccl on GPUs, gloo on CPU. Under
    torchrun each process takes the GPU of its LOCAL_RANK (one process per GPU)."""
    dev = pick_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def ddp(module: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """Wrap for gradient averaging across ranks (unchanged module in a single-process run)."""
    if world() == 1:
        return module
    ids = [dev.index] if dev.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


def mean_over_ranks(values: dict) -> dict:
    """Average a dict of 0-dim tensors over the ranks in one all-reduce (for the log row, and so every rank
    takes the same decisions: the NaN skip, a plateau switch). Identity in a single-process run."""
    if world() == 1:
        return values
    keys = sorted(values)
    flat = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    torch.distributed.all_reduce(flat)
    return dict(zip(keys, flat / world(), strict=True))


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a checkpoint the others will read)."""
    if world() > 1:
        torch.distributed.barrier()


def teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def broadcast_module(module: torch.nn.Module) -> torch.nn.Module:
    """Copy rank 0's parameters to every rank (after a step that ran separately on each rank)."""
    if world() > 1:
        for p in module.parameters():
            torch.distributed.broadcast(p.data, 0)
    return module


# ----------------------------------------------------------------------------------------------------
# One NaN/Inf policy for every loop (train_rm, SFT, RL): a non-finite step is skipped with a warning, and
# NAN_STREAK of them in a row stop the run with a message that names the likely cause; weights that are not
# finite are never saved (check_finite, called by save_rm and save_policy).

NAN_STREAK = 10  # non-finite steps in a row that end a run


class NanGuard:
    def __init__(self, loop: str):
        self.loop, self.streak, self.cause = loop, 0, ""

    def ok(self, finite: bool, step: int, cause: str) -> bool:
        """True if the step may be applied (`finite`: the host sync of the step). Skips with a warning; after
        NAN_STREAK skips in a row, exits non-zero with `cause`."""
        if finite:
            self.streak = 0
            return True
        self.streak, self.cause = self.streak + 1, cause
        warnings.warn(f"{self.loop} step {step}: non-finite loss or gradient, update skipped", stacklevel=2)
        if self.streak >= NAN_STREAK:
            raise SystemExit(
                f"error: {self.loop}: {NAN_STREAK} non-finite steps in a row (step {step}); {cause}"
            )
        return False

    def done(self) -> None:
        """End of a loop: a run whose last steps were non-finite failed, even if fewer than NAN_STREAK."""
        if self.streak:
            raise SystemExit(f"error: {self.loop} ended on {self.streak} non-finite step(s); {self.cause}")


# ----------------------------------------------------------------------------------------------------
# torch.compile (--compile): the networks' forward compiled in place (nn.Module.compile keeps the module,
# its state_dict keys and save_pretrained as they are). Shapes are static in every phase (fixed batch and
# crop), so dynamic=False: one graph per shape, compiled once. On CUDA the inductor backend (the bare UNet
# ran 3.3× faster forward on an H200 in an earlier measurement); on CPU only the graph capture runs (backend
# "eager": dynamo traces the same graphs, no code generation), which keeps --compile testable here and costs
# a little tracing, never a different result.


def compile_module(module: torch.nn.Module, dev: torch.device, on: bool) -> torch.nn.Module:
    if on:
        module.compile(dynamic=False, backend="inductor" if dev.type == "cuda" else "eager")
    return module


def prefetch(fn, steps, on: bool):
    """Yield (step, fn(step)) for each step; with `on`, fn(step + 1) already runs in a background thread while
    the caller works on step: on a GPU the CPU's data draw (Pillow resizes, JPEG, crops) then overlaps the
    GPU's work instead of stalling it. fn must be a pure function of the step (every draw here is: seeded by
    config.generator), so the stream is the same either way. Off on CPU, where the thread would only compete
    with the training step for the same cores."""
    steps = list(steps)
    if not on:
        yield from ((s, fn(s)) for s in steps)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(fn, steps[0]) if steps else None
        for i, s in enumerate(steps):
            out = nxt.result()
            if i + 1 < len(steps):
                nxt = pool.submit(fn, steps[i + 1])
            yield s, out
