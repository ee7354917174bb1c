"""images.py: the built-in photos and split, HR folders (any mode, corrupt files), paired LR/HR sets (RealSR,
DRealSR, DIV2K names), lr: folders, and the pools the loops crop from."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data
import images
from config import ConfigError


def blocky(seed: int, h: int, w: int) -> np.ndarray:
    """An HR image made of 4×4 blocks of constant colour: its exact ×4 LR is one pixel per block, so an LR
    crop and an HR crop are aligned exactly when avg_pool(HR crop, 4) equals the LR crop."""
    lr = np.random.default_rng(seed).integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return lr.repeat(4, 0).repeat(4, 1)


def save(path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder with every kind of file a user might have: RGB, grey, RGBA, palette, 16-bit, corrupt."""
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)).save(d / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (70, 70), dtype=np.uint8)).save(d / "grey.jpg")
    Image.fromarray(rng.integers(0, 255, (72, 72, 4), dtype=np.uint8), "RGBA").save(d / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).convert("P").save(d / "pal.bmp")
    os.makedirs(d / "sub")
    Image.fromarray((rng.integers(0, 65535, (66, 66))).astype(np.uint16)).save(d / "sub" / "deep16.png")
    (d / "broken.png").write_bytes(b"not a png at all")
    return d


def test_folder_conversions_and_corrupt_skipped(folder):
    with pytest.warns(UserWarning, match="broken.png"):
        imgs = images.load_images(str(folder))
    assert len(imgs) == 5
    for im in imgs:
        assert im.shape[0] == 3 and im.dtype == torch.float32 and 0 <= im.min() and im.max() <= 1
    deep = [im for im in imgs if im.shape[-1] == 66][0]
    assert deep.max() > 0.9 and deep.min() < 0.1  # 16-bit scaled by 65535, not clipped to white


def test_bad_sources_are_one_line_errors(tmp_path, folder):
    with pytest.raises(ConfigError, match="no usable image"):
        images.load_images(str(tmp_path))
    with pytest.raises(ConfigError, match="not 'builtin' and not a folder"):
        images.load_images(str(tmp_path / "nope"))
    with pytest.warns(UserWarning):
        imgs = images.load_images(str(folder))
    with pytest.raises(ConfigError, match="smaller than the 128px crop"):
        images.ImagePool(imgs, 128)


def test_builtin_split_is_disjoint():
    assert not set(images.HELDOUT_PHOTOS) & set(images.TRAIN_PHOTOS + images.TRAIN_GRAY)
    val = images.load_images("builtin", "val")
    assert len(val) == len(images.HELDOUT_PHOTOS)


def test_paired_quarter_size_crops_are_aligned(tmp_path):
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir(), hr_dir.mkdir()
    for i in range(2):  # DIV2K naming: 0001.png (HR) ↔ 0001x4.png (LR)
        hr = blocky(i, 48, 64)
        save(hr_dir / f"000{i}.png", hr)
        save(lr_dir / f"000{i}x4.png", hr[::4, ::4])
    pool = images.load_pool(f"paired:{lr_dir},{hr_dir}", crop=32)
    assert isinstance(pool, images.PairedPool) and len(pool.images) == 2
    hr, lr = pool.pairs(6, 32, torch.Generator().manual_seed(0), strength=0.9)  # strength ignored: real LR
    assert hr.shape == (6, 3, 32, 32) and lr.shape == (6, 3, 8, 8)
    torch.testing.assert_close(F.avg_pool2d(hr, 4), lr)  # aligned to the pixel
    # the RM side draws HR crops with superpixels, so fgr_batch works on paired data unchanged
    b = data.fgr_batch(pool, 2, 32, data.Difficulty(), torch.Generator().manual_seed(1))
    assert b["gt"].shape == (2, 3, 32, 32)


def test_realsr_one_folder_same_size_lr_is_downsampled(tmp_path):
    # RealSR's aligned release: Canon_001_HR.png and Canon_001_LR4.png side by side, both the HR size
    for i in range(2):
        hr = np.random.default_rng(i).integers(0, 256, (40, 44, 3), dtype=np.uint8)
        save(tmp_path / f"Canon_00{i}_HR.png", hr)
        save(tmp_path / f"Canon_00{i}_LR4.png", 255 - hr)  # a different image, to see which side is which
    pool = images.load_pool(f"paired:{tmp_path},{tmp_path}", crop=32)
    assert len(pool.images) == 2
    hr, lr = pool.pairs(4, 32, torch.Generator().manual_seed(0))
    assert lr.shape == (4, 3, 8, 8)
    # the aligned LR crop (here 1 − HR) downsampled with the project's antialiased bicubic
    torch.testing.assert_close(lr, data.degrade(1 - hr, 0.0), atol=1e-6, rtol=0)


def test_hr_pool_pairs_keep_the_old_random_stream(tmp_path):
    pool = images.ImagePool([images.procedural_images(1, 48, torch.Generator().manual_seed(0))[0]], 32)
    strength = lambda g: float(torch.rand((), generator=g))  # noqa: E731  (like sft.draw_strength)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    hr, lr = pool.pairs(3, 32, g1, lambda: strength(g1))
    hr_old = pool.crops(3, 32, g2)  # what train_rl / sft did before: crops, then the strength, then degrade
    lr_old = data.degrade(hr_old, strength(g2), g2)
    assert torch.equal(hr, hr_old) and torch.equal(lr, lr_old)


def test_unmatched_and_misscaled_pairs_are_one_error(tmp_path):
    lr_dir, hr_dir = tmp_path / "lr", tmp_path / "hr"
    lr_dir.mkdir(), hr_dir.mkdir()
    save(hr_dir / "a_HR.png", blocky(0, 32, 32))
    save(lr_dir / "a_LR4.png", blocky(0, 32, 32)[::4, ::4])  # fine
    save(hr_dir / "b_HR.png", blocky(1, 32, 32))
    save(lr_dir / "b_LR4.png", blocky(1, 32, 32)[::2, ::2])  # ×2, not ×4
    save(lr_dir / "c_LR4.png", blocky(2, 8, 8))  # no HR
    save(hr_dir / "d_HR.png", blocky(3, 32, 32))  # no LR
    with pytest.raises(ConfigError) as e:
        images.load_pool(f"paired:{lr_dir},{hr_dir}", crop=32)
    msg = str(e.value)
    assert "\n" not in msg and "3 file(s)" in msg
    assert "b_LR4.png (LR 16x16 vs HR 32x32" in msg and "c_LR4.png (no HR)" in msg
    assert "d_HR.png (no LR)" in msg


def test_bad_data_specs_are_one_line_errors(tmp_path):
    save(tmp_path / "x.png", blocky(0, 32, 32))
    for spec, match in [
        (f"paired:{tmp_path}", "paired:LR_DIR,HR_DIR"),
        (f"paired:{tmp_path},{tmp_path / 'nope'}", "is not a folder"),
        (f"lr:{tmp_path}", "has no HR images"),  # training on LR-only data
        (f"paired:{tmp_path},{tmp_path}", "x.png \\(no _HR/_LR suffix\\)"),
    ]:
        with pytest.raises(ConfigError, match=match):
            images.load_pool(spec, crop=32)
    assert images.lr_files(f"lr:{tmp_path}") == [str(tmp_path / "x.png")]
    with pytest.raises(ConfigError, match="lr:LR_DIR"):
        images.lr_files(str(tmp_path))


def test_hr_folder_large_images_are_cropped_never_resized(tmp_path):
    big = blocky(0, 96, 128)
    for i in range(4):
        save(tmp_path / f"{i}.png", np.roll(big, 8 * i, axis=1))
    pool = images.load_pool(str(tmp_path), crop=32)
    assert [tuple(im.shape) for im in pool.images] == [(3, 96, 128)] * 4  # full size, not resized
    assert pool.segments[0].shape == (96, 128)
    hr, lr = pool.pairs(2, 32, torch.Generator().manual_seed(0), 0.0)
    assert hr.shape == (2, 3, 32, 32) and lr.shape == (2, 3, 8, 8)


def test_augmentation_is_a_flip_rotation_and_channel_order_of_each_crop():
    # Each output crop must be one of the 8 symmetries of the square applied to its input, with its channels
    # in some order, and its superpixel labels moved by the very same symmetry (an index map shows which).
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(32, 3, 8, 8, generator=g)
    seg = torch.arange(64).view(1, 8, 8).repeat(32, 1, 1)
    out, seg_out = images._flip_and_permute(hr, seg, g)
    symmetries = [lambda x, k=k, t=t: (x.transpose(-1, -2) if t else x).rot90(k, (-2, -1))
                  for k in range(4) for t in (0, 1)]  # fmt: skip
    used = set()
    for i in range(32):
        j = next(j for j, f in enumerate(symmetries) if torch.equal(f(seg[i]), seg_out[i]))
        used.add(j)
        moved = symmetries[j](hr[i])
        perm = [next(c for c in range(3) if torch.equal(moved[c], out[i, o])) for o in range(3)]
        assert sorted(perm) == [0, 1, 2]  # a permutation, not a copy of one channel
    assert len(used) >= 4  # not one fixed transform


def test_augment_zooms_out_within_the_image_and_is_off_by_default():
    img = images.procedural_images(1, 96, torch.Generator().manual_seed(1))[0]
    pool = images.ImagePool([img], 32)
    assert pool.augment == 0.0  # SFT, RL and held-out sets never see augmented crops
    ref = pool.crops(4, 32, torch.Generator().manual_seed(2))
    assert any(torch.equal(ref[0], img[:, y : y + 32, x : x + 32]) for y in range(65) for x in range(65))
    pool.augment = 2.0  # regions up to 96 px, shrunk to 32
    hr, seg = pool.crops(8, 32, torch.Generator().manual_seed(2), with_segments=True)
    assert hr.shape == (8, 3, 32, 32) and seg.shape == (8, 32, 32) and 0 <= hr.min() and hr.max() <= 1
    assert not torch.equal(hr[:4], ref)
