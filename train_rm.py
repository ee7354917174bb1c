"""Train the reward model FinPercep-RM stage by stage: RM_0 (global IQA) → RM_1 → … → RM_N.

    python train_rm.py                                  # CPU defaults, built-in photos, ~3 minutes
    python train_rm.py --policy=out/rl/policy_sft       # + the SFT policy's own samples in the SR zoo
    python train_rm.py --device=cuda --preset=gpu       # a real run on one GPU
    torchrun --standalone --nproc_per_node=8 train_rm.py --preset=gpu    # 8 GPUs (DDP; effective batch ×8)
    python train_rm.py --resume                         # continue an interrupted run in --out_dir

What happens (method.md §2, §3, §5):
1. RM_0, a plain global IQA (encoder + score head, no decoder), learns to rank FGR triplets
   (S_SR < S_syn < S_GT, L_rank) and to regress the gold global quality 1 − mean(label map) (L_gold, ours:
   ranking alone fixes the order, not the scale). It becomes S_base, the frozen anchor of L_align.
2. RM_k (k ≥ 1) is grown from RM_{k−1} (progressive parameter expansion: one finer decoder level, function-
   preserving at creation) and trained with L_map + L_rank + L_align (+ L_gold) on harder triplets — smaller
   regions, subtler artifacts — as curriculum.py's rm_difficulty(k) says.
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

import config
import data
from curriculum import rm_difficulty, val_difficulty
from metrics import label_map
from rm import GROUP_SCORE, RMConfig, freeze, group_loss, grow, load_rm, make_rm, n_params, rm_losses, save_rm


@dataclass
class Config:
    out_dir: str = "out/rm"  # rm_stage{k}/, metrics.jsonl, config.json, state.pt land here
    data: str = "builtin"  # builtin (skimage photos + procedural) | an HR folder | paired:LR,HR (HR side)
    policy: str = ""  # policy dir(s), comma-separated: their samples join the zoo and L_group (policy_bank)
    seed: int = 0  # one seed for data, init and validation set: runs are reproducible
    device: str = "auto"  # auto = cuda when present
    preset: str = "cpu"  # cpu | gpu: named defaults below
    resume: bool = False  # continue from out_dir/state.pt
    n_stages: int = 3  # N: RM_0 … RM_N; each later stage adds one finer decoder level
    widths: tuple = (12, 24, 48, 96)  # encoder widths (stem + N levels); total stride 2**N = 8
    crop: int = 64  # HR crop size (the acceptance checks use 64×64)
    batch: int = 16  # triplets per step: 3 × batch images per forward
    # Steps per stage RM_0 … RM_N. RM_0 (global ranking) anchors every later stage; the last stage gets the
    # most, since its full-resolution map is what RL reads and the middle stages only pass on a coarser map.
    stage_steps: tuple = (120, 60, 60, 150)  # AdamW steps of RM_0 … RM_N
    p_classical: float = 0.5  # share of classical upsamples (bicubic …) among I_SR: "blur is a defect"
    lr: float = 2e-3  # AdamW; small conv nets on tiny images tolerate a large rate
    weight_decay: float = 1e-4  # AdamW's; mild
    lam_map: float = 1.0  # λ_map (method.md §3)
    lam_rank: float = 1.0  # λ_rank
    lam_align: float = 1.0  # λ_align: S_GT pinned to frozen RM_0 so the score scale is shared by all stages
    lam_gold: float = 1.0  # λ_gold [ours]: regression to the gold quality; RM_0's only source of scale
    lam_group: float = 1.0  # λ_group [ours]: rank G samples of one LR by gold (rm.group_loss); needs --policy
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
    compile: bool = False  # torch.compile of the RM forward, static shapes (config.compile_module)

    def __post_init__(self):  # every flag value is checked where it is parsed: a one-line error each
        c = config
        stride = math.lcm(data.SCALE, 2**self.n_stages)  # LR = crop / 4, and the RM's total stride
        n = self.n_stages + 1
        c.check(
            self,
            n_stages=c.at_least(1), crop=c.multiple_of(stride), batch=c.at_least(1), lr=c.POSITIVE,
            stage_steps=((lambda v: len(v) == n and min(v) >= 0), f"give {n} step counts ≥ 0 (RM_0 … RM_N)"),
            widths=((lambda v: len(v) == n and min(v) >= 1), f"give {n} widths ≥ 1 (stem + one per stage)"),
            p_classical=c.UNIT, val_n=c.at_least(1), log_every=c.at_least(1), ckpt_every=c.at_least(1),
            bank=c.at_least(1), bank_group=c.at_least(2), bank_groups=c.at_least(0), drift_lr=c.POSITIVE,
            amp=c.one_of("fp32", "bf16"),
        )  # fmt: skip


PRESETS = {
    "cpu": {},
    # One GPU: 256×256 crops (the RL policy's output size), a 2.7M-param RM, 4× the steps, bf16 autocast.
    "gpu": {
        "crop": 256,
        "batch": 32,
        "stage_steps": (600, 400, 400, 1000),
        "widths": (48, 96, 192, 256),
        "val_n": 256,
        "amp": "bf16",
        "channels_last": True,
        "tf32": True,
    },
}


# ----------------------------------------------------------------------------------------------------
# Validation: the per-stage table (also used by evaluate.py's reward-model table)


def make_val_set(cfg_data: str, n: int, crop: int, seed: int) -> dict:
    """The fixed held-out set: FGR triplets at the curriculum's middle difficulty from held-out photos, their
    clean bicubic ×4 upsamples, and clean images with one small (≤ 5 % area) artifact pasted in."""
    g = config.generator("rm/val", seed)  # its own stream: independent of the training draws
    pool = data.load_pool(cfg_data, "val" if cfg_data == "builtin" else "train", crop)
    v = data.fgr_batch(pool, n, crop, val_difficulty(), g)
    v["bicubic"] = data.upsample(data.degrade(v["gt"], 0.0))  # the classical protocol's LR, ×4 back up
    small = data.random_masks(n, crop, 0.03, g)  # ~3 % of the area, jittered ≤ 4.5 %
    v["small"] = small * v["sr"] + (1 - small) * v["gt"]  # one small artifact in a clean image
    v["dmap_small"] = label_map(v["small"], v["gt"])
    return v


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve by the rank-sum (Mann–Whitney U) formula; ties get their average rank."""
    s, y = scores.flatten().double(), labels.flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = s.argsort()
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=s.dtype)
    uniq, inv, counts = torch.unique(s, return_inverse=True, return_counts=True)
    if len(uniq) < len(s):  # average the ranks of tied values
        sums = torch.zeros(len(uniq), dtype=s.dtype).scatter_add_(0, inv, ranks)
        ranks = (sums / counts)[inv]
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation (no tie correction: scores are continuous)."""
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def group_spearman(a: torch.Tensor, b: torch.Tensor, G: int) -> float:
    """Mean over groups of G adjacent entries of the Spearman correlation of a and b inside each group: does
    the RM order the samples of one LR as gold does (what the RL advantage depends on)?"""
    ra = a.view(-1, G).argsort(1).argsort(1).double()
    rb = b.view(-1, G).argsort(1).argsort(1).double()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)).mean())


@torch.no_grad()
def policy_metrics(model, groups: dict, batch: int = 64) -> dict:
    """On policy samples in groups (policy_groups): pol_auroc, the map's AUROC against the gold map (> 0.1),
    and pol_rank, the within-group rank correlation of the score with gold quality; None where not defined."""
    p = next(model.parameters())
    outs = [model(x.to(p.device)) for x in groups["sr"].split(batch)]
    score = torch.cat([o[0] for o in outs]).cpu()
    dmap = None if outs[0][1] is None else torch.cat([o[1] for o in outs]).cpu()
    return {
        "pol_auroc": None if dmap is None else auroc(dmap, groups["dmap"].cpu() > 0.1),
        "pol_rank": group_spearman(score, groups["gold"].cpu(), groups["G"]),
    }


@torch.no_grad()
def validate(model, v: dict, batch: int = 64) -> dict:
    """The per-stage numbers of the issue, on the fixed set v. Map metrics are None at stage 0 (no map)."""
    p = next(model.parameters())
    run = lambda x: [t for t in zip(*(model(c.to(p.device)) for c in x.split(batch)))]  # noqa: E731
    out = {}
    for k in ("gt", "syn", "sr", "bicubic", "small"):
        s, m = run(v[k])
        out[k] = (torch.cat(s).cpu(), None if m[0] is None else torch.cat(m).cpu())
    (s_gt, m_gt), (s_syn, m_syn), (s_sr, m_sr) = out["gt"], out["syn"], out["sr"]
    if not all(torch.isfinite(s).all() for s, _ in out.values()):  # a NaN model gives no valid table
        raise SystemExit("error: the reward model gives non-finite scores on the held-out set; lower --lr")
    gold = torch.cat([v["gold_gt"], v["gold_syn"], v["gold_sr"]]).cpu()
    clean_std = s_gt.std().clamp_min(1e-6)
    r = {
        "triplet_acc": float(((s_sr < s_syn) & (s_syn < s_gt)).float().mean()),
        "spearman": spearman(torch.cat([s_gt, s_syn, s_sr]), gold),
        "hr_gt_bicubic": float((s_gt > out["bicubic"][0]).float().mean()),
        # local sensitivity: score drop from one small artifact, in units of the clean-score spread
        "local_sens": float((s_gt - out["small"][0]).mean() / clean_std),
        "map_l1": None,
        "map_auroc": None,
        "clean_map": None,
    }
    if m_syn is not None:
        pred = torch.cat([m_syn, m_sr])
        lab = torch.cat([v["dmap_syn"], v["dmap_sr"]]).cpu()
        r["map_l1"] = float((pred - lab).abs().mean())
        r["map_auroc"] = auroc(pred, lab > 0.1)  # positives: pixels the label function calls degraded
        r["clean_map"] = float(m_gt.mean())  # false alarms on clean HR images
    if "policy" in v:  # held-out policy samples (train_rm --policy): what RL will show this RM
        r.update(policy_metrics(model, v["policy"], batch))
    return r


def format_table(rows: list[dict]) -> str:
    """The per-stage table as fixed-width text (printed by train_rm and evaluate)."""
    cols = [
        "stage",
        "map_auroc",
        "map_l1",
        "triplet_acc",
        "spearman",
        "hr_gt_bicubic",
        "clean_map",
        "local_sens",
        "pol_auroc",
        "pol_rank",
    ]
    f = lambda x: "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    lines = [" ".join(f"{c:>13}" for c in cols)]
    lines += [" ".join(f"{f(r.get(c)):>13}" for c in cols) for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Training


# ----------------------------------------------------------------------------------------------------
# Policy samples: what RL will paint, before RL paints it (method.md "The RM must see what RL paints")


def drift(policy, steps: int, lr: float, pool, crop: int, g: torch.Generator):
    """A copy of `policy` after `steps` Adam steps on a random objective −mean(R ⊙ f_θ(x_t, t)), R ~ N(0, 1)
    drawn afresh each step: a random walk in the directions that change the output, the way noisy RL updates
    move a policy (the placebo arm is exactly that). Within 5–20 steps at lr 1e-3 the samples show what RL
    arms painted here: magenta/green speckle, stripes, colour blotches. (i.i.d. weight noise, the obvious
    alternative, left the samples unchanged even at 20 % of each tensor's std.)"""
    pol = copy.deepcopy(policy).train()
    opt = torch.optim.Adam(pol.unet.parameters(), lr=lr)
    for _ in range(steps):
        hr, lr_img = pool.pairs(4, crop, g)
        x0 = pol.encode(hr, lr_img)
        t = torch.randint(0, pol.cfg.num_train_timesteps, (len(x0),), generator=g)
        abar = pol.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * torch.randn(x0.shape, generator=g)  # DDPM eq. 4
        out = pol.net(torch.cat([x_t, pol.condition(lr_img)], 1), t)
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
    lr_g, hr_g = lr.repeat_interleave(G, 0).to(dev), hr.repeat_interleave(G, 0).to(dev)
    gen = torch.Generator(dev).manual_seed(int(torch.randint(2**62, (), generator=g)))
    sr = policy.upscale(lr_g, generator=gen)
    dmap = label_map(sr, hr_g)
    return {"sr": sr, "hr": hr_g, "dmap": dmap, "gold": 1 - dmap.mean((1, 2, 3)), "G": G}


def policies(policy_dirs: str, drifts: tuple, drift_lr: float, pool, crop: int, g, dev) -> list:
    """The given policies (comma-separated dirs) and drifted copies of the first (drift(): drifts = Adam steps
    per copy; a 0 among them keeps the given ones)."""
    from policy import load_policy  # imported here: train_rm needs no diffusers unless --policy is given

    given = [load_policy(d, dev) for d in policy_dirs.split(",") if d]
    drifted = [drift(given[0], k, drift_lr, pool, crop, g) for k in drifts if k > 0]
    return (given if 0 in drifts else []) + drifted or given


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
    hr, lr = pool.pairs(n, crop, g, lambda: 0.5 * float(torch.rand((), generator=g)), groups=4)
    parts = [
        policy_groups(pols[i % len(pols)], hr[i :: len(pols)], lr[i :: len(pols)], G, g)
        for i in range(len(pols))
    ]
    return {k: torch.cat([p[k] for p in parts]) if k != "G" else G for k in parts[0]}


def main(cfg: Config) -> str:
    dev = config.setup(cfg.device)  # + the process group under torchrun (config.py: DDP)
    main_rank, rank = config.is_main(), config.rank()
    amp = config.amp_dtype(cfg.amp)
    config.fast_math(dev, cfg.tf32)
    # The inputs first — data, held-out set, policy bank, resume state — so a run that fails on them leaves
    # whatever is in out_dir untouched; only then the log (config.open_log).
    pool = data.load_pool(cfg.data, "train", cfg.crop)
    v = make_val_set(cfg.data, cfg.val_n, cfg.crop, cfg.seed) if main_rank else None
    bank, hooks = None, None
    if (
        cfg.policy
    ):  # policy samples: a zoo member, a bank of groups for L_group, a held-out bank for the table
        g = config.generator("rm/policies", cfg.seed)
        pols = policies(cfg.policy, cfg.drifts, cfg.drift_lr, pool, cfg.crop, g, dev)
        hooks = [policy_member(pols)]
        bank = policy_bank(
            pols, pool, cfg.bank, cfg.bank_group, cfg.crop, config.generator("rm/bank", cfg.seed)
        )
        if main_rank:
            g = config.generator("rm/val_bank", cfg.seed)
            val_pool = data.load_pool(cfg.data, "val" if cfg.data == "builtin" else "train", cfg.crop)
            v["policy"] = policy_bank(pols, val_pool, 16, cfg.bank_group, cfg.crop, g)
    st = config.resume_state(cfg)
    start_stage, start_step = (int(st["stage"]), int(st["step"])) if st else (0, 0)
    rows = json.loads(st["rows"]) if st else []
    # On --resume the rows logged past the resumed step (before a kill) are dropped: each step appears once.
    keep = (lambda r: (r["stage"], r["step"]) < (start_stage, start_step) and "val" not in r) if st else None
    if st:  # a stage's own validation row belongs to it, whatever its step
        keep = lambda r, k=keep: r["stage"] < start_stage or k(r)
    log = config.open_log(cfg, "train_rm", keep)
    print(f"resuming at stage {start_stage}, step {start_step}") if st and main_rank else None

    torch.manual_seed(config.seed("rm/init", cfg.seed))  # RM_0's init: the same on every rank, and
    # independent of what loading the inputs drew from the global RNG (diffusers' from_pretrained does)
    model = make_rm(RMConfig(widths=cfg.widths, n_stages=cfg.n_stages, stage=0)).to(dev)
    base = opt = None  # base: S_base = the frozen RM_0, L_align's anchor (method.md §3)
    nan = config.NanGuard("train_rm")
    state_path, t0 = os.path.join(cfg.out_dir, "state.pt"), time.time()
    stage, resume_at = start_stage, start_step  # where a Ctrl-C would continue from

    def save_state(stage, step, model=None, opt=None):  # rank 0 writes; the weights agree on every rank
        if main_rank:
            weights = {"model": model.state_dict(), "opt": opt.state_dict()} if opt is not None else {}
            config.torch_save_atomic(
                {"stage": stage, "step": step, "rows": json.dumps(rows), **weights}, state_path
            )

    try:
        for stage in range(start_stage, cfg.n_stages + 1):
            if stage > 0:
                base = freeze(load_rm(os.path.join(cfg.out_dir, "rm_stage0"), dev))
                model = grow(load_rm(os.path.join(cfg.out_dir, f"rm_stage{stage - 1}"), dev)).to(dev)
            model.train()
            if cfg.channels_last:
                model.to(memory_format=torch.channels_last)
            config.compile_module(model, dev, cfg.compile)
            opt = torch.optim.AdamW(
                model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=dev.type == "cuda"
            )
            first = resume_at = start_step if stage == start_stage else 0
            if first > 0:  # resuming inside this stage: its weights and optimiser moments come from state.pt
                model.load_state_dict(st["model"])
                opt.load_state_dict(st["opt"])
            n_steps = cfg.stage_steps[stage]
            diff = rm_difficulty(stage, cfg.n_stages)
            net = config.ddp(model, dev)  # the losses run through DDP under torchrun (gradient averaging)
            bar = tqdm(range(first, n_steps), desc=f"RM_{stage} ({n_params(model) / 1e6:.2f}M)", leave=False,
                       disable=not main_rank)  # fmt: skip
            for step in bar:
                # Cosine decay within a stage: each stage starts from a function-preserving copy and settles.
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * (0.02 + 0.49 * (1 + math.cos(math.pi * step / n_steps)))
                # This step's triplets from (seed, stage, step, rank) alone: every rank draws different data,
                # and --resume continues the same streams without any stored generator state.
                g = config.generator("rm/draw", cfg.seed, stage, step, rank)
                batch = data.fgr_batch(
                    pool, cfg.batch, cfg.crop, diff, g, hooks, dev, p_classical=cfg.p_classical
                )
                with config.autocast(dev, amp):  # bf16 forward with --amp=bf16; backward follows its dtypes
                    lam = dict(lam_map=cfg.lam_map, lam_rank=cfg.lam_rank, lam_gold=cfg.lam_gold)
                    lam.update(lam_align=cfg.lam_align if stage else 0.0, lam_group=cfg.lam_group)
                    loss, parts = rm_losses(net, batch, base, **lam, m1=cfg.m1, m2=cfg.m2, bce=cfg.bce)
                    if bank is not None and cfg.lam_group > 0:  # L_group: the bank's groups, a forward apart
                        gb = data.group_triplets(bank, cfg.bank_groups, diff.area, g)
                        out = net(gb["sr"], full=True)
                        ls, lm = group_loss(
                            out["score"], out["logits"], gb["gold_sr"], gb["dmap_sr"], gb["group"]
                        )
                        parts["group"] = (GROUP_SCORE * ls + lm).detach()
                        loss = loss + cfg.lam_group * (GROUP_SCORE * ls + lm)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                # The step's host sync: a non-finite loss or gradient skips the update (config.NanGuard).
                if nan.ok(
                    bool(torch.isfinite(loss) & torch.isfinite(gnorm)), step, "lower --lr (or check --data)"
                ):
                    opt.step()
                if step % cfg.log_every == 0 or step == n_steps - 1:
                    parts = config.mean_over_ranks(parts)  # the whole effective batch's losses
                    row = {
                        "step": step,
                        "phase": "rm",
                        "stage": stage,
                        **{k: float(x) for k, x in parts.items()},
                    }
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    bar.set_postfix(
                        loss=f"{row['total']:.3f}", rank=f"{row['rank']:.3f}", map=f"{row['map']:.3f}"
                    )
                resume_at = step + 1
                if resume_at % cfg.ckpt_every == 0 and resume_at < n_steps:  # a resume point inside a stage
                    save_state(stage, resume_at, model, opt)
            nan.done()  # the stage ended on non-finite steps: a failed run (exit non-zero), nothing saved
            if not main_rank:  # rank 0 saves and validates; the others wait for its rm_stage{k}/
                config.barrier()
                continue
            save_rm(
                model,
                os.path.join(cfg.out_dir, f"rm_stage{stage}"),
                {"trained_steps": n_steps, "crop": cfg.crop},
            )
            r = {"stage": stage, **validate(model.eval(), v)}
            rows.append(r)
            log.write(json.dumps({"step": n_steps, "phase": "rm", "stage": stage, "val": r}) + "\n")
            log.flush()
            save_state(
                stage + 1, 0
            )  # a stage boundary: the weights are in rm_stage{k}/, the state says where next
            print(f"RM_{stage} done ({time.time() - t0:.0f}s)\n" + format_table(rows))
            config.barrier()
    except KeyboardInterrupt:
        save_state(stage, resume_at, model, opt)  # the stage's weights and moments, at the first undone step
        log.close()
        raise SystemExit(
            f"interrupted: RM_{stage} at step {resume_at} saved; continue with --resume"
        ) from None
    log.close()
    config.teardown()
    return cfg.out_dir


if __name__ == "__main__":
    main(config.parse(Config, presets=PRESETS))
