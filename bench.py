"""Throughput and memory of the RL training loops against pure model compute (design.md: nanoGPT's bench.py).

    python bench.py                                     # the cpu rows (+ a line: the gpu rows need CUDA)
    python bench.py --presets=gpu --device=cuda         # gpu rows (B·G = 64, log-probs in chunks of 16)
    python bench.py --presets=gpu --compile             # + torch.compile of the UNet (minutes of compiling)

What it measures, all in one run, for each preset (train_rl.PRESETS / train_rm.PRESETS: cpu | gpu):
1. Pure model compute: the policy UNet forward (no grad) and forward+backward, the RM forward and forward+
   backward (gradient to its input through the frozen weights, as ReFL uses it), at the batches the RL
   steps use. These are the "speed of light" of the loop: what its networks cost with nothing around them.
2. One RL step of the real training loop (train_rl.pg_step / refl_step, plus the data draw, gradient clip,
   finiteness check, optimiser step and the per-step log row, as train_rl.main runs them), median of
   several timed steps after warm-up.
3. The ideal step time of the same work: every network call the step made is counted while it runs
   (a wrapper on Policy.net and on each RM's forward) and priced at (1). efficiency = ideal / measured.
4. A naive baseline of the pg step: the rollout and the log-prob recompute one sample at a time (batch 1),
   as a first implementation would write them. Same maths (tests/test_bench.py checks it); speedup =
   naive / ours.
5. Peak memory: torch.cuda.max_memory_allocated per step kind on CUDA; on CPU the process's peak RSS so far
   (resource.getrusage), which only grows — the CPU rows say "process peak".
Prints a table per preset and lines `efficiency pg cpu 0.87`, writes out_dir/bench.json with every number.
"""

import copy
import dataclasses
import json
import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

import config
import data
import train_rl
import train_rm
from curriculum import Schedule
from policy import PolicyConfig, make_policy
from rewards import make_source
from rm import RMConfig, freeze, grow, make_rm, n_params


@dataclass
class Config:
    out_dir: str = "out/bench"  # bench.json and config.json land here
    presets: str = "cpu,gpu"  # which presets to run, comma-separated; gpu needs CUDA and is skipped without
    device: str = "auto"  # auto: the cpu preset on the CPU, the gpu preset on CUDA; else every preset there
    seed: int = 0  # data draws, rollout noise and init
    warmup: int = 1  # untimed steps per kind first (allocator, cuDNN autotune); --compile wants 2 or more
    repeats: int = 8  # timed RL steps per algorithm, median reported (cpu: pg ~2 s, refl ~0.6 s, ±10 % noise)
    naive_repeats: int = 3  # timed naive pg steps (the slowest kind; its median is the speedup's numerator)
    model_repeats: int = 10  # at least this many timed bare calls per pure-model price (one per timed step)
    log: bool = True  # include the loop's per-step stats row (gold label map, PSNR, float syncs) in the step
    compile: bool = False  # torch.compile the UNet (CUDA only; compile time is spent in the warm-up steps)
    curriculum: str = "ccl"  # the timed steps start at RL step 0: ccl stage 0 = RM_0's reward, RM_N logged
    # Overrides of the preset's shapes (0 / empty = the preset's own): tests use tiny ones.
    crop: int = 0  # HR crop size
    batch: int = 0  # B: LR images per RL step
    group: int = 0  # G: samples per LR image (pg)
    sample_steps: int = 0  # K: DDIM steps per rollout
    unet_channels: tuple = ()  # policy UNet widths
    unet_layers: int = 0  # resnets per UNet level
    rm_widths: tuple = ()  # reward-model widths (stem + N levels)


# The policy decodes x0 / residual_scale + up(LR); train_rl estimates the scale from data (≈ 1 / 0.05). The
# value changes no cost, so a fixed one saves the estimate.
RESIDUAL_SCALE = 20.0


def sync(dev: torch.device) -> None:
    """Wait for queued GPU work: a clock read without it would time the launches, not the kernels."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def peak_memory(dev: torch.device) -> float:
    """MiB: the GPU's peak allocation since the last reset, or the process's peak RSS (Linux: KiB)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # macOS reports bytes, Linux KiB


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


# ----------------------------------------------------------------------------------------------------
# Building the models of a preset in memory (no checkpoints on disk needed)


def preset_configs(name: str, cfg: Config):
    """train_rl's and train_rm's Config for preset `name`, with bench's shape overrides applied."""
    rl = config.apply_preset(train_rl.Config(), train_rl.PRESETS, name)
    rmc = config.apply_preset(train_rm.Config(), train_rm.PRESETS, name)
    over = {
        k: getattr(cfg, k) for k in ("crop", "batch", "group", "sample_steps", "unet_channels", "unet_layers")
    }
    rl = dataclasses.replace(
        rl, seed=cfg.seed, curriculum=cfg.curriculum, **{k: v for k, v in over.items() if v}
    )
    if cfg.rm_widths:
        rmc = dataclasses.replace(rmc, widths=cfg.rm_widths, n_stages=len(cfg.rm_widths) - 1)
    return rl, rmc


def build(rl, rmc, dev, compile_unet: bool):
    """The policy as train_rl trains it (train mode, autocast, memory format, fused AdamW on CUDA) and the
    frozen stages RM_0 … RM_N, grown from RM_0 as train_rm does (load_rms freezes them the same way)."""
    pcfg = PolicyConfig(
        block_out_channels=tuple(rl.unet_channels),
        layers_per_block=rl.unet_layers,
        residual_scale=RESIDUAL_SCALE,
    )
    policy = make_policy(pcfg).to(dev).train().speed(config.amp_dtype(rl.amp), rl.channels_last)
    if compile_unet:
        # dynamic=False: one specialised graph per (batch, grad mode); the loop uses only a handful of them.
        policy.unet = torch.compile(policy.unet, dynamic=False)
    rms = [make_rm(RMConfig(widths=tuple(rmc.widths), n_stages=rmc.n_stages, stage=0)).to(dev)]
    while rms[-1].stage < rmc.n_stages:
        rms.append(grow(rms[-1]))
    rms = [freeze(r) for r in rms]  # fp32, NCHW: train_rl runs the RMs without autocast or channels_last
    opt = torch.optim.AdamW(policy.unet.parameters(), lr=rl.lr, weight_decay=0.0, fused=dev.type == "cuda")
    return policy, rms, opt


# ----------------------------------------------------------------------------------------------------
# Counting the network calls of a step: each call of Policy.net or of an RM is recorded as a key
#   ("unet", batch, with_grad) or ("rm", stage, batch, with_grad),
# and a call with grad is priced as forward+backward: in both algorithms every graph built is backpropagated
# (pg: each trained step's log-prob; refl: the one step with grad, its RM reward, the supervised loss).


class CallCounter:
    """Wraps policy.net and every RM's forward (instance attributes shadow the methods); records keys only
    while `on`. Costs one Python call per network call, nothing on the device."""

    def __init__(self, policy, rms):
        self.on, self.calls = False, []
        net = policy.net

        def counted_net(x, t):
            if self.on:
                self.calls.append(("unet", x.shape[0], torch.is_grad_enabled()))
            return net(x, t)

        policy.net = counted_net
        for s, rm in enumerate(rms):
            rm.forward = self._counted_rm(s, rm.forward)

    def _counted_rm(self, s, forward):
        def counted(images, *args, **kwargs):
            if self.on:  # the RM is frozen: it builds a graph only when its input carries one (ReFL)
                self.calls.append(
                    ("rm", s, images.shape[0], torch.is_grad_enabled() and images.requires_grad)
                )
            return forward(images, *args, **kwargs)

        return counted


def work_counts(calls: list) -> dict:
    """{"unet fwd@8": 8, "unet fwd+bwd@8": 4, "rm0 fwd@8": 1, ...}: a step's work, as bench.json shows it."""
    out = {}
    for key in calls:
        out[key_name(key)] = out.get(key_name(key), 0) + 1
    return out


def key_name(key) -> str:
    mode = "fwd+bwd" if key[-1] else "fwd"
    return f"unet {mode}@{key[1]}" if key[0] == "unet" else f"rm{key[1]} {mode}@{key[2]}"


def network_call(key, policy, rms, rl, dev):
    """One bare network call of kind `key` on random inputs of the loop's shapes, as a function."""
    H = W = rl.crop
    if key[0] == "unet":
        _, b, grad = key
        x = torch.randn(b, 6, H, W, device=dev)  # x_t ‖ up(LR), what Policy._stats feeds the UNet
        t = torch.randint(0, policy.cfg.num_train_timesteps, (b,), device=dev)
        if grad:  # the loss's form does not change the backward's cost: every output element gets a gradient
            return lambda: policy.net(x, t).mean().backward()
        return torch.no_grad()(lambda: policy.net(x, t))
    _, s, b, grad = key
    x = torch.rand(b, 3, H, W, device=dev, requires_grad=grad)  # ReFL: gradient to the SR image only

    def call():
        with torch.set_grad_enabled(grad):
            score, dmap = rms[s](x)
            if grad:
                (score.sum() + (0 if dmap is None else dmap.mean())).backward()

    return call


class Prices:
    """The pure-model price of each call kind, from bare calls timed in rounds (one call of every kind per
    round) around each timed RL step. A step is priced by the two rounds on either side of it, the table by
    the median of all rounds. On a shared machine this matters: prices taken a minute away from the steps
    they price turn a change of load into a change of "efficiency"."""

    def __init__(self, policy, rms, rl, dev):
        self.policy, self.rms, self.rl, self.dev = policy, rms, rl, dev
        self.calls, self.samples = {}, {}

    def add(self, keys) -> None:
        for key in keys:
            if key not in self.calls:
                self.calls[key] = network_call(key, self.policy, self.rms, self.rl, self.dev)
                self.calls[key]()  # untimed warm-up: allocator, cuDNN autotune, compile of a new shape
                self.samples[key] = []
        self.policy.unet.zero_grad(set_to_none=True)

    def round(self) -> dict:
        """Time one call of every kind; returns this round's {key: seconds}. Each timed call follows an
        untimed one of the same kind, as inside a step (K forwards in a row), so caches and the allocator are
        as warm as the step has them; a cold single call overstated the price (efficiencies above 1)."""
        out = {}
        for key, call in self.calls.items():
            call()
            sync(self.dev)
            t0 = time.perf_counter()
            call()
            sync(self.dev)
            out[key] = time.perf_counter() - t0
            self.samples[key].append(out[key])
        self.policy.unet.zero_grad(set_to_none=True)  # the pure calls leave nothing behind for the RL steps
        return out

    def __getitem__(self, key) -> float:
        return statistics.median(self.samples[key])

    def of(self, calls, before: dict, after: dict) -> float:
        """Ideal seconds of a step that made `calls`: the sum of their bare prices, each the mean of the
        rounds just before and just after the step (after alone for a kind first seen in this step)."""
        return sum((before.get(key, after[key]) + after[key]) / 2 for key in calls)


# ----------------------------------------------------------------------------------------------------
# The naive baseline: the same pg step, one sample at a time


def naive_rollout(policy, source, lr_g, hr_g, need, rl, gen, step):
    """The rollout (and its scoring) sample by sample, batch 1: what a first implementation writes when it
    thinks of "for each sample: sample it, score it". Returns what pg_step gets from its batched calls."""
    srs, trajs, scored = [], [], []
    for i in range(lr_g.shape[0]):
        sr_i, traj_i = policy.sample(lr_g[i : i + 1], rl.sample_steps, rl.eta, gen, return_traj=True)
        srs.append(sr_i)
        trajs.append(traj_i)
        scored.append(train_rl.score_all(source, sr_i, hr_g[i : i + 1], step, need))
    traj = dataclasses.replace(
        trajs[0],
        x=torch.cat([tr.x for tr in trajs], 1),  # (K+1, B·G, C, H, W): samples are dim 1
        logprob=torch.cat([tr.logprob for tr in trajs], 1),
    )
    rewards = {s: torch.cat([r[s] for r, _ in scored]) for s in need}
    maps = {s: None if scored[0][1][s] is None else torch.cat([m[s] for _, m in scored]) for s in need}
    return torch.cat(srs), traj, rewards, maps


def naive_update(policy, traj, lr_g, adv, step, rl):
    """The log-prob recompute and backward sample by sample. ppo_loss is a mean over all pixels and every
    sample has as many, so the batch loss is the average of the per-sample losses: dividing each by B·G (and
    by n_train, as pg_step does) gives the same gradient as pg_step's batched calls."""
    n = lr_g.shape[0]
    # The very draw pg_step makes, so both train the same timesteps (the test compares their gradients).
    g = config.generator("rl/steps", rl.seed, step)
    steps_trained = train_rl.trained_steps(traj.std, rl.sigma_min, rl.train_fraction, g)
    n_train = len(steps_trained)
    total = torch.zeros((), device=lr_g.device)
    for k in steps_trained:
        for i in range(n):
            sl = slice(i, i + 1)
            logp = policy.step_logprob(
                traj.x[k][sl], traj.x[k + 1][sl], traj.t[k], lr_g[sl], traj.steps, traj.eta
            )
            loss, _ = train_rl.ppo_loss(logp, traj.logprob[k][sl], adv[sl], rl.ppo_clip)
            loss = loss / (n * n_train)
            loss.backward()
            total = total + loss.detach()
    return total


def naive_pg_step(policy, ref, source, sched, step, hr, lr, rl, gen, inner_update=None, probe=False):
    """pg_step's signature and maths (the defaults: ppo_epochs 1, no KL, no supervised term), un-batched."""
    G, weights = rl.group, sched.at(step)
    lr_g, hr_g = lr.repeat_interleave(G, 0), hr.repeat_interleave(G, 0)
    need = {s for s, _ in weights}
    sr, traj, rewards, maps = naive_rollout(policy, source, lr_g, hr_g, need, rl, gen, step)
    r = sum(w * rewards[s] for s, w in weights)  # the reward and advantage algebra is pg_step's, batched
    with_map = [(s, w) for s, w in weights if maps[s] is not None]
    w_map = sum(w for _, w in with_map)
    M = sum(w * maps[s] for s, w in with_map) / w_map if with_map else None
    adv = train_rl.pixel_advantages(r, M, w_map, G, rl.lam_px, rl.adv_clip, sr.shape[-2:]).detach()
    loss = naive_update(policy, traj, lr_g, adv, step, rl)
    return loss, sr, {"reward": r.mean()}


# ----------------------------------------------------------------------------------------------------
# One iteration of train_rl.main's loop body, timed by phase


def loop_step(step_fn, policy, ref, source, rms, sched, opt, pool, step, rl, dev, log: bool) -> dict:
    """One iteration of train_rl.main's RL loop (single process, rank 0), made of the loop's own functions:
    train_rl.draw (data + noise) → train_rl.rl_update (zero_grad, the step, clip, the log row's gold map and
    PSNR) → the finiteness sync → AdamW → the log row. Returns the seconds of each phase; the device is
    synchronised at phase ends only (the loop itself syncs once, at the finiteness check)."""
    t = [time.perf_counter()]
    hr, lr, gen = train_rl.to_device(train_rl.draw(pool, step, rl, 0), step, rl, 0, dev)
    sync(dev)
    t.append(time.perf_counter())
    algo = "refl" if step_fn is train_rl.refl_step else "pg"
    pg_fn = step_fn if step_fn is not train_rl.pg_step and algo == "pg" else None  # the naive baseline
    stats, _ = train_rl.rl_update(
        policy,
        ref,
        source,
        rms,
        sched,
        opt,
        hr,
        lr,
        gen,
        step,
        dataclasses.replace(rl, algo=algo),
        None,
        pg_fn,
        log,
    )
    sync(dev)
    t.append(time.perf_counter())
    if not (torch.isfinite(stats["loss"]) and torch.isfinite(stats["grad_norm"])):  # the loop's one sync
        raise SystemExit(f"error: non-finite loss or gradient at bench step {step}; the loop would skip it")
    opt.step()
    if log:  # log_every = 1: one row per step, every number synced to the host
        json.dumps({"step": step, **{k: float(v) for k, v in stats.items()}})
    sync(dev)
    t.append(time.perf_counter())
    return {"data": t[1] - t[0], "update": t[2] - t[1], "opt_log": t[3] - t[2]}


# ----------------------------------------------------------------------------------------------------
# One preset: warm up, price the networks, time the steps, compare


def bench_preset(name: str, dev: torch.device, cfg: Config) -> dict:
    rl, rmc = preset_configs(name, cfg)
    config.fast_math(dev, rl.tf32)  # TF32 + cuDNN autotune on CUDA when the preset asks, as train_rl does
    torch.manual_seed(cfg.seed)
    policy, rms, opt = build(rl, rmc, dev, cfg.compile and dev.type == "cuda")
    counter = CallCounter(policy, rms)
    source = make_source("rm", rms, rl)  # after the counter wraps the RMs, so their calls are counted
    ref = freeze(copy.deepcopy(policy)) if rl.beta_kl > 0 else None  # the KL anchor, as train_rl loads it
    N = len(rms) - 1
    sched = Schedule(rl.curriculum, N, rl.steps, blend=rl.blend, switch=rl.switch)
    pool = data.load_pool(rl.data, "train", rl.crop)
    warmup = cfg.warmup  # one step shows every shape once: cuDNN autotunes them there (compile: use 2+)
    BG = rl.batch * rl.group
    kinds = {  # name: (step function, SR images per step, timed steps)
        "pg": (train_rl.pg_step, BG, cfg.repeats),
        "refl": (train_rl.refl_step, rl.batch, cfg.repeats),
        "naive_pg": (naive_pg_step, BG, cfg.naive_repeats),
    }

    prices = Prices(policy, rms, rl, dev)

    def run(kind, steps, timed: bool):
        """Loop iterations at RL steps `steps` (every kind starts at step 0: the same curriculum state). Timed
        ones sit between pricing rounds. Peak memory is read right after each step, before any pricing."""
        out = []
        before = prices.round() if timed else {}
        for step in steps:
            counter.calls, counter.on = [], True
            reset_peak(dev)
            phases = loop_step(
                kinds[kind][0], policy, ref, source, rms, sched, opt, pool, step, rl, dev, cfg.log
            )
            counter.on = False
            out.append({"phases": phases, "total": sum(phases.values()), "calls": counter.calls})
            out[-1]["peak"] = peak_memory(dev)
            if timed:
                calls = counter.calls if kind != "naive_pg" else []  # the baseline is not priced
                prices.add(calls)
                after = prices.round()
                out[-1]["ideal"] = prices.of(calls, before, after)
                before = after
        return out

    # 1. Warm-up of both algorithms, which also shows which network calls (shapes, grad modes) they make.
    seen = [key for kind in ("pg", "refl") for row in run(kind, range(warmup), False) for key in row["calls"]]
    # 2. The call kinds to price: the headline four at the rollout's batch B·G, and every other one seen.
    mb = rl.micro_batch if 0 < rl.micro_batch < BG else BG  # the update's forward+backward chunk (pg_step)
    prices.add([("unet", BG, False), ("unet", mb, True), ("rm", N, BG, False), ("rm", N, BG, True)] + seen)
    # 3. The timed steps. Ideal step time = Σ over the calls this very step made of their bare price; what the
    # counter sees for the defaults (a reader can check it against train_rl):
    #   pg:   K no-grad UNet forwards at B·G (policy.sample)
    #         + one no-grad RM forward at B·G per stage in (the curriculum's stages ∪ {N}) (score_all: at ccl
    #           stage 0 that is RM_0, the reward, and RM_N, reward_final: 2 forwards)
    #         + ceil(train_fraction·K)·ppo_epochs UNet forward+backward at B·G (step_logprob, backpropagated;
    #           in chunks of micro_batch samples when set: the gpu preset)
    #   refl: `stop` no-grad UNet forwards at B (stop drawn in K−refl_last … K−1)
    #         + 1 UNet forward+backward at B (the step with grad) + one RM forward+backward at B per stage
    #           the curriculum weights (the reward)
    #         + 1 UNet forward+backward at B (sft_loss, when lam_sft_refl > 0)
    #         + 1 no-grad RM_N forward at B (reward_final, logged)
    rows = {}
    for kind, (_, _, repeats) in kinds.items():
        print(f"  timing {kind}: {repeats} steps, each followed by a pricing round", flush=True)
        if kind == "naive_pg":
            run(kind, range(warmup), False)  # batch-1 shapes are new: warm them up too
        rows[kind] = run(kind, range(warmup, warmup + repeats), True)
        med = statistics.median(r["total"] for r in rows[kind])  # printed now: a cut-off run still says this
        peak = max(r["peak"] for r in rows[kind])
        print(f"  {kind}: {1e3 * med:.1f} ms/step, peak {peak:.0f} MiB", flush=True)
    while min(len(v) for v in prices.samples.values()) < cfg.model_repeats:
        prices.round()  # top up to --model_repeats samples per price
    res = {}
    for kind, (_, n_img, _) in kinds.items():
        times = [r["total"] for r in rows[kind]]
        t = statistics.median(times)
        res[kind] = {
            "img_per_step": n_img,
            "ms": 1e3 * t,
            "img_per_s": n_img / t,
            "times_ms": [1e3 * x for x in times],
            "phases_ms": {
                p: 1e3 * statistics.median(r["phases"][p] for r in rows[kind])
                for p in rows[kind][0]["phases"]
            },
            "peak_mib": max(r["peak"] for r in rows[kind]),
        }
        if kind != "naive_pg":  # the naive baseline is there for the speedup; it has no efficiency line
            ideals = [r["ideal"] for r in rows[kind]]
            ratios = [i / x for i, x in zip(ideals, times)]
            res[kind] |= {
                "ideals_ms": [1e3 * x for x in ideals],
                "efficiency_per_step": ratios,  # its spread is the measurement's noise
                "ideal_ms": 1e3 * statistics.median(ideals),
                "ideal_img_per_s": n_img / statistics.median(ideals),
                # per-step ratios: ReFL's work varies with its random stop step, so ratio first, median after
                "efficiency": statistics.median(ratios),
                "work": work_counts(rows[kind][0]["calls"]),
            }
    res["naive_pg"]["speedup"] = res["naive_pg"]["ms"] / res["pg"]["ms"]  # ours = naive time / our time
    model = {
        key_name(k): {"batch": k[-2], "ms": 1e3 * prices[k], "img_per_s": k[-2] / prices[k]}
        for k in prices.calls
    }
    K = rl.sample_steps
    return {
        "preset": name,
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "compile": bool(cfg.compile and dev.type == "cuda"),
        "shapes": {
            **{k: getattr(rl, k) for k in ("crop", "batch", "group", "sample_steps", "unet_layers", "amp")},
            "n_train": max(1, math.ceil(rl.train_fraction * K)),
            "unet_channels": list(rl.unet_channels),
            "rm_widths": list(rmc.widths),
            "channels_last": rl.channels_last,
        },
        "params": {"unet": n_params(policy.unet), "rm": [n_params(r) for r in rms]},
        "model": model,
        **res,
    }


def report(r: dict) -> list[str]:
    """The table of one preset, plus its exact `efficiency ALGO PRESET X.XX` lines."""
    s, mem = r["shapes"], "MiB" if r["device"].startswith("cuda") else "MiB (process peak RSS)"
    lines = [
        f"preset {r['preset']} on {r['device']} (torch {r['torch']}, {r['threads']} threads"
        f"{', compiled UNet' if r['compile'] else ''}): UNet {tuple(s['unet_channels'])}×{s['unet_layers']} "
        f"{r['params']['unet'] / 1e6:.2f}M params, RM widths {tuple(s['rm_widths'])} "
        f"{r['params']['rm'][-1] / 1e6:.2f}M, HR {s['crop']}², B={s['batch']} G={s['group']} "
        f"K={s['sample_steps']} (n_train {s['n_train']}), {s['amp']}, "
        f"{'NHWC' if s['channels_last'] else 'NCHW'}",
        f"  {'pure model compute':<34}{'batch':>6}{'ms/call':>11}{'img/s':>10}",
    ]
    for name, m in r["model"].items():
        lines.append(f"  {name:<34}{m['batch']:>6}{m['ms']:>11.2f}{m['img_per_s']:>10.1f}")
    lines.append(
        f"  {'RL step (train_rl loop body)':<34}{'img':>6}{'ms/step':>11}{'img/s':>10}{'ideal img/s':>13}"
        f"{'efficiency':>12}  peak {mem}"
    )
    for kind in ("pg", "refl", "naive_pg"):
        k = r[kind]
        tail = (
            f"{k['ideal_img_per_s']:>13.2f}{k['efficiency']:>12.2f}"
            if "efficiency" in k
            else f"{'speedup':>13}{k['speedup']:>11.2f}×"
        )
        lines.append(
            f"  {kind:<34}{k['img_per_step']:>6}{k['ms']:>11.1f}{k['img_per_s']:>10.2f}{tail}"
            f"  {k['peak_mib']:.0f}"
        )
    for kind in ("pg", "refl", "naive_pg"):
        ph = ", ".join(f"{p} {v:.1f}" for p, v in r[kind]["phases_ms"].items())
        lines.append(f"  {kind} ms by phase: {ph}")
    for kind in ("pg", "refl"):
        lines.append(f"  {kind} calls/step: " + ", ".join(f"{n} ×{c}" for n, c in r[kind]["work"].items()))
        e = r[kind]["efficiency_per_step"]  # the spread says how far to trust the median (a shared machine)
        lines.append(f"  {kind} efficiency per step: {min(e):.2f} … {max(e):.2f} over {len(e)} steps")
    lines += [f"efficiency {kind} {r['preset']} {r[kind]['efficiency']:.2f}" for kind in ("pg", "refl")]
    return lines


def preset_device(name: str, cfg: Config):
    """The device a preset runs on, or None when it needs CUDA and there is none (its rows are skipped)."""
    if name == "gpu" and not torch.cuda.is_available():
        return None
    if cfg.device == "auto":
        return torch.device("cuda" if name == "gpu" else "cpu")  # each preset where it is meant to run
    dev = config.pick_device(cfg.device)
    return None if name == "gpu" and dev.type != "cuda" else dev


def main(cfg: Config) -> str:
    names = [n for n in cfg.presets.split(",") if n]
    unknown = [n for n in names if n not in train_rl.PRESETS]
    if unknown or not names:
        raise config.ConfigError(
            f"--presets={cfg.presets}: use a comma-separated subset of {','.join(train_rl.PRESETS)}"
        )
    if cfg.curriculum not in ("ccl", "none", "global"):
        raise config.ConfigError(f"--curriculum={cfg.curriculum} unknown; use ccl, none or global")
    if cfg.repeats < 1 or cfg.naive_repeats < 1 or cfg.model_repeats < 1:
        raise config.ConfigError("--repeats, --naive_repeats and --model_repeats must be at least 1")
    os.makedirs(cfg.out_dir, exist_ok=True)
    config.save_config(cfg, cfg.out_dir)
    results = {}
    for name in names:
        dev = preset_device(name, cfg)
        if dev is None:
            line = f"{name} preset skipped: needs CUDA (this machine has none)"
            if torch.cuda.is_available():
                line = f"{name} preset skipped: needs CUDA (--device={cfg.device} is not a CUDA device)"
            print(line)
            results[name] = {"skipped": line}
            continue
        print(f"benchmarking the {name} preset on {dev} ...", flush=True)
        try:
            results[name] = bench_preset(name, dev, cfg)
        except torch.cuda.OutOfMemoryError:
            # One line, not a traceback, and the other presets still run. Seen before --micro_batch existed:
            # B·G = 64 at 256² in one recompute call needed > 139 GB (73 GB at B·G = 32).
            line = f"{name} preset failed: CUDA out of memory; rerun with a smaller --batch or --group"
            print(line, flush=True)
            results[name] = {"failed": line}
            torch.cuda.empty_cache()
            continue
        print("\n".join(report(results[name])), flush=True)
        config.write_json(
            os.path.join(cfg.out_dir, "bench.json"), results
        )  # after each preset: keep what ran
    config.write_json(os.path.join(cfg.out_dir, "bench.json"), results)
    return cfg.out_dir


# --preset=NAME: just that preset's rows (gpu: on CUDA, one more warm-up step for cuDNN / compile).
PRESET_FLAGS = {"cpu": {"presets": "cpu"}, "gpu": {"presets": "gpu", "device": "cuda", "warmup": 2}}

if __name__ == "__main__":
    main(config.parse(Config, presets=PRESET_FLAGS))
