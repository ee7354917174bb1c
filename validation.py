"""Held-out checks: the reward model's validation set and table, the SFT policy's PSNR, and the provenance
every RM checkpoint records. Measurements of the models, not the method: train_rm.py, sft.py and evaluate.py
call them at the end of a stage; the method files stay free of them.

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
from curriculum import val_difficulty
from metrics import label_map, psnr_y


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


def step_grad_norms(policy, traj, lr: torch.Tensor, adv: torch.Tensor) -> list:
    """‖∇ of each step's surrogate −mean(A·logp_k)‖ for every k of a trajectory of these samples (lr, adv per
    sample), trained or not; autograd.grad leaves .grad untouched. RL logs it once per run (grad_share): the
    σ floor's effect, visible."""
    params = [p for p in policy.unet.parameters() if p.requires_grad]
    norms, n = [], len(lr)
    for k in range(traj.logprob.shape[0]):
        logp = policy.step_logprob(traj.x[k][:n], traj.x[k + 1][:n], traj.t[k], lr, traj.steps, traj.eta)
        grads = torch.autograd.grad(-(adv * logp).mean(), params)
        norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))))
    return norms
