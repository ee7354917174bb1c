"""What the method does with images: HR→LR degradation, the SR-artifact zoo, masks, FGR triplets, and the
draws SFT and RL train on (images.py says where the images come from).

    lr = degrade(hr, strength=0.5, generator=g)          # (16, 3, 16, 16), Real-ESRGAN-style, ×4
    sr = sr_zoo(hr, strength, g)                          # SR-like images with typical SR-model failures
    batch = fgr_batch(pool, 16, 64, difficulty, g)       # the FGR triplets of docs/method.md §2
    hr, lr = training_pairs(pool, 8, 48, 0.5, g)         # an SFT / RL batch: 30 % clean LR, the rest degraded

FGR-30k (docs/method.md §2) runs HR images through degradation and several SR models, pastes SR regions into
the HR image (I_syn = Mask ⊙ I_SR + (1 − Mask) ⊙ I_GT) and labels the result with metrics.label_map. We
build the same on the fly, offline [ours]: the "SR models" are classical upsamplers, procedural makers of
diffusion-SR failures and, when one exists, this project's own policy (the `sr_models` hook); SAM masks
become SLIC superpixels, brush strokes, ellipses and rectangles, feathered at the edges."""

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import zoo
from metrics import SCALE, label_map

# ----------------------------------------------------------------------------------------------------
# HR → LR degradation (×4): a compact Real-ESRGAN-style two-stage pipeline


def _tensor(img: Image.Image) -> torch.Tensor:
    """An 8-bit RGB Pillow image → (3, H, W) float in [0, 1] (images.to_rgb_float: any mode)."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).clamp(0, 1)


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pillow's antialiased bicubic on the uint8 image: the classical SR protocol's downsampler."""
    return _tensor(_pil(x).resize((w, h), Image.BICUBIC))


def _blur_kernel(sigma_x: float, sigma_y: float, theta: float, k: int = 11) -> torch.Tensor:
    """An anisotropic Gaussian kernel (isotropic when sigma_x == sigma_y), normalised to sum 1."""
    ax = torch.arange(k, dtype=torch.float32) - k // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    ker = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return ker / ker.sum()


def _degrade_one(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Blur → random resize → noise → JPEG, twice (the second milder), then ×1/4; every draw from `g`."""
    H, W = x.shape[-2:]
    r = lambda: float(torch.rand((), generator=g))  # noqa: E731
    for stage_s in (strength, 0.5 * strength):
        sx, sy = 0.2 + 2.8 * stage_s * r(), 0.2 + 2.8 * stage_s * r()
        sy = sx if r() < 0.5 else sy  # half the kernels isotropic, as in Real-ESRGAN
        ker = _blur_kernel(sx, sy, np.pi * r()).to(x)
        x = F.conv2d(F.pad(x[None], (5, 5, 5, 5), mode="reflect"), ker.expand(3, 1, 11, 11), groups=3)[0]
        f = 1 + stage_s * (r() - 0.5)  # random resize by up to ±50 % at full strength
        x = _resize(x, max(8, round(x.shape[-2] * f)), max(8, round(x.shape[-1] * f)))
        if r() < 0.5:  # Gaussian noise, colour or grey
            sig = 25 / 255 * stage_s * r()
            x = x + sig * torch.randn(x.shape if r() < 0.6 else (1, *x.shape[1:]), generator=g)
        else:  # Poisson (shot) noise: variance grows with brightness
            peak = 10 ** (3.5 - 2.0 * stage_s * r())  # photons at white; fewer = noisier
            x = torch.poisson(x.clamp(0, 1) * peak, generator=g) / peak
        q, buf = int(95 - 65 * stage_s * r()), io.BytesIO()  # JPEG quality 95 … 30
        _pil(x).save(buf, format="JPEG", quality=q)
        x = _tensor(Image.open(buf))
    return _resize(x, H // SCALE, W // SCALE)


def degrade(
    hr: torch.Tensor, strength: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """HR (B, 3, H, W) → LR (B, 3, H/4, W/4) in [0, 1], on the input device. Strength 0: Pillow's antialiased
    bicubic of the uint8 image, the classical SR protocol; 1: the full Real-ESRGAN-like ranges. On the CPU
    (Pillow resizes and JPEG-codes), one image at a time: data preparation, not the training step."""
    if hr.shape[-1] % SCALE or hr.shape[-2] % SCALE:
        raise ValueError(f"degrade: HR size {tuple(hr.shape[-2:])} must be a multiple of {SCALE}")
    g, x = generator if generator is not None else torch.Generator().manual_seed(0), hr.detach().float().cpu()
    h, w = x.shape[-2] // SCALE, x.shape[-1] // SCALE
    out = [_resize(im, h, w) if strength <= 0 else _degrade_one(im, strength, g) for im in x]
    return torch.stack(out).to(hr.device)


def upsample(lr: torch.Tensor, mode: str = "bicubic", clamp: bool = True) -> torch.Tensor:
    """×4 classical upsampling in torch (batched, differentiable, on the input's device). clamp=False keeps
    bicubic's overshoot: the policy's base image, whose residual must add back to HR exactly."""
    kw = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(lr, scale_factor=SCALE, mode=mode, **kw)
    return up.clamp(0, 1) if clamp else up


P_CLEAN = 0.3  # share of SFT/RL batches with exactly clean bicubic LR (strength 0)


def draw_strength(degrade_max: float, g: torch.Generator) -> float:
    """LR degradation strength of one SFT/RL batch: 0 (clean bicubic LR) with probability P_CLEAN, else
    uniform in (0, degrade_max], so the policy serves both classical and real-world LR."""
    u, v = torch.rand(2, generator=g).tolist()
    return 0.0 if u < P_CLEAN else v * degrade_max


def training_pairs(pool, n: int, crop: int, degrade_max: float, g: torch.Generator):
    """An SFT / RL batch (HR (n, 3, crop, crop), LR) from images.ImagePool.pairs, on the CPU; a pure function
    of the generator's seed, so --resume (and a prefetch thread) draw exactly the same batch again."""
    return pool.pairs(n, crop, g, lambda: draw_strength(degrade_max, g))


# ----------------------------------------------------------------------------------------------------
# The SR zoo: stand-ins for "several diffusion SR models" (docs/method.md §2) [ours]: classical upsamplers and
# procedural makers of typical SR failures (zoo.py draws them), each f(hr, lr, strength, g) -> SR-like image.


def _classical(mode):
    return lambda hr, lr, s, g: upsample(lr, mode)


ZOO = dict(nearest=_classical("nearest"), bilinear=_classical("bilinear"), bicubic=_classical("bicubic"),
           texture=zoo.texture, halo=zoo.halo, paint=zoo.paint, colour=zoo.colour,  # diffusion-SR failures
           checker=zoo.checker, speckle=zoo.speckle, grain=zoo.grain, grid=zoo.grid,  # and what RL paints
           ringing=zoo.ringing, saturate=zoo.saturate)  # fmt: skip


# fgr_batch's "member" i: MEMBERS[i] (ZOO's order, as sr_zoo lists its makers), or hook i - len(MEMBERS).
MEMBERS = tuple(ZOO)


def member_name(i: int) -> str:
    return MEMBERS[i] if i < len(MEMBERS) else f"hook{i - len(MEMBERS)}"


def sr_zoo(hr, strength, g, lr_strength=0.0, sr_models=None, p_classical=0.3, with_member=False):
    """I_SR for a batch: one zoo member per sample, classical with p_classical, else procedural or a hook
    (`sr_models`: extra makers f(hr, lr, strength, g) -> sr, e.g. a policy's sampler; equal members of the
    procedural group). with_member: (sr, member (B,) indices into MEMBERS).
    The LR (Pillow, the costliest part) is made only for makers that read it; one call per member."""
    hooks, P = list(sr_models or []), len(ZOO) - 3  # ZOO: the 3 classical upsamplers, then P procedural
    makers, reads_lr = list(ZOO.values()) + hooks, [True] * 3 + [False] * P + [True] * len(hooks)
    B = hr.shape[0]
    u = torch.rand(B, generator=g)
    pick = 3 + torch.randint(P + len(hooks), (B,), generator=g)  # procedural or hook
    pick = torch.where(u < p_classical, torch.randint(3, (B,), generator=g), pick)  # classical first
    s = strength * (0.5 + 0.5 * torch.rand(B, generator=g))  # per-sample strength in [s/2, s]
    out = torch.empty_like(hr)
    for m in pick.unique().tolist():
        idx = (pick == m).nonzero().squeeze(1)
        lr = degrade(hr[idx], lr_strength, g) if reads_lr[m] else None
        out[idx] = makers[m](hr[idx], lr, s[idx].view(-1, 1, 1, 1).to(hr), g).to(hr)
    return (out.clamp(0, 1), pick) if with_member else out.clamp(0, 1)


# ----------------------------------------------------------------------------------------------------
# Masks: where the SR region is pasted into the HR image (docs/method.md §2)


def random_masks(n, size, area, g, segments=None, feather=1.5) -> torch.Tensor:
    """(n, 1, size, size) soft masks in [0, 1] covering ~`area`, feathered: per sample an ellipse, rectangle,
    brush stroke or (given segments) a union of superpixels, the SAM stand-in; all batched, one picked."""
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    A = area * (0.5 + r(n, 1, 1)) * size * size  # target pixels, jittered ×0.5…1.5
    cy, cx = r(n, 1, 1) * size, r(n, 1, 1) * size
    asp, th = 0.4 + 1.2 * r(n, 1, 1), r(n, 1, 1) * np.pi  # aspect ratio, angle
    u, v = (xx - cx) * th.cos() + (yy - cy) * th.sin(), -(xx - cx) * th.sin() + (yy - cy) * th.cos()
    a = (A / (np.pi * asp)).sqrt()
    ellipse = (u / (a * asp)) ** 2 + (v / a) ** 2 <= 1
    rect = (u.abs() <= (A * asp).sqrt() / 2) & (v.abs() <= (A / asp).sqrt() / 2)
    # brush stroke: 8 disks along a random walk, radius set so the stroke covers ~A pixels
    steps = (r(n, 8, 2) - 0.5) * size * 0.25  # the walk's 8 steps
    pts = torch.stack([cx, cy], -1).view(n, 1, 2) + steps.cumsum(1)
    rad = (A.view(n, 1) / (8 * np.pi)).sqrt().clamp(min=2) * 1.6
    d2 = (xx[None, None] - pts[..., 0, None, None]) ** 2 + (yy[None, None] - pts[..., 1, None, None]) ** 2
    stroke = (d2 <= rad[..., None, None] ** 2).any(1)
    kinds = [ellipse, rect, stroke]
    if segments is not None:  # superpixels: add random segments until the target area is reached
        seg = segments.long()
        order = torch.rand(n, int(seg.max()) + 1, generator=g).argsort(1)  # random segment ranking
        rank = torch.gather(order.argsort(1), 1, seg.view(n, -1)).view_as(seg).float()  # rank of each px
        cnt = torch.zeros(n, order.shape[1]).scatter_add_(1, seg.view(n, -1), torch.ones(n, size * size))
        cum = torch.gather(cnt, 1, order).cumsum(1)  # pixels covered after taking the first j segments
        k = (cum < A.view(n, 1)).sum(1, keepdim=True)  # how many segments to take
        kinds.append(rank <= k.view(n, 1, 1).float())
    pick = torch.randint(len(kinds), (n,), generator=g)
    m = torch.stack(kinds, 1)[torch.arange(n), pick].float().unsqueeze(1)
    return zoo.gauss(m, feather).clamp(0, 1) if feather > 0 else m  # feathered edges


# ----------------------------------------------------------------------------------------------------
# FGR triplets: (I_GT, I_syn, I_SR, M_gt) — the reward model's training data (docs/method.md §2)


@dataclass
class Difficulty:
    """How hard a batch of triplets is (curriculum.py sets it per RM stage)."""

    area: float = 0.2  # mean share of the image the SR region covers (smaller = harder to find)
    artifact: float = 1.0  # strength of the procedural artifacts (smaller = subtler)
    degrade: float = 0.5  # maximum LR degradation strength (the LR feeds the classical upsamplers)


def fgr_batch(pool, n, size, diff: Difficulty, g, sr_models=None, device="cpu", **zoo_kw) -> dict:
    """A batch of FGR triplets as a dict of tensors on `device`: gt, syn, sr (n, 3, S, S); mask, dmap_syn,
    dmap_sr (n, 1, S, S); gold_gt, gold_syn, gold_sr (n,); member (n,), each I_SR's zoo member (MEMBERS).
    One LR degradation strength per batch; zoo_kw: sr_zoo's p_classical."""
    hr, seg = pool.crops(n, size, g, with_segments=True)
    lr_strength, hr = diff.degrade * float(torch.rand((), generator=g)), hr.to(device)
    sr, member = sr_zoo(hr, diff.artifact, g, lr_strength, sr_models, with_member=True, **zoo_kw)
    mask = random_masks(n, size, diff.area, g, segments=seg).to(device)
    syn = mask * sr + (1 - mask) * hr  # I_syn = Mask ⊙ I_SR + (1 − Mask) ⊙ I_GT
    dmap_syn, dmap_sr = label_map(syn, hr), label_map(sr, hr)
    # gold = 1 − mean(label map); for I_GT that is 1 exactly, since M(I_GT; I_GT) = 0
    return dict(gt=hr, syn=syn, sr=sr, mask=mask, dmap_syn=dmap_syn, dmap_sr=dmap_sr,
                gold_gt=torch.ones(n, device=device), gold_syn=1 - dmap_syn.mean((1, 2, 3)),
                gold_sr=1 - dmap_sr.mean((1, 2, 3)), member=member.to(device))  # fmt: skip


def labelled_groups(sr: torch.Tensor, hr: torch.Tensor, G: int) -> dict:
    """Policy samples in groups of G of one LR (sr (n·G, 3, S, S), each LR's samples adjacent, hr matching),
    labelled by the label function: the dict group_triplets and rm.group_loss read (gold = 1 − mean map)."""
    dmap = label_map(sr, hr)
    return {"sr": sr, "hr": hr, "dmap": dmap, "gold": 1 - dmap.mean((1, 2, 3)), "G": G}


def group_triplets(groups: dict, n_groups: int, area: float, g: torch.Generator) -> dict:
    """FGR triplets (fgr_batch's keys) of n_groups random groups of `groups` (labelled_groups), pasted into
    HR with random masks of mean `area`; "group" = G, "n_group" = n_groups · G tell rm.rm_losses where
    L_group's groups are (the end of "sr")."""
    G = groups["G"]
    pick = torch.randperm(len(groups["sr"]) // G, generator=g)[:n_groups]
    idx = (pick[:, None] * G + torch.arange(G)).flatten().to(groups["sr"].device)
    hr, sr = groups["hr"][idx], groups["sr"][idx]
    mask = random_masks(len(idx), hr.shape[-1], area, g).to(hr.device)
    syn = mask * sr + (1 - mask) * hr  # I_syn = Mask ⊙ I_SR + (1 − Mask) ⊙ I_GT
    dmap_syn = label_map(syn, hr)
    return dict(gt=hr, syn=syn, sr=sr, mask=mask, dmap_syn=dmap_syn, dmap_sr=groups["dmap"][idx],
                gold_gt=torch.ones(len(idx), device=hr.device), gold_syn=1 - dmap_syn.mean((1, 2, 3)),
                gold_sr=groups["gold"][idx], group=G, n_group=len(idx))  # fmt: skip


def merge(a: dict, b: dict) -> dict:
    """Two triplet batches as one, b's entries last (L_group reads the end of "sr")."""
    return {k: torch.cat([a[k], b[k]]) if isinstance(b[k], torch.Tensor) else b[k] for k in b}
