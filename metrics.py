"""How we measure: the label function (the FGR labels *and* the gold judge) and PSNR / SSIM on Y.

The label function is the paper's label map (docs/method.md §2):

    M_gt = Normalize( α · |I − I_ref|_1  +  (1 − α) · d_φ(I, I_ref) )          per pixel, in [0, 1]

It needs the HR image; the reward models never see HR, so the same function is also the *gold judge* of the
toy world (docs/method.md "The honest toy world"): a reward that rises while this map does not fall is hacked.

    from metrics import label_map, gold_quality, psnr_y, ssim_y
    M = label_map(sr, hr)        # (B, 1, H, W) in [0, 1], higher = more degraded
    q = gold_quality(sr, hr)     # (B,) = 1 − mean(M), higher = better
    psnr_y(sr, hr), ssim_y(sr, hr)   # (B,) each, the classical SR protocol (Y channel, border = scale)
    lr_consistency(sr, lr)       # (B,) |down(SR) − LR|: RL's optional consistency term

All batched torch, differentiable and device-agnostic: RL calls it every step."""

import torch
import torch.nn as nn
import torch.nn.functional as F

SCALE = 4  # the SR factor of the whole project (×4 only); data.py and policy.py use it

# ----------------------------------------------------------------------------------------------------
# The fixed, training-free φ [ours, docs/method.md §2]: not the paper's DINOv3 but multi-scale *texture
# energy*, the local amplitude of four oriented derivatives and of the contrast, compared per feature by the
# SSIM-style d = (a − b)² / (a² + b² + c): texture lost (blur: a → 0, d → 1) or invented (b ≈ 0 < a) counts,
# a slightly shifted one (same energy) little. Not DINO's 1 − cos: cosine is blind to a uniform loss (blur).

SCALES = (1, 2, 4)  # pixel scales at which texture energy is measured (×4 SR artifacts live at 1–4 px)
ENERGY_C = 0.02**2  # c: energies below ~0.02 (≈ 5/255) are "no texture": noise floors, JPEG-level changes

# The oriented derivatives, (4, 1, 2, 2): horizontal, vertical, ↘, ↙ (2×2: a 1-px checkerboard shows on ↘ ↙).
_KERNELS = torch.tensor([
    [[-1.0, 1.0], [0.0, 0.0]], [[-1.0, 0.0], [1.0, 0.0]], [[-1.0, 0.0], [0.0, 1.0]], [[0.0, -1.0], [1.0, 0.0]]
]).unsqueeze(1)  # fmt: skip


def _luma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma in [0, 1], (B, 1, H, W). Texture is mostly a luminance phenomenon."""
    w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def texture_energy(x: torch.Tensor) -> torch.Tensor:
    """φ(x): (B, 5·len(SCALES), H, W) local amplitudes (≥ 0) of oriented derivatives and contrast: per scale s
    the luma box-averaged by s, differentiated, squared, 3×3-averaged, square-rooted and upsampled to H, W."""
    y = _luma(x)
    H, W = y.shape[-2:]
    feats, k = [], _KERNELS.to(y)
    for s in SCALES:
        ys = F.avg_pool2d(y, s) if s > 1 else y
        d = F.conv2d(F.pad(ys, (0, 1, 0, 1), mode="replicate"), k)  # (B, 4, h, w) oriented derivatives
        mu = F.avg_pool2d(ys, 3, 1, 1, count_include_pad=False)  # local mean for the contrast feature
        var = F.avg_pool2d((ys - mu) ** 2, 3, 1, 1, count_include_pad=False)
        e = torch.cat([F.avg_pool2d(d**2, 3, 1, 1, count_include_pad=False), var], 1)
        e = (e + 1e-12).sqrt()  # amplitudes; the epsilon keeps the gradient of sqrt finite at 0
        feats.append(F.interpolate(e, size=(H, W), mode="bilinear", align_corners=False) if s > 1 else e)
    return torch.cat(feats, 1)


# ----------------------------------------------------------------------------------------------------
# A user-supplied φ (docs/method.md §2: the paper's DINOv3). Nothing is downloaded or unpickled here: load
# the network from your files (a local torch.hub clone, a local Hugging Face snapshot), hand over a callable:
#     dino = torch.hub.load("/path/to/dinov2", "dinov2_vits14", source="local", pretrained=False)
#     dino.load_state_dict(torch.load("/path/to/dinov2_vits14_pretrain.pth", weights_only=True))
#     # or: from transformers import AutoModel; dino = AutoModel.from_pretrained("/path/to/dinov2-small")
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
#             # (register tokens follow CLS in *-with-registers and DINOv3 (patch 16): drop them too,
#             #  [:, 1 + net.config.num_register_tokens:], or the reshape below silently mixes them in)
#             return tok.transpose(1, 2).reshape(x.shape[0], -1, H // 14, W // 14)
#     metrics.set_phi(DinoPhi(dino).to(device), norm=0.5)   # norm: re-calibrated for your φ as NORM below was

PHI: nn.Module | None = None  # the user's φ, set with set_phi; None = texture energy


def _device_of(phi, default):
    """Where φ's weights live (a plain callable has none: `default`)."""
    p = next(iter(phi.parameters()), None) if isinstance(phi, nn.Module) else None
    return p.device if p is not None else default


def set_phi(phi, norm: float | None = None) -> None:
    """Make `phi` (images (B, 3, H, W) in [0, 1] -> (B, C, h, w)) the label function's φ everywhere; None: the
    default. Checked on a tiny input: a wrong wrapper is a one-line error here, not deep in training."""
    global PHI, NORM
    if phi is not None:
        if not callable(phi):
            raise TypeError(f"set_phi: phi must be a callable or nn.Module, got {type(phi).__name__}")
        with torch.no_grad():
            out = phi(torch.rand(1, 3, 64, 64, device=_device_of(phi, "cpu")))
        if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != 1:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"set_phi: phi must return (B, C, h, w) features, got {shape}; reshape tokens")
    PHI = phi  # and NORM: `norm` if given; back to the default φ, back to its calibrated constant too
    NORM = float(norm) if norm is not None else (DEFAULT_NORM if phi is None else NORM)


def feature_distance(x: torch.Tensor, ref: torch.Tensor, phi: nn.Module | None = None) -> torch.Tensor:
    """d_φ(x, ref) per pixel, (B, 1, H, W) in [0, 1]: texture energy compared per feature (above), or for a
    network φ (`phi`, else the one set_phi set) (1 − cos(φ(x), φ(ref))) / 2, upsampled to the image."""
    phi = phi if phi is not None else PHI
    if phi is not None:  # run φ where its weights are (a GPU net, CPU-made triplets); the map where x is
        on = _device_of(phi, x.device)
        d = 1 - F.cosine_similarity(phi(x.to(on)), phi(ref.to(on)), dim=1, eps=1e-6).unsqueeze(1)  # [0, 2]
        d = (d / 2).clamp(0, 1).to(x.device)
        return F.interpolate(d, size=x.shape[-2:], mode="bilinear", align_corners=False)
    a, b = texture_energy(x), texture_energy(ref)
    return ((a - b) ** 2 / (a**2 + b**2 + ENERGY_C)).mean(1, keepdim=True)


# Normalize [ours]: one fixed dataset-level constant, never per-image min-max, so "0.3" means the same amount
# of degradation in every image and a clean image gets ~0. Calibrated once (2026-11-26): 512 random 64×64
# crops of the built-in training split through each of the 8 members data.py's SR zoo had then (nearest …
# checker; the RL-artifact members came later) at full strength, the classical ones from clean bicubic LR;
# NORM = the 95th percentile of the raw per-pixel value (0.34). Strong artifacts approach 1, a bicubic ×4
# upsample averages ~0.25, sensor noise (σ = 2/255) ~0.02.
NORM = 0.34
DEFAULT_NORM = NORM  # what set_phi(None) restores
ALPHA = 0.5  # α: weight of the pixel term; the paper's ablation says pixel + feature beats pixel alone
SMOOTH = 3  # the raw map is averaged over 3×3 pixels: "per location", so single-pixel noise stays small


def label_map(
    x: torch.Tensor, ref: torch.Tensor, alpha: float = ALPHA, phi: nn.Module | None = None
) -> torch.Tensor:
    """The label function M(x; ref), (B, 1, H, W) in [0, 1], higher = more degraded (docs/method.md §2).
    alpha = 1: the pixel term alone (evaluate.py's judge that the reward models never saw)."""
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
# PSNR / SSIM, the classical SR protocol: Y of YCbCr (BT.601, 16–235), a border of `crop` = scale pixels
# removed, SSIM's 11×11 Gaussian window of σ = 1.5 (Wang et al. 2004). Pinned to scikit-image in the tests.


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """RGB [0, 1] → Y in [16, 235] (on the 0–255 scale), (B, 1, H, W). The MATLAB rgb2ycbcr formula."""
    return 16.0 + (x * x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)).sum(1, keepdim=True)


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
    s_aa, s_bb = F.conv2d(a * a, win) - mu_a**2, F.conv2d(b * b, win) - mu_b**2
    s_ab = F.conv2d(a * b, win) - mu_a * mu_b  # population (not sample) covariances, as the original SSIM
    return ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))


def ssim_y(x: torch.Tensor, ref: torch.Tensor, crop: int = 4) -> torch.Tensor:
    """Mean SSIM on Y, (B,). Differentiable."""
    return ssim_map_y(x, ref, crop).mean((1, 2, 3))


def lr_consistency(sr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
    """|down(SR) − LR| per image, (B,). Antialiased bicubic ×1/4 is what made clean LR (data.degrade at
    strength 0), so this is exact for clean LR and only approximate for degraded LR (blur, noise, JPEG)."""
    down = F.interpolate(sr, scale_factor=1 / SCALE, mode="bicubic", antialias=True, align_corners=False)
    return (down - lr).abs().mean((1, 2, 3))
