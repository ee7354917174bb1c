"""Train the reward model FinPercep-RM stage by stage: RM_0 (global IQA) → RM_1 → … → RM_N.

    python train_rm.py                                  # CPU defaults: RM_1 … RM_N on the shipped base
    python train_rm.py --base=none --preset=scratch     # RM_0 too, from nothing (the pre-base recipe)
    python train_rm.py --preset=pretrain --out_dir=out/base   # the base itself (weights/rm_base: ~1 h)
    python train_rm.py --policy=out/rl/policy_sft       # + the SFT policy's own samples in the SR zoo
    python train_rm.py --backbone=clip:DIR --preset=scratch   # on a frozen local CLIP's layers (backbone.py)
    python train_rm.py --device=cuda --preset=gpu       # a real run on one GPU
    torchrun --standalone --nproc_per_node=8 train_rm.py --preset=gpu    # 8 GPUs (DDP; effective batch ×8)
    python train_rm.py --resume                         # continue an interrupted run in --out_dir

What happens (docs/method.md §2, §3, §5):
1. RM_0, a plain global IQA (encoder + score head, no decoder), learns to rank FGR triplets
   (S_SR < S_syn < S_GT, L_rank) and to regress the gold global quality 1 − mean(label map) (L_gold, ours:
   ranking alone fixes the order, not the scale). As the paper starts from a pretrained IQA network, a run
   starts from the shipped base, weights/rm_base (every stage, trained once by --preset=pretrain); its RM_0 is
   S_base, L_align's frozen anchor. (--base=none: from scratch.)
2. RM_k (k ≥ 1) is grown from RM_{k−1} (progressive parameter expansion: one finer decoder level, function-
   preserving at creation; with a base, it is the base's RM_k) and trained with L_map + L_rank + L_align
   (+ L_gold) on harder triplets — smaller regions, subtler artifacts — as curriculum.rm_difficulty(k) says.
3. After each stage, one validation table on a fixed held-out set (held-out photos, fixed difficulty, the
   same set for every stage, so rows compare).
Writes out_dir/rm_stage{k}/ for every k, metrics.jsonl (phase "rm"), config.json, state.pt (resume).
"""

import copy
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import backbone
import config
import data
import images
import rm
import rundir
import scale
import validation
from curriculum import rm_difficulty


@dataclass
class Config:
    out_dir: str = "out/rm"  # rm_stage{k}/, metrics.jsonl, config.json, state.pt land here
    data: str = "builtin"  # builtin (skimage photos + procedural) | an HR folder | paired:LR,HR (HR side)
    policy: str = ""  # policy dir(s), comma-separated: their samples join the zoo and L_group (policy_bank)
    seed: int = 0  # one seed for data, init and validation set: runs are reproducible
    device: str = "auto"  # auto = cuda when present
    preset: str = "cpu"  # cpu | gpu | scratch | pretrain: named defaults below
    resume: bool = False  # continue from out_dir/state.pt
    # The pretrained base: a train_rm out_dir whose stages this run's start from (its RM_0 is S_base).
    base: str = "weights/rm_base"  # none = from scratch; a relative path missing here is read from the repo
    # The encoder: the RM's own convs, or a frozen local CLIPVisionModel's layers (backbone.py): no base.
    backbone: str = "conv"  # conv | clip:DIR, a local CLIP snapshot (needs --base=none: --preset=scratch)
    n_stages: int = 3  # N: RM_0 … RM_N; each later stage adds one finer decoder level
    widths: tuple = (12, 24, 48, 96)  # encoder widths (stem + N levels); total stride 2**N = 8
    crop: int = 64  # HR crop size (the acceptance checks use 64×64)
    batch: int = 16  # triplets per step: 3 × batch images per forward
    # Steps per stage RM_0 … RM_N. RM_0 is the shipped base (0 steps on top of it); the last stage gets the
    # most, since its full-resolution map is what RL reads and the middle stages only pass on a coarser map.
    stage_steps: tuple = (0, 60, 60, 200)  # AdamW steps of RM_0 … RM_N
    # Crop augmentation (images.ImagePool.augment); off by default: within seed noise (docs/experiments.md).
    augment: float = 0.0  # crop zoom-out by up to 1 + augment, flips, channel order; 0 = off
    p_classical: float = 0.5  # share of classical upsamples (bicubic …) among I_SR: "blur is a defect"
    lr: float = 2e-3  # AdamW; small conv nets on tiny images tolerate a large rate
    weight_decay: float = 1e-4  # AdamW's; mild
    lam_map: float = 1.0  # λ_map (docs/method.md §3)
    lam_rank: float = 1.0  # λ_rank
    lam_align: float = 1.0  # λ_align: S_GT pinned to frozen RM_0 so the score scale is shared by all stages
    lam_gold: float = 1.0  # λ_gold [ours]: regression to the gold quality; RM_0's only source of scale
    # λ_group [ours]: rank G samples of one LR by gold (rm.group_loss); 0.3, not 1: at 1 the policy samples
    # crowded out the zoo (docs/experiments.md, "The reward model's levers").
    lam_group: float = rm.LAM_GROUP  # λ_group: same-LR ranking of policy samples; needs --policy
    # --- the policy bank (with --policy): samples of the policy RL starts from and of drifted copies of it
    bank: int = 64  # LR crops in the bank; × bank_group samples each (made once, ~20 s on 2 CPU cores)
    bank_group: int = 4  # G: samples per LR, as RL's group
    drifts: tuple = (0, 5, 10, 20)  # Adam steps of random-objective drift per policy copy (0 = as given)
    drift_lr: float = 1e-3  # drift's Adam rate: 10× RL's, so 5–20 steps show what a drifting RL run paints
    bank_groups: int = 2  # bank groups per RM step, beside `batch` zoo triplets
    m1: float = 0.05  # margin S_syn − S_SR
    m2: float = 0.05  # margin S_GT − S_syn
    bce: float = 0.25  # BCE term beside the paper's L1 map loss (rm.map_loss says why)
    val_n: int = 96  # held-out triplets for the per-stage table (same set every stage)
    log_every: int = 10  # steps between metrics.jsonl rows (a host sync each)
    ckpt_every: int = 10  # steps between resume states (state.pt): a kill -9 loses at most this many
    amp: str = "fp32"  # fp32 | bf16: autocast of the RM forward (the losses reduce in fp32)
    channels_last: bool = False  # NHWC memory format: faster convolutions on tensor cores
    tf32: bool = False  # CUDA: TF32 matmuls/convolutions and cuDNN autotuning (process-wide once set)
    compile: bool = False  # torch.compile of the RM forward, static shapes (scale.compile_module)

    def __post_init__(self):  # every flag value is checked where it is parsed: a one-line error each
        c = config
        stride = math.lcm(data.SCALE, 2**self.n_stages)  # LR = crop / 4, and the RM's total stride
        n = self.n_stages + 1
        c.check(
            self,
            n_stages=c.at_least(1), crop=c.multiple_of(stride), batch=c.at_least(1), lr=c.POSITIVE,
            stage_steps=((lambda v: len(v) == n and min(v) >= 0), f"give {n} step counts ≥ 0 (RM_0 … RM_N)"),
            widths=((lambda v: len(v) == n and min(v) >= 1), f"give {n} widths ≥ 1 (stem + one per stage)"),
            augment=c.at_least(0), p_classical=c.UNIT, val_n=c.at_least(1), log_every=c.at_least(1),
            ckpt_every=c.at_least(1), bank=c.at_least(1), bank_group=c.at_least(2), bank_groups=c.at_least(0),
            drift_lr=c.POSITIVE, amp=c.one_of("fp32", "bf16"),
        )  # fmt: skip


# GPU presets (train_rl's of the same names): gpu for a run of minutes, gpu_full at 256² (the RL policy's
# output size) with a 2.7M-param RM; bf16 autocast, channels_last, TF32.
FAST = {"amp": "bf16", "channels_last": True, "tf32": True}
# scratch: the recipe before the base (~3 min). pretrain: the base, 50× scratch's RM_0 steps, 10–13× its later
# stages', on augmented crops (how and how long: weights/rm_base/rm_stage*/rm.json). GPU presets: no base.
PRESETS = {
    "cpu": {},
    "scratch": {"base": "none", "stage_steps": (120, 60, 60, 150)},
    "pretrain": {"base": "none", "stage_steps": (6000, 600, 600, 2000), "augment": 0.5, "val_n": 384},
    "gpu": {**FAST, "base": "none", "crop": 128, "batch": 32, "stage_steps": (300, 150, 150, 400),
            "widths": (32, 64, 128, 192), "val_n": 128},
    "gpu_full": {**FAST, "base": "none", "crop": 256, "batch": 32, "stage_steps": (600, 400, 400, 1000),
                 "widths": (48, 96, 192, 256), "val_n": 256},
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Training: RM_0, then grow and train each next stage (docs/method.md §3, §5)


def main(cfg: Config) -> str:
    dev = scale.setup(cfg.device)  # + the process group under torchrun (docs/scaling.md)
    main_rank, rank, amp = scale.is_main(), scale.rank(), scale.amp_dtype(cfg.amp)
    scale.fast_math(dev, cfg.tf32)
    #### INPUTS first — the base, data, held-out set, policy samples, resume state — so a run that fails on
    #### them leaves whatever is in out_dir untouched; only then the log (rundir.open_log).
    base = load_base(cfg, dev)  # S_base: the frozen base, L_align's anchor (docs/method.md §3); None: here
    pool = images.load_pool(cfg.data, "train", cfg.crop)
    pool.augment = cfg.augment  # the RM's crops only: SFT and RL draw theirs from pools of their own
    v = validation.make_val_set(cfg.data, cfg.val_n, cfg.crop, cfg.seed) if main_rank else None
    hooks, bank = policy_samples(cfg, pool, v, dev) if cfg.policy else (None, None)
    st = rundir.resume_state(cfg)
    start_stage, start_step = (int(st["stage"]), int(st["step"])) if st else (0, 0)
    rows = json.loads(st["rows"]) if st else []  # the validation rows of the stages already done
    log = rundir.open_log(cfg, "train_rm", resume_filter(st))
    print(f"resuming at stage {start_stage}, step {start_step}") if st and main_rank else None
    #### MODEL: RM_0 = a trainable copy of the base's, or from a seed of its own (the same on every rank)
    torch.manual_seed(config.seed("rm/init", cfg.seed))
    if base is not None:
        model = copy.deepcopy(base).requires_grad_(True)
    else:
        model = rm.FinPercepRM(rm.RMConfig(cfg.widths, cfg.n_stages, 0, backbone=cfg.backbone)).to(dev)
    nan, t0, commit = rundir.NanGuard("train_rm"), time.time(), rundir.git_commit()  # the run's code
    opt, stage, resume_at = None, start_stage, start_step  # where a Ctrl-C would continue from
    save = lambda: rundir.save_state(cfg.out_dir, stage=stage, step=resume_at, rows=json.dumps(rows),
                                     **({"model": model, "opt": opt} if opt is not None else {}))  # fmt: skip
    with rundir.saved_on_interrupt(save, lambda: f"RM_{stage} step {resume_at}"):
        for stage in range(start_stage, cfg.n_stages + 1):
            #### GROWTH: RM_k from RM_{k-1}, one finer decoder level, function-preserving (docs/method.md §5)
            if stage > 0:  # (or the base's own RM_k, when it has one: grown when the base was pretrained)
                base = base or rm.freeze(rm.load_rm(os.path.join(cfg.out_dir, "rm_stage0"), dev))
                pre = os.path.join(base_dir(cfg), f"rm_stage{stage}") if cfg.base != "none" else ""
                prev = os.path.join(cfg.out_dir, f"rm_stage{stage - 1}")
                model = rm.load_rm(pre, dev) if os.path.isdir(pre) else rm.grow(rm.load_rm(prev, dev))
                model = model.to(dev)
            if cfg.channels_last:  # NHWC: faster convolutions on tensor cores
                model.to(memory_format=torch.channels_last)
            scale.compile_module(model.train(), dev, cfg.compile)
            opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    fused=dev.type == "cuda")  # fmt: skip
            first = resume_at = start_step if stage == start_stage else 0
            if first > 0:  # resuming inside this stage: its weights and optimiser moments come from state.pt
                model.load_state_dict(st["model"])
                opt.load_state_dict(st["opt"])
            # The stage's budget and data: later stages see smaller regions and subtler artifacts.
            n_steps, diff = cfg.stage_steps[stage], rm_difficulty(stage, cfg.n_stages)
            net = scale.ddp(model, dev)  # the losses run through DDP under torchrun (gradient averaging)

            #### BATCH: FGR triplets from (seed, stage, step, rank) alone: every rank draws other data, and
            #### --resume continues the same streams with no stored generator state. The step's generator
            #### comes along: the losses go on drawing from it (L_group's groups).
            def draw(step, stage=stage, diff=diff):
                g = config.generator("rm/draw", cfg.seed, stage, step, rank)
                return g, data.fgr_batch(pool, cfg.batch, cfg.crop, diff, g, hooks, dev,
                                         p_classical=cfg.p_classical)  # fmt: skip

            bar = tqdm(scale.prefetch(draw, range(first, n_steps), dev.type == "cuda"), initial=first,
                       desc=f"RM_{stage} ({rm.n_params(model) / 1e6:.2f}M)", total=n_steps, leave=False,
                       disable=not main_rank)  # fmt: skip
            for step, (g, batch) in bar:
                # Cosine decay within a stage: each stage starts from a function-preserving copy and settles.
                for group in opt.param_groups:
                    group["lr"] = config.cosine_lr(cfg.lr, step, n_steps)
                with scale.autocast(dev, amp):  # bf16 forward with --amp=bf16; backward follows its dtypes
                    loss, parts = losses(net, batch, base, bank, stage, cfg, diff.area, g)
                #### STEP: the step's host sync — a non-finite loss or gradient skips it (rundir.NanGuard)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                if nan.ok(
                    bool(torch.isfinite(loss) & torch.isfinite(gnorm)), step, "lower --lr or check --data"
                ):
                    opt.step()
                #### LOG every log_every steps (the effective batch's losses); a resume point every ckpt_every
                if step % cfg.log_every == 0 or step == n_steps - 1:
                    parts = {k: float(x) for k, x in scale.mean_over_ranks(parts).items()}
                    log.write(json.dumps({"step": step, "phase": "rm", "stage": stage, **parts}) + "\n")
                    log.flush()
                    bar.set_postfix({k: f"{parts[k]:.3f}" for k in ("total", "rank", "map")})
                resume_at = step + 1
                if resume_at % cfg.ckpt_every == 0 and resume_at < n_steps:
                    save()
            nan.done()  # the stage ended on non-finite steps: a failed run (exit non-zero), nothing saved
            #### STAGE DONE: rank 0 validates and saves RM_k; the others wait for it before growing it
            if main_rank:
                finish_stage(cfg, model.eval(), v, stage, n_steps, rows, log, t0, commit)
            scale.barrier()
    log.close()
    scale.teardown()
    return cfg.out_dir


def finish_stage(cfg, model, v, stage: int, n_steps: int, rows: list, log, t0: float, commit: str) -> None:
    """RM_k done: validate it on the held-out set (the last stage also split by zoo member: which artifacts it
    is blind to), save it with the crop it learned on (evaluate's score tiles at it) and what made it, log the
    row, mark the stage boundary in state.pt, print the table."""
    name = data.member_name if stage == cfg.n_stages else None
    r = {"stage": stage, **validation.validate(model, v, member_name=name)}
    members = r.pop("members", None)  # beside the row, not in it: the table's rows stay flat
    made_by = validation.provenance(model, r, t0, commit)  # command, commit, time, held-out numbers
    extra = {"trained_steps": n_steps, "crop": cfg.crop, "made_by": made_by}
    rm.save_rm(model, os.path.join(cfg.out_dir, f"rm_stage{stage}"), extra)
    rows.append(r)
    row = {"step": n_steps, "phase": "rm", "stage": stage, "val": r}
    log.write(json.dumps({**row, **({"val_members": members} if members else {})}) + "\n")
    log.flush()
    rundir.save_state(cfg.out_dir, stage=stage + 1, step=0, rows=json.dumps(rows))  # weights: rm_stage{k}/
    print(f"RM_{stage} done ({time.time() - t0:.0f}s)\n" + validation.format_table(rows))
    if members:
        print(f"RM_{stage} by zoo member ({cfg.val_n} held-out triplets; few per member, so noisy:"
              f" raise --val_n for a firmer split)\n" + validation.format_members(members))  # fmt: skip


def policy_samples(cfg, pool, v, dev):
    """--policy: (the SR-zoo hook that samples the policies, the bank of groups for L_group); on rank 0 also a
    held-out bank in v for the validation table (v["policy"])."""
    from policy import load_policy  # here: train_rm needs diffusers only with --policy

    # The given policies (e.g. the SFT policy, RL checkpoints) and drifted copies of the first (drift()):
    # drifts are Adam steps per copy, a 0 among them keeps the given ones.
    given = [load_policy(d, dev) for d in cfg.policy.split(",") if d]
    g = config.generator("rm/policies", cfg.seed)
    drifted = [drift(given[0], k, cfg.drift_lr, pool, cfg.crop, g) for k in cfg.drifts if k > 0]
    pols = (given if 0 in cfg.drifts else []) + drifted or given
    bank = policy_bank(pols, pool, cfg.bank, cfg.bank_group, cfg.crop, config.generator("rm/bank", cfg.seed))
    if v is not None:
        g, held = config.generator("rm/val_bank", cfg.seed), images.heldout_pool(cfg.data, cfg.crop)
        v["policy"] = policy_bank(pols, held, 16, cfg.bank_group, cfg.crop, g)
    return [policy_member(pols)], bank


# ----------------------------------------------------------------------------------------------------
# Resume, at the edges: state.pt holds where to go on (stage, step), the finished stages' validation rows,
# and — inside a stage — its weights and AdamW moments (the finished stages' weights are in rm_stage{k}/).


def resume_filter(st):
    """The log rows a resume keeps: a finished stage's all (its validation row too), the resumed stage's
    before the resumed step (a kill -9 leaves more); None: a fresh run."""
    if not st:
        return None
    at_stage, at_step = int(st["stage"]), int(st["step"])
    return lambda r: (
        r["stage"] < at_stage or (r["stage"] == at_stage and r["step"] < at_step and "val" not in r)
    )


def base_dir(cfg) -> str:
    """--base as a path: one that does not exist from here is read from the repository, so the shipped
    weights/rm_base is found from any working directory."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), cfg.base)
    return cfg.base if os.path.isabs(cfg.base) or os.path.exists(cfg.base) else here


def load_base(cfg, dev):
    """The base's RM_0, frozen: S_base (None for --base=none, when RM_0 is trained here and becomes it)."""
    if backbone.check(cfg.backbone) and cfg.base != "none":  # the shipped base has the conv encoder
        raise config.ConfigError(f"--backbone={cfg.backbone} has no pretrained base: pass --base=none"
                                 " (and RM_0 steps, e.g. --preset=scratch)")  # fmt: skip
    if cfg.base == "none":
        if cfg.stage_steps[0] == 0:
            raise config.ConfigError("--base=none trains RM_0 here: give it steps, e.g. --preset=scratch")
        return None
    if not os.path.isdir(os.path.join(base_dir(cfg), "rm_stage0")):
        raise config.ConfigError(f"--base={cfg.base} holds no rm_stage0/: pass a train_rm out_dir, or none")
    base = rm.freeze(rm.load_rm(os.path.join(base_dir(cfg), "rm_stage0"), dev))
    want = (tuple(cfg.widths), cfg.n_stages)
    if base.stage != 0 or (base.cfg.widths, base.n_stages) != want:
        got = f"an RM_{base.stage} with widths {base.cfg.widths}, n_stages {base.n_stages}"
        raise config.ConfigError(f"--base={cfg.base} is {got}; this run wants an RM_0 with widths {want[0]},"
                                 f" n_stages {want[1]}: pass matching --widths or --base=none")  # fmt: skip
    return base


def losses(net, batch, base, bank, stage: int, cfg, area: float, g):
    """(loss, parts) of one step: L_map + L_rank + L_align + L_gold (docs/method.md §3, rm.rm_losses); with
    a policy bank also L_group on bank_groups groups of one LR (rm.group_loss), in a forward of its own."""
    lam = dict(lam_map=cfg.lam_map, lam_rank=cfg.lam_rank, lam_gold=cfg.lam_gold, lam_group=cfg.lam_group)
    lam["lam_align"] = cfg.lam_align if stage else 0.0  # RM_0 is the anchor itself
    loss, parts = rm.rm_losses(net, batch, base, **lam, m1=cfg.m1, m2=cfg.m2, bce=cfg.bce)
    if bank is not None and cfg.lam_group > 0:
        # A forward of its own: the bank's samples as extra triplets in the zoo's batch broke RM_0's score
        # (docs/experiments.md, "The reward model's levers").
        gb = data.group_triplets(bank, cfg.bank_groups, area, g)
        out = net(gb["sr"], full=True)
        ls, lm = rm.group_loss(out["score"], out["logits"], gb["gold_sr"], gb["dmap_sr"], gb["group"])
        parts["group"] = (rm.GROUP_SCORE * ls + lm).detach()
        loss = loss + cfg.lam_group * (rm.GROUP_SCORE * ls + lm)
    return loss, parts


# ----------------------------------------------------------------------------------------------------
# Policy samples: what RL will paint, before RL paints it (docs/method.md "The RM must see what RL paints")


def drift(policy, steps: int, lr: float, pool, crop: int, g: torch.Generator):
    """A copy of `policy` after `steps` Adam steps on a random objective −mean(R ⊙ f_θ(x_t, t)), R ~ N(0, 1)
    drawn afresh each step: a random walk in the directions that change the output, the way noisy RL updates
    move a policy (the placebo arm is exactly that). Within 5–20 steps at lr 1e-3 the samples show what RL
    arms painted here: magenta/green speckle, stripes, colour blotches (i.i.d. weight noise does not)."""
    pol = copy.deepcopy(policy).train()
    opt = torch.optim.Adam(pol.unet.parameters(), lr=lr)
    for _ in range(steps):  # each step: a noisy input as in SFT, and a fresh random direction to push it
        hr, lr_img = pool.pairs(4, crop, g)
        x0 = pol.space.encode(hr, lr_img)
        t = torch.randint(0, pol.cfg.num_train_timesteps, (len(x0),), generator=g)
        abar = pol.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(x0.shape, generator=g)  # DDPM eq. 4
        out = pol.net(torch.cat([x_t, pol.space.condition(lr_img)], 1), t)
        loss = -(torch.randn(out.shape, generator=g) * out).mean()  # a random direction in output space
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return pol.eval()


@torch.no_grad()
def policy_groups(policy, hr: torch.Tensor, lr: torch.Tensor, G: int, g: torch.Generator) -> dict:
    """G samples of each LR (the comparison RL's advantage makes), at the K and eta the policy was trained to
    sample with (its policy.json: RL's), labelled against HR: sr (n·G, 3, S, S) with each LR's samples
    adjacent, hr (n·G, …) matching, dmap (n·G, 1, S, S) label maps, gold (n·G,) = 1 − mean map."""
    dev = next(policy.parameters()).device
    # G copies of each LR, adjacent (the layout of an RL group), one seeded generator for all their noise.
    lr_g, hr_g = lr.repeat_interleave(G, 0).to(dev), hr.repeat_interleave(G, 0).to(dev)
    gen = torch.Generator(dev).manual_seed(int(torch.randint(2**62, (), generator=g)))
    return data.labelled_groups(policy.upscale(lr_g, generator=gen), hr_g, G)


def policy_member(pols: list):
    """The SR-zoo hook (data.sr_zoo): a sample of one of the policies, at the K and eta each was trained to
    sample with (RL's), for the zoo's own HR crops, as FGR-30k uses several diffusion SR models' outputs."""

    @torch.no_grad()
    def member(hr, lr, strength, g):
        pol = pols[int(torch.randint(len(pols), (), generator=g))]
        gen = torch.Generator(lr.device).manual_seed(int(torch.randint(2**62, (), generator=g)))
        return pol.upscale(lr, generator=gen)

    return member


def policy_bank(pols: list, pool, n: int, G: int, crop: int, g):
    """Policy samples in groups for L_group, made once (sampling G per LR inside every RM step would cost
    more than the step): n LR crops × G samples, the crops spread evenly over the policies."""
    # LR degraded as RL sees it (strength in [0, 0.5], four levels per bank), then each policy its share.
    hr, lr = pool.pairs(n, crop, g, lambda: 0.5 * float(torch.rand((), generator=g)), groups=4)
    parts = [
        policy_groups(pols[i % len(pols)], hr[i :: len(pols)], lr[i :: len(pols)], G, g)
        for i in range(len(pols))
    ]
    return {k: torch.cat([p[k] for p in parts]) if k != "G" else G for k in parts[0]}


if __name__ == "__main__":
    main(config.parse(Config, presets=PRESETS))
