"""RL fine-tuning of the diffusion SR policy with FinPercep-RM as the reward, under the curriculum (CCL).

    python train_rm.py && python train_rl.py            # CPU defaults: SFT warm start, then RL (~6 min)
    python train_rl.py --sft_only                       # just the supervised warm start → out/rl/policy_sft
    python train_rl.py --algo=refl                      # the paper's ReFL instead of policy gradient
    python train_rl.py --curriculum=none                # ablations: none (RM_N from step 0) | global (RM_0)
    python train_rl.py --device=cuda --preset=gpu       # a real run on one GPU
    torchrun --standalone --nproc_per_node=8 train_rl.py --preset=gpu    # 8 GPUs (DDP; effective batch ×8)
    python train_rl.py --resume                         # continue an interrupted run (Ctrl-C saves first)

Without --init_policy, SFT (sft.py) first makes the starting policy (cached as out_dir/policy_sft). Then
each RL step, in main() in the order it runs (docs/method.md §4–5; kvablack/ddpo-pytorch is the model): the
curriculum's reward stage(s) → a batch → pg_update: G samples per LR with their log-probs → reward and map →
advantages with per-pixel local penalties → PPO; or refl_update: one step with grad → relu(c − reward) →
clip, finiteness check, step → the log row: reward, reward_final (RM_N), gold (label map vs HR), psnr, so
hacking — proxy up, gold not — shows while it happens.
"""

import contextlib
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import data
import images
import lora
import rundir
import scale
import sft
import validation
from curriculum import Schedule
from metrics import lr_consistency
from policy import load_policy, save_policy
from refresh import OnlineRefresh
from rewards import make_source, reward_and_map
from rm import group_deviation, load_stages, save_rm


@dataclass
class Config:
    out_dir: str = "out/rl"  # policy_sft/, policy_stage{k}/, policy_final/, metrics.jsonl, state.pt
    data: str = "builtin"  # builtin | an HR folder (LR made by data.degrade) | paired:LR_DIR,HR_DIR
    seed: int = 0  # one seed for data, noise and init
    device: str = "auto"  # auto = cuda when present
    preset: str = "cpu"  # cpu | gpu
    resume: bool = False  # continue from out_dir/state.pt (SFT or RL, whichever was running)
    init_policy: str = ""  # policy, LDM SR or SD ×4 upscaler dir: RL starts here (--sft_only: SFT does)
    lora_rank: int = 0  # > 0: train rank-R LoRA adapters, the UNet frozen (lora.py); 0: the whole UNet
    sft_only: bool = False  # stop after the SFT warm start
    rm_dir: str = "out/rm"  # train_rm.py's out_dir: rm_stage0 … rm_stageN
    algo: str = "pg"  # pg (policy gradient with map-based local penalties) | refl (the paper's)
    reward: str = "rm"  # rm (RM stages, the method) | gold (the toy world's oracle) | placebo (rewards.py)
    curriculum: str = "ccl"  # ccl | none (RM_N throughout) | global (RM_0 throughout)
    switch: str = "fixed"  # fixed (at fractions of the run) | plateau (when the reward's average stalls)
    blend: int = 10  # steps of linear blend between consecutive RM stages
    coevolve: bool = False  # online refresh: the RM stage in use learns from the rollouts (refresh.py)
    coevolve_every: int = 5  # RL steps between RM refreshes
    coevolve_steps: int = 2  # AdamW steps per refresh, each on the rollout's groups + coevolve_zoo triplets
    coevolve_zoo: int = 8  # zoo triplets per refresh step: the RM must not forget the zoo
    coevolve_lr: float = 5e-4  # a quarter of train_rm's rate: small corrections of a trained model
    # --- SFT warm start (sft.py)
    crop: int = 48  # HR crop size (LR is crop / 4); 48 costs 0.56× of 64 per step (evaluate's 20-min budget)
    sft_steps: int = 400  # supervised steps (about 2 min on 2 CPU cores)
    sft_batch: int = 8  # HR crops per SFT step
    sft_lr: float = 2e-3  # AdamW; cosine-decayed
    degrade_max: float = 0.5  # LR degradation strength range [0, degrade_max]; 30 % of batches exactly 0
    unet_channels: tuple = (16, 32, 64)  # 0.62M params; 16 at full res: 2.4× faster on CPU than (32, 64, 64)
    unet_layers: int = 1  # resnets per UNet level (diffusers' default is 2)
    # --- speed (the gpu preset turns these on; bench.py measures them)
    amp: str = "fp32"  # fp32 | bf16: autocast of the networks; log-probs and losses stay fp32
    channels_last: bool = False  # NHWC memory format for the UNet: faster convolutions on tensor cores
    tf32: bool = False  # CUDA: TF32 matmuls/convolutions and cuDNN autotuning (process-wide once set)
    compile: bool = False  # torch.compile of the UNet and RM forwards, static shapes (scale.compile_module)
    # --- RL
    steps: int = 100  # RL optimiser steps (~0.8 s each on 2 CPU cores with the defaults below)
    batch: int = 2  # LR images per step
    group: int = 4  # G samples per LR image (same LR, different noise): the advantage baseline
    sample_steps: int = 6  # K DDIM steps per rollout (Flow-GRPO trains with 10; 6 is cheaper on CPU)
    # DDPO's timestep_fraction (2 of the K − 1 = 5 trainable steps); a trained step costs ~3 sampling ones.
    train_fraction: float = 0.4  # share of the trainable steps each update trains on, drawn at random
    # σ floor: the last DDIM step has σ ≈ 0.010 (≈ 0.2/255 in the image); no reward depends on that noise, yet
    # its (ε/σ)·∇μ term dominates the gradient norm (docs/experiments.md, "What makes RL learn"). 0.05 ≈ 1/255
    # leaves out that step alone: the next-smallest σ is 0.46 at K = 6 (each run prints them).
    sigma_min: float = 0.05  # σ floor: DDIM steps with a smaller std are never trained
    eta: float = 1.0  # DDIM eta: 1 = every step a full Gaussian (DDPO's choice)
    lr: float = 1e-4  # AdamW on the whole UNet (DDPO: 3e-4 on LoRA)
    lora_lr: float = 1e-3  # RL with --lora_rank > 0: AdamW on the adapters at this (10× --lr: lora.py)
    grad_clip: float = 1.0  # global grad-norm clip
    adv_clip: float = 5.0  # advantages clipped to ±5 (DDPO)
    ppo_clip: float = 1e-4  # PPO clip of the per-sample ratio (DDPO); binds only when ppo_epochs > 1
    ppo_epochs: int = 1  # updates per rollout: > 1 steps the optimiser between passes over the trajectory
    micro_batch: int = 0  # log-prob recompute in chunks of this many samples (0 = all B·G): bounds memory
    lam_px: float = 0.5  # λ_px: weight of the map-based local penalty in the per-pixel advantage
    fused: bool = False  # reward = λ1·S + λ2·(1 − smooth_max(M)) instead of the coupled score S alone
    lam1: float = 0.5  # fused reward weights
    lam2: float = 0.5  # (λ1 on the score, λ2 on 1 − smooth max of the map)
    # The anchor's strength, swept against the placebo and oracle-map arms (docs/experiments.md).
    beta_kl: float = 1.0  # KL to the SFT policy on step means (pg); 0 = no anchor
    # λ_sft, the supervised loss as a regulariser: pg is worse with it at every weight, ReFL needs it
    # (ImageReward's regulariser); both weights swept against the placebo and oracle (docs/experiments.md).
    lam_sft: float = -1.0  # the supervised regulariser's weight; −1 = the algorithm's own (LAM_SFT)
    lam_lr: float = 0.0  # LR consistency λ_lr·|down(SR) − LR| (pg: a reward penalty; refl: a loss term)
    refl_last: int = 3  # refl: stop at one of the last refl_last steps (ImageReward: steps 30–39 of 40)
    refl_c: float = 1.0  # refl: relu(c − reward); scores live in [0, 1], so c = 1 is "always push up"
    ckpt_every: int = 25  # state.pt every N steps

    def __post_init__(self):  # every flag value is checked where it is parsed: a one-line error each
        c = config
        c.check(
            self,
            algo=c.one_of("pg", "refl"), reward=c.one_of("rm", "gold", "placebo"),
            curriculum=c.one_of("ccl", "none", "global"), switch=c.one_of("fixed", "plateau"),
            amp=c.one_of("fp32", "bf16"), crop=c.multiple_of(16), sft_steps=c.at_least(0),
            sft_batch=c.at_least(1), sft_lr=c.POSITIVE, degrade_max=c.UNIT,
            steps=c.at_least(1), batch=c.at_least(1), group=c.at_least(2), sample_steps=c.at_least(2),
            train_fraction=c.FRACTION, sigma_min=c.at_least(0), eta=c.FRACTION, lr=c.POSITIVE,
            grad_clip=c.POSITIVE, adv_clip=c.POSITIVE, ppo_clip=c.POSITIVE, ppo_epochs=c.at_least(1),
            micro_batch=c.at_least(0), lam_px=c.at_least(0), beta_kl=c.at_least(0),
            lam_sft=((lambda v: v >= 0 or v == -1), "a weight ≥ 0, or -1 (the algorithm's own)"),
            lam_lr=c.at_least(0), refl_last=c.at_least(1), ckpt_every=c.at_least(1),
            blend=c.at_least(0), coevolve_every=c.at_least(1), coevolve_steps=c.at_least(1),
            coevolve_lr=c.POSITIVE, coevolve=((lambda v: not v or self.reward == "rm"), "needs --reward=rm"),
            lora_rank=(lora.rank_ok, "use 0 (full fine-tuning) or a LoRA rank ≥ 1"), lora_lr=c.POSITIVE,
        )  # fmt: skip


LAM_SFT = {"pg": 0.0, "refl": 3.0}  # each algorithm's own λ_sft (Config.lam_sft says why)

# GPU presets (docs/scaling.md): bf16 autocast, channels_last, TF32. gpu: evaluate --preset=gpu in minutes;
# gpu_full: 256² HR, a 66M UNet, B·G = 64 with the recompute in chunks of 16 (64 at once: out of memory).
FAST = {"amp": "bf16", "channels_last": True, "tf32": True}
PRESETS = {
    "cpu": {},
    "gpu": {**FAST, "crop": 128, "unet_channels": (64, 128, 128, 256), "unet_layers": 2, "sft_steps": 2000,
            "sft_batch": 32, "steps": 200, "batch": 8, "group": 8, "micro_batch": 32, "ckpt_every": 100},
    "gpu_full": {**FAST, "crop": 256, "unet_channels": (128, 256, 256, 512), "unet_layers": 2, "batch": 8,
                 "sft_steps": 20000, "sft_batch": 32, "steps": 2000, "group": 8, "micro_batch": 16,
                 "ckpt_every": 200},
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# The algebra of the update (docs/method.md §4): small pure functions, each with its formula


def group_advantages(r: torch.Tensor, G: int, clip: float) -> torch.Tensor:
    """A_i = (r_i − mean_group) / (std_group + ε), clipped: the GRPO baseline. r is (B·G,), groups adjacent"""
    g = r.view(-1, G)
    a = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + 1e-6)
    return a.clamp(-clip, clip).view(-1)


def local_penalty(M: torch.Tensor, G: int) -> torch.Tensor:
    """D_i(p) = −(M_i(p) − mean_j M_j(p)) / (pixel-mean of std_j M_j(p) + ε), (B·G, 1, H, W): a pixel more
    degraded than in the group's other samples gets a negative local advantage. One normaliser per group keeps
    the map's spatial contrast (a per-pixel std would blow up where the group agrees)."""
    return -group_deviation(M, G)


def pixel_advantages(r, M, w_map, G, lam_px, clip, size):
    """A_i(p) = clip(A_i + λ_px · w_map · D_i(p)); without a map (stage 0) A_i broadcast, (B·G, 1, H, W).
    w_map is the curriculum weight of the map-giving stages (D is normalised per group: without w_map a map
    blended in at 0.1 would act at full strength). `size`: the log-prob's (a latent policy's: 1/4 of the
    image's, where the map is averaged over each latent pixel's 4×4 patch)."""
    A = group_advantages(r, G, clip).view(-1, 1, 1, 1)
    if M is None or lam_px == 0 or w_map == 0:
        return A.expand(-1, 1, *size)
    D = local_penalty(M, G)
    if D.shape[-2:] != tuple(size):
        D = F.adaptive_avg_pool2d(D, size)
    return (A + lam_px * w_map * D).clamp(-clip, clip)


def ppo_loss(logp, logp_old, adv, clip):
    """PPO-clip with a per-sample ratio and per-pixel advantages. Returns (loss, ρ per sample).

    ρ_i = exp(mean over pixels of (logp − logp_old)): DDPO's ratio of the pixel-averaged log-prob. As in PPO,
    a sample whose ρ_i has left [1 − ε, 1 + ε] in the direction a pixel's advantage pushes it stops
    contributing that pixel's gradient; every other pixel contributes A(p)·∇ρ(p), so the local advantages
    keep their per-pixel weight. At θ = θ_old nothing is clipped and this is −mean(A·logp) in gradient."""
    log_ratio = logp - logp_old
    rho = torch.exp(log_ratio.flatten(1).mean(1)).view(-1, *[1] * (logp.dim() - 1))  # (B, 1, 1, 1)
    out = torch.where(adv > 0, rho > 1 + clip, rho < 1 - clip)  # clipped (sample, pixel) pairs
    surr = torch.exp(log_ratio) * adv  # per pixel; value ρ(p)·A(p), gradient A(p)·∇ρ(p)
    return -torch.where(out, surr.detach(), surr).mean(), rho.flatten()


def trained_steps(std: tuple, sigma_min: float, fraction: float, g: torch.Generator) -> list:
    """The trajectory indices one update trains on: a random `fraction` (at least one) of the steps whose std
    is at least sigma_min (Config.sigma_min says why the tiny last step is never trained), sorted."""
    ok = [k for k, s in enumerate(std) if s >= sigma_min]
    if not ok:
        raise ValueError(f"no DDIM step has std ≥ sigma_min={sigma_min}; raise --eta or lower --sigma_min")
    n = max(1, math.ceil(fraction * len(ok)))
    return sorted(ok[i] for i in torch.randperm(len(ok), generator=g)[:n].tolist())


# ----------------------------------------------------------------------------------------------------
# The loop (kvablack/ddpo-pytorch is the model for its shape): one iteration per RL step, in run order


def main(cfg: Config) -> str:
    dev = scale.setup(cfg.device)  # + the process group under torchrun (docs/scaling.md)
    scale.fast_math(dev, cfg.tf32)
    main_rank, rank = scale.is_main(), scale.rank()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    #### SET-UP: the inputs first (data, the RMs — checked before minutes of SFT —, the resume state), so a
    #### run that fails on them leaves a previous run in out_dir untouched; then the log, policy, rewards.
    pool = images.load_pool(cfg.data, "train", cfg.crop)
    rms = None if cfg.sft_only else load_stages(cfg.rm_dir, dev)
    st = rundir.resume_state(cfg)
    log = rundir.open_log(cfg, "train_rl", resume_filter(st))
    if cfg.init_policy and not cfg.sft_only:
        policy = load_policy(cfg.init_policy, dev)
    else:  # the cached or freshly trained SFT policy (starting from --init_policy's weights when given)
        policy = sft.train_sft(cfg, pool, dev, log, st)
    if cfg.sft_only:
        log.close()
        return cfg.out_dir
    # The reward source (rewards.py) gives the reward; RM_N also judges every run (reward_final), whatever
    # its source, so the curves of all arms compare. --coevolve refreshes copies of the RMs (refresh.py).
    coevo = OnlineRefresh(rms, pool, cfg, dev) if cfg.coevolve else None
    for r in rms:  # --compile: the frozen RMs' forwards too
        scale.compile_module(r, dev, cfg.compile)
    source = make_source(cfg.reward, coevo.rms if coevo else rms, cfg)
    policy.cfg.steps, policy.cfg.eta = cfg.sample_steps, cfg.eta  # saved in policy.json: upscale's defaults
    ref = sft.anchor(cfg, dev)  # the KL anchor: a frozen copy of the starting policy, when beta_kl > 0
    params = lora.adapt(policy, cfg.lora_rank, sft.start_dir(cfg), cfg.lora_lr)  # LoRA: adapters only
    scale.for_training(policy.train(), dev, cfg)  # bf16 / NHWC / compile / DDP, as the flags ask
    torch.manual_seed(config.seed("rl/global", cfg.seed, rank))  # sft_loss's draws differ per rank
    sched = Schedule(cfg.curriculum, source.n_stages, cfg.steps, blend=cfg.blend, switch=cfg.switch)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, fused=dev.type == "cuda")
    start = resume(st, policy, opt, sched, coevo, main_rank)  # the refreshed RMs load in place
    nan, update = rundir.NanGuard("RL"), pg_update if cfg.algo == "pg" else refl_update
    # The batches: drawn on the CPU from (seed, step, rank), one step ahead in a thread on CUDA (prefetch).
    draw = lambda s: data.training_pairs(pool, cfg.batch, cfg.crop, cfg.degrade_max,
                                         config.generator("rl/draw", cfg.seed, s, rank))  # fmt: skip
    bar = tqdm(scale.prefetch(draw, range(start, cfg.steps), dev.type == "cuda"), initial=start,
               desc=f"RL {cfg.algo}/{cfg.curriculum}", total=cfg.steps, disable=not main_rank)  # fmt: skip
    resume_at, row = start, None  # the first step not yet applied (where a Ctrl-C continues), the last row
    save = lambda: save_state(cfg, resume_at, policy, opt, sched, coevo)
    with rundir.saved_on_interrupt(save, lambda: f"RL step {resume_at}"):
        for step, batch in bar:
            #### CURRICULUM: which reward stage(s) with which weights (curriculum.Schedule, docs/method.md §5)
            stage, weights = sched.stage_at(step), sched.at(step)
            if step > 0 and stage != sched.stage_at(step - 1) and main_rank:  # a switch: checkpoint first
                save_policy(policy, os.path.join(cfg.out_dir, f"policy_stage{stage - 1}"))
            #### BATCH: HR crops, their LR, and this step's noise generator, on the device
            hr, lr = (x.to(dev, non_blocking=True) for x in batch)
            gen = config.generator("rl/noise", cfg.seed, step, rank, device=dev)
            opt.zero_grad(set_to_none=True)
            #### ROLLOUT → REWARD → LOSS → BACKWARD, by pg or ReFL (the two functions below)
            sr, hr_g, loss, stats, share = update(policy, ref, source, weights, hr, lr, gen, step, cfg, opt)
            #### STEP: clip the gradient, judge the samples, and — if everything is finite — step
            gnorm = torch.nn.utils.clip_grad_norm_(policy.unet.parameters(), cfg.grad_clip)
            stats = {**stats, "loss": loss.detach(), "grad_norm": gnorm, **validation.judges(rms, sr, hr_g)}
            stats = scale.mean_over_ranks(stats)  # one all-reduce: every rank takes the same decisions
            # The host sync of the step: is it finite? The cause named when not: the reward, or the step size.
            finite = bool(torch.isfinite(stats["loss"]) & torch.isfinite(stats["grad_norm"]))
            cause = f"lower --{'lora_lr' if cfg.lora_rank else 'lr'} or raise --grad_clip"
            if not finite and not torch.isfinite(stats["reward"]):
                cause = f"the reward is not finite: check --reward={cfg.reward} (--rm_dir={cfg.rm_dir})"
            resume_at = step + 1
            if not nan.ok(finite, step, cause):
                continue  # skipped: a warning, and the run stops after 10 in a row
            opt.step()
            # --coevolve: the RM stage in use learns from this rollout; the reward's stages are these modules.
            if coevo is not None:
                coevo.refresh(step, weights[-1][0], sr, hr_g, cfg.group if cfg.algo == "pg" else 1)
            if cfg.switch == "plateau":
                sched.update(step, float(stats["reward"]))
            #### LOG: what was optimised, RM_N's view, the gold judge — hacking shows as reward up, gold not
            row = log_row(step, stage, weights, stats, share)
            print(json.dumps(row), file=log, flush=True)
            bar.set_postfix(stage=stage, r=f"{row['reward']:.3f}", rN=f"{row['reward_final']:.3f}",
                            gold=f"{row['gold']:.3f}")  # fmt: skip
            if resume_at % cfg.ckpt_every == 0:
                save()
    log.close()
    nan.done()  # the run ended on non-finite steps: a failed run (exit non-zero), no final checkpoint
    if main_rank:
        save_policy(policy, os.path.join(cfg.out_dir, f"policy_stage{sched.stage_at(cfg.steps - 1)}"))
        save_policy(policy, os.path.join(cfg.out_dir, "policy_final"))
        for k, r in enumerate(coevo.rms if coevo else []):  # the refreshed stages, beside the policy
            save_rm(r, os.path.join(cfg.out_dir, "rm_coevolved", f"rm_stage{k}"))
        save_state(cfg, cfg.steps, policy, opt, sched, coevo)
        if row is not None:
            print(f"RL done: {cfg.out_dir}/policy_final; last step: reward_final {row['reward_final']:.3f},"
                  f" gold {row['gold']:.3f}, psnr {row['psnr']:.2f} (gold: lower is better)")  # fmt: skip
    scale.teardown()  # after a barrier: nobody leaves before rank 0 has written the final checkpoints
    return cfg.out_dir


# ----------------------------------------------------------------------------------------------------
# One RL step's rollout, reward and loss, by each algorithm. Both backpropagate; main clips and steps.


def pg_update(policy, ref, source, weights, hr, lr, gen, step, cfg, opt):
    """Policy gradient (ours, docs/method.md §4): G samples per LR with their per-step, per-pixel log-probs
    (DDIM with eta > 0 is a Gaussian policy) → reward and map → per-pixel advantages → PPO over a random
    share of the trainable steps. Returns (sr, hr per sample, loss, stats, the step-0 gradient shares)."""
    G = cfg.group
    lr_g, hr_g = lr.repeat_interleave(G, 0), hr.repeat_interleave(G, 0)
    sr, traj = policy.sample(lr_g, cfg.sample_steps, cfg.eta, gen, return_traj=True)
    r, M, w_map, rewards = reward_and_map(source, weights, sr, hr_g, lr_g, step, cfg)  # rewards.py
    size = traj.logprob.shape[-2:]  # the log-prob's size (a latent policy's: 1/4 of the map's)
    adv = pixel_advantages(r, M, w_map, G, cfg.lam_px, cfg.adv_clip, size).detach()
    g_steps = config.generator("rl/steps", cfg.seed, step)
    ks = trained_steps(traj.std, cfg.sigma_min, cfg.train_fraction, g_steps)  # never below the σ floor
    # PPO epochs: between them the optimiser steps, so later epochs see θ ≠ θ_old and the clip binds. At θ_old
    # the ratio is 1 in exact arithmetic; a kernel that rounds differently (bf16) could move it past DDPO's
    # tiny clip, so the first pass is the plain surrogate.
    loss = torch.zeros((), device=hr.device)
    for epoch in range(cfg.ppo_epochs):
        if epoch > 0:  # clip, step (unless not finite: a host sync), clear; then the next epoch
            if torch.isfinite(torch.nn.utils.clip_grad_norm_(policy.unet.parameters(), cfg.grad_clip)):
                opt.step()
            opt.zero_grad(set_to_none=True)
        clip = cfg.ppo_clip if epoch > 0 else math.inf
        pass_loss, rho, log_ratio = ppo_pass(policy, ref, traj, lr_g, hr, lr, adv, ks, cfg, clip)
        loss = loss + pass_loss / cfg.ppo_epochs
    clip_frac = ((rho - 1).abs() > cfg.ppo_clip).float().mean()  # binds after the first epoch only
    stats = {"reward": r.mean(), "reward_std": r.std(), "approx_kl": 0.5 * (log_ratio**2).mean(),
             "clip_frac": clip_frac, "flat_groups": validation.flat_groups(r, M, G),
             **{f"reward_var{s}": rewards[s].var(unbiased=False) for s in rewards}}  # fmt: skip
    # Once per run: each DDIM step's share of the gradient norm, with its σ (what the σ floor leaves out).
    share = validation.grad_share(policy, traj, lr_g[:G], adv[:G], cfg.sigma_min) if step == 0 else {}
    return sr, hr_g, loss, stats, share


def refl_update(policy, ref, source, weights, hr, lr, gen, step, cfg, opt):
    """ReFL (the paper's, docs/method.md §4): sample without grad to a random late step, one step with grad,
    score its predicted x0 with the frozen reward, loss relu(c − reward) + λ_sft · the supervised loss."""
    K, g_stop = cfg.sample_steps, config.generator("rl/refl_stop", cfg.seed, step)
    stop = int(torch.randint(max(0, K - cfg.refl_last), K, (), generator=g_stop))  # one of the last steps
    sr = policy.refl_sample(lr, K, stop, cfg.eta, gen)  # differentiable w.r.t. the UNet
    r = sum(w * source.stages[s](sr, hr, step)[0] for s, w in weights)
    loss = F.relu(cfg.refl_c - r).mean()  # relu(c − r): push the reward up until c
    if sft_weight(cfg) > 0:
        loss = loss + sft_weight(cfg) * policy.sft_loss(hr, lr)
    if cfg.lam_lr > 0:
        loss = loss + cfg.lam_lr * lr_consistency(sr, lr).mean()
    loss.backward()
    r = r.detach()
    stats = {"reward": r.mean(), "reward_std": r.std(unbiased=False), "reward_var": r.var(unbiased=False)}
    return sr.detach(), hr, loss, stats, {}


# ----------------------------------------------------------------------------------------------------
# The loop's helpers, in the order the loop calls them


def ppo_pass(policy, ref, traj, lr_g, hr, lr, adv, ks, cfg, clip):
    """One pass of the PPO recompute over the trained steps `ks`, backward included; returns (this pass's
    loss, the last chunk's per-sample ratios and per-pixel log-ratios). Chunks of micro_batch samples (0 = all
    B·G at once) bound activation memory without changing the gradient (each chunk's mean is weighted by its
    share of the batch); under torchrun only the pass's last backward all-reduces (no_sync before it)."""
    BG = lr_g.shape[0]
    mb = cfg.micro_batch if 0 < cfg.micro_batch < BG else BG
    work = [(k, slice(c, c + mb)) for k in ks for c in range(0, BG, mb)]
    total = torch.zeros((), device=lr_g.device)
    for i, (k, c) in enumerate(work):  # loops over steps and chunks; never over single samples
        last = i == len(work) - 1
        with contextlib.nullcontext() if last else scale.no_sync(policy):
            x_t, x_prev, lr_c = traj.x[k][c], traj.x[k + 1][c], lr_g[c]
            mean, std = policy.step_stats(x_t, traj.t[k], lr_c, traj.steps, traj.eta)  # one UNet forward
            logp = policy.gaussian_logprob(x_prev, mean, std)  # = policy.step_logprob, from that forward
            loss, rho = ppo_loss(logp, traj.logprob[k][c], adv[c], clip)
            if cfg.beta_kl > 0:  # KL(N(μ_θ, σ²) ‖ N(μ_ref, σ²)) = |μ_θ − μ_ref|² / 2σ² on the step means
                with torch.no_grad():
                    mean_ref, _ = ref.step_stats(x_t, traj.t[k], lr_c, traj.steps, traj.eta)
                loss = loss + cfg.beta_kl * ((mean - mean_ref) ** 2).mean() / (2 * std**2)
            loss = loss * (logp.shape[0] / BG) / len(ks)  # the update: mean over samples and steps
            if last and sft_weight(cfg) > 0:  # the supervised regulariser rides on the synchronising backward
                loss = loss + sft_weight(cfg) * policy.sft_loss(hr, lr)
            loss.backward()  # one UNet graph (one chunk of one step) alive at a time
        total = total + loss.detach()
    return total, rho, logp.detach() - traj.logprob[k][c]


def sft_weight(cfg) -> float:
    """λ_sft of --lam_sft: −1 resolves to the algorithm's own weight (LAM_SFT)."""
    return cfg.lam_sft if cfg.lam_sft >= 0 else LAM_SFT[cfg.algo]


def log_row(step, stage, weights, stats, share) -> dict:
    """A step's metrics.jsonl row: step, phase, stage, blend, the stats (and pg's step-0 gradient shares)."""
    row = {"step": step, "phase": "rl", "stage": stage, "blend": weights[-1][1], "weights": weights}
    return {**row, **{k: float(v) for k, v in stats.items()}, **share}


# ----------------------------------------------------------------------------------------------------
# Resume, at the edges of the loop


def resume_filter(st):
    """The log rows a resume keeps: those before the resumed step (a kill -9 leaves more); None: fresh."""
    if not st:
        return None
    at = int(st["step"])
    if st.get("phase") == "sft":
        return lambda r: r["phase"] == "sft" and r["step"] < at and "psnr_val" not in r
    return lambda r: r["phase"] == "sft" or r["step"] < at


def resume(st, policy, opt, sched, coevo, main_rank) -> int:
    """Load an RL state into the loop's objects; returns the step to start at (0 without one)."""
    if not st or st.get("phase") != "rl":
        return 0
    policy.unet.load_state_dict(st["unet"])
    opt.load_state_dict(st["opt"])
    sched.load_state_dict(json.loads(st["sched"]))
    if coevo is not None:  # the refreshed RMs and their optimisers, as they were at that step
        coevo.load_state_dict(st)
    print(f"resuming RL at step {st['step']}") if main_rank else None
    return int(st["step"])


def save_state(cfg, step, policy, opt, sched, coevo) -> None:
    """state.pt: the step, the UNet, AdamW, the schedule and the refreshed RMs (rundir.save_state)."""
    refreshed = coevo.state_dict() if coevo else {}  # --coevolve: the RMs and their optimisers
    rundir.save_state(cfg.out_dir, phase="rl", step=step, unet=policy.unet, opt=opt,
                      sched=json.dumps(sched.state_dict()), **refreshed)  # fmt: skip


if __name__ == "__main__":
    main(config.parse(Config, presets=PRESETS))
