"""data.py: sources, conversions, bad inputs, degradation, zoo, masks and FGR triplets."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
from config import ConfigError


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
        imgs = data.load_images(str(folder))
    assert len(imgs) == 5
    for im in imgs:
        assert im.shape[0] == 3 and im.dtype == torch.float32 and 0 <= im.min() and im.max() <= 1
    deep = [im for im in imgs if im.shape[-1] == 66][0]
    assert deep.max() > 0.9 and deep.min() < 0.1  # 16-bit scaled by 65535, not clipped to white


def test_bad_sources_are_one_line_errors(tmp_path, folder):
    with pytest.raises(ConfigError, match="no usable image"):
        data.load_images(str(tmp_path))
    with pytest.raises(ConfigError, match="not 'builtin' and not a folder"):
        data.load_images(str(tmp_path / "nope"))
    with pytest.warns(UserWarning):
        imgs = data.load_images(str(folder))
    with pytest.raises(ConfigError, match="smaller than the 128px crop"):
        data.ImagePool(imgs, 128)


def test_builtin_split_is_disjoint():
    assert not set(data.HELDOUT_PHOTOS) & set(data.TRAIN_PHOTOS + data.TRAIN_GRAY)
    val = data.load_images("builtin", "val")
    assert len(val) == len(data.HELDOUT_PHOTOS)


def test_degrade_deterministic_and_bicubic_at_zero():
    hr = data.procedural_images(3, 64, torch.Generator().manual_seed(0))
    a = data.degrade(hr, 0.7, torch.Generator().manual_seed(5))
    b = data.degrade(hr, 0.7, torch.Generator().manual_seed(5))
    c = data.degrade(hr, 0.7, torch.Generator().manual_seed(6))
    assert a.shape == (3, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    # strength 0 = Pillow's antialiased bicubic of the uint8 image, computed here independently
    lr = data.degrade(hr, 0.0)
    u8 = (hr[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    ref = np.asarray(Image.fromarray(u8).resize((16, 16), Image.BICUBIC), dtype=np.float32) / 255
    assert np.abs(lr[0].permute(1, 2, 0).numpy() - ref).max() < 1e-6


def test_zoo_masks_and_triplets():
    pool = data.ImagePool(
        [data.procedural_images(1, 96, torch.Generator().manual_seed(i))[0] for i in range(3)],
        crop=32,
        procedural=0.5,
    )
    g = torch.Generator().manual_seed(0)
    b = data.fgr_batch(pool, 8, 32, data.Difficulty(area=0.2), g)
    assert b["gt"].shape == b["syn"].shape == b["sr"].shape == (8, 3, 32, 32)
    assert b["dmap_syn"].shape == (8, 1, 32, 32) and b["gold_sr"].shape == (8,)
    for k in ("syn", "sr", "mask", "dmap_syn", "dmap_sr"):
        assert 0 <= b[k].min() and b[k].max() <= 1, k
    # I_syn is the SR image inside the mask and the HR image outside it
    m = b["mask"]
    assert torch.allclose(b["syn"], m * b["sr"] + (1 - m) * b["gt"])
    # masks cover roughly the asked area
    masks = data.random_masks(256, 32, 0.2, g)
    assert 0.1 < masks.mean() < 0.3
    # every zoo member runs and produces a changed image
    hr = pool.crops(4, 32, g)
    lr = data.degrade(hr, 0.0)
    for name, f in data.ZOO.items():
        out = f(hr, lr, torch.ones(4, 1, 1, 1), g)
        assert out.shape == hr.shape and (out - hr).abs().mean() > 1e-3, name


@pytest.mark.parametrize("name", ["speckle", "grain", "grid", "ringing", "saturate"])
def test_rl_artifacts_change_the_label_map_inside_their_mask_only(name):
    # The artifacts RL policies paint, pasted into HR through a mask: the label map must rise inside the
    # mask and stay ~0 away from it (beyond the feathering and the label function's 3×3 + scale-4 support).
    from metrics import label_map

    g = torch.Generator().manual_seed(0)
    hr = data.load_pool("builtin", "val", 64).crops(4, 64, g)
    sr = data.ZOO[name](hr, None, torch.full((4, 1, 1, 1), 0.8), g).clamp(0, 1)
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1.0
    M = label_map(mask * sr + (1 - mask) * hr, hr)
    inside, far = M[..., 20:44, 20:44].mean(), M[..., :6, :].mean()  # far: the top 6 rows, ≥ 10 px away
    assert inside > 0.04 and far < 1e-3, (name, float(inside), float(far))


def test_group_triplets_keep_groups_at_the_end():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 32, 32).repeat_interleave(3, 0)  # 2 LR images, 3 samples each
    sr = (hr + 0.1 * torch.randn(6, 3, 32, 32, generator=g)).clamp(0, 1)
    from metrics import label_map

    M = label_map(sr, hr)
    groups = {"sr": sr, "hr": hr, "dmap": M, "gold": 1 - M.mean((1, 2, 3)), "G": 3}
    t = data.group_triplets(groups, 2, 0.2, g)
    assert t["n_group"] == 6 and t["group"] == 3
    both = data.merge(data.fgr_batch(data.load_pool("builtin", "val", 32), 2, 32, data.Difficulty(), g), t)
    assert both["sr"].shape[0] == 8 and torch.equal(both["sr"][2:], t["sr"]) and both["n_group"] == 6
    # a group stays together: its samples share one HR
    assert torch.equal(t["gt"][0], t["gt"][1]) and torch.equal(t["gt"][1], t["gt"][2])
