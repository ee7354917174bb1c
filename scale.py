"""Scale: one GPU, many GPUs, faster steps. Plumbing the training loops call at their edges (docs/scaling.md).

    torchrun --standalone --nproc_per_node=8 train_rl.py --preset=gpu    # DDP: effective batch 8 × --batch

Without torchrun every function here is a no-op or a pass-through, so the loops read the same on a laptop.
"""

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from config import ConfigError, pick_device

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
    """A run's end: wait for every rank (rank 0 may still be writing checkpoints), then leave the group."""
    if torch.distributed.is_initialized():
        barrier()
        torch.distributed.destroy_process_group()


def broadcast_module(module: torch.nn.Module) -> torch.nn.Module:
    """Copy rank 0's parameters to every rank (after a step that ran separately on each rank)."""
    if world() > 1:
        for p in module.parameters():
            torch.distributed.broadcast(p.data, 0)
    return module


# ----------------------------------------------------------------------------------------------------
# Speed: TF32, bf16 autocast, torch.compile, a prefetching data thread.


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


# ----------------------------------------------------------------------------------------------------
# The policy's training settings (SFT, RL, bench): never saved with it.


def speed(policy, amp=None, channels_last: bool = False):
    """bf16 autocast of the UNet (amp=torch.bfloat16; policy.net casts its output back to fp32) and the NHWC
    memory format, which tensor-core convolutions prefer. Returns the policy."""
    policy.amp = amp
    if channels_last:
        policy.unet.to(memory_format=torch.channels_last)
    return policy


def distribute(policy, dev):
    """Route the UNet forward through DistributedDataParallel when torchrun launched several ranks. The
    wrapper is kept out of the module tree (a plain attribute dict entry, read by policy.net): state_dict,
    save_policy and the optimiser keep seeing the bare UNet. Idempotent: SFT and RL share one wrapper."""
    if "_ddp" not in policy.__dict__:
        policy.__dict__["_ddp"] = ddp(policy.unet, dev)
    return policy


def no_sync(policy):
    """Accumulate gradients locally (no all-reduce) inside this context: pg backpropagates once per trained
    step and only the last backward of an update needs to synchronise."""
    wrapped = policy.__dict__.get("_ddp")
    return wrapped.no_sync() if hasattr(wrapped, "no_sync") else contextlib.nullcontext()


def for_training(policy, dev, cfg):
    """A run's --amp, --channels_last, --compile and DDP on the policy (train_rl's flags). Returns it."""
    speed(policy, amp_dtype(cfg.amp), cfg.channels_last)
    compile_module(policy.unet, dev, cfg.compile)
    return distribute(policy, dev)
