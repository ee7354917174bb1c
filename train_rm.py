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
from rm import RMConfig, freeze, grow, load_rm, make_rm, n_params, rm_losses, save_rm


@dataclass
class Config:
    out_dir: str = "out/rm"  # rm_stage{k}/, metrics.jsonl, config.json, state.pt land here
    data: str = "builtin"  # builtin (skimage photos + procedural) | an HR folder | paired:LR,HR (HR side)
    policy: str = ""  # a policy directory: its samples join the SR zoo (the paper's diffusion-SR outputs)
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
    stage_steps: tuple = (120, 60, 60, 150)
    p_classical: float = 0.5  # share of classical upsamples (bicubic …) among I_SR: "blur is a defect"
    lr: float = 2e-3  # AdamW; small conv nets on tiny images tolerate a large rate
    weight_decay: float = 1e-4
    lam_map: float = 1.0  # λ_map (method.md §3)
    lam_rank: float = 1.0  # λ_rank
    lam_align: float = 1.0  # λ_align: S_GT pinned to frozen RM_0 so the score scale is shared by all stages
    lam_gold: float = 1.0  # λ_gold [ours]: regression to the gold quality; RM_0's only source of scale
    m1: float = 0.05  # margin S_syn − S_SR
    m2: float = 0.05  # margin S_GT − S_syn
    bce: float = 0.25  # BCE term beside the paper's L1 map loss (rm.map_loss says why)
    val_n: int = 96  # held-out triplets for the per-stage table (same set every stage)
    log_every: int = 10  # steps between metrics.jsonl rows (a host sync each)
    amp: str = "fp32"  # fp32 | bf16: autocast of the RM forward (the losses reduce in fp32)
    channels_last: bool = False  # NHWC memory format: faster convolutions on tensor cores
    tf32: bool = False  # CUDA: TF32 matmuls/convolutions and cuDNN autotuning (process-wide once set)


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
    ]
    f = lambda x: "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    lines = [" ".join(f"{c:>13}" for c in cols)]
    lines += [" ".join(f"{f(r.get(c)):>13}" for c in cols) for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Training


def policy_zoo_member(policy_dir: str, device):
    """The SR-zoo hook (data.sr_zoo): samples of a trained diffusion policy as one more "SR model", at
    several step counts and eta values, as FGR-30k uses several diffusion SR models' outputs (§2)."""
    from policy import load_policy  # imported here: train_rm needs no diffusers unless --policy is given

    pol = load_policy(policy_dir, device=device)
    settings = [(4, 1.0), (10, 1.0), (10, 0.5), (20, 0.0)]  # (DDIM steps, eta): fast/noisy … slow/determ.

    @torch.no_grad()
    def member(hr, lr, strength, g):
        steps, eta = settings[int(torch.randint(len(settings), (), generator=g))]
        gen = torch.Generator(device=lr.device).manual_seed(int(torch.randint(2**31, (), generator=g)))
        return pol.upscale(lr, steps=steps, eta=eta, generator=gen)

    return member


def main(cfg: Config) -> str:
    dev = config.setup(cfg.device)  # + the process group under torchrun (config.py: DDP)
    main_rank, rank = config.is_main(), config.rank()
    amp = config.amp_dtype(cfg.amp)
    config.fast_math(dev, cfg.tf32)
    if len(cfg.stage_steps) != cfg.n_stages + 1:
        raise config.ConfigError(f"--stage_steps needs {cfg.n_stages + 1} numbers (RM_0 … RM_{cfg.n_stages})")
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    if main_rank:
        os.makedirs(cfg.out_dir, exist_ok=True)
        config.save_config(cfg, cfg.out_dir)
    state_path = os.path.join(cfg.out_dir, "state.pt")
    # Only rank 0 logs, validates and writes; the others log to os.devnull, so the code below is the same.
    log = open(
        os.path.join(cfg.out_dir, "metrics.jsonl") if main_rank else os.devnull, "a" if cfg.resume else "w"
    )
    pool = data.load_pool(cfg.data, "train", cfg.crop)
    hooks = [policy_zoo_member(cfg.policy, dev)] if cfg.policy else None
    v = make_val_set(cfg.data, cfg.val_n, cfg.crop, cfg.seed) if main_rank else None

    model = make_rm(RMConfig(widths=cfg.widths, n_stages=cfg.n_stages, stage=0)).to(dev)
    start_stage, start_step, st, rows = 0, 0, None, []
    if cfg.resume and os.path.exists(state_path):
        st = torch.load(state_path, weights_only=True, map_location=dev)  # tensors, numbers, strings only
        start_stage, start_step, rows = int(st["stage"]), int(st["step"]), json.loads(st["rows"])
        print(f"resuming at stage {start_stage}, step {start_step}") if main_rank else None

    base = None  # S_base = frozen RM_0, the anchor of L_align (method.md §3)
    t0 = time.time()
    for stage in range(start_stage, cfg.n_stages + 1):
        if stage > 0:
            base = freeze(load_rm(os.path.join(cfg.out_dir, "rm_stage0"), dev))
            model = grow(load_rm(os.path.join(cfg.out_dir, f"rm_stage{stage - 1}"), dev)).to(dev)
        model.train()
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=dev.type == "cuda"
        )
        first = start_step if stage == start_stage else 0
        if first > 0:  # resuming inside this stage: its weights and optimiser moments come from state.pt
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["opt"])
        n_steps = cfg.stage_steps[stage]
        diff = rm_difficulty(stage, cfg.n_stages)
        net = config.ddp(model, dev)  # the losses run through DDP under torchrun (gradient averaging)
        desc = f"RM_{stage} ({n_params(model) / 1e6:.2f}M)"
        bar = tqdm(range(first, n_steps), desc=desc, leave=False, disable=not main_rank)
        for step in bar:
            # Cosine decay within a stage: each stage starts from a function-preserving copy and settles.
            for group in opt.param_groups:
                group["lr"] = cfg.lr * (0.02 + 0.49 * (1 + math.cos(math.pi * step / n_steps)))
            # This step's triplets from (seed, stage, step, rank) alone: every rank draws different data, and
            # --resume continues the same streams without any stored generator state.
            g = config.generator("rm/draw", cfg.seed, stage, step, rank)
            batch = data.fgr_batch(
                pool, cfg.batch, cfg.crop, diff, g, hooks, dev, p_classical=cfg.p_classical
            )
            with config.autocast(dev, amp):  # bf16 forward when --amp=bf16; backward follows the same dtypes
                loss, parts = rm_losses(
                    net,
                    batch,
                    base,
                    cfg.lam_map,
                    cfg.lam_rank,
                    cfg.lam_align if stage else 0.0,
                    cfg.lam_gold,
                    cfg.m1,
                    cfg.m2,
                    cfg.bce,
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % cfg.log_every == 0 or step == n_steps - 1:  # the one host sync per logged step
                parts = config.mean_over_ranks(parts)  # the whole effective batch's losses
                row = {"step": step, "phase": "rm", "stage": stage, **{k: float(x) for k, x in parts.items()}}
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(
                    loss=f"{row['total']:.3f}", rank=f"{row['rank']:.3f}", map=f"{row['map']:.3f}"
                )
            if (step + 1) % 50 == 0 and step + 1 < n_steps and main_rank:  # resume point inside a stage
                config.torch_save_atomic(
                    {
                        "stage": stage,
                        "step": step + 1,
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "rows": json.dumps(rows),
                    },
                    state_path,
                )
        if not main_rank:  # rank 0 saves and validates; the others wait for rm_stage{k}/ before growing it
            config.barrier()
            continue
        save_rm(model, os.path.join(cfg.out_dir, f"rm_stage{stage}"), {"trained_steps": n_steps})
        r = {"stage": stage, **validate(model.eval(), v)}
        rows.append(r)
        log.write(json.dumps({"step": n_steps, "phase": "rm", "stage": stage, "val": r}) + "\n")
        log.flush()
        # Stage boundary: the weights are in rm_stage{k}/ already; the state only says where to go on.
        config.torch_save_atomic({"stage": stage + 1, "step": 0, "rows": json.dumps(rows)}, state_path)
        print(f"RM_{stage} done ({time.time() - t0:.0f}s)\n" + format_table(rows))
        config.barrier()
    log.close()
    config.teardown()
    return cfg.out_dir


if __name__ == "__main__":
    main(config.parse(Config, presets=PRESETS))
