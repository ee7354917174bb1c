"""A run's directory: config.json, metrics.jsonl, state.pt and checkpoints — written atomically, read back
with one-line errors, and never lost to a later run that fails.

    log = open_log(cfg, "train_rl", keep)     # after the run's inputs validated: a failing run wipes nothing
    st = resume_state(cfg)                    # --resume: state.pt, or a line saying the run starts fresh
    with atomic_dir("out/rm/rm_stage0") as tmp: ...     # a checkpoint: the old one or the new one, never half
"""

import dataclasses
import json
import os
import shutil
import subprocess
import warnings
from contextlib import contextmanager

import torch

from config import ConfigError
from scale import is_main

# ----------------------------------------------------------------------------------------------------
# Atomic writes: a checkpoint is either the old complete one or the new complete one, never half of each.


def write_json(path: str, obj) -> None:
    """Write JSON to path.tmp, then rename over path (rename is atomic on POSIX filesystems)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def save_config(cfg, out_dir: str, script: str | None = None) -> None:
    """config.json: the exact knobs a run used, so it can be reproduced or compared, and which
    script made it ("_script"), so a run of another script is never overwritten by mistake."""
    os.makedirs(out_dir, exist_ok=True)
    extra = {"_script": script} if script else {}
    write_json(os.path.join(out_dir, "config.json"), {**dataclasses.asdict(cfg), **extra})


# The knob that tells the scripts' config.json files apart when "_script" is missing (older runs).
_SIGNATURE = {"stage_steps": "train_rm", "sft_steps": "train_rl", "arm_steps": "evaluate", "presets": "bench"}


def run_script(out_dir: str) -> str | None:
    """Which script's run `out_dir` holds (its config.json), or None for an empty or unreadable one."""
    try:
        with open(os.path.join(out_dir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved.get("_script") or next((v for k, v in _SIGNATURE.items() if k in saved), None)


def resume_state(cfg) -> dict | None:
    """out_dir/state.pt's contents (tensors, numbers, strings only) when --resume finds one; else None (and,
    with --resume, a line saying the run starts fresh). An unreadable state is a one-line error."""
    path = os.path.join(cfg.out_dir, "state.pt")
    if not cfg.resume:
        return None
    if not os.path.isfile(path):
        print(f"--resume: no state.pt in {cfg.out_dir}; starting fresh") if is_main() else None
        return None
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated, or not a state of ours: say which file, never a traceback
        raise ConfigError(f"{path} is unreadable ({type(e).__name__}); delete it to start fresh") from None


def claim(cfg, script: str) -> None:
    """Make cfg.out_dir this script's run: refuse a dir that holds another script's run (one line), then
    write config.json. Called once the run's inputs validated (open_log; evaluate, which keeps no log)."""
    other = run_script(cfg.out_dir)
    if other and other != script:
        raise ConfigError(
            f"--out_dir={cfg.out_dir} holds a {other}.py run; give {script}.py another --out_dir"
        )
    save_config(cfg, cfg.out_dir, script)


def open_log(cfg, script: str, keep=None):
    """The run's metrics.jsonl, to be opened only once the run's inputs validated: a run that fails on its
    inputs leaves a previous run in the same out_dir untouched. A dir holding another script's run is refused.
    keep None: a fresh run (config.json and metrics.jsonl replaced). keep a predicate on rows: resuming; rows
    it rejects (logged past the resumed step, e.g. before a kill -9) are dropped first, so every step appears
    once. Ranks other than 0 log to os.devnull."""
    if not is_main():
        return open(os.devnull, "w")
    claim(cfg, script)
    path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if keep is None:
        return open(path, "w")
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:  # a line cut off by a kill mid-write
                    pass
    with open(f"{path}.tmp", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows if keep(r))
    os.replace(f"{path}.tmp", path)
    return open(path, "a")


def save_state(out_dir: str, **state) -> None:
    """out_dir/state.pt for --resume, written atomically by rank 0 (the weights agree on every rank): tensors,
    numbers and strings only (it loads with weights_only=True); an object goes in as its state_dict()."""
    if is_main():
        state = {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in state.items()}
        torch_save_atomic(state, os.path.join(out_dir, "state.pt"))


def torch_save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file then rename. Resume state holds tensors, numbers, strings only."""
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@contextmanager
def atomic_dir(path: str):
    """Yield a temporary directory; on success it replaces `path` (the old one is removed only after).

    Usage: `with atomic_dir(out) as tmp: model.save_pretrained(tmp)`. If the body raises, `path` is untouched.
    """
    tmp, old = f"{path}.tmp", f"{path}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, old)  # two renames: there is always one complete copy on disk
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def saved_on_interrupt(save, where):
    """Around a training loop: Ctrl-C saves the resume state (save()), then exits with one line saying
    where (where()) and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        save()
        raise SystemExit(f"interrupted at {where()}: state saved; continue with --resume") from None


@contextmanager
def loading(path: str, fix: str):
    """Around reading a checkpoint's weights: any failure (a truncated or foreign file, tensors whose shapes
    do not match the JSON) becomes one line naming the directory and what to do."""
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:
        msg = str(e).splitlines()[0][:160] if str(e) else ""
        raise ConfigError(
            f"'{path}' could not be loaded ({type(e).__name__}: {msg}); remake it with `{fix}`"
        ) from None


def read_kind(path: str, want: str, fix: str) -> dict:
    """Read the JSON a checkpoint directory carries and check its `kind` ("rm" / "policy").

    A missing directory or a wrong kind is a one-line error that says which command makes the right one."""
    meta = os.path.join(path, f"{want}.json")
    if not os.path.isdir(path):
        raise ConfigError(f"'{path}' does not exist; make it with `{fix}`")
    if not os.path.isfile(meta):
        other = [k for k in ("rm", "policy") if k != want and os.path.isfile(os.path.join(path, f"{k}.json"))]
        what = f"a {other[0]} checkpoint" if other else f"no {want}.json in it"
        if not other and os.path.isfile(os.path.join(path, "model_index.json")):
            what = "a diffusers pipeline"  # e.g. an LDM SR model: a policy (load_policy), never an RM
        raise ConfigError(f"'{path}' is not a {want} checkpoint ({what}); make one with `{fix}`")
    try:
        with open(meta) as f:
            obj = json.load(f)
    except ValueError as e:  # truncated or hand-edited
        raise ConfigError(f"'{meta}' is not valid JSON ({e}); remake the checkpoint with `{fix}`") from None
    if not isinstance(obj, dict) or obj.get("kind") != want:
        obj = obj if isinstance(obj, dict) else {}
        raise ConfigError(f"'{path}' holds kind '{obj.get('kind')}', not '{want}'; make one with `{fix}`")
    return obj


def check_finite(module: torch.nn.Module, what: str, fix: str) -> None:
    """A one-line error instead of writing a checkpoint with NaN/Inf weights (one host sync per save)."""
    if not all(torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()):
        raise SystemExit(f"error: {what} has non-finite weights; not saved. {fix}")


def git_commit() -> str:
    """The repository's HEAD ("unknown" outside a git checkout), read when a run starts: the run's code."""
    git = ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"]
    out = subprocess.run(git, capture_output=True, text=True).stdout.strip() if shutil.which("git") else ""
    return out or "unknown"


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
