"""Applying the trained models to your own images: evaluate.py's `score` and `upscale` commands.

    python evaluate.py score a.png b.jpg --rm=out/eval/work/rm/rm_stage3 --out_dir=out/scores
    python evaluate.py upscale lr.png --policy=out/eval/work/rl_pg_ccl_s0/policy_final --out_dir=out/sr

    python evaluate.py score --data=lr:LR_DIR --policy=DIR --rm=DIR     # RealLR200-style: upscale, then score

`score` prints each image's FinPercep-RM score S (higher = better, docs/method.md §1) and writes the image
with its degradation map M as a red overlay (<name>_dmap.png); `upscale` writes the ×4 result (<name>_x4.png).
--data=lr:LR_DIR adds every image of that folder to the inputs. `score --policy=DIR` first upscales each
input with the policy and scores the result: the paper's no-reference protocol for LR-only test sets
(RealLR200, RealLQ250; docs/method.md §6) — RM scores and maps only, as there is no HR for PSNR or the gold
judge. Any size and any Pillow-readable image (grey, RGBA, 16-bit: images.to_rgb_float) works; an unreadable
file is reported and skipped. Both models are convolutional but have a total stride, so an image is padded
(reflect) to a multiple of it and the output cropped back; a large image is cut into overlapping tiles,
run in batches of tiles, and the outputs are blended with linear ramps over the overlaps (no seams).
Kept apart from evaluate.py (the comparison experiment) so each file reads on its own; evaluate.py stays the
single entry point and passes its Config and command here (command). sample is the policy sampler whose
outputs evaluate.py judges: a policy applied to LR crops, with fixed seeds.
"""

import os

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

import config
import data
import images
import rundir
from policy import POLICY_FIX, load_policy
from rm import load_rm

# Default tile side for score: the crop the RM was trained on (rm.json "crop", 64 px by default), so every
# tile is what the RM has seen. Its score pools globally and its GroupNorm statistics are per image: on a
# much larger tile of the same picture its map comes out far fainter.
SCORE_TILE = 64  # when rm.json does not say
# An RM needs its deepest features to span more than one pixel (GroupNorm statistics, pooling): images
# smaller than this are padded up to it. 32 px = 4×4 positions of f_N at the default stride 8.
MIN_SCORE = 32
UPSCALE_TILE = 128  # default LR tile side for upscale (→ 512 px out: UNet activations stay a few hundred MB)


def overlay(img: torch.Tensor, dmap: torch.Tensor, alpha: float = 0.6, floor: float = 0.1) -> torch.Tensor:
    """The degradation map on the image, (…, 3, H, W) + (…, 1, H, W) → (…, 3, H, W): red where M is high.

    Transparent up to `floor` (evaluate's "artifact" threshold), then more opaque as M rises, up to `alpha`
    at M = 0.6: SR outputs carry a low map almost everywhere, and a plain M-weighted tint hides the image."""
    red = img.new_tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    a = alpha * ((dmap - floor) / (0.6 - floor)).clamp(0, 1)
    return img * (1 - a) + red * a


def save_png(img: torch.Tensor, path: str) -> None:
    """(3, H, W) in [0, 1] → 8-bit RGB PNG."""
    arr = (img.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    Image.fromarray(arr).save(path)


def read_images(paths):
    """Yield (path, (1, 3, H, W) float RGB); files Pillow cannot read are reported in one line and skipped."""
    for p in paths:
        try:
            with Image.open(p) as im:
                yield p, images.to_rgb_float(im)[None]
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            print(f"skipped {p}: {type(e).__name__}: {e}")


def _starts(L: int, t: int, overlap: int) -> list:
    """Tile origins along one side of length L: every t − overlap, the last one flush with the end."""
    return [0] if L <= t else list(range(0, L - t, t - overlap)) + [L - t]


def _ramp(n: int, overlap: int) -> torch.Tensor:
    """Blending weight along a tile side: rises linearly over `overlap` pixels at both ends, > 0 everywhere
    (normalising by the summed weights makes the image borders, covered by one tile only, come out right)."""
    i = torch.arange(n, dtype=torch.float32)
    return ((torch.minimum(i, n - 1 - i) + 1) / (overlap + 1)).clamp(max=1)


@torch.no_grad()
def tiled(fn, x, tile: int, mult: int, scale: int = 1, batch: int = 8, min_size: int = 1) -> torch.Tensor:
    """fn over overlapping tiles of x (1, C, H, W), blended: (1, C', scale·H, scale·W).

    fn maps (n, C, t, t') → (n, C', scale·t, scale·t'). x is padded (reflect; replicate when the image is
    smaller than the pad) to a multiple of `mult` and to at least `min_size`; tile sides and overlaps are
    multiples of `mult` too. The output is cropped back to the unpadded size."""
    H, W = x.shape[-2:]
    ph, pw = max(-H % mult, min_size - H), max(-W % mult, min_size - W)
    ph, pw = ph + -(H + ph) % mult, pw + -(W + pw) % mult  # still a multiple after the min_size pad
    x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < H and pw < W else "replicate")
    Hp, Wp = x.shape[-2:]
    tile = max(mult, min_size, tile // mult * mult)
    ov = min(max(mult, tile // 8 // mult * mult), tile - mult)  # overlap ≈ tile / 8, a multiple of mult
    th, tw = min(tile, Hp), min(tile, Wp)
    boxes = [(y, x0) for y in _starts(Hp, th, ov) for x0 in _starts(Wp, tw, ov)]
    tiles = torch.stack([x[0, :, y : y + th, x0 : x0 + tw] for y, x0 in boxes])  # slicing views, no compute
    chunks = tiles.split(batch)  # the model runs batched over tiles; a bar when there are several batches
    out = torch.cat([fn(t) for t in tqdm(chunks, desc="tiles", leave=False, disable=len(chunks) < 2)])
    s = scale
    w = (_ramp(s * th, s * ov)[:, None] * _ramp(s * tw, s * ov)[None, :]).to(out)
    acc = out.new_zeros(1, out.shape[1], s * Hp, s * Wp)
    norm = out.new_zeros(1, 1, s * Hp, s * Wp)
    for (y, x0), o in zip(boxes, out):  # a loop over tiles (a handful), each a whole-tile tensor op
        acc[..., s * y : s * (y + th), s * x0 : s * (x0 + tw)] += w * o
        norm[..., s * y : s * (y + th), s * x0 : s * (x0 + tw)] += w
    return (acc / norm)[..., : s * H, : s * W]


def _out_path(out_dir: str, path: str, suffix: str, used: set) -> str:
    """<out_dir>/<stem><suffix>.png, with _2, _3, … when two inputs share a name."""
    stem = os.path.splitext(os.path.basename(path))[0]
    name, i = f"{stem}{suffix}", 1
    while name in used:
        i += 1
        name = f"{stem}{suffix}_{i}"
    used.add(name)
    return os.path.join(out_dir, name + ".png")


def inputs(cfg, paths: list) -> list:
    """The image paths given, plus every image of --data=lr:LR_DIR (any other --data is a one-line error:
    these commands read LR or SR images, never a training source)."""
    if cfg.data == "builtin":
        return list(paths)
    if not cfg.data.startswith("lr:"):
        raise config.ConfigError(f"--data={cfg.data}: score and upscale take lr:LR_DIR (or image paths)")
    return list(paths) + images.lr_files(cfg.data)


def upscaler(cfg, dev):
    """fn(img (1, 3, h, w)) -> (1, 3, 4h, 4w): --policy, tiled, with one fixed seed (reruns match)."""
    pol = load_policy(cfg.policy, dev)
    steps, eta = cfg.steps or None, (cfg.eta if cfg.eta >= 0 else None)  # None = the policy's own defaults
    gen = torch.Generator(dev).manual_seed(cfg.seed)
    fn = lambda t: pol.upscale(t, steps, eta, gen)  # noqa: E731
    # pol.lr_multiple: the LR size its UNet's strides divide (pixel and latent policies differ)
    return lambda img: tiled(fn, img, cfg.tile or UPSCALE_TILE, pol.lr_multiple, data.SCALE, cfg.tile_batch)


@torch.no_grad()
def sample(policy_dir, lr, n_seeds: int, dev) -> torch.Tensor:
    """(n_seeds, B, 3, 4h, 4w) samples with the K and eta the policy was trained to sample with (its
    policy.json), one fixed generator per seed; policy_dir None = bicubic (the same for every seed)."""
    if policy_dir is None:
        return data.upsample(lr)[None].expand(n_seeds, -1, -1, -1, -1)
    pol = load_policy(policy_dir, dev)
    gens = [config.generator("eval/sample", s, device=dev) for s in range(n_seeds)]
    return torch.stack([pol.upscale(lr.to(dev), generator=g).cpu() for g in gens])


def score(cfg, paths: list) -> list:
    """Print the RM score of every image (of its ×4 upscale with --policy) and write <stem>_dmap.png overlays
    (and <stem>_x4.png). Returns [(path, score)]."""
    if not cfg.rm:
        raise config.ConfigError("score needs --rm=DIR (an RM stage, e.g. out/rm/rm_stage3); make one with "
                                 "`python train_rm.py`")  # fmt: skip
    paths = inputs(cfg, paths)
    if not paths:
        raise config.ConfigError("score needs image paths: python evaluate.py score IMAGES --rm=DIR")
    dev = config.pick_device(cfg.device)
    rm = load_rm(cfg.rm, dev)
    tile = cfg.tile or int(rundir.read_kind(cfg.rm, "rm", "python train_rm.py").get("crop", SCORE_TILE))
    up = upscaler(cfg, dev) if cfg.policy else None  # no-reference evaluation of a policy's outputs
    os.makedirs(cfg.out_dir, exist_ok=True)

    def fn(t):  # one output image per tile: channel 0 the tile's score everywhere, channel 1 its map
        s, m = rm(t)
        m = torch.zeros_like(t[:, :1]) if m is None else m
        return torch.cat([s.view(-1, 1, 1, 1).expand_as(m), m], 1)

    out, used = [], set()
    for p, img in read_images(paths):
        if up is not None:
            img = up(img.to(dev)).cpu()  # back on the CPU, where the map below comes back too
            save_png(img[0], _out_path(cfg.out_dir, p, "_x4", used))
        # A tiled image's score is the blend-weighted mean of its tiles' scores (a whole-image S otherwise).
        sm = tiled(fn, img.to(dev), tile, rm.stride, 1, cfg.tile_batch, MIN_SCORE)[0].cpu()
        s, M = float(sm[0].mean()), sm[1:]
        line = f"{p}\t{img.shape[-1]}x{img.shape[-2]}\tscore {s:.4f}"
        if rm.stage > 0:  # RM_0 is a global IQA without a map (docs/method.md §5): nothing to overlay
            line += f"\tmean map {float(M.mean()):.3f}\tarea>0.1 {float((M > 0.1).float().mean()):.1%}"
            save_png(overlay(img[0], M), _out_path(cfg.out_dir, p, "_dmap", used))
        print(line)
        out.append((p, s))
    if not out:  # every input was unreadable: a failure, not a result
        raise config.ConfigError(f"none of the {len(paths)} input(s) could be read; nothing scored")
    if len(out) > 1:  # a folder's summary: the number a test-set table reports
        print(f"mean score over {len(out)} images: {sum(s for _, s in out) / len(out):.4f}")
    return out


def upscale(cfg, paths: list) -> list:
    """Write the ×4 upscale of every image as <stem>_x4.png in out_dir. Returns the written paths."""
    if not cfg.policy:
        raise config.ConfigError(f"upscale needs --policy=DIR (a policy directory); make one: `{POLICY_FIX}`")
    paths = inputs(cfg, paths)
    if not paths:
        raise config.ConfigError("upscale needs image paths: python evaluate.py upscale IMAGES --policy=DIR")
    dev = config.pick_device(cfg.device)
    up = upscaler(cfg, dev)
    os.makedirs(cfg.out_dir, exist_ok=True)
    out, used = [], set()
    for p, img in read_images(paths):
        sr = up(img.to(dev))[0]
        dst = _out_path(cfg.out_dir, p, "_x4", used)
        save_png(sr, dst)
        print(f"{p}\t{img.shape[-1]}x{img.shape[-2]} → {sr.shape[-1]}x{sr.shape[-2]}\t{dst}")
        out.append(dst)
    if not out:  # every input was unreadable: a failure, not a result
        raise config.ConfigError(f"none of the {len(paths)} input(s) could be read; nothing upscaled")
    return out


def command(cfg, args: list):
    """evaluate.py's user commands: args = [score | upscale, IMAGES...], cfg its parsed Config. Returns what
    score / upscale return; an unknown command is a one-line error, Ctrl-C a one-line exit."""
    if args[0] not in ("score", "upscale"):
        raise config.ConfigError(f"unknown command '{args[0]}'; use score IMAGES --rm=DIR, upscale IMAGES "
                                 "--policy=DIR, or no command for the comparison")  # fmt: skip
    try:
        return (score if args[0] == "score" else upscale)(cfg, args[1:])
    except KeyboardInterrupt:  # what was written stays written: one line, no traceback
        raise SystemExit(f"interrupted: the images done so far are in {cfg.out_dir}") from None
