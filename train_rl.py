"""RL fine-tuning of the diffusion SR policy with FinPercep-RM under the co-evolutionary curriculum.

    python train_rm.py && python train_rl.py            # CPU defaults: SFT warm start, then RL (~6 min)
    python train_rl.py --sft_only                       # just the supervised warm start → out/rl/policy_sft
    python train_rl.py --algo=refl                      # the paper's ReFL instead of policy gradient
    python train_rl.py --curriculum=none                # ablations: none (RM_N from step 0) | global (RM_0)
    python train_rl.py --device=cuda --preset=gpu       # a real run on one GPU
    torchrun --standalone --nproc_per_node=8 train_rl.py --preset=gpu    # 8 GPUs (DDP; effective batch ×8)
    python train_rl.py --resume                         # continue an interrupted run (Ctrl-C saves first)

The loop, in the order it runs (method.md §4–5; kvablack/ddpo-pytorch is the model for its shape):
0. SFT (sft.py): without --init_policy, a supervised warm start, cached as out_dir/policy_sft.
1. The curriculum says which frozen RM stage(s) give the reward at this step, with which weights.
2. pg:   sample G images per LR image (DDIM, eta > 0: a Gaussian policy) → rewards → group-normalised
         advantages A_i, plus per-pixel local penalties from the degradation maps → per-pixel PPO loss over
         the stored trajectory.
   refl: sample without gradient to a random late step, one step with gradient, score its x0 prediction
         with the frozen RM → relu(c − reward) (+ the supervised regulariser).
3. Log reward / reward_final (RM_N on the same samples) / gold (label map vs HR) / psnr, so hacking — proxy
   up, gold not — is visible while it happens. Checkpoints at every curriculum switch and at the end.
"""

import contextlib
import functools
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import data
import sft
from curriculum import CoEvolution, Schedule
from metrics import label_map, psnr_y
from policy import load_policy, save_policy
from rewards import make_source
from rm import freeze, group_deviation, load_rm, save_rm


@dataclass
class Config:
    out_dir: str = "out/rl"  # policy_sft/, policy_stage{k}/, policy_final/, metrics.jsonl, state.pt
    data: str = "builtin"  # builtin | an HR folder (LR made by data.degrade) | paired:LR_DIR,HR_DIR
    seed: int = 0  # one seed for data, noise and init
    device: str = "auto"  # auto = cuda when present
    preset: str = "cpu"  # cpu | gpu
    resume: bool = False  # continue from out_dir/state.pt (SFT or RL, whichever was running)
    init_policy: str = ""  # policy or LDM SR pipeline dir: RL starts here (with --sft_only: SFT does)
    sft_only: bool = False  # stop after the SFT warm start
    rm_dir: str = "out/rm"  # train_rm.py's out_dir: rm_stage0 … rm_stageN
    algo: str = "pg"  # pg (policy gradient with map-based local penalties) | refl (the paper's)
    reward: str = "rm"  # rm (RM stages, the method) | gold (the toy world's oracle) | placebo (rewards.py)
    curriculum: str = "ccl"  # ccl | none (RM_N throughout) | global (RM_0 throughout)
    switch: str = "fixed"  # fixed (at fractions of the run) | plateau (when the reward's average stalls)
    blend: int = 10  # steps of linear blend between consecutive RM stages
    coevolve: bool = False  # online co-evolution: the RM stage in use learns from the rollouts (curriculum)
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
    # Policy UNet widths (0.62M params, no attention): 16 channels at full resolution make it 2.4× faster on
    # CPU than (32, 64, 64) for a small loss in PSNR.
    unet_channels: tuple = (16, 32, 64)  # policy UNet widths, full resolution first
    unet_layers: int = 1  # resnets per UNet level (diffusers' default is 2)
    # --- speed (the gpu preset turns these on; bench.py measures them)
    amp: str = "fp32"  # fp32 | bf16: autocast of the networks; log-probs and losses stay fp32
    channels_last: bool = False  # NHWC memory format for the UNet: faster convolutions on tensor cores
    tf32: bool = False  # CUDA: TF32 matmuls/convolutions and cuDNN autotuning (process-wide once set)
    compile: bool = False  # torch.compile of the UNet and RM forwards, static shapes (config.compile_module)
    # --- RL
    steps: int = 100  # RL optimiser steps (~0.8 s each on 2 CPU cores with the defaults below)
    batch: int = 2  # LR images per step
    group: int = 4  # G samples per LR image (same LR, different noise): the advantage baseline
    sample_steps: int = 6  # K DDIM steps per rollout (Flow-GRPO trains with 10; 6 is cheaper on CPU)
    # DDPO's timestep_fraction: each update trains a random share of the trainable steps (2 of K − 1 = 5);
    # one trained step costs a forward + backward, ~3 sampling steps. (K = 6, 0.4 and the 48-px crop ran 60
    # oracle-map steps in 50 s for 0.012 of gold, as K = 8, 0.5 at 64 px did in 125 s; 2-core CPU.)
    train_fraction: float = 0.4  # share of the trainable steps each update trains on, drawn at random
    # σ floor (method.md "What makes RL work here"): a step whose std is below it is never trained. The last
    # DDIM step has σ ≈ 0.010 (≈ 0.2/255 in the image): no reward can depend on that noise, yet its (ε/σ)·∇μ
    # term had 96 % of the update's gradient norm (measured: 5.42 vs 0.11 for the next step, K = 8) and made
    # the update a random walk. 0.05 in residual units is ≈ 1/255 in the image; the next-smallest σ is 0.35.
    sigma_min: float = 0.05  # σ floor: DDIM steps with a smaller std are never trained
    eta: float = 1.0  # DDIM eta: 1 = every step a full Gaussian (DDPO's choice)
    lr: float = 1e-4  # AdamW on the whole UNet (DDPO: 3e-4 on LoRA); 3e-5 barely moved it in 100 steps
    grad_clip: float = 1.0  # global grad-norm clip
    adv_clip: float = 5.0  # advantages clipped to ±5 (DDPO)
    ppo_clip: float = 1e-4  # PPO clip of the per-sample ratio (DDPO); binds only when ppo_epochs > 1
    ppo_epochs: int = 1  # updates per rollout: > 1 steps the optimiser between passes over the trajectory
    micro_batch: int = 0  # log-prob recompute in chunks of this many samples (0 = all B·G): bounds memory
    lam_px: float = 0.5  # λ_px: weight of the map-based local penalty in the per-pixel advantage
    fused: bool = False  # reward = λ1·S + λ2·(1 − smooth_max(M)) instead of the coupled score S alone
    lam1: float = 0.5  # fused reward weights
    lam2: float = 0.5  # (λ1 on the score, λ2 on 1 − smooth max of the map)
    # The anchor (method.md "Anchor strength must be calibrated"): KL(π_θ ‖ π_SFT) on the step means. Swept
    # on the oracle-map and placebo arms, 40 steps × 3 seeds (README "The anchor"): at 0 the placebo's random
    # walk cost 0.024 of gold with a 0.038 spread between seeds; at 1 it stays at SFT's (±0.001) while the
    # oracle still gains 2.7 SE. lam_sft, the other candidate, made both arms worse at every weight tried.
    beta_kl: float = 1.0  # KL to the SFT policy on step means (pg); 0 = no anchor
    lam_sft: float = 0.0  # supervised loss as a regulariser (pg; refl uses lam_sft_refl)
    lam_lr: float = 0.0  # LR consistency λ_lr·|down(SR) − LR| (pg: a reward penalty; refl: a loss term)
    refl_last: int = 3  # refl: stop at one of the last refl_last steps (ImageReward: steps 30–39 of 40)
    refl_c: float = 1.0  # refl: relu(c − reward); scores live in [0, 1], so c = 1 is "always push up"
    refl_scale: float = 1.0  # refl: loss scale; with Adam only its ratio to lam_sft_refl matters
    lam_sft_refl: float = 1.0  # refl: supervised regulariser (ImageReward: without it images degrade)
    log_every: int = 1  # metrics.jsonl every optimiser step (one host sync each)
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
            micro_batch=c.at_least(0), lam_px=c.at_least(0), beta_kl=c.at_least(0), lam_sft=c.at_least(0),
            lam_lr=c.at_least(0), refl_last=c.at_least(1), log_every=c.at_least(1), ckpt_every=c.at_least(1),
            blend=c.at_least(0), coevolve_every=c.at_least(1), coevolve_steps=c.at_least(1),
            coevolve_lr=c.POSITIVE,
        )  # fmt: skip


PRESETS = {
    "cpu": {},
    # One GPU (80 GB): 256×256 HR (LR 64), a 66M-param UNet, bf16 autocast, channels_last, TF32.
    "gpu": {
        "crop": 256,
        "unet_channels": (128, 256, 256, 512),
        "unet_layers": 2,
        "amp": "bf16",
        "channels_last": True,
        "tf32": True,
        "sft_steps": 20000,
        "sft_batch": 32,
        "steps": 2000,
        "batch": 8,
        "group": 8,
        "micro_batch": 16,  # B·G = 64 samples: 16 per forward+backward keeps the update well inside 80 GB
        "ckpt_every": 200,
    },
}


def load_rms(rm_dir: str, dev) -> list:
    """Every RM stage under rm_dir, frozen (the rewards are fixed functions during RL)."""
    has = lambda f: os.path.isfile(os.path.join(rm_dir, f))  # noqa: E731  (wrong kinds: say what it is)
    if has("policy.json") or has("model_index.json"):
        raise config.ConfigError(
            f"--rm_dir={rm_dir} is a policy directory, not train_rm's out_dir; pass that (it holds"
            " rm_stage0/ …), e.g. out/rm from `python train_rm.py`"
        )
    if has("rm.json"):
        parent = os.path.dirname(os.path.abspath(rm_dir))
        raise config.ConfigError(f"--rm_dir={rm_dir} is one RM stage; pass its parent {parent}")
    if not os.path.isdir(os.path.join(rm_dir, "rm_stage0")):
        raise config.ConfigError(
            f"no reward model in '{rm_dir}' (rm_stage0/ missing); run `python train_rm.py`"
            f" first or pass --rm_dir=DIR"
        )
    rms, k = [], 0
    while os.path.isdir(os.path.join(rm_dir, f"rm_stage{k}")):
        rms.append(freeze(load_rm(os.path.join(rm_dir, f"rm_stage{k}"), dev)))
        k += 1
    return rms


@torch.no_grad()
def score_all(source, sr, hr, step, need) -> tuple[dict, dict]:
    """Rewards (B,) and maps (B,1,H,W) or None of the source's stages in `need`, without gradient (pg).
    One forward per stage: a fused RM reward is assembled from the same score and map (rewards.rm_stage)."""
    rewards, maps = {}, {}
    for s in sorted(need):
        rewards[s], maps[s] = source.stages[s](sr, hr, step)
    return rewards, maps


def lr_error(sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """|down(SR) − LR| per image, (B,). Antialiased bicubic ×1/4 is what made clean LR (data.degrade at
    strength 0), so this is exact for clean LR and only approximate for degraded LR (blur, noise, JPEG)."""
    down = F.interpolate(sr, scale_factor=1 / data.SCALE, mode="bicubic", antialias=True, align_corners=False)
    return (down - lr).abs().mean((1, 2, 3))


# ----------------------------------------------------------------------------------------------------
# Policy gradient with map-based local penalties (method.md §4 [ours])


def group_advantages(r: torch.Tensor, G: int, clip: float) -> torch.Tensor:
    """A_i = (r_i − mean_group) / (std_group + ε), clipped: the GRPO baseline. r is (B·G,), groups adjacent"""
    g = r.view(-1, G)
    a = (g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + 1e-6)
    return a.clamp(-clip, clip).view(-1)


def local_penalty(M: torch.Tensor, G: int) -> torch.Tensor:
    """D_i(p) = −(M_i(p) − mean_j M_j(p)) / (pixel-mean of std_j M_j(p) + ε) (B·G, 1, H, W): −group_deviation.

    A pixel that is more degraded than in the group's other samples gets a negative local advantage; the
    normaliser is one number per group, so D keeps the map's spatial contrast (a per-pixel std would blow up
    where the group agrees)."""
    return -group_deviation(M, G)


def pixel_advantages(r, M, w_map, G, lam_px, clip, size):
    """A_i(p) = clip(A_i + λ_px · w_map · D_i(p)); without a map (stage 0) just A_i broadcast, (B·G, 1, H, W).

    w_map is the curriculum weight of the stages that have a map (1 once the curriculum is at a map-giving
    stage, 0.1 one step into the blend from RM_0): D is normalised per group, so without w_map a map blended
    in at weight 0.1 would act at full strength. `size` is the log-prob's: the image size in pixel space; in
    latent space (an LDM policy) 1/4 of it, where the map is averaged over each latent pixel's 4×4 patch."""
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


def step_grad_norms(policy, traj, lr_g, adv, n: int) -> list:
    """‖∇ of each step's surrogate −mean(A·logp_k)‖ for every k, trained or not, on the first n samples
    (autograd.grad: .grad stays untouched). Logged once per run (grad_share): the σ floor's effect shows."""
    params = [p for p in policy.unet.parameters() if p.requires_grad]
    norms = []
    lr_g, adv = lr_g[:n], adv[:n]
    for k in range(traj.logprob.shape[0]):
        logp = policy.step_logprob(traj.x[k][:n], traj.x[k + 1][:n], traj.t[k], lr_g, traj.steps, traj.eta)
        grads = torch.autograd.grad(-(adv * logp).mean(), params)
        norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))))
    return norms


def pg_step(policy, ref, source, sched, step, hr, lr, cfg, gen, inner_update=None, probe=False):
    """One policy-gradient update. Returns (loss, sr, stats) — stats are 0-dim tensors (synced when logged).

    The gradient of the last PPO epoch is left in .grad for the caller's optimiser step; with ppo_epochs > 1
    `inner_update()` (clip + optimiser step + zero_grad) runs between epochs, so later epochs see θ ≠ θ_old
    and the per-sample clip acts — one rollout, several updates (PPO). probe: also the per-step gradient
    norms of the first group (step_grad_norms), as stats["grad_share"]: a list, not a tensor."""
    if cfg.ppo_epochs > 1 and inner_update is None:  # the passes would pile up in .grad: a doubled step
        raise ValueError("pg_step: ppo_epochs > 1 needs inner_update (the optimiser step between passes)")
    G, weights = cfg.group, sched.at(step)
    lr_g, hr_g = lr.repeat_interleave(G, 0), hr.repeat_interleave(G, 0)  # G samples per LR: different noise
    sr, traj = policy.sample(lr_g, cfg.sample_steps, cfg.eta, gen, return_traj=True)  # rollout, no grad
    rewards, maps = score_all(source, sr, hr_g, step, {s for s, _ in weights})
    r = sum(w * rewards[s] for s, w in weights)
    if cfg.lam_lr > 0:  # LR consistency as a reward penalty: SR is a sample here, not differentiable
        r = r - cfg.lam_lr * lr_error(sr, lr_g)
    with_map = [(s, w) for s, w in weights if maps[s] is not None]
    w_map = sum(w for _, w in with_map)  # the curriculum weight of the map-giving stages
    M = sum(w * maps[s] for s, w in with_map) / w_map if with_map else None  # their blended map
    adv = pixel_advantages(r, M, w_map, G, cfg.lam_px, cfg.adv_clip, traj.logprob.shape[-2:]).detach()
    # A group whose rewards (and maps) are all equal has A = D = 0: it contributes nothing. Count them.
    flat = r.view(-1, G).std(1, unbiased=False) < 1e-8
    if M is not None:
        flat &= M.view(-1, G, M[0].numel()).std(1, unbiased=False).amax(1) < 1e-8
    g_steps = config.generator("rl/steps", cfg.seed, step)  # which steps: from (seed, step), like all draws
    steps_trained = trained_steps(traj.std, cfg.sigma_min, cfg.train_fraction, g_steps)
    n_train = len(steps_trained)
    # The recompute runs in chunks of micro_batch samples (0 = all B·G at once): activation memory scales with
    # the chunk, the gradient does not change (each chunk's mean is weighted by its share of the batch).
    BG = lr_g.shape[0]
    mb = cfg.micro_batch if 0 < cfg.micro_batch < BG else BG
    work = [(k, slice(c, c + mb)) for k in steps_trained for c in range(0, BG, mb)]
    total = torch.zeros((), device=sr.device)
    for epoch in range(cfg.ppo_epochs):
        if epoch > 0 and inner_update is not None:
            inner_update()  # θ moves: from here on the ratios differ from 1 and the clip can bind
        # At θ_old (the first pass) the ratio is 1 in exact arithmetic; a kernel that rounds differently
        # (bf16, another batch size) can move it by more than the tiny DDPO clip, and a clipped sample would
        # lose its gradient for nothing. So the first pass is the plain surrogate; later passes clip.
        clip = cfg.ppo_clip if epoch > 0 else math.inf
        for i, (k, c) in enumerate(work):  # loops over steps and chunks; never over single samples
            # Under torchrun only the pass's last backward all-reduces; the others accumulate locally.
            last = i == len(work) - 1
            with contextlib.nullcontext() if last else policy.no_sync():
                x_t, x_prev, lr_c = traj.x[k][c], traj.x[k + 1][c], lr_g[c]
                mean, std = policy.step_stats(x_t, traj.t[k], lr_c, traj.steps, traj.eta)  # one UNet forward
                logp = policy.gaussian_logprob(x_prev, mean, std)  # = policy.step_logprob, from that forward
                loss, rho = ppo_loss(logp, traj.logprob[k][c], adv[c], clip)
                if cfg.beta_kl > 0:  # KL(N(μ_θ, σ²) ‖ N(μ_ref, σ²)) = |μ_θ − μ_ref|² / 2σ² on the step means
                    with torch.no_grad():
                        mean_ref, _ = ref.step_stats(x_t, traj.t[k], lr_c, traj.steps, traj.eta)
                    loss = loss + cfg.beta_kl * ((mean - mean_ref) ** 2).mean() / (2 * std**2)
                loss = loss * (logp.shape[0] / BG) / n_train  # the update: mean over samples and steps
                if last and cfg.lam_sft > 0:  # the supervised regulariser rides on the synchronising backward
                    loss = loss + cfg.lam_sft * policy.sft_loss(hr, lr)
                loss.backward()  # one UNet graph (one chunk of one step) alive at a time
            total = total + loss.detach() / cfg.ppo_epochs
    log_ratio = logp.detach() - traj.logprob[k][c]  # of the last chunk trained: for the approx KL
    stats = {
        "reward": r.mean(),
        "reward_std": r.std(),
        "approx_kl": 0.5 * (log_ratio**2).mean(),
        "clip_frac": ((rho - 1).abs() > cfg.ppo_clip).float().mean(),  # samples; binds after the first pass
        "flat_groups": flat.sum().float(),
        **{f"reward_var{s}": rewards[s].var(unbiased=False) for s in rewards},
    }
    if probe:
        stats["grad_share"] = list(zip(step_grad_norms(policy, traj, lr_g, adv, G), traj.std))
    return total, sr, stats


# ----------------------------------------------------------------------------------------------------
# ReFL (method.md §4): the paper's algorithm


def refl_step(policy, source, sched, step, hr, lr, cfg, gen):
    """One ReFL update: no-grad sampling to a random late step, one step with grad, reward of its x0."""
    K = cfg.sample_steps
    g = config.generator("rl/refl_stop", cfg.seed, step)
    stop = int(torch.randint(max(0, K - cfg.refl_last), K, (), generator=g))
    sr = policy.refl_sample(lr, K, stop, cfg.eta, gen)  # differentiable w.r.t. the UNet
    weights = sched.at(step)
    r = sum(w * source.stages[s](sr, hr, step)[0] for s, w in weights)
    loss = cfg.refl_scale * F.relu(cfg.refl_c - r).mean()  # relu(c − r): push the reward up until c
    if cfg.lam_sft_refl > 0:
        loss = loss + cfg.lam_sft_refl * policy.sft_loss(hr, lr)
    if cfg.lam_lr > 0:
        loss = loss + cfg.lam_lr * lr_error(sr, lr).mean()
    loss.backward()
    r = r.detach()
    return (
        loss,
        sr.detach(),
        {"reward": r.mean(), "reward_std": r.std(unbiased=False), "reward_var": r.var(unbiased=False)},
    )


# ----------------------------------------------------------------------------------------------------


def draw(pool, step: int, cfg, rank: int):
    """This step's (HR, LR) batch on the CPU, from (seed, rank, step) alone: each rank draws other images,
    --resume continues the exact stream without any stored generator state, and a prefetch thread can draw
    step + 1 while step trains (config.prefetch)."""
    g = config.generator("rl/draw", cfg.seed, step, rank)
    return pool.pairs(cfg.batch, cfg.crop, g, functools.partial(sft.draw_strength, cfg, g))


def to_device(batch, step: int, cfg, rank: int, dev):
    """(HR, LR) on the device, and the step's rollout-noise generator there, also from (seed, rank, step)."""
    hr, lr = (x.to(dev, non_blocking=True) for x in batch)
    return hr, lr, config.generator("rl/noise", cfg.seed, step, rank, device=dev)


def rl_update(
    policy, ref, source, rms, sched, opt, hr, lr, gen, step, cfg, inner_update=None, pg_fn=None, log=True,
    probe=False,
):  # fmt: skip
    """One RL iteration up to the optimiser step: zero_grad → pg_step / refl_step → gradient clip → the
    step's numbers (with `log`, also the judges of the samples: RM_N's score `reward_final`, comparable
    across the run and across reward sources, and the gold judge and PSNR against HR), averaged over ranks in
    one all-reduce so every rank takes the same decisions after it (the NaN skip, a plateau switch). Returns
    (stats, sr): 0-dim tensors (with `probe`, also the list grad_share) and the step's samples; the gradient
    is left in .grad. bench.py times
    exactly this function (pg_fn: its un-batched baseline)."""
    opt.zero_grad(set_to_none=True)
    if cfg.algo == "pg":
        step_fn = pg_fn or pg_step
        loss, sr, stats = step_fn(policy, ref, source, sched, step, hr, lr, cfg, gen, inner_update, probe)
        hr_eval = hr.repeat_interleave(cfg.group, 0)  # G samples per HR image
    else:
        loss, sr, stats = refl_step(policy, source, sched, step, hr, lr, cfg, gen)
        hr_eval = hr
    gnorm = torch.nn.utils.clip_grad_norm_(policy.unet.parameters(), cfg.grad_clip)
    share = stats.pop("grad_share", None)
    stats = {**stats, "loss": loss.detach(), "grad_norm": gnorm}
    if log:  # only on logged steps: with a network φ the gold map is a full forward
        with torch.no_grad():
            stats["reward_final"] = rms[-1](sr)[0].mean()
            stats["gold"], stats["psnr"] = label_map(sr, hr_eval).mean(), psnr_y(sr, hr_eval).mean()
    stats = config.mean_over_ranks(stats)
    return (stats if share is None else {**stats, "grad_share": share}), sr


def summary(path: str) -> dict:
    """Mean reward_final, gold and PSNR over the first and the last 10 % of a run's RL rows: did RL raise the
    final-stage reward, and did the gold judge agree (method.md: hacking = proxy up, gold not)?"""
    with open(path) as f:
        rows = [r for r in map(json.loads, f) if r.get("phase") == "rl" and "gold" in r]
    if not rows:
        return {}
    n = max(1, len(rows) // 10)
    return {
        key: (sum(r[key] for r in rows[:n]) / n, sum(r[key] for r in rows[-n:]) / n)
        for key in ("reward_final", "gold", "psnr")
    }


def main(cfg: Config) -> str:
    if cfg.coevolve and cfg.reward != "rm":
        raise config.ConfigError(
            f"--coevolve refreshes reward models: it needs --reward=rm, not {cfg.reward}"
        )
    dev = config.setup(cfg.device)  # + the process group under torchrun (config.py: DDP)
    config.amp_dtype(cfg.amp)  # validate the flag before any work
    config.fast_math(dev, cfg.tf32)
    main_rank, rank = config.is_main(), config.rank()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    # The inputs first — data, the reward models (checked before minutes of SFT), the resume state — so a run
    # that fails on them leaves a previous run in out_dir untouched; only then the log (config.open_log).
    pool = data.load_pool(cfg.data, "train", cfg.crop)
    rms = None if cfg.sft_only else load_rms(cfg.rm_dir, dev)
    st = config.resume_state(cfg)
    phase, at = (st.get("phase"), int(st["step"])) if st else (None, 0)
    # On --resume the rows logged past the resumed step (before a kill) are dropped: each step appears once.
    keep = {
        "sft": lambda r: r["phase"] == "sft" and r["step"] < at and "psnr_val" not in r,
        "rl": lambda r: r["phase"] == "sft" or r["step"] < at,
    }.get(phase)
    log = config.open_log(cfg, "train_rl", keep)

    # 0. The starting policy: --init_policy, else the cached or freshly trained SFT policy.
    if cfg.init_policy and not cfg.sft_only:
        policy = load_policy(cfg.init_policy, dev)
    else:
        policy = sft.train_sft(cfg, pool, dev, log, st)  # starts from --init_policy's weights when given
    if cfg.sft_only:
        log.close()
        return cfg.out_dir
    # The reward source (rewards.py) gives the reward; RM_N is also the judge logged as reward_final in every
    # run, whatever its source, so the curves of all arms compare.
    coevo = CoEvolution(rms, pool, cfg, dev) if cfg.coevolve else None  # the RMs that learn (copies)
    for r in rms:  # the frozen ones: rewards and the reward_final judge
        config.compile_module(r, dev, cfg.compile)
    source = make_source(cfg.reward, coevo.rms if coevo else rms, cfg)
    # The policy samples with the K and eta RL trains it with: saved in policy.json, upscale()'s defaults.
    policy.cfg.steps, policy.cfg.eta = cfg.sample_steps, cfg.eta
    # The KL anchor: a frozen copy of the starting policy (from disk: rank 0 wrote it before the barrier),
    # loaded only when it is used.
    start_dir = cfg.init_policy or os.path.join(cfg.out_dir, "policy_sft")
    ref = freeze(load_policy(start_dir, dev)) if cfg.beta_kl > 0 else None
    if ref is not None:  # the same precision as the policy, or rounding alone would read as KL
        ref.speed(config.amp_dtype(cfg.amp), cfg.channels_last)
    policy.speed(config.amp_dtype(cfg.amp), cfg.channels_last)  # bf16 autocast / NHWC when asked
    config.compile_module(policy.unet, dev, cfg.compile)
    policy.train().distribute(dev)  # gradient averaging across ranks under torchrun
    # The global RNG (sft_loss's timesteps and noise: ReFL's regulariser, pg's lam_sft) differs per rank.
    torch.manual_seed(config.seed("rl/global", cfg.seed, rank))

    sched = Schedule(cfg.curriculum, source.n_stages, cfg.steps, blend=cfg.blend, switch=cfg.switch)
    opt = torch.optim.AdamW(policy.unet.parameters(), lr=cfg.lr, weight_decay=0.0, fused=dev.type == "cuda")
    state_path, start, nan = os.path.join(cfg.out_dir, "state.pt"), 0, config.NanGuard("RL")
    if phase == "rl":  # the weights, optimiser moments and curriculum where the run stopped
        policy.unet.load_state_dict(st["unet"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(json.loads(st["sched"]))
        start = int(st["step"])
        if coevo is not None:  # the co-evolved RMs and their optimisers, as they were at `step`
            coevo.load_state_dict(st)
            source = make_source(cfg.reward, coevo.rms, cfg)
        print(f"resuming RL at step {start}") if main_rank else None

    def save_state(step):
        if main_rank:  # rank 0 writes; the weights are identical on every rank (same averaged updates)
            config.torch_save_atomic(
                {
                    "phase": "rl",
                    "step": step,
                    "unet": policy.unet.state_dict(),
                    "opt": opt.state_dict(),
                    "sched": json.dumps(sched.state_dict()),
                    **(coevo.state_dict() if coevo else {}),
                },
                state_path,
            )

    def update():
        """Between PPO passes: clip, then step — unless the gradient is not finite — and clear it."""
        gnorm = torch.nn.utils.clip_grad_norm_(policy.unet.parameters(), cfg.grad_clip)
        if torch.isfinite(gnorm):  # a host sync; the gradient is all-reduced, so every rank agrees
            opt.step()
        opt.zero_grad(set_to_none=True)

    # The batches: drawn on the CPU, one step ahead in a thread on CUDA (config.prefetch).
    batches = config.prefetch(lambda s: draw(pool, s, cfg, rank), range(start, cfg.steps), dev.type == "cuda")
    bar = tqdm(
        batches,
        desc=f"RL {cfg.algo}/{cfg.curriculum}",
        initial=start,
        total=cfg.steps,
        disable=not main_rank,
    )
    resume_at = start  # the first step not yet applied: where a Ctrl-C continues
    try:
        for step, batch in bar:
            stage = sched.stage_at(step)
            if step > 0 and stage != sched.stage_at(step - 1):  # a curriculum switch: checkpoint first
                if main_rank:
                    save_policy(policy, os.path.join(cfg.out_dir, f"policy_stage{stage - 1}"))
            hr, lr, gen = to_device(batch, step, cfg, rank, dev)
            logged = step % cfg.log_every == 0 or step == cfg.steps - 1
            probe = step == 0 and cfg.algo == "pg"  # once per run: each DDIM step's share of the gradient
            stats, sr = rl_update(
                policy, ref, source, rms, sched, opt, hr, lr, gen, step, cfg, update, log=logged, probe=probe
            )
            share = stats.pop("grad_share", None)  # [(gradient norm, σ) per DDIM step] on the probe step
            if share:
                share = [(n / sum(n for n, _ in share), sd) for n, sd in share]
                if main_rank:
                    print(
                        "gradient-norm share per DDIM step (its σ; * = below the floor, never trained): "
                        + "  ".join(
                            f"{n:.3f} ({sd:.2f}{'*' if sd < cfg.sigma_min else ''})" for n, sd in share
                        )
                    )

            # The host sync of the step (plus one per extra PPO pass): is it finite? (and the log row)
            finite = bool(torch.isfinite(stats["loss"]) & torch.isfinite(stats["grad_norm"]))
            cause = "lower --lr or raise --grad_clip"
            if not finite and not torch.isfinite(stats["reward"]):  # the reward itself: blame its source
                cause = f"the reward is not finite: check --reward={cfg.reward} (--rm_dir={cfg.rm_dir})"
            if not nan.ok(finite, step, cause):
                resume_at = step + 1
                continue
            opt.step()
            resume_at = step + 1
            if coevo is not None and coevo.due(step):  # the active RM stage learns from this rollout
                G = cfg.group if cfg.algo == "pg" else 1  # pg's samples come in groups of one LR
                k = sched.at(step)[-1][0]  # the stage the curriculum is at or blending into
                if main_rank:  # rank 0 refreshes (no collectives inside), then every rank gets its weights
                    coevo.step(step, k, sr, hr.repeat_interleave(G, 0), G)
                coevo.rms[k] = config.broadcast_module(coevo.rms[k])
                source = make_source(cfg.reward, coevo.rms, cfg)
            if cfg.switch == "plateau":
                sched.update(step, float(stats["reward"]))
            if logged:
                w = sched.at(step)
                row = {
                    "step": step,
                    "phase": "rl",
                    "stage": stage,
                    "blend": w[-1][1],
                    "weights": w,
                    **{k: float(v) for k, v in stats.items()},
                    **(
                        {"grad_share": [n for n, _ in share], "step_std": [sd for _, sd in share]}
                        if share
                        else {}
                    ),
                }
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(
                    stage=stage,
                    r=f"{row['reward']:.3f}",
                    rN=f"{row['reward_final']:.3f}",
                    gold=f"{row['gold']:.3f}",
                )
            if (step + 1) % cfg.ckpt_every == 0:
                save_state(step + 1)
    except KeyboardInterrupt:
        save_state(resume_at)
        log.close()
        raise SystemExit(f"interrupted at RL step {resume_at}: state saved; continue with --resume") from None
    log.close()
    nan.done()  # the run ended on non-finite steps: a failed run (exit non-zero), no final checkpoint
    if main_rank:
        save_policy(policy, os.path.join(cfg.out_dir, f"policy_stage{sched.stage_at(cfg.steps - 1)}"))
        save_policy(policy, os.path.join(cfg.out_dir, "policy_final"))
        for k, r in enumerate(coevo.rms if coevo else []):  # the co-evolved stages, beside the policy
            save_rm(r, os.path.join(cfg.out_dir, "rm_coevolved", f"rm_stage{k}"))
        save_state(cfg.steps)
        s = summary(os.path.join(cfg.out_dir, "metrics.jsonl"))
        if s and cfg.steps > start:
            print(
                "first → last 10 % of RL steps:  "
                + "  ".join(f"{k} {a:.3f} → {b:.3f}" for k, (a, b) in s.items())
                + "  (gold: lower is better)"
            )
    config.barrier()  # nobody leaves before rank 0 has written the final checkpoints
    config.teardown()
    return cfg.out_dir


if __name__ == "__main__":
    main(config.parse(Config, presets=PRESETS))
