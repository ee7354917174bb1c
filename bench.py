"""Throughput and memory of the RL loop against the bare network calls it makes (nanoGPT's bench.py).

    python bench.py                                     # the cpu preset (+ a line: the gpu preset needs CUDA)
    python bench.py --presets=gpu --device=cuda         # the gpu preset (B·G = 64, log-probs in chunks of 16)
    python bench.py --presets=gpu --compile             # + torch.compile of the UNet and RMs (compiles first)
    python bench.py --presets=gpu_full --device=cuda    # 256² HR, the 66M UNet: the long run's step

What it measures, for each preset (train_rl.PRESETS: cpu | gpu) and each algorithm (pg, refl):
1. The real loop: train_rl.main itself runs warmup + steps RL steps on a fresh policy and RMs of the preset's
   shapes. A step is the time between two of the loop's finiteness checks (its one host sync per step, the
   device synchronised there), so it holds everything an iteration does: data, sampling, reward, update,
   optimiser, log. The median over the timed steps is reported, with the spread.
2. The work of a step: every call of Policy.net and of an RM's forward is counted while the loop runs, as
   (network, input shape, with grad or not); a call with grad is priced as forward + backward.
3. The ideal step: those calls priced at their bare speed (the same modules, alone, on random inputs of the
   same shapes: "pure model compute"); efficiency = ideal / measured, per step.
4. The data share: the CPU time of the batch draw (data.training_pairs) over the step time; on CUDA the draw
   runs one step ahead in a thread (scale.prefetch), so it overlaps the GPU and the share says how much.
5. Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the process's peak RSS so far.
Prints a table per preset and lines `efficiency pg cpu 0.93`, writes out_dir/bench.json with every number.
The per-sample ("naive") version of the pg update is no longer timed: tests/test_rl.py pins the batched
gradient to it instead.
"""

import dataclasses
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass

import torch

import config
import data
import rundir
import scale
import train_rl
import train_rm
from policy import Policy, PolicyConfig, load_policy, make_policy, save_policy
from rm import FinPercepRM, RMConfig, grow, load_stages, n_params, save_rm


@dataclass
class Config:
    out_dir: str = "out/bench"  # bench.json and config.json land here
    presets: str = "cpu,gpu"  # which presets to run, comma-separated; gpu needs CUDA and is skipped without
    device: str = "auto"  # auto: the cpu preset on the CPU, the gpu preset on CUDA; else every preset there
    seed: int = 0  # data draws, rollout noise and init
    warmup: int = 1  # untimed steps first (allocator, cuDNN autotune, compiling); --compile wants 2 or more
    steps: int = 6  # timed RL steps per algorithm (cpu: pg ~0.8 s, refl ~0.3 s a step, ±10 % noise)
    repeats: int = 10  # timed bare calls per network price
    compile: bool = False  # train_rl --compile, and the bare calls compiled the same way
    # Overrides of the preset's shapes (0 / empty = the preset's own): tests use tiny ones.
    crop: int = 0  # HR crop size
    batch: int = 0  # B: LR images per RL step
    group: int = 0  # G: samples per LR image (pg)
    sample_steps: int = 0  # K: DDIM steps per rollout
    unet_channels: tuple = ()  # policy UNet widths
    unet_layers: int = 0  # resnets per UNet level
    rm_widths: tuple = ()  # reward-model widths (stem + N levels)

    def __post_init__(self):
        c = config
        c.check(self, warmup=c.at_least(1), steps=c.at_least(1), repeats=c.at_least(1))


# ----------------------------------------------------------------------------------------------------
# Clocks and memory: a GPU runs asynchronously, so every clock read is preceded by a synchronisation


def sync(dev) -> None:
    """Wait for queued GPU work: a clock read without it would time the launches, not the kernels."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory(dev) -> float:
    """MiB: the GPU's peak allocation since the last reset, or the process's peak RSS (Linux: KiB)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # macOS reports bytes, Linux KiB


# ----------------------------------------------------------------------------------------------------
# Watching the real loop: network calls, step boundaries and the data draw, by wrapping three functions


class Watch:
    """While active, Policy.net and FinPercepRM.forward record (network, input shape, grad) per call,
    rundir.NanGuard.ok (the loop's per-step host sync) closes a step — its time and calls — and
    data.training_pairs adds up the draw's time. Class attributes are swapped, so the modules train_rl.main
    loads inside itself are watched too; everything is restored on exit."""

    def __init__(self, dev):
        self.dev, self.calls, self.steps, self.draw_s = dev, Counter(), [], 0.0
        self.saved = [
            (Policy, "net"),
            (FinPercepRM, "forward"),
            (rundir.NanGuard, "ok"),
            (data, "training_pairs"),
        ]

    def __enter__(self):
        # Keep the originals: each wrapper records, then calls through; the loop computes what it always does.
        self.saved = [(obj, name, getattr(obj, name)) for obj, name in self.saved]
        net, fwd, ok, draw = (f for _, _, f in self.saved)
        w = self

        def counted_net(policy, x, t):
            w.calls[("unet", tuple(x.shape), torch.is_grad_enabled())] += 1
            return net(policy, x, t)

        def counted_rm(rm, images, *a, **k):
            w.calls[(f"rm{rm.stage}", tuple(images.shape), torch.is_grad_enabled())] += 1
            return fwd(rm, images, *a, **k)

        def boundary(guard, finite, step, cause):
            # The loop's finiteness check ends a step; the device is synchronised: the clock sees its kernels.
            sync(w.dev)
            w.steps.append((time.perf_counter(), dict(w.calls), w.draw_s))
            return ok(guard, finite, step, cause)

        def timed_draw(*a, **k):
            t0 = time.perf_counter()
            out = draw(*a, **k)
            w.draw_s += time.perf_counter() - t0
            return out

        Policy.net, FinPercepRM.forward, rundir.NanGuard.ok = counted_net, counted_rm, boundary
        data.training_pairs = timed_draw
        return self

    def __exit__(self, *exc):
        for obj, name, f in self.saved:
            setattr(obj, name, f)

    def per_step(self) -> list:
        """[(seconds, Counter of calls, draw seconds)] of each step after the first boundary."""
        # Differences of consecutive boundaries: the time, the calls made and the draw time of one iteration.
        out = []
        for (t0, c0, d0), (t1, c1, d1) in zip(self.steps, self.steps[1:]):
            out.append(
                (t1 - t0, Counter({k: v - c0.get(k, 0) for k, v in c1.items() if v > c0.get(k, 0)}), d1 - d0)
            )
        return out


# ----------------------------------------------------------------------------------------------------
# Bare network prices


def price(key, policy, rms, dev, repeats: int) -> float:
    """Seconds per call of `key` = (network, input shape, grad): the module alone on random inputs of that
    shape, after one untimed call; with grad a forward + backward (of the input, too, as ReFL needs)."""
    net, shape, grad = key
    # Random inputs of the recorded shape: noise-like for the UNet (x_t + its condition), images for an RM.
    x = torch.randn(shape, device=dev) if net == "unet" else torch.rand(shape, device=dev)
    t = torch.full((shape[0],), 500, device=dev, dtype=torch.long)
    call = (lambda: policy.net(x, t)) if net == "unet" else (lambda: rms[int(net[2:])](x)[0])

    def once():  # as the loop calls it: with grad, the backward follows (the UNet's weights, an RM's input)
        with torch.set_grad_enabled(grad):
            if grad:
                x.requires_grad_(net != "unet")
                call().float().sum().backward()
            else:
                call()

    once()  # untimed: allocator, cuDNN autotuning, a compile of this shape
    sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    sync(dev)
    return (time.perf_counter() - t0) / repeats


def name_of(key) -> str:
    """A call kind as the table prints it, e.g. "unet fwd+bwd@8×48²" (batch × side of the input)."""
    net, shape, grad = key
    return f"{net} {'fwd+bwd' if grad else 'fwd'}@{shape[0]}×{shape[-1]}²"


# ----------------------------------------------------------------------------------------------------
# One preset


def make_run(name: str, cfg: Config, tmp: str):
    """train_rl's Config for preset `name` (bench's shape overrides applied), with a fresh policy and RM
    stages of its shapes written to tmp (the RMs grown from RM_0 as train_rm does)."""
    rl = config.apply_preset(train_rl.Config(), train_rl.PRESETS, name)
    rmc = config.apply_preset(train_rm.Config(), train_rm.PRESETS, name)
    over = {
        k: getattr(cfg, k) for k in ("crop", "batch", "group", "sample_steps", "unet_channels", "unet_layers")
    }
    # curriculum=global: every timed step does the work of ccl's first stage (RM_0's reward, RM_N judging);
    # under ccl a short run would switch stages every step and the steps would not compare.
    rl = dataclasses.replace(rl, seed=cfg.seed, compile=cfg.compile, curriculum="global",
                             **{k: v for k, v in over.items() if v})  # fmt: skip
    widths = tuple(cfg.rm_widths or rmc.widths)
    torch.manual_seed(cfg.seed)
    pcfg = PolicyConfig(block_out_channels=tuple(rl.unet_channels), layers_per_block=rl.unet_layers,
                        residual_scale=20.0, steps=rl.sample_steps, eta=rl.eta)  # fmt: skip
    save_policy(make_policy(pcfg), os.path.join(tmp, "policy"))
    rm = FinPercepRM(RMConfig(widths=widths, n_stages=len(widths) - 1, stage=0))
    for k in range(len(widths)):
        save_rm(rm, os.path.join(tmp, "rm", f"rm_stage{k}"))
        rm = grow(rm) if k < len(widths) - 1 else rm
    return dataclasses.replace(rl, init_policy=os.path.join(tmp, "policy"), rm_dir=os.path.join(tmp, "rm"))


def bench_preset(name: str, dev, cfg: Config) -> dict:
    out = {"preset": name, "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads()}
    # A scratch directory: the fresh policy and RMs train_rl.main loads, and its runs' logs and checkpoints.
    with tempfile.TemporaryDirectory() as tmp:
        rl = make_run(name, cfg, tmp)
        policy = scale.speed(load_policy(rl.init_policy, dev), scale.amp_dtype(rl.amp), rl.channels_last)
        scale.compile_module(policy.unet, dev, cfg.compile)
        rms = [scale.compile_module(r, dev, cfg.compile) for r in load_stages(rl.rm_dir, dev)]
        out["shapes"] = {
            k: getattr(rl, k) for k in ("crop", "batch", "group", "sample_steps", "amp", "micro_batch")
        }
        out["params"] = {"unet": n_params(policy.unet), "rm": n_params(rms[-1])}
        # The bare modules the prices are taken with: loaded and set up as train_rl.main sets its own up.
        prices = {}
        for algo in ("pg", "refl"):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            n = cfg.warmup + cfg.steps + 1  # boundaries: n − 1 steps between them, the first warmup untimed
            run = dataclasses.replace(
                rl, algo=algo, steps=n, out_dir=os.path.join(tmp, algo), device=str(dev)
            )
            with Watch(dev) as w:
                train_rl.main(run)
            steps = w.per_step()[cfg.warmup :]
            # Price each kind of call once (the first algorithm's prices serve the second's shared kinds).
            for key in {k for _, calls, _ in steps for k in calls} - set(prices):
                prices[key] = price(key, policy, rms, dev, cfg.repeats)
            # The ideal step: its calls at their bare prices. Efficiency per step, and the median of them.
            ideal = [sum(n * prices[k] for k, n in calls.items()) for _, calls, _ in steps]
            eff = [i / s for i, (s, _, _) in zip(ideal, steps)]
            n_img = rl.batch * (rl.group if algo == "pg" else 1)
            ms = 1000 * statistics.median(s for s, _, _ in steps)
            out[algo] = {
                "ms": ms, "img_per_s": 1000 * n_img / ms, "ideal_img_per_s": n_img / statistics.median(ideal),
                "efficiency": statistics.median(eff), "efficiency_per_step": eff,
                "data_share": statistics.median(d / s for s, _, d in steps), "peak_mib": peak_memory(dev),
                "work": {name_of(k): n for k, n in sorted(steps[-1][1].items(), key=str)},
            }  # fmt: skip
        out["model"] = {
            name_of(k): {"ms": 1000 * p, "img_per_s": k[1][0] / p} for k, p in sorted(prices.items(), key=str)
        }
    return out


def report(r: dict) -> list[str]:
    """The table of one preset, and its exact `efficiency ALGO PRESET X.XX` lines.

    Rows: each priced call kind (pure model compute), then per algorithm the step's ms, img/s, ideal img/s,
    efficiency, data share and peak memory, the calls it made and the spread of efficiency over steps."""
    s, mem = r["shapes"], "MiB" if r["device"].startswith("cuda") else "MiB (process peak RSS)"
    lines = [f"preset {r['preset']} on {r['device']} (torch {r['torch']}, {r['threads']} threads): UNet "
             f"{r['params']['unet'] / 1e6:.2f}M, RM {r['params']['rm'] / 1e6:.2f}M, HR {s['crop']}², "
             f"B={s['batch']} G={s['group']} K={s['sample_steps']}, {s['amp']}",  # fmt: skip
             f"  {'pure model compute':<34}{'ms/call':>10}{'img/s':>10}"]  # fmt: skip
    lines += [f"  {n:<34}{m['ms']:>10.2f}{m['img_per_s']:>10.1f}" for n, m in r["model"].items()]
    head = f"{'ms':>10}{'img/s':>10}{'ideal img/s':>13}{'efficiency':>12}{'data share':>12}"
    lines.append(f"  {'RL step (train_rl.main)':<34}{head}  peak {mem}")
    for kind in ("pg", "refl"):
        k = r[kind]
        lines.append(f"  {kind:<34}{k['ms']:>10.1f}{k['img_per_s']:>10.2f}{k['ideal_img_per_s']:>13.2f}"
                     f"{k['efficiency']:>12.2f}{k['data_share']:>12.2f}  {k['peak_mib']:.0f}")  # fmt: skip
    for kind in ("pg", "refl"):
        e = r[kind]["efficiency_per_step"]  # the spread says how far to trust the median (a shared machine)
        lines.append(f"  {kind} calls/step: " + ", ".join(f"{n} ×{c}" for n, c in r[kind]["work"].items()))
        lines.append(f"  {kind} efficiency per step: {min(e):.2f} … {max(e):.2f} over {len(e)} steps")
    return lines + [f"efficiency {kind} {r['preset']} {r[kind]['efficiency']:.2f}" for kind in ("pg", "refl")]


def main(cfg: Config) -> str:
    names = [n for n in cfg.presets.split(",") if n]
    if not names or any(n not in train_rl.PRESETS for n in names):
        raise config.ConfigError(
            f"--presets={cfg.presets}: use a comma-separated subset of {','.join(train_rl.PRESETS)}"
        )
    rundir.save_config(cfg, cfg.out_dir, "bench")
    # One preset after another, each on its own device (auto: the cpu preset on the CPU, gpu presets on CUDA);
    # bench.json is rewritten after each, so a run cut off by a time limit keeps what it measured.
    results = {}
    for name in names:
        auto = "cuda" if name.startswith("gpu") and torch.cuda.is_available() else "cpu"
        dev = torch.device(auto) if cfg.device == "auto" else config.pick_device(cfg.device)
        if name.startswith("gpu") and dev.type != "cuda":
            results[name] = {"skipped": f"{name} preset skipped: needs CUDA (here: {dev})"}
            print(results[name]["skipped"])
            continue
        print(f"benchmarking the {name} preset on {dev} ...", flush=True)
        try:
            results[name] = bench_preset(name, dev, cfg)
        except torch.cuda.OutOfMemoryError:  # one line, and the other presets still run
            results[name] = {
                "failed": f"{name} preset failed: CUDA out of memory; try a smaller --batch or --group"
            }
            print(results[name]["failed"], flush=True)
            torch.cuda.empty_cache()
            continue
        print("\n".join(report(results[name])), flush=True)
        rundir.write_json(
            os.path.join(cfg.out_dir, "bench.json"), results
        )  # after each preset: keep what ran
    rundir.write_json(os.path.join(cfg.out_dir, "bench.json"), results)
    return cfg.out_dir


# --preset=NAME: just that preset (gpu: on CUDA, one more warm-up step for cuDNN autotuning / compiling).
GPU = {"device": "cuda", "warmup": 2}
PRESET_FLAGS = {
    "cpu": {"presets": "cpu"},
    "gpu": {"presets": "gpu", **GPU},
    "gpu_full": {"presets": "gpu_full", **GPU},
}

if __name__ == "__main__":
    main(config.parse(Config, presets=PRESET_FLAGS))
