"""Where the images come from: the built-in photos, your HR folders, paired LR/HR sets, LR-only folders, and
the pools of random crops every loop draws from (data.py is what the method does with them).

    pool = load_pool("builtin", split="train")          # or an HR folder, or paired:LR_DIR,HR_DIR
    hr = pool.crops(16, 64, g)                           # (16, 3, 64, 64) random HR crops in [0, 1]
    hr, lr = pool.pairs(8, 48, g, strength)              # aligned (HR, LR) pairs: what SFT and RL train on
    val = heldout_pool("builtin", 64)                    # the held-out photos: validation and evaluation

The built-in split (fixed, so numbers compare across runs): scikit-image's CC0 / public-domain photos, plus
procedural images for the training split; the held-out photos below are never trained on. Images are kept
whole in memory and cropped at random, never resized.
"""

import glob
import os
import re
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from config import ConfigError
from data import degrade
from metrics import SCALE

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


def _decode(path: str, segments: bool):
    """One file: (image, its superpixels or None), or None for a corrupt or unsupported file."""
    try:
        with Image.open(path) as im:
            x = to_rgb_float(im)
    except Exception:  # reported by the caller, in one line for all such files
        return None
    return x, (_segments(x) if segments else None)


def _read(files: list[str], root: str, segments: bool = False):
    """Decode `files` in order. Returns (images, segments or Nones); unreadable files are skipped with one
    warning naming them. Decoding and SLIC happen here, once, in this process: worker processes were slower
    on a 2-core machine (docs/experiments.md)."""
    imgs, segs, bad = [], [], []
    for f in files:
        item = _decode(f, segments)
        if item is None:
            bad.append(os.path.relpath(f, root))
        else:
            imgs.append(item[0])
            segs.append(item[1])
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) in {root}: {', '.join(bad)}", stacklevel=3)
    return imgs, segs


def _folder(path: str) -> list[torch.Tensor]:
    """Every readable image under a folder (recursively, sorted), decoded to (3, H, W) floats."""
    return _read(_image_files(path), path)[0]


# ----------------------------------------------------------------------------------------------------
# --data: the built-in photos, an HR folder, paired:LR_DIR,HR_DIR, or lr:LR_DIR (no HR: scoring only)


def parse_source(data: str) -> tuple[str, list[str]]:
    """--data → (kind, paths): ('builtin', []), ('folder', [HR_DIR]), ('paired', [LR_DIR, HR_DIR]),
    ('lr', [LR_DIR]). Missing folders are a one-line error naming the fix."""
    if data == "builtin":
        return "builtin", []
    # "paired:LR,HR" and "lr:DIR" carry a prefix; anything else is a plain HR folder.
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


def _shrink(x: torch.Tensor, size: int) -> torch.Tensor:
    """A (3, c, c) image (antialiased bicubic) or a (c, c) label map (nearest) resized to (size, size); x
    itself when c is already size (every crop when augment is off: no resampling, not even a copy)."""
    if x.shape[-1] == size:
        return x
    if x.dim() == 2:  # superpixel labels: nearest, so labels stay labels
        return F.interpolate(x[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    y = F.interpolate(x[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return y[0].clamp(0, 1)


def _flip_and_permute(hr: torch.Tensor, seg: torch.Tensor, g: torch.Generator):
    """The crop augmentation of a small training set (ImagePool.augment), batched: each crop gets one of the
    8 flips/rotations of the square and a random order of its colour channels. A transformed photo is still
    a clean photo, and the zoo's artifacts and their label maps are made afterwards, from the transformed
    crop, so every label stays exact. The permutation turns 10 photos' few palettes into six times as
    many; the flips give edges and textures every orientation. `seg` (n, S, S) moves with the pixels."""
    n = hr.shape[0]
    flip_y, flip_x, swap = (torch.rand(3, n, generator=g) < 0.5).unbind(0)
    perm = torch.rand(n, 3, generator=g).argsort(1)  # a random channel order per crop
    hr = torch.gather(hr, 1, perm.view(n, 3, 1, 1).expand_as(hr))
    both = torch.cat([hr, seg[:, None].to(hr)], 1)  # one tensor, so image and labels move together
    both = torch.where(flip_y.view(n, 1, 1, 1), both.flip(-2), both)
    both = torch.where(flip_x.view(n, 1, 1, 1), both.flip(-1), both)
    both = torch.where(swap.view(n, 1, 1, 1), both.transpose(-1, -2), both)
    return both[:, :3].contiguous(), both[:, 3].round().long().contiguous()


class ImagePool:
    """A set of HR images (with their superpixels) to draw random crops from, plus procedural images."""

    def __init__(self, images: list, crop: int, procedural: float = 0.0, name: str = "", segments=None):
        # Images are kept whole and cropped at random (resized only by `augment`, below): a 2K photo keeps
        # its real pixels.
        self.keep = [i for i, im in enumerate(images) if min(im.shape[-2:]) >= crop]  # PairedPool reads it
        if not self.keep:
            sizes = ", ".join(f"{im.shape[-1]}x{im.shape[-2]}" for im in images[:5])
            raise ConfigError(
                f"all images in {name or 'the source'} are smaller than the {crop}px crop "
                f"({sizes}); use larger images or a smaller --crop"
            )
        self.images, self.crop, self.procedural = [images[i] for i in self.keep], crop, procedural
        # Superpixels (the masks' SAM stand-in) once per image, here at load time, not per drawn crop.
        segs = [segments[i] for i in self.keep] if segments is not None else [None] * len(self.keep)
        self.segments = [s if s is not None else _segments(im) for s, im in zip(segs, self.images)]
        # Off by default (SFT, RL and every held-out set see the photos as they are); train_rm sets it from
        # --augment (0 by default, 0.5 in its pretrain preset).
        self.augment = 0.0  # max zoom-out of a crop (0 = no augmentation); see crops()

    def crops(self, n: int, size: int, g: torch.Generator, with_segments: bool = False):
        """n random (3, size, size) crops; a `procedural` share of them are synthetic images instead."""
        k = torch.randint(len(self.images), (n,), generator=g).tolist()
        # With augment = a: each crop covers a region zoom × size wide, zoom ~ U[1, 1 + a], shrunk to size.
        zoom = 1 + self.augment * torch.rand(n, generator=g) if self.augment > 0 else torch.ones(n)
        out, segs = [], []
        for i, z in zip(k, zoom.tolist()):  # slicing views: cheap; the images differ in size, so no stacking
            im = self.images[i]
            c = min(int(size * z), *im.shape[-2:])  # the region's side, at most the image
            y = int(torch.randint(im.shape[-2] - c + 1, (1,), generator=g))
            x = int(torch.randint(im.shape[-1] - c + 1, (1,), generator=g))
            out.append(_shrink(im[:, y : y + c, x : x + c], size))
            segs.append(_shrink(self.segments[i][y : y + c, x : x + c], size))
        hr, seg = torch.stack(out), torch.stack(segs)
        if self.augment > 0:
            hr, seg = _flip_and_permute(hr, seg, g)
        if self.procedural > 0:  # the built-in training split: sharp synthetic edges and periodic texture
            use = torch.rand(n, generator=g) < self.procedural
            if use.any():
                hr[use] = procedural_images(int(use.sum()), size, g)
                seg[use] = _grid_segments(int(use.sum()), size)  # no natural segments: a 4×4 grid
        return (hr, seg) if with_segments else hr

    def pairs(self, n: int, size: int, g: torch.Generator, strength=0.0, groups: int = 1):
        """n aligned (HR (n, 3, size, size), LR (n, 3, size/4, size/4)) training pairs: what SFT and RL draw.

        Here LR is synthesised: data.degrade of the HR crops. `strength` is a float or a zero-argument
        callable (e.g. data.draw_strength), called once per group *after* the crops are drawn, so the random
        stream is the one the loops drew before pools had this method. groups > 1 splits the batch into
        interleaved groups with one strength each (several degradation levels in one batch)."""
        hr = self.crops(n, size, g)
        # One strength per interleaved group (hr[i::groups]), drawn after the crops, as the docstring says.
        draw = strength if callable(strength) else (lambda: strength)
        groups = min(groups, n)  # fewer pairs than groups (e.g. train_rm --bank=2): one pair per group
        lr = torch.cat([degrade(hr[i::groups], draw(), g) for i in range(groups)])
        return torch.cat([hr[i::groups] for i in range(groups)]), lr


class PairedPool(ImagePool):
    """Real (LR, HR) pairs (RealSR, DRealSR: docs/method.md §6's test sets), aligned random crops of both.

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
        # Same-size LR (RealSR's aligned release) is downsampled ×4 here, so the policy always sees 1/4 LR.
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
    """The first `most` items of a list for an error message, then how many more."""
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
    # Every problem is collected first and reported together: a user fixes the folder in one go.
    lr_keys, hr_keys = set(sides["lr"]), set(sides["hr"])
    problems += [f"{os.path.basename(sides['lr'][k])} (no HR)" for k in sorted(lr_keys - hr_keys)]
    problems += [f"{os.path.basename(sides['hr'][k])} (no LR)" for k in sorted(hr_keys - lr_keys)]
    keys = sorted(lr_keys & hr_keys)  # sorted: the pair order (so every seeded draw) never depends on the OS
    lrs, _ = _read([sides["lr"][k] for k in keys], lr_dir)
    hrs, segs = _read([sides["hr"][k] for k in keys], hr_dir, segments=True)
    if len(lrs) != len(keys) or len(hrs) != len(keys):
        raise ConfigError(f"unreadable images in paired:{lr_dir},{hr_dir} (see the warning); remove them")
    for k, lr, hr in zip(keys, lrs, hrs):  # LR must be 1/4 of HR (DIV2K, DRealSR) or equal to it (RealSR)
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
    # 30 % procedural images in the built-in training split only: never in held-out sets or a user's data.
    if procedural is None:
        procedural = 0.3 if (data == "builtin" and split == "train") else 0.0
    if kind == "builtin":
        return ImagePool(load_images(data, split), crop, procedural, name=data)
    imgs, segs = _read(_image_files(data), data, segments=True)  # decode + superpixels, once, here
    if not imgs:
        raise ConfigError(f"no usable image in {data}: put PNG/JPEG/WebP/BMP/TIFF HR images there")
    return ImagePool(imgs, crop, procedural, name=data, segments=segs)


def _grid_segments(n: int, size: int, cells: int = 4) -> torch.Tensor:
    """Stand-in superpixels for procedural images: a cells × cells grid of squares, (n, size, size)."""
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


def heldout_pool(data: str, crop: int):
    """The held-out images of a source, the one place that decides them: the built-in held-out photos (never
    trained on); a folder or paired set has no split, so its own images (say so in your evaluation)."""
    return load_pool(data, "val" if data == "builtin" else "train", crop)
