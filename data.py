"""Where the data comes from: images, HR→LR degradation, the SR-artifact zoo, masks and FGR triplets.

    pool = load_pool("builtin", split="train")          # or a folder of HR images
    hr = pool.crops(16, 64, g)                           # (16, 3, 64, 64) random HR crops in [0, 1]
    lr = degrade(hr, strength=0.5, generator=g)          # (16, 3, 16, 16), Real-ESRGAN-style, ×4
    batch = fgr_batch(pool, 16, 64, difficulty, g)       # the FGR triplets of method.md §2

FGR-30k (method.md §2) is built by running HR images through degradation and several SR models, then
pasting SR regions into the HR image (I_syn = Mask ⊙ I_SR + (1 − Mask) ⊙ I_GT) and labelling the result
with the label function of metrics.py. We build the same thing on the fly, offline [ours]: the "SR models"
are classical upsamplers, procedural artifact makers that imitate diffusion-SR failures, and — when one
exists — samples of this project's own diffusion policy (the `sr_models` hook); SAM masks are replaced by
SLIC superpixels plus random brush strokes, ellipses and rectangles, feathered at the edges.

The built-in split (fixed, so numbers compare across runs): the held-out photos below are never trained on;
evaluation and validation crop only them.
"""

import glob
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from config import ConfigError
from metrics import label_map

SCALE = 4  # ×4 super-resolution throughout (method.md §6)
TRAIN_PHOTOS = ("astronaut", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")
TRAIN_GRAY = ("camera", "brick", "grass", "gravel", "coins")  # texture-rich grey photos, used as RGB
HELDOUT_PHOTOS = ("chelsea", "coffee", "rocket")  # validation / evaluation only, never trained on
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------------
# Image sources


def to_rgb_float(img: Image.Image) -> torch.Tensor:
    """Any Pillow image → (3, H, W) float RGB in [0, 1]. Grey, RGBA, palette and 16-bit are converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: rescale by the bit depth
        a = np.asarray(img, dtype=np.float32)
        # A 16-bit file is /65535 whatever its values (a dark image is still 16-bit); only the 32-bit modes
        # ("I", "F": bit depth unknown) fall back to a guess from the range.
        a = a / (65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0)
        a = np.repeat(a[..., None], 3, axis=2)
    else:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")  # composite transparency on white: what a viewer would show
            bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(bg, img)
        a = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).clamp(0, 1)


def _builtin(split: str) -> list[torch.Tensor]:
    import skimage.data as skd  # imported here: only the built-in source needs it

    names = HELDOUT_PHOTOS if split != "train" else TRAIN_PHOTOS + TRAIN_GRAY
    out = []
    for n in names:
        a = getattr(skd, n)()
        a = a[0] if isinstance(a, tuple) else a  # stereo_motorcycle returns (left, right, disparity)
        a = np.repeat(a[..., None], 3, 2) if a.ndim == 2 else a[..., :3]
        out.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0)
    return out


def _image_files(path: str) -> list[str]:
    """Image files under `path` (recursively), sorted: the order, and so the seeds, never depend on the OS."""
    return sorted(
        f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if f.lower().endswith(IMAGE_EXTS)
    )


class _Decode(torch.utils.data.Dataset):
    """One file per item: decode it (and compute its superpixels when asked). Runs in DataLoader workers."""

    def __init__(self, files: list[str], segments: bool):
        self.files, self.segments = files, segments

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        try:
            with Image.open(self.files[i]) as im:
                x = to_rgb_float(im)
        except Exception:  # a corrupt or unsupported file: reported by the caller, in the main process
            return None
        return x, (_segments(x) if self.segments else None)


def _first(batch):  # batch_size=None hands one item at a time; a module-level function pickles under spawn
    return batch


# Folders are decoded (and their superpixels computed) through a DataLoader, one file per item, so worker
# processes can share the start-up work: a 1536×1024 PNG takes 0.13 s to decode + 0.59 s of SLIC on one core.
# Measured on this project's shared 2-core dev machine (12 such files, 3 runs each): in-process 6.8–7.4 s,
# 2 workers 8.3–11.3 s — slower, the cores being busy — so workers are OFF by default. On a many-core machine
# set data.MAX_WORKERS (e.g. 8) and time load_pool both ways; not measured there yet. The training loops draw
# crops from decoded images in memory (microseconds): workers there would only add overhead.
MAX_WORKERS = 0


def _read(files: list[str], root: str, segments: bool = False):
    """Decode `files` (in worker processes when there are several). Returns (images, segments or Nones);
    unreadable files are skipped with one warning naming them."""
    workers = min(MAX_WORKERS, os.cpu_count() or 1) if len(files) >= 4 else 0
    workers = workers if workers > 1 else 0  # one worker process is no faster than the main process
    # (with 0 the loader runs in this process: the same code path, no processes started)
    loader = torch.utils.data.DataLoader(
        _Decode(files, segments), batch_size=None, num_workers=workers, collate_fn=_first
    )
    imgs, segs, bad = [], [], []
    for f, item in zip(files, loader):  # the loader keeps the file order
        if item is None:
            bad.append(os.path.relpath(f, root))
        else:
            imgs.append(item[0])
            segs.append(item[1])
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {root}: {', '.join(bad)}", stacklevel=3)
    return imgs, segs


def _folder(path: str) -> list[torch.Tensor]:
    return _read(_image_files(path), path)[0]


def parse_source(data: str) -> tuple[str, list[str]]:
    """--data → (kind, paths): ('builtin', []), ('folder', [HR_DIR]), ('paired', [LR_DIR, HR_DIR]),
    ('lr', [LR_DIR]). Missing folders are a one-line error naming the fix."""
    if data == "builtin":
        return "builtin", []
    kind, sep, rest = data.partition(":")
    if sep and kind in ("paired", "lr"):
        dirs = rest.split(",") if kind == "paired" else [rest]
        if kind == "paired" and len(dirs) != 2:
            raise ConfigError(f"--data={data}: write paired:LR_DIR,HR_DIR (two folders, one comma)")
    else:
        kind, dirs = "folder", [data]
    for d in dirs:
        if not os.path.isdir(d):
            raise ConfigError(
                f"--data={data}: '{d}' is not a folder; use builtin, an HR folder, paired:LR_DIR,HR_DIR"
                " or lr:LR_DIR"
            )
    return kind, dirs


def load_images(data: str = "builtin", split: str = "train") -> list[torch.Tensor]:
    """The HR images of a source, each (3, H, W) in [0, 1]: 'builtin' (split-aware) or a folder."""
    if data == "builtin":
        return _builtin(split)
    if not os.path.isdir(data):
        raise ConfigError(f"--data={data}: not 'builtin' and not a folder; give a folder of HR images")
    imgs = _folder(data)
    if not imgs:
        raise ConfigError(f"no usable image in {data}: put PNG/JPEG/WebP/BMP/TIFF HR images there")
    return imgs


def _segments(img: torch.Tensor, px: int = 160) -> torch.Tensor:
    """SLIC superpixels (the SAM stand-in), ~px pixels each, computed once per image at load time.

    Run on a 2× downscaled copy (4× cheaper; masks need no pixel-exact boundaries), labels upsampled back."""
    from skimage.segmentation import slic

    small = F.avg_pool2d(img[None], 2)[0] if min(img.shape[-2:]) >= 128 else img
    f = img.shape[-1] / small.shape[-1]
    n = max(8, int(small.shape[-2] * small.shape[-1] * f * f / px))
    lab = slic(small.permute(1, 2, 0).numpy(), n_segments=n, compactness=10, start_label=0, max_num_iter=5)
    lab = torch.from_numpy(lab).float()[None, None]
    return F.interpolate(lab, size=img.shape[-2:], mode="nearest")[0, 0].long()


class ImagePool:
    """A set of HR images (with their superpixels) to draw random crops from, plus procedural images."""

    def __init__(self, images: list, crop: int, procedural: float = 0.0, name: str = "", segments=None):
        # Images are kept whole and cropped at random: never resized, so a 2K photo keeps its real pixels.
        self.keep = [i for i, im in enumerate(images) if min(im.shape[-2:]) >= crop]  # PairedPool reads it
        if not self.keep:
            sizes = ", ".join(f"{im.shape[-1]}x{im.shape[-2]}" for im in images[:5])
            raise ConfigError(
                f"all images in {name or 'the source'} are smaller than the {crop}px crop "
                f"({sizes}); use larger images or a smaller --crop"
            )
        self.images, self.crop, self.procedural = [images[i] for i in self.keep], crop, procedural
        segs = [segments[i] for i in self.keep] if segments is not None else [None] * len(self.keep)
        self.segments = [s if s is not None else _segments(im) for s, im in zip(segs, self.images)]

    def crops(self, n: int, size: int, g: torch.Generator, with_segments: bool = False):
        """n random (3, size, size) crops; a `procedural` share of them are synthetic images instead."""
        k = torch.randint(len(self.images), (n,), generator=g).tolist()
        out, segs = [], []
        for i in k:  # slicing views: cheap, and the images have different sizes so cannot be stacked
            im = self.images[i]
            y = int(torch.randint(im.shape[-2] - size + 1, (1,), generator=g))
            x = int(torch.randint(im.shape[-1] - size + 1, (1,), generator=g))
            out.append(im[:, y : y + size, x : x + size])
            segs.append(self.segments[i][y : y + size, x : x + size])
        hr, seg = torch.stack(out), torch.stack(segs)
        if self.procedural > 0:
            use = torch.rand(n, generator=g) < self.procedural
            if use.any():
                hr[use] = procedural_images(int(use.sum()), size, g)
                seg[use] = _grid_segments(int(use.sum()), size)  # no natural segments: a 4×4 grid
        return (hr, seg) if with_segments else hr

    def pairs(self, n: int, size: int, g: torch.Generator, strength=0.0, groups: int = 1):
        """n aligned (HR (n, 3, size, size), LR (n, 3, size/4, size/4)) training pairs: what SFT and RL draw.

        Here LR is synthesised: data.degrade of the HR crops. `strength` is a float or a zero-argument
        callable (e.g. sft.draw_strength), called once per group *after* the crops are drawn, so the random
        stream is the one the loops drew before pools had this method. groups > 1 splits the batch into
        interleaved groups with one strength each (several degradation levels in one batch)."""
        hr = self.crops(n, size, g)
        draw = strength if callable(strength) else (lambda: strength)
        lr = torch.cat([degrade(hr[i::groups], draw(), g) for i in range(groups)])
        return torch.cat([hr[i::groups] for i in range(groups)]), lr


class PairedPool(ImagePool):
    """Real (LR, HR) pairs, e.g. RealSR or DRealSR: aligned random crops of both (method.md §6's test sets).

    LR is either 1/4 of HR (HR may be up to 3 px larger, as when HR sides are not multiples of 4: the excess
    at the bottom/right is never cropped) or, as in RealSR's aligned release, the same size as HR; then the
    LR crop is downsampled ×4 with data.degrade(·, 0) — Pillow's antialiased bicubic, the project's one
    downsampler — so the policy always sees 1/4-size LR. The RM side (`crops`, used by fgr_batch) draws HR
    crops only: the reward model learns from HR images with synthetic artifacts, whatever LR came with them.
    Images stay decoded in memory (12 bytes per HR pixel): for a DIV2K-size set, point at a subset."""

    def __init__(self, lrs: list, hrs: list, crop: int, name: str = "", segments=None):
        if crop % SCALE:
            raise ConfigError(f"--crop={crop} must be a multiple of {SCALE} for paired data")
        super().__init__(hrs, crop, 0.0, name, segments)
        self.lrs = [lrs[i] for i in self.keep]

    def pairs(self, n: int, size: int, g: torch.Generator, strength=0.0, groups: int = 1):
        """n aligned (HR, LR) crops of real pairs; `strength` and `groups` are ignored: the LR is real."""
        k = torch.randint(len(self.images), (n,), generator=g).tolist()
        hrs, lrs, same = [], [], []
        for i in k:  # slicing views of images of different sizes: a loop over the batch, no compute
            hr, lr = self.images[i], self.lrs[i]
            s = 1 if lr.shape[-2:] == hr.shape[-2:] else SCALE  # HR pixels per LR pixel
            c = size // s  # crop side on the LR grid
            y = int(torch.randint(lr.shape[-2] - c + 1, (1,), generator=g))
            x = int(torch.randint(lr.shape[-1] - c + 1, (1,), generator=g))
            lrs.append(lr[:, y : y + c, x : x + c])
            hrs.append(hr[:, s * y : s * y + size, s * x : s * x + size])
            same.append(s == 1)
        out = torch.empty(n, 3, size // SCALE, size // SCALE)
        for flag in (False, True):  # one batched call per kind: already 1/4, or same size (downsample it)
            idx = [j for j, f in enumerate(same) if f == flag]
            if idx:
                x = torch.stack([lrs[j] for j in idx])
                out[idx] = degrade(x, 0.0) if flag else x
        return torch.stack(hrs), out


# RealSR names pairs Canon_001_HR.png / Canon_001_LR4.png, DRealSR x1 / x4, DIV2K 0001.png / 0001x4.png: the
# pair key is the file stem without such a suffix. A suffix also says a file's side when LR_DIR == HR_DIR.
_SUFFIX = re.compile(r"[_-]?(hr|lr\d*|x\d+)$", re.IGNORECASE)


def _key(path: str) -> tuple[str, str]:
    """(pair key, side) of a file: side 'hr' (_HR, x1), 'lr' (_LR, _LR4, x4, ...) or '' (no suffix)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    m = _SUFFIX.search(stem)
    if not m or m.start() == 0:
        return stem, ""
    tag = m.group(1).lower()
    return stem[: m.start()], "hr" if tag in ("hr", "x1") else "lr"


def _listing(items: list[str], most: int = 8) -> str:
    return ", ".join(items[:most]) + (f" … and {len(items) - most} more" if len(items) > most else "")


def load_pairs(lr_dir: str, hr_dir: str):
    """Match LR and HR files by key and check their scale. Returns (lrs, hrs, hr_segments); every unmatched or
    mis-scaled file is listed in ONE error, so a user fixes the folder in one go."""
    same_dir = os.path.realpath(lr_dir) == os.path.realpath(hr_dir)
    sides = {"lr": {}, "hr": {}}
    problems = []
    for side, d in (("lr", lr_dir), ("hr", hr_dir)):
        for f in _image_files(d):
            key, tag = _key(f)
            if same_dir and tag != side:  # one folder for both: the suffix decides the side
                if not tag and side == "lr":  # report a suffix-less file once, not once per side
                    problems.append(f"{os.path.basename(f)} (no _HR/_LR suffix)")
                continue
            if key in sides[side]:
                problems.append(f"{os.path.basename(f)} (a second {side.upper()} for '{key}')")
            sides[side][key] = f
    lr_keys, hr_keys = set(sides["lr"]), set(sides["hr"])
    problems += [f"{os.path.basename(sides['lr'][k])} (no HR)" for k in sorted(lr_keys - hr_keys)]
    problems += [f"{os.path.basename(sides['hr'][k])} (no LR)" for k in sorted(hr_keys - lr_keys)]
    keys = sorted(lr_keys & hr_keys)
    lrs, _ = _read([sides["lr"][k] for k in keys], lr_dir)
    hrs, segs = _read([sides["hr"][k] for k in keys], hr_dir, segments=True)
    if len(lrs) != len(keys) or len(hrs) != len(keys):
        raise ConfigError(f"unreadable images in paired:{lr_dir},{hr_dir} (see the warning); remove them")
    for k, lr, hr in zip(keys, lrs, hrs):
        (h, w), (H, W) = lr.shape[-2:], hr.shape[-2:]
        if (h, w) != (H, W) and (h, w) != (H // SCALE, W // SCALE):
            name = os.path.basename(sides["lr"][k])
            problems.append(f"{name} (LR {w}x{h} vs HR {W}x{H}: neither 1/4 nor equal)")
    if problems:
        raise ConfigError(
            f"paired:{lr_dir},{hr_dir}: {len(problems)} file(s) unmatched or mis-scaled: {_listing(problems)}"
            "; pairs share a name up to _HR/_LR4/x4, and LR is 1/4 of HR or the same size"
        )
    if not keys:
        raise ConfigError(
            f"no image pairs in paired:{lr_dir},{hr_dir}: add LR and HR images with matching names"
        )
    return lrs, hrs, segs


def lr_files(data: str) -> list[str]:
    """The image files of --data=lr:LR_DIR (evaluate.py score / upscale: no HR, no-reference scores only)."""
    kind, dirs = parse_source(data)
    if kind != "lr":
        raise ConfigError(f"--data={data}: score and upscale read images from lr:LR_DIR (or image paths)")
    files = _image_files(dirs[0])
    if not files:
        raise ConfigError(f"no image in {dirs[0]}: put PNG/JPEG/WebP/BMP/TIFF LR images there")
    return files


def load_pool(data="builtin", split="train", crop=64, procedural=None) -> ImagePool:
    """An ImagePool of a source (a PairedPool for paired:LR_DIR,HR_DIR). Procedural images join the built-in
    training split only (30 %). lr:LR_DIR has no HR, so nothing can train on it: a one-line error."""
    kind, dirs = parse_source(data)
    if kind == "lr":
        raise ConfigError(
            f"--data={data} has no HR images, so it cannot train or be judged against HR; use it with "
            "`python evaluate.py score` / `upscale`, and train on an HR folder or paired:LR_DIR,HR_DIR"
        )
    if kind == "paired":
        lrs, hrs, segs = load_pairs(*dirs)
        return PairedPool(lrs, hrs, crop, name=data, segments=segs)
    if procedural is None:
        procedural = 0.3 if (data == "builtin" and split == "train") else 0.0
    if kind == "builtin":
        return ImagePool(load_images(data, split), crop, procedural, name=data)
    imgs, segs = _read(_image_files(data), data, segments=True)  # decode + superpixels in worker processes
    if not imgs:
        raise ConfigError(f"no usable image in {data}: put PNG/JPEG/WebP/BMP/TIFF HR images there")
    return ImagePool(imgs, crop, procedural, name=data, segments=segs)


def _grid_segments(n: int, size: int, cells: int = 4) -> torch.Tensor:
    idx = torch.arange(size) * cells // size
    return (idx[:, None] * cells + idx[None, :]).expand(n, size, size).clone()


def procedural_images(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """Synthetic HR images with known structure: gradients, stripes, checkerboards, disks, band-limited noise
    and strokes, each in random colours, all computed batched. Sharp edges and fine periodic texture are
    exactly where SR blurs or invents detail, so they sharpen the reward model's eye."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731  (uniform draws from the one generator)
    c0, c1 = r(n, 3, 1, 1), r(n, 3, 1, 1)  # two colours per image
    th = r(n, 1, 1) * np.pi
    u = xx * th.cos() + yy * th.sin()  # a random direction for gradients and stripes
    freq = 2 + r(n, 1, 1) * 14
    grad = u.clamp(0, 1)
    stripes = (torch.sin(2 * np.pi * freq * u) > 0).float()
    cells = 2 + (r(n, 1, 1) * 10).floor()
    checker = (((xx * cells).floor() + (yy * cells).floor()) % 2).float()
    cx, cy, rad = r(n, 1, 1), r(n, 1, 1), 0.1 + 0.3 * r(n, 1, 1)
    disk = (((xx - cx) ** 2 + (yy - cy) ** 2) < rad**2).float()
    noise = F.interpolate(r(n, 1, 8, 8), size=(size, size), mode="bicubic", align_corners=False)[:, 0]
    noise = (
        F.interpolate(r(n, 1, size // 4, size // 4), size=(size, size), mode="bilinear", align_corners=False)[
            :, 0
        ]
        * 0.5
        + noise * 0.5
    )  # band-limited texture
    stroke = (torch.sin(2 * np.pi * (freq / 4) * (xx + 0.3 * torch.sin(6 * yy + th))) > 0.8).float()
    kinds = torch.stack([grad, stripes, checker, disk, noise.clamp(0, 1), stroke], 1)  # (n, 6, S, S)
    pick = torch.randint(6, (n,), generator=g)
    t = kinds[torch.arange(n), pick].unsqueeze(1)  # (n, 1, S, S) in [0, 1]
    return (c0 + (c1 - c0) * t).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------
# HR → LR degradation (×4): a compact Real-ESRGAN-style two-stage pipeline


def _pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pillow's antialiased bicubic on the uint8 image: the classical SR protocol's downsampler."""
    return to_rgb_float(_pil(x).resize((w, h), Image.BICUBIC))


def _blur_kernel(sigma_x: float, sigma_y: float, theta: float, k: int = 11) -> torch.Tensor:
    """An anisotropic Gaussian kernel (isotropic when sigma_x == sigma_y), normalised to sum 1."""
    ax = torch.arange(k, dtype=torch.float32) - k // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    ker = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return ker / ker.sum()


def _degrade_one(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """One image through blur → random resize → noise → JPEG, twice (the second stage milder), then the
    final resize to 1/4. All random draws come from `g`, so the result is a pure function of the seed."""
    H, W = x.shape[-2:]
    r = lambda: float(torch.rand((), generator=g))  # noqa: E731
    for stage_s in (strength, 0.5 * strength):
        sx, sy = 0.2 + 2.8 * stage_s * r(), 0.2 + 2.8 * stage_s * r()
        if r() < 0.5:
            sy = sx  # half the kernels isotropic, as in Real-ESRGAN
        ker = _blur_kernel(sx, sy, np.pi * r()).to(x)
        x = F.conv2d(F.pad(x[None], (5, 5, 5, 5), mode="reflect"), ker.expand(3, 1, 11, 11), groups=3)[0]
        f = 1 + stage_s * (r() - 0.5)  # random resize by up to ±50 % at full strength
        h, w = max(8, round(x.shape[-2] * f)), max(8, round(x.shape[-1] * f))
        x = _resize(x, h, w)
        if r() < 0.5:  # Gaussian noise, colour or grey
            sig = 25 / 255 * stage_s * r()
            n = torch.randn(x.shape if r() < 0.6 else (1, *x.shape[1:]), generator=g)
            x = x + sig * n
        else:  # Poisson (shot) noise: variance grows with brightness
            peak = 10 ** (3.5 - 2.0 * stage_s * r())  # photons at white; fewer = noisier
            x = torch.poisson(x.clamp(0, 1) * peak, generator=g) / peak
        q = int(95 - 65 * stage_s * r())  # JPEG quality 95 … 30
        buf = __import__("io").BytesIO()
        _pil(x).save(buf, format="JPEG", quality=q)
        x = to_rgb_float(Image.open(buf))
    return _resize(x, H // SCALE, W // SCALE)


def degrade(
    hr: torch.Tensor, strength: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """HR (B, 3, H, W) → LR (B, 3, H/4, W/4) in [0, 1], on the input device.

    strength 0 is plain bicubic downsampling with antialiasing of the uint8 image (Pillow's BICUBIC), the
    classical SR test protocol; strength 1 the full Real-ESRGAN-like ranges. Runs on the CPU (Pillow does the
    resizes and JPEG), one image at a time: it is data preparation, not the training step."""
    if hr.shape[-1] % SCALE or hr.shape[-2] % SCALE:
        raise ValueError(f"degrade: HR size {tuple(hr.shape[-2:])} must be a multiple of {SCALE}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = hr.detach().float().cpu()
    H, W = x.shape[-2:]
    if strength <= 0:
        out = [_resize(im, H // SCALE, W // SCALE) for im in x]
    else:
        out = [_degrade_one(im, strength, g) for im in x]
    return torch.stack(out).to(hr.device)


def upsample(lr: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
    """×4 classical upsampling in torch (batched, differentiable, on the input's device)."""
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(lr, scale_factor=SCALE, mode=mode, **kw).clamp(0, 1)


# ----------------------------------------------------------------------------------------------------
# The SR zoo: stand-ins for "several diffusion SR models" (method.md §2) [ours]. Each maker takes the HR
# batch, its LR and a strength in [0, 1] and returns an SR-like image with that model's typical failure.


def _gauss(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = int(2 * round(3 * sigma) + 1)
    ax = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
    w = torch.exp(-0.5 * (ax / sigma) ** 2)
    w = (w / w.sum()).view(1, 1, 1, k)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (k // 2, k // 2, 0, 0), mode="reflect"), w.expand(c, 1, 1, k), groups=c)
    return F.conv2d(
        F.pad(x, (0, 0, k // 2, k // 2), mode="reflect"), w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c
    )


def _edges(x: torch.Tensor) -> torch.Tensor:
    """Local edge strength in [0, 1], (B, 1, H, W): where diffusion models tend to paint and ring."""
    y = x.mean(1, keepdim=True)
    e = (y - _gauss(y, 1.0)).abs()
    return (_gauss(e, 1.0) / 0.05).clamp(0, 1)


def _texture(hr, lr, s, g):  # hallucinated high-frequency texture: invented detail, strongest off-edge
    n = torch.randn(hr.shape[0], 1, *hr.shape[-2:], generator=g).to(hr)
    n = n - _gauss(n, 0.8)  # high-pass: fine grain, like a diffusion model's invented fur or foliage
    return hr + 0.15 * s * n * (1.2 - _edges(hr))


def _halo(hr, lr, s, g):  # over-sharpening: unsharp masking with a wide kernel rings around edges
    return hr + 3.0 * s * (hr - _gauss(hr, 2.0))


def _paint(hr, lr, s, g):  # painterly smoothing: detail washed out into flat, posterised patches
    levels = 4 + (1 - s) * 12  # fewer grey levels at higher strength
    sm = torch.lerp(_gauss(hr, 0.7), _gauss(hr, 2.0), s)  # per-sample blur width via a blend
    return (sm * levels).round() / levels


def _colour(hr, lr, s, g):  # colour-shift blotches: low-frequency hue errors
    B, _, H, W = hr.shape
    field = torch.rand(B, 3, 4, 4, generator=g).to(hr) - 0.5
    field = F.interpolate(field, size=(H, W), mode="bicubic", align_corners=False)
    return hr + 0.5 * s * (field - field.mean(1, keepdim=True))


def _checker(hr, lr, s, g):  # checkerboard: the transposed-convolution artifact, on structured regions
    H, W = hr.shape[-2:]
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cb = (((ii + jj) % 2) * 2 - 1).float().to(hr)
    return hr + 0.25 * s * cb * (0.3 + _edges(hr))


# What diffusion-RL policies paint when they hack a reward (method.md "The RM must see what RL paints"):
# this project's own RL samples showed magenta/green per-pixel speckle and, in a collapsed arm, 2–4 px
# blocks and checker-like grids; peer reports of Flow-GRPO/SRPO hacking name fine grids and colour shifts.
# The makers above have none of these (their grain is luma-only, their colour error a smooth 4×4 field), so
# an RM trained on them scored such samples above HR. Each has a strength s ∈ [0, 1] (per sample) and an
# amplitude constant, the knob to make it subtler or stronger.
SPECKLE, GRAIN, GRID, RING, SATURATE = 0.15, 0.12, 0.12, 3.0, 1.0


def _pick_scale(x, g, sizes=(1, 2)):
    """Per-sample choice among `sizes` (px), (B, 1, 1, 1) long: artifacts at 1 px and at 2–4 px."""
    pick = torch.randint(len(sizes), (x.shape[0],), generator=g)
    return torch.tensor(sizes)[pick].view(-1, 1, 1, 1).to(x.device)


def _block_mean(x: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """x averaged over px×px blocks, per sample (px (B, 1, 1, 1) of 1, 2 or 4): piecewise constant."""
    out = x
    for p in (2, 4):
        out = torch.where(px == p, F.interpolate(F.avg_pool2d(x, p), scale_factor=p, mode="nearest"), out)
    return out


def _speckle(hr, lr, s, g):  # per-pixel chroma speckle at 1–2 px: independent per channel, luma-neutral
    px = _pick_scale(hr, g)
    n = _block_mean(torch.randn(hr.shape, generator=g).to(hr), px) * px  # × px: unit std at any block size
    return hr + SPECKLE * s * (n - n.mean(1, keepdim=True))  # minus the grey part: magenta/green, not luma


def _grain(hr, lr, s, g):  # colour-channel grain: high-pass noise per channel, strongest off-edge
    n = torch.randn(hr.shape, generator=g).to(hr)
    n = n - _gauss(n, 0.8)
    return hr + GRAIN * s * n * (1.2 - _edges(hr))


def _grid(hr, lr, s, g):  # 2–4 px blocking with a checker-like grid: what a collapsed policy paints
    px = _pick_scale(hr, g, (2, 4))
    H, W = hr.shape[-2:]
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ii, jj = ii.to(hr.device), jj.to(hr.device)
    cb = ((ii // px + jj // px) % 2) * 2 - 1.0  # (B, 1, H, W): a checkerboard of px×px cells
    return torch.lerp(hr, _block_mean(hr, px), s) + GRID * s * cb


def _ringing(hr, lr, s, g):  # ringing: the Gibbs oscillation a hard low-pass leaves beside every edge
    H, W = hr.shape[-2:]
    fy = torch.fft.fftfreq(H, device=hr.device).abs().view(-1, 1)
    fx = torch.fft.rfftfreq(W, device=hr.device).view(1, -1)
    keep = ((fy**2 + fx**2).sqrt() < 0.18).to(hr)  # an ideal (brick-wall) low-pass: it rings
    lp = torch.fft.irfft2(torch.fft.rfft2(hr) * keep, s=(H, W))
    return hr + RING * s * (lp - _gauss(hr, 1.5))  # the oscillation itself, beyond a smooth low-pass


def _saturate(hr, lr, s, g):  # over-saturation: colours pushed away from grey (a reward-hacking colour shift)
    y = hr.mean(1, keepdim=True)
    return y + (1 + SATURATE * s) * (hr - y)


def _classical(mode):
    return lambda hr, lr, s, g: upsample(lr, mode)


ZOO = {
    "nearest": _classical("nearest"),
    "bilinear": _classical("bilinear"),
    "bicubic": _classical("bicubic"),
    "texture": _texture,
    "halo": _halo,
    "paint": _paint,
    "colour": _colour,
    "checker": _checker,
    "speckle": _speckle,
    "grain": _grain,
    "grid": _grid,
    "ringing": _ringing,
    "saturate": _saturate,
}


def sr_zoo(hr, strength, g, lr_strength=0.0, sr_models=None, p_classical=0.3, p_hooks=None) -> torch.Tensor:
    """I_SR for a batch: each sample gets one zoo member (classical with p_classical, else procedural or a
    hook). `sr_models` is the hook: extra makers f(hr, lr, strength, g) -> sr, e.g. a trained policy's
    sampler (wired up in train_rm.py --policy), mixed in as equal members of the procedural group.

    The LR image (HR degraded with `lr_strength`) is made only for the samples whose maker reads it (the
    classical upsamplers and hooks): degradation runs in Pillow and is the costliest part of the data.
    One call per member over the samples that drew it: a loop over ≤ 10 makers, not over samples."""
    classical = [ZOO["nearest"], ZOO["bilinear"], ZOO["bicubic"]]
    procedural = [v for k, v in ZOO.items() if k not in ("nearest", "bilinear", "bicubic")]
    hooks = list(sr_models or [])
    makers = classical + procedural + hooks
    reads_lr = [True] * 3 + [False] * len(procedural) + [True] * len(hooks)
    B = hr.shape[0]
    u = torch.rand(B, generator=g)
    pick = 3 + torch.randint(len(procedural) + len(hooks), (B,), generator=g)  # procedural or hook
    if hooks and p_hooks is not None:  # a fixed share for the hooks (train_rl's co-evolution uses 1.0)
        use_hook = torch.rand(B, generator=g) < p_hooks
        pick = torch.where(
            use_hook,
            3 + len(procedural) + torch.randint(len(hooks), (B,), generator=g),
            3 + torch.randint(len(procedural), (B,), generator=g),
        )
    pick = torch.where(u < p_classical, torch.randint(3, (B,), generator=g), pick)  # classical first
    s = strength * (0.5 + 0.5 * torch.rand(B, generator=g))  # per-sample strength in [s/2, s]
    out = torch.empty_like(hr)
    for m in pick.unique().tolist():
        idx = (pick == m).nonzero().squeeze(1)
        lr = degrade(hr[idx], lr_strength, g) if reads_lr[m] else None
        sm = s[idx].view(-1, 1, 1, 1).to(hr)
        out[idx] = makers[m](hr[idx], lr, sm, g).to(hr)
    return out.clamp(0, 1)


# ----------------------------------------------------------------------------------------------------
# Masks: where the SR region is pasted into the HR image (method.md §2)


def random_masks(n, size, area, g, segments=None, feather=1.5) -> torch.Tensor:
    """(n, 1, size, size) soft masks in [0, 1] covering ~`area` of the image, feathered at the edges.

    Each sample draws one kind: an ellipse, a rectangle, a brush stroke, or (when segments are given)
    a union of superpixels — the SAM stand-in. All kinds are computed batched and one is selected."""
    r = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    A = area * (0.5 + r(n, 1, 1)) * size * size  # target pixels, jittered ×0.5…1.5
    cy, cx = r(n, 1, 1) * size, r(n, 1, 1) * size
    asp = 0.4 + 1.2 * r(n, 1, 1)  # aspect ratio
    th = r(n, 1, 1) * np.pi
    u = (xx - cx) * th.cos() + (yy - cy) * th.sin()
    v = -(xx - cx) * th.sin() + (yy - cy) * th.cos()
    a = (A / (np.pi * asp)).sqrt()
    ellipse = (u / (a * asp)) ** 2 + (v / a) ** 2 <= 1
    rect = (u.abs() <= (A * asp).sqrt() / 2) & (v.abs() <= (A / asp).sqrt() / 2)
    # brush stroke: 8 disks along a random walk, radius set so the stroke covers ~A pixels
    steps = (r(n, 8, 2) - 0.5) * size * 0.25
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
    return _gauss(m, feather).clamp(0, 1) if feather > 0 else m


# ----------------------------------------------------------------------------------------------------
# FGR triplets: (I_GT, I_syn, I_SR, M_gt) — the reward model's training data (method.md §2)


@dataclass
class Difficulty:
    """How hard a batch of triplets is (curriculum.py sets it per RM stage)."""

    area: float = 0.2  # mean share of the image the SR region covers (smaller = harder to find)
    artifact: float = 1.0  # strength of the procedural artifacts (smaller = subtler)
    degrade: float = 0.5  # maximum LR degradation strength (the LR feeds the classical upsamplers)


def fgr_batch(pool, n, size, diff: Difficulty, g, sr_models=None, device="cpu", **zoo_kw) -> dict:
    """A batch of FGR triplets as a dict of tensors on `device`:
    gt, syn, sr (n, 3, S, S); mask, dmap_syn, dmap_sr (n, 1, S, S); gold_gt, gold_syn, gold_sr (n,)."""
    hr, seg = pool.crops(n, size, g, with_segments=True)
    lr_strength = diff.degrade * float(torch.rand((), generator=g))  # one LR strength per batch
    hr = hr.to(device)
    sr = sr_zoo(hr, diff.artifact, g, lr_strength, sr_models, **zoo_kw)  # zoo_kw: p_classical, p_hooks
    mask = random_masks(n, size, diff.area, g, segments=seg).to(device)
    syn = mask * sr + (1 - mask) * hr  # I_syn = Mask ⊙ I_SR + (1 − Mask) ⊙ I_GT
    dmap_syn, dmap_sr = label_map(syn, hr), label_map(sr, hr)
    return {
        "gt": hr,
        "syn": syn,
        "sr": sr,
        "mask": mask,
        "dmap_syn": dmap_syn,
        "dmap_sr": dmap_sr,
        "gold_gt": torch.ones(n, device=device),  # M(I_GT; I_GT) = 0 exactly, so its quality is 1
        "gold_syn": 1 - dmap_syn.mean((1, 2, 3)),
        "gold_sr": 1 - dmap_sr.mean((1, 2, 3)),
    }


def group_triplets(groups: dict, n_groups: int, area: float, g: torch.Generator) -> dict:
    """FGR triplets (fgr_batch's keys) whose I_SR are policy samples: n_groups random groups of `groups`
    (train_rm.policy_groups: G samples of one LR each, with their HR, label maps and gold), pasted into HR
    with random masks of mean `area`; "group" = G and "n_group" = n_groups · G tell rm.rm_losses where
    L_group's groups are (the end of "sr")."""
    G = groups["G"]
    pick = torch.randperm(len(groups["sr"]) // G, generator=g)[:n_groups]
    idx = (pick[:, None] * G + torch.arange(G)).flatten().to(groups["sr"].device)
    hr, sr = groups["hr"][idx], groups["sr"][idx]
    mask = random_masks(len(idx), hr.shape[-1], area, g).to(hr.device)
    syn = mask * sr + (1 - mask) * hr  # I_syn = Mask ⊙ I_SR + (1 − Mask) ⊙ I_GT
    dmap_syn = label_map(syn, hr)
    return {
        "gt": hr, "syn": syn, "sr": sr, "mask": mask, "dmap_syn": dmap_syn, "dmap_sr": groups["dmap"][idx],
        "gold_gt": torch.ones(len(idx), device=hr.device), "gold_syn": 1 - dmap_syn.mean((1, 2, 3)),
        "gold_sr": groups["gold"][idx], "group": G, "n_group": len(idx),
    }  # fmt: skip


def merge(a: dict, b: dict) -> dict:
    """Two triplet batches as one, b's entries last (L_group reads the end of "sr")."""
    return {k: torch.cat([a[k], b[k]]) if isinstance(b[k], torch.Tensor) else b[k] for k in b}
