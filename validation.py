"""Held-out checks: the reward model's validation set and table, the SFT policy's PSNR, and the provenance
every RM checkpoint records, and what each RL step logs beside its reward. Measurements of the models, not the
method: train_rm.py, sft.py and evaluate.py call them at the end of a stage, train_rl.py every step.

    v = make_val_set("builtin", 96, 64, seed=0)      # FGR triplets, bicubic upsamples, small artifacts
    row = validate(rm, v)                            # map AUROC, triplet order, S(HR) > S(bicubic), …
    print(format_table([row]))
"""

import functools
import sys
import time

import torch

import config
import data
import images
import scale
from curriculum import val_difficulty
from metrics import label_map, psnr_y

# ----------------------------------------------------------------------------------------------------
# How well a reward model agrees with the gold judge: the RM table of train_rm and evaluate


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve by the rank-sum (Mann–Whitney U) formula; ties get their average rank."""
    s, y = scores.flatten().double(), labels.flatten().bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = torch.empty_like(s)
    ranks[s.argsort()] = torch.arange(1, len(s) + 1, dtype=s.dtype)
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
    """Mean Spearman correlation inside groups of G adjacent entries: does the RM order one LR's samples as
    gold does (what the RL advantage depends on)?"""
    ra, rb = (t.view(-1, G).argsort(1).argsort(1).double() for t in (a, b))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1)).clamp_min(1e-12)).mean())


def map_calibration(dmap: torch.Tensor, label: torch.Tensor, threshold: float = 0.1) -> float:
    """Mean map ÷ mean label inside the degraded region (label > threshold; NaN if none): 1 = as intense as
    the label. A map that ranks pixels well (AUROC) can still be faint (≪ 1); RL's local penalty reads it."""
    region = label > threshold
    return float(dmap[region].mean() / label[region].mean()) if region.any() else float("nan")


def _run(model, x: torch.Tensor, batch: int) -> tuple:
    """The model on x in chunks of `batch`, on the model's device: (score (B,), dmap or None), on the CPU."""
    outs = [model(c.to(next(model.parameters()).device)) for c in x.split(batch)]
    score = torch.cat([o[0] for o in outs]).cpu()
    return score, None if outs[0][1] is None else torch.cat([o[1] for o in outs]).cpu()


@torch.no_grad()
def policy_metrics(model, groups: dict, batch: int = 64) -> dict:
    """On policy samples in groups (train_rm.policy_groups): pol_auroc, the map's AUROC against the gold map
    (> 0.1; None without a map), and pol_rank, the score's within-group rank correlation with gold."""
    score, dmap = _run(model, groups["sr"], batch)
    return {"pol_auroc": None if dmap is None else auroc(dmap, groups["dmap"].cpu() > 0.1),
            "pol_rank": group_spearman(score, groups["gold"].cpu(), groups["G"])}  # fmt: skip


def _triplet_numbers(s_gt, s_syn, s_sr, m_syn, m_sr, lab_syn, lab_sr) -> dict:
    """Triplet order (S_SR < S_syn < S_GT, each half too) and map AUROC of a set of triplets (validate's)."""
    gt_syn, syn_sr = s_gt > s_syn, s_syn > s_sr
    lab = torch.cat([lab_syn, lab_sr]) > 0.1  # the map AUROC's positives: degraded per the label function
    return {"gt_syn": float(gt_syn.float().mean()), "syn_sr": float(syn_sr.float().mean()),
            "triplet_acc": float((gt_syn & syn_sr).float().mean()),
            "map_auroc": None if m_syn is None else auroc(torch.cat([m_syn, m_sr]), lab)}  # fmt: skip


@torch.no_grad()
def validate(model, v: dict, batch: int = 64, member_name=None) -> dict:
    """The per-stage numbers on the fixed set v; map metrics None at stage 0 (no map). With member_name
    (data.member_name) also "members": {name: {n, gt_syn, syn_sr, triplet_acc, map_auroc}} per zoo member that
    made I_SR (v["member"]): what the RM is blind to or scores backwards (syn_sr < 0.5). Few triplets each."""
    out = {k: _run(model, v[k], batch) for k in ("gt", "syn", "sr", "bicubic", "small")}
    (s_gt, m_gt), (s_syn, m_syn), (s_sr, m_sr) = out["gt"], out["syn"], out["sr"]
    if not all(torch.isfinite(s).all() for s, _ in out.values()):  # a NaN model gives no valid table
        raise SystemExit("error: the reward model gives non-finite scores on the held-out set; lower --lr")
    gold, clean_std = torch.cat([v["gold_gt"], v["gold_syn"], v["gold_sr"]]).cpu(), s_gt.std().clamp_min(1e-6)
    lab_syn, lab_sr = v["dmap_syn"].cpu(), v["dmap_sr"].cpu()
    t = _triplet_numbers(s_gt, s_syn, s_sr, m_syn, m_sr, lab_syn, lab_sr)
    r = {"triplet_acc": t["triplet_acc"], "spearman": spearman(torch.cat([s_gt, s_syn, s_sr]), gold),
         "hr_gt_bicubic": float((s_gt > out["bicubic"][0]).float().mean()),
         "local_sens": float((s_gt - out["small"][0]).mean() / clean_std),  # a small artifact's score drop
         "map_l1": None, "map_auroc": t["map_auroc"], "clean_map": None, "map_calib": None}  # fmt: skip
    if m_syn is not None:
        m, lab = torch.cat([m_syn, m_sr]), torch.cat([lab_syn, lab_sr])  # every degraded image's map, label
        r["map_l1"] = float((m - lab).abs().mean())
        r["clean_map"] = float(m_gt.mean())  # false alarms on clean HR images
        r["map_calib"] = map_calibration(m, lab)
    if "policy" in v:  # held-out policy samples (train_rm --policy): what RL will show this RM
        r.update(policy_metrics(model, v["policy"], batch))
    if member_name is not None:
        member, r["members"] = v["member"].cpu(), {}
        for i in member.unique().tolist():
            sel = member == i
            maps = (None, None) if m_syn is None else (m_syn[sel], m_sr[sel])
            numbers = _triplet_numbers(s_gt[sel], s_syn[sel], s_sr[sel], *maps, lab_syn[sel], lab_sr[sel])
            r["members"][member_name(i)] = {"n": int(sel.sum()), **numbers}
    return r


def format_members(rows: dict) -> str:
    """validate's "members" as fixed-width text, best map first (printed by train_rm after its last stage)."""
    f = lambda x: "—" if x is None else (f"{x:.2f}" if isinstance(x, float) else str(x))  # noqa: E731
    cols = ["n", "map_auroc", "gt_syn", "syn_sr", "triplet_acc"]
    auc = {k: r["map_auroc"] for k, r in rows.items()}
    order = sorted(rows, key=lambda k: -auc[k] if auc[k] is not None and auc[k] == auc[k] else 1.0)
    head = f"{'member':>10} " + " ".join(f"{c:>11}" for c in cols)
    return "\n".join([head] + [f"{k:>10} " + " ".join(f"{f(rows[k][c]):>11}" for c in cols) for k in order])


def format_table(rows: list[dict]) -> str:
    """The per-stage table as fixed-width text (printed by train_rm and evaluate)."""
    cols = "stage map_auroc map_l1 triplet_acc spearman hr_gt_bicubic clean_map map_calib local_sens".split()
    cols += ["pol_auroc", "pol_rank"]
    f = lambda x: "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    head = " ".join(f"{c:>13}" for c in cols)
    return "\n".join([head] + [" ".join(f"{f(r.get(c)):>13}" for c in cols) for r in rows])


def make_val_set(cfg_data: str, n: int, crop: int, seed: int) -> dict:
    """The fixed held-out set: FGR triplets at the curriculum's middle difficulty from held-out photos, their
    clean bicubic ×4 upsamples, and clean images with one small (≤ 5 % area) artifact pasted in."""
    g = config.generator("rm/val", seed)  # its own stream: independent of the training draws
    # The same set for every stage (the middle difficulty, not any stage's own), so the table's rows compare.
    pool = images.heldout_pool(cfg_data, crop)
    v = data.fgr_batch(pool, n, crop, val_difficulty(), g)
    v["bicubic"] = data.upsample(data.degrade(v["gt"], 0.0))  # the classical protocol's LR, ×4 back up
    small = data.random_masks(n, crop, 0.03, g)  # ~3 % of the area, jittered ≤ 4.5 %
    v["small"] = small * v["sr"] + (1 - small) * v["gt"]  # one small artifact in a clean image
    v["dmap_small"] = label_map(v["small"], v["gt"])
    return v


def provenance(model, row: dict, t0: float, commit: str) -> dict:
    """What every RM stage's rm.json records: the command and commit that made it, the run's wall time so far,
    its held-out numbers, its scores on a fixed small set (base_check_set: tests/test_base.py checks them)."""
    with torch.no_grad():
        scores = model(base_check_set().to(next(model.parameters()).device))[0]
    return {"command": " ".join(["python", *sys.argv]), "commit": commit, "heldout": row,
            "wall_s": round(time.time() - t0, 1), "threads": torch.get_num_threads(),
            "check_scores": [round(float(x), 6) for x in scores]}  # fmt: skip


@functools.lru_cache(maxsize=1)
def base_check_set() -> torch.Tensor:
    """8 fixed held-out images (4 triplets' I_GT and I_SR, 64 px): each stage records its scores of them."""
    v = make_val_set("builtin", 4, 64, 0)
    return torch.cat([v["gt"], v["sr"]])


@torch.no_grad()
def psnr_table(policy, data_name: str, crop: int, n: int = 24, seed: int = 0) -> dict:
    """PSNR-Y (dB) of deterministic sampling (eta = 0) vs bicubic on held-out crops, clean and degraded LR:
    the SFT acceptance check, printed after SFT."""
    g = config.generator("sft/psnr_table", seed)
    pool = images.heldout_pool(data_name, crop)
    dev = next(policy.parameters()).device
    out = {}
    # Real pairs have one LR per image ("real"); an HR source gets clean and degraded LR of the same crops.
    paired = isinstance(pool, images.PairedPool)
    hr = None if paired else pool.crops(n, crop, g)
    for name, strength in (("real", 0.0),) if paired else (("clean", 0.0), ("degraded", 0.5)):
        hr, lr = pool.pairs(n, crop, g) if paired else (hr, data.degrade(hr, strength, g))
        lr, h = lr.to(dev), hr.to(dev)
        # eta = 0: the deterministic DDIM sample, the policy's best single guess (PSNR rewards the mean).
        sr = policy.sample(lr, eta=0.0, generator=torch.Generator(dev).manual_seed(seed))
        bicubic = psnr_y(data.upsample(lr), h)
        out[name] = {"policy": float(psnr_y(sr, h).mean()), "bicubic": float(bicubic.mean())}
    return out


# ----------------------------------------------------------------------------------------------------
# During RL: what each step logs beside the reward it optimised (train_rl.py), so hacking shows as it happens.


@torch.no_grad()
def judges(rms, sr, hr) -> dict:
    """A step's samples through the judges: RM_N's score (reward_final, comparable across the run and across
    reward sources), RM_0's (reward0: the global arm's proxy, judged alike in every arm), the gold judge
    (label map vs HR, lower = better) and PSNR-Y. 0-dim tensors."""
    return {
        "reward_final": rms[-1](sr)[0].mean(),
        "reward0": rms[0](sr)[0].mean(),
        "gold": label_map(sr, hr).mean(),
        "psnr": psnr_y(sr, hr).mean(),
    }


def flat_groups(r: torch.Tensor, M, G: int) -> torch.Tensor:
    """Groups whose rewards (and maps) are all equal have advantage 0 and teach nothing: their count."""
    flat = r.view(-1, G).std(1, unbiased=False) < 1e-8
    if M is not None:
        flat &= M.view(-1, G, M[0].numel()).std(1, unbiased=False).amax(1) < 1e-8
    return flat.sum().float()


def grad_share(policy, traj, lr: torch.Tensor, adv: torch.Tensor, sigma_min: float) -> dict:
    """Each DDIM step's share of the gradient norm ‖∇ −mean(A·logp_k)‖ over a trajectory of these samples
    (lr, adv per sample), trained or not, with its σ: printed and logged once per pg run (grad_share,
    step_std), the σ floor's effect made visible. autograd.grad leaves .grad untouched."""
    params = [p for p in policy.unet.parameters() if p.requires_grad]
    norms, n = [], len(lr)
    for k in range(traj.logprob.shape[0]):
        logp = policy.step_logprob(traj.x[k][:n], traj.x[k + 1][:n], traj.t[k], lr, traj.steps, traj.eta)
        grads = torch.autograd.grad(-(adv * logp).mean(), params)
        norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))))
    share = [x / sum(norms) for x in norms]
    cells = [f"{s:.3f} ({sd:.2f}{'*' if sd < sigma_min else ''})" for s, sd in zip(share, traj.std)]
    msg = "gradient-norm share per DDIM step (its σ; * = below the floor, never trained): "
    print(msg + "  ".join(cells)) if scale.is_main() else None
    return {"grad_share": share, "step_std": list(traj.std)}
