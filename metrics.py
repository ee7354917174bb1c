"""How we measure: the label function (the FGR labels *and* the gold judge) and PSNR / SSIM on Y.

The label function is the paper's label map (method.md §2):

    M_gt = Normalize( α · |I − I_ref|_1  +  (1 − α) · d_φ(I, I_ref) )          per pixel, in [0, 1]

It is full-reference: it needs the HR image. The reward models never see HR when they score, so the
same function doubles as the *gold judge* of the toy world ("The honest toy world", method.md): when a
policy's reward goes up while this map does not go down, the policy is hacking the reward.

    from metrics import label_map, gold_quality, psnr_y, ssim_y
    M = label_map(sr, hr)        # (B, 1, H, W) in [0, 1], higher = more degraded
    q = gold_quality(sr, hr)     # (B,) = 1 − mean(M), higher = better
    psnr_y(sr, hr), ssim_y(sr, hr)   # (B,) each, the classical SR protocol (Y channel, border = scale)
    lr_consistency(sr, lr)       # (B,) |down(SR) − LR|: RL's optional consistency term
    auroc(map, gold_map > 0.1), spearman(a, b), group_spearman(a, b, G)   # the RM tables' measures

Everything is batched torch, differentiable and device-agnostic: RL calls it every step.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALE = 4  # the SR factor everywhere in this project (design.md: "Scale ×4"); data.py and policy.py use it

# ----------------------------------------------------------------------------------------------------
# The fixed, training-free feature φ [ours, method.md §2]. The paper uses DINOv3 features; offline we use
# multi-scale *texture energy*: at scales 1, 2, 4 the local amplitude of four oriented derivatives
# (horizontal, vertical, two diagonals) and of the local contrast. Compared per feature with the
# SSIM-style contrast term, d = (a − b)² / (a² + b² + c), this sees what pixel error alone misses:
# texture that was lost (blur: a → 0 gives d → 1) and texture that was invented (b ≈ 0, a > 0 gives d → 1),
# while a texture reproduced with a small shift (large pixel error, same energy) is judged mildly.
# Why not 1 − cos of the whole vector, as the paper does with DINO? Cosine is blind to a uniform loss of
# energy (a blurred patch has the same *direction* of gradient energies), so blur would go unseen.

SCALES = (1, 2, 4)  # pixel scales at which texture energy is measured (×4 SR artifacts live at 1–4 px)
ENERGY_C = 0.02**2  # c: energies below ~0.02 (≈ 5/255 amplitude) count as "no texture", so noise floors
# and JPEG-level differences do not register as strong feature distance

# The four oriented derivative filters (2×2 support, so a one-pixel checkerboard registers on diagonals).
_KERNELS = torch.tensor(
    [
        [[-1.0, 1.0], [0.0, 0.0]],  # horizontal derivative
        [[-1.0, 0.0], [1.0, 0.0]],  # vertical derivative
        [[-1.0, 0.0], [0.0, 1.0]],  # diagonal ↘
        [[0.0, -1.0], [1.0, 0.0]],  # diagonal ↙
    ]
).unsqueeze(1)  # (4, 1, 2, 2)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma in [0, 1], (B, 1, H, W). Texture is mostly a luminance phenomenon."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def texture_energy(x: torch.Tensor) -> torch.Tensor:
    """φ(x): (B, 5·len(SCALES), H, W) local amplitudes (≥ 0) of oriented derivatives and contrast.

    At scale s the luma is box-averaged by s, differentiated, squared, averaged over a 3×3 neighbourhood
    (a "local energy"), square-rooted back to an amplitude and upsampled to H, W. All batched convs.
    """
    y = _luma(x)
    H, W = y.shape[-2:]
    feats = []
    k = _KERNELS.to(y)
    for s in SCALES:
        ys = F.avg_pool2d(y, s) if s > 1 else y
        d = F.conv2d(F.pad(ys, (0, 1, 0, 1), mode="replicate"), k)  # (B, 4, h, w) oriented derivatives
        mu = F.avg_pool2d(ys, 3, 1, 1, count_include_pad=False)  # local mean for the contrast feature
        var = F.avg_pool2d((ys - mu) ** 2, 3, 1, 1, count_include_pad=False)
        e = torch.cat([F.avg_pool2d(d**2, 3, 1, 1, count_include_pad=False), var], 1)
        e = (e + 1e-12).sqrt()  # amplitudes; the epsilon keeps the gradient of sqrt finite at 0
        if s > 1:
            e = F.interpolate(e, size=(H, W), mode="bilinear", align_corners=False)
        feats.append(e)
    return torch.cat(feats, 1)


# ----------------------------------------------------------------------------------------------------
# The hook for a user-supplied φ (method.md §2: the paper's DINOv3). Nothing is downloaded or unpickled here:
# you load the network yourself, from files you have, and hand this module a callable. For example, DINOv2
# from a local clone of its repository (torch.hub with source="local" imports the clone's Python code, the
# weights file is a state dict) or from a local Hugging Face snapshot:
#
#     import torch, metrics
#     dino = torch.hub.load("/path/to/dinov2", "dinov2_vits14", source="local", pretrained=False)
#     dino.load_state_dict(torch.load("/path/to/dinov2_vits14_pretrain.pth", weights_only=True))
#     # or: from transformers import AutoModel; dino = AutoModel.from_pretrained("/path/to/dinov2-small")
#
#     class DinoPhi(torch.nn.Module):          # images in [0, 1] -> (B, C, h, w) patch features
#         def __init__(self, net):
#             super().__init__()
#             self.net = net.eval().requires_grad_(False)
#             self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
#             self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
#         def forward(self, x):
#             H, W = x.shape[-2] // 14 * 14, x.shape[-1] // 14 * 14   # ViT-14: whole patches only
#             x = (x[..., :H, :W] - self.mean) / self.std
#             tok = self.net.forward_features(x)["x_norm_patchtokens"]   # (B, h*w, C)
#             # (transformers: tok = self.net(pixel_values=x).last_hidden_state[:, 1:], dropping CLS)
#             return tok.transpose(1, 2).reshape(x.shape[0], -1, H // 14, W // 14)
#
#     metrics.set_phi(DinoPhi(dino).to(device), norm=0.5)   # then train_rm.main(cfg), evaluate.main(cfg), ...
#
# With φ set, d_φ = (1 − cos(φ(x), φ(ref))) / 2 per feature location (the paper's literal form), upsampled
# to the image. NORM was calibrated for the default φ: re-calibrate it for yours (95th percentile of the raw
# map over SR-zoo samples, as described at NORM below) and pass it as `norm`.

PHI: nn.Module | None = None  # the user's φ, set with set_phi; None = texture energy


def _device_of(phi, default):
    """Where φ's weights live (a plain callable has none: `default`)."""
    p = next(iter(phi.parameters()), None) if isinstance(phi, nn.Module) else None
    return p.device if p is not None else default


def set_phi(phi, norm: float | None = None) -> None:
    """Make `phi` (images (B, 3, H, W) in [0, 1] -> features (B, C, h, w)) the label function's φ everywhere:
    FGR labels, the gold judge, coevolution. phi=None restores the default. Checked once on a tiny input so a
    wrong wrapper is a one-line error here, not a shape error deep in training."""
    global PHI, NORM
    if phi is not None:
        if not callable(phi):
            raise TypeError(f"set_phi: phi must be a callable or nn.Module, got {type(phi).__name__}")
        probe = torch.rand(1, 3, 64, 64, device=_device_of(phi, "cpu"))
        with torch.no_grad():
            out = phi(probe)
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"set_phi: phi must return (B, C, h, w) features, got {shape}; reshape tokens")
    PHI = phi
    if norm is not None:
        NORM = float(norm)
    elif phi is None:  # back to the default φ: back to its calibrated constant too
        NORM = DEFAULT_NORM


def feature_distance(x: torch.Tensor, ref: torch.Tensor, phi: nn.Module | None = None) -> torch.Tensor:
    """d_φ(x, ref) per pixel, (B, 1, H, W) in [0, 1].

    Default φ: texture energy with the per-feature contrast comparison above. A user network φ (e.g. a
    DINOv2/v3 backbone the user loaded from a local path, wrapped to return (B, C, h, w) features) gets the
    paper's literal form, 1 − cos(φ(x), φ(ref)) per location, upsampled to the image size. phi=None uses
    the network set with set_phi, if any (the hook above).
    """
    phi = phi if phi is not None else PHI
    if phi is not None:
        # φ may live on another device than the images (a GPU network labelling CPU-made triplets): run it
        # where its weights are, and return the map where the images are.
        on = _device_of(phi, x.device)
        fx, fr = phi(x.to(on)), phi(ref.to(on))
        d = 1 - F.cosine_similarity(fx, fr, dim=1, eps=1e-6).unsqueeze(1)  # (B, 1, h, w) in [0, 2]
        d = (d / 2).clamp(0, 1).to(x.device)
        return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
    a, b = texture_energy(x), texture_energy(ref)
    return ((a - b) ** 2 / (a**2 + b**2 + ENERGY_C)).mean(1, keepdim=True)


# Normalize [ours]: one fixed dataset-level constant, never per-image min-max, so that "0.3" means the same
# amount of degradation in every image and a clean image really gets ~0. Calibrated once (2026-11-26):
# 512 random 64×64 crops of the built-in training split, each through all 8 members of data.py's SR zoo at
# full strength (classical upsamplers from clean bicubic LR); NORM is the 95th percentile of the raw
# per-pixel value over all of them (0.34), so strong artifacts approach 1 while a bicubic ×4 upsample
# averages ~0.25 and sensor-level noise (σ = 2/255) ~0.02.
NORM = 0.34
DEFAULT_NORM = NORM  # what set_phi(None) restores
ALPHA = 0.5  # α: weight of the pixel term; the paper's ablation says pixel + feature beats pixel alone
SMOOTH = 3  # the raw map is averaged over 3×3 pixels: "per location", so single-pixel noise stays small


def label_map(
    x: torch.Tensor, ref: torch.Tensor, alpha: float = ALPHA, phi: nn.Module | None = None
) -> torch.Tensor:
    """The label function M(x; ref), (B, 1, H, W) in [0, 1], higher = more degraded (method.md §2).

    alpha = 1 gives the pixel term alone (evaluate.py uses it as a judge the reward models never saw)."""
    if x.shape != ref.shape:
        raise ValueError(
            f"label_map: image {tuple(x.shape)} and reference {tuple(ref.shape)} differ in shape"
        )
    pix = (x - ref).abs().mean(1, keepdim=True)  # |I − I_ref|_1 per pixel, averaged over RGB
    raw = alpha * pix
    if alpha < 1:
        raw = raw + (1 - alpha) * feature_distance(x, ref, phi)
    raw = F.avg_pool2d(raw, SMOOTH, 1, SMOOTH // 2, count_include_pad=False)
    return (raw / NORM).clamp(0, 1)


def gold_quality(x: torch.Tensor, ref: torch.Tensor, **kw) -> torch.Tensor:
    """The gold global quality, (B,) in [0, 1]: 1 − mean(M). Higher = better, like the RM's score."""
    return 1 - label_map(x, ref, **kw).mean((1, 2, 3))


# ----------------------------------------------------------------------------------------------------
# PSNR / SSIM, the classical SR protocol: on the Y channel of YCbCr (BT.601, studio range 16–235), with a
# border of `crop` = scale pixels removed, SSIM with an 11×11 Gaussian window of σ = 1.5 (Wang et al. 2004).
# Pinned to scikit-image in tests/test_metrics.py.


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """RGB [0, 1] → Y in [16, 235] (on the 0–255 scale), (B, 1, H, W). The MATLAB rgb2ycbcr formula."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return 16.0 + (x * w).sum(1, keepdim=True)


def _crop(y: torch.Tensor, crop: int) -> torch.Tensor:
    return y[..., crop:-crop, crop:-crop] if crop > 0 else y


def psnr_y(x: torch.Tensor, ref: torch.Tensor, crop: int = 4) -> torch.Tensor:
    """PSNR on Y in dB, (B,). Differentiable. 255 is the peak because Y is on the 0–255 scale."""
    mse = ((_crop(rgb_to_y(x), crop) - _crop(rgb_to_y(ref), crop)) ** 2).mean((1, 2, 3))
    return 10 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5, like: torch.Tensor | None = None) -> torch.Tensor:
    g = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(g**2) / (2 * sigma**2))
    g = (g / g.sum()).to(like) if like is not None else g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_map_y(x: torch.Tensor, ref: torch.Tensor, crop: int = 4) -> torch.Tensor:
    """The SSIM map on Y, (B, 1, H', W'): 'valid' windows only, as scikit-image averages them."""
    a, b = _crop(rgb_to_y(x), crop), _crop(rgb_to_y(ref), crop)
    win = _gaussian_window(like=a)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2  # K1, K2 of Wang et al. with L = 255
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    # Population (not sample) covariances, as in the original SSIM (use_sample_covariance=False).
    s_aa = F.conv2d(a * a, win) - mu_a**2
    s_bb = F.conv2d(b * b, win) - mu_b**2
    s_ab = F.conv2d(a * b, win) - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))


def ssim_y(x: torch.Tensor, ref: torch.Tensor, crop: int = 4) -> torch.Tensor:
    """Mean SSIM on Y, (B,). Differentiable."""
    return ssim_map_y(x, ref, crop).mean((1, 2, 3))


def lr_consistency(sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """|down(SR) − LR| per image, (B,). Antialiased bicubic ×1/4 is what made clean LR (data.degrade at
    strength 0), so this is exact for clean LR and only approximate for degraded LR (blur, noise, JPEG)."""
    down = F.interpolate(sr, scale_factor=1 / SCALE, mode="bicubic", antialias=True, align_corners=False)
    return (down - lr).abs().mean((1, 2, 3))


# ----------------------------------------------------------------------------------------------------
# How well a reward model agrees with the gold judge (validate: train_rm's and evaluate's RM tables)


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


def map_calibration(dmap: torch.Tensor, label: torch.Tensor, threshold: float = 0.1) -> float:
    """Mean predicted map inside the degraded region ÷ mean label map there (region: label > threshold, the
    AUROC's positives). 1 = as intense as the label; a map that ranks pixels well (AUROC) can still be faint
    (≪ 1), and RL's local penalty reads its intensity. NaN when no pixel is degraded."""
    region = label > threshold
    if not region.any():
        return float("nan")
    return float(dmap[region].mean() / label[region].mean())


def _run(model, x: torch.Tensor, batch: int) -> tuple:
    """The model on x in chunks of `batch`, on the model's device: (score (B,), dmap or None), on the CPU."""
    p = next(model.parameters())
    outs = [model(c.to(p.device)) for c in x.split(batch)]
    score = torch.cat([o[0] for o in outs]).cpu()
    return score, None if outs[0][1] is None else torch.cat([o[1] for o in outs]).cpu()


@torch.no_grad()
def policy_metrics(model, groups: dict, batch: int = 64) -> dict:
    """On policy samples in groups (policy_groups): pol_auroc, the map's AUROC against the gold map (> 0.1),
    and pol_rank, the within-group rank correlation of the score with gold quality; None where not defined."""
    score, dmap = _run(model, groups["sr"], batch)
    return {
        "pol_auroc": None if dmap is None else auroc(dmap, groups["dmap"].cpu() > 0.1),
        "pol_rank": group_spearman(score, groups["gold"].cpu(), groups["G"]),
    }


def _triplet_numbers(s_gt, s_syn, s_sr, m_syn, m_sr, lab_syn, lab_sr) -> dict:
    """Triplet order (S_SR < S_syn < S_GT, each half too) and the map's AUROC against the label maps (> 0.1)
    of one set of triplets: validate's, on the whole held-out set and on each zoo member's share of it."""
    gt_syn, syn_sr = s_gt > s_syn, s_syn > s_sr
    # map AUROC: positives are the pixels the label function calls degraded
    lab = torch.cat([lab_syn, lab_sr]) > 0.1
    return {
        "gt_syn": float(gt_syn.float().mean()),
        "syn_sr": float(syn_sr.float().mean()),
        "triplet_acc": float((gt_syn & syn_sr).float().mean()),
        "map_auroc": None if m_syn is None else auroc(torch.cat([m_syn, m_sr]), lab),
    }


@torch.no_grad()
def validate(model, v: dict, batch: int = 64, member_name=None) -> dict:
    """The per-stage numbers of the issue, on the fixed set v. Map metrics are None at stage 0 (no map).
    member_name (data.member_name): also "members", the triplet numbers split by the zoo member that made each
    triplet's I_SR (v["member"], from data.fgr_batch): {name: {n, gt_syn, syn_sr, triplet_acc, map_auroc}}.
    Which artifacts the RM is blind to, or scores backwards (syn_sr < 0.5: the fully degraded image scored
    above the partly degraded one). Few triplets per member: noisy cells."""
    out = {k: _run(model, v[k], batch) for k in ("gt", "syn", "sr", "bicubic", "small")}
    (s_gt, m_gt), (s_syn, m_syn), (s_sr, m_sr) = out["gt"], out["syn"], out["sr"]
    if not all(torch.isfinite(s).all() for s, _ in out.values()):  # a NaN model gives no valid table
        raise SystemExit("error: the reward model gives non-finite scores on the held-out set; lower --lr")
    gold = torch.cat([v["gold_gt"], v["gold_syn"], v["gold_sr"]]).cpu()
    lab_syn, lab_sr = v["dmap_syn"].cpu(), v["dmap_sr"].cpu()
    t = _triplet_numbers(s_gt, s_syn, s_sr, m_syn, m_sr, lab_syn, lab_sr)
    clean_std = s_gt.std().clamp_min(1e-6)
    r = {
        "triplet_acc": t["triplet_acc"],
        "spearman": spearman(torch.cat([s_gt, s_syn, s_sr]), gold),
        "hr_gt_bicubic": float((s_gt > out["bicubic"][0]).float().mean()),
        # local sensitivity: score drop from one small artifact, in units of the clean-score spread
        "local_sens": float((s_gt - out["small"][0]).mean() / clean_std),
        "map_l1": None,
        "map_auroc": t["map_auroc"],
        "clean_map": None,
        "map_calib": None,
    }
    if m_syn is not None:
        m, lab = (
            torch.cat([m_syn, m_sr]),
            torch.cat([lab_syn, lab_sr]),
        )  # every degraded image's map and label
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
    lines = [f"{'member':>10} " + " ".join(f"{c:>11}" for c in cols)]
    lines += [f"{k:>10} " + " ".join(f"{f(rows[k][c]):>11}" for c in cols) for k in order]
    return "\n".join(lines)


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
        "map_calib",
        "local_sens",
        "pol_auroc",
        "pol_rank",
    ]
    f = lambda x: "—" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))  # noqa: E731
    lines = [" ".join(f"{c:>13}" for c in cols)]
    lines += [" ".join(f"{f(r.get(c)):>13}" for c in cols) for r in rows]
    return "\n".join(lines)
