"""The SR zoo's procedural members: stand-ins for "several diffusion SR models" (docs/method.md §2 [ours]).

    sr = zoo.texture(hr, lr, strength, g)      # HR (B, 3, H, W) → an SR-like image with one typical failure

FGR-30k collects the outputs of real diffusion SR models; this toy world draws their typical failures
procedurally instead. Each maker takes the HR batch, its LR (None here: they work on HR), a strength in [0, 1]
(B, 1, 1, 1) and a generator, and returns the degraded image (unclamped). data.ZOO lists them beside the
classical upsamplers, and data.sr_zoo picks one per sample. To add a failure: write a maker here, name it in
data.ZOO. The first five imitate diffusion-SR failures; the rest are what RL policies paint when they hack a
reward (below).
"""

import torch
import torch.nn.functional as F


def gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of std sigma (px), reflect-padded: the zoo's (and the masks') smoother."""
    k, c = int(2 * round(3 * sigma) + 1), x.shape[1]
    ax = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    w = torch.exp(-0.5 * (ax / sigma) ** 2)
    w = (w / w.sum()).view(1, 1, 1, k)
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect"), w.expand(c, 1, 1, k), groups=c)
    wy = w.view(1, 1, k, 1).expand(c, 1, k, 1)
    return F.conv2d(F.pad(x, (0, 0, k // 2, k // 2), mode="reflect"), wy, groups=c)


def edges(x: torch.Tensor) -> torch.Tensor:
    """Local edge strength in [0, 1], (B, 1, H, W): where diffusion models tend to paint and ring."""
    y = x.mean(1, keepdim=True)
    return (gauss((y - gauss(y, 1.0)).abs(), 1.0) / 0.05).clamp(0, 1)


def texture(hr, lr, s, g):  # hallucinated high-frequency texture: invented detail, strongest off-edge
    n = torch.randn(hr.shape[0], 1, *hr.shape[-2:], generator=g).to(hr)
    return hr + 0.15 * s * (n - gauss(n, 0.8)) * (1.2 - edges(hr))  # high-pass: invented fur, foliage


def halo(hr, lr, s, g):  # over-sharpening: unsharp masking with a wide kernel rings around edges
    return hr + 3.0 * s * (hr - gauss(hr, 2.0))


def paint(hr, lr, s, g):  # painterly smoothing: detail washed out into flat, posterised patches
    levels = 4 + (1 - s) * 12  # fewer grey levels at higher strength
    sm = torch.lerp(gauss(hr, 0.7), gauss(hr, 2.0), s)  # per-sample blur width via a blend
    return (sm * levels).round() / levels


def colour(hr, lr, s, g):  # colour-shift blotches: low-frequency hue errors
    field = torch.rand(hr.shape[0], 3, 4, 4, generator=g).to(hr) - 0.5
    field = F.interpolate(field, size=hr.shape[-2:], mode="bicubic", align_corners=False)
    return hr + 0.5 * s * (field - field.mean(1, keepdim=True))


def checker(hr, lr, s, g):  # checkerboard: the transposed-convolution artifact, on structured regions
    ii, jj = torch.meshgrid(torch.arange(hr.shape[-2]), torch.arange(hr.shape[-1]), indexing="ij")
    cb = (((ii + jj) % 2) * 2 - 1).float().to(hr)
    return hr + 0.25 * s * cb * (0.3 + edges(hr))


# What diffusion-RL policies paint when they hack a reward (docs/method.md "The RM must see what RL paints"):
# chroma speckle, colour grain, 2–4 px blocks and grids, ringing, colour shifts (docs/experiments.md). The
# makers above have none (their grain is luma-only, their colour error a smooth 4×4 field): an RM trained on
# them alone scored such samples above HR. Amplitude constants: the knob for subtler or stronger.
SPECKLE, GRAIN, GRID, RING, SATURATE = 0.15, 0.12, 0.12, 3.0, 1.0


def pick_scale(x, g, sizes=(1, 2)):
    """Per-sample choice among `sizes` (px), (B, 1, 1, 1) long: artifacts at 1 px and at 2–4 px."""
    pick = torch.randint(len(sizes), (x.shape[0],), generator=g)
    return torch.tensor(sizes)[pick].view(-1, 1, 1, 1).to(x.device)


def block_mean(x: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """x averaged over px×px blocks, per sample (px (B, 1, 1, 1) of 1, 2 or 4): piecewise constant."""
    out = x
    for p in (2, 4):
        out = torch.where(px == p, F.interpolate(F.avg_pool2d(x, p), scale_factor=p, mode="nearest"), out)
    return out


def speckle(hr, lr, s, g):  # per-pixel chroma speckle at 1–2 px: independent per channel, luma-neutral
    px = pick_scale(hr, g)
    n = block_mean(torch.randn(hr.shape, generator=g).to(hr), px) * px  # × px: unit std at any block size
    return hr + SPECKLE * s * (n - n.mean(1, keepdim=True))  # minus the grey part: magenta/green, not luma


def grain(hr, lr, s, g):  # colour-channel grain: high-pass noise per channel, strongest off-edge
    n = torch.randn(hr.shape, generator=g).to(hr)
    return hr + GRAIN * s * (n - gauss(n, 0.8)) * (1.2 - edges(hr))


def grid(hr, lr, s, g):  # 2–4 px blocking with a checker-like grid: what a collapsed policy paints
    px = pick_scale(hr, g, (2, 4))
    (H, W), dev = hr.shape[-2:], hr.device
    ii, jj = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    cb = ((ii // px + jj // px) % 2) * 2 - 1.0  # (B, 1, H, W): a checkerboard of px×px cells
    return torch.lerp(hr, block_mean(hr, px), s) + GRID * s * cb


def ringing(hr, lr, s, g):  # ringing: the Gibbs oscillation a hard low-pass leaves beside every edge
    H, W = hr.shape[-2:]
    fy = torch.fft.fftfreq(H, device=hr.device).abs().view(-1, 1)
    fx = torch.fft.rfftfreq(W, device=hr.device).view(1, -1)
    keep = ((fy**2 + fx**2).sqrt() < 0.18).to(hr)  # an ideal (brick-wall) low-pass: it rings
    lp = torch.fft.irfft2(torch.fft.rfft2(hr) * keep, s=(H, W))
    return hr + RING * s * (lp - gauss(hr, 1.5))  # the oscillation itself, beyond a smooth low-pass


def saturate(hr, lr, s, g):  # over-saturation: colours pushed away from grey (a reward-hacking colour shift)
    y = hr.mean(1, keepdim=True)
    return y + (1 + SATURATE * s) * (hr - y)
