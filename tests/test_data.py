"""data.py: degradation, the SR zoo (RL-painted artifacts too), masks, FGR triplets, the policy groups."""

import numpy as np
import pytest
import torch
from PIL import Image

import data
import images


def test_degrade_deterministic_and_bicubic_at_zero():
    hr = images.procedural_images(3, 64, torch.Generator().manual_seed(0))
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
    pool = images.ImagePool(
        [images.procedural_images(1, 96, torch.Generator().manual_seed(i))[0] for i in range(3)],
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
    hr = images.load_pool("builtin", "val", 64).crops(4, 64, g)
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
    both = data.merge(data.fgr_batch(images.load_pool("builtin", "val", 32), 2, 32, data.Difficulty(), g), t)
    assert both["sr"].shape[0] == 8 and torch.equal(both["sr"][2:], t["sr"]) and both["n_group"] == 6
    # a group stays together: its samples share one HR
    assert torch.equal(t["gt"][0], t["gt"][1]) and torch.equal(t["gt"][1], t["gt"][2])


def test_fgr_batch_member_names_the_maker():
    """ "member" says which zoo member made each I_SR: checked against the classical upsamplers recomputed
    here from the batch's own HR (degradation 0 is deterministic), and validate's split by member adds up."""
    from rm import FinPercepRM, RMConfig
    from validation import validate

    pool = images.ImagePool(
        [images.procedural_images(1, 96, torch.Generator().manual_seed(i))[0] for i in range(3)], crop=32
    )
    g = torch.Generator().manual_seed(1)
    b = data.fgr_batch(pool, 12, 32, data.Difficulty(area=0.2, degrade=0.0), g, p_classical=1.0)
    assert set(b["member"].tolist()) <= {0, 1, 2}
    for i, m in enumerate(b["member"].tolist()):
        ref = data.upsample(data.degrade(b["gt"][i : i + 1], 0.0), data.member_name(m))
        assert torch.allclose(b["sr"][i : i + 1], ref, atol=1e-6), data.member_name(m)
    b = data.fgr_batch(pool, 12, 32, data.Difficulty(area=0.2), g, p_classical=0.0)
    assert min(b["member"].tolist()) >= 3 and data.member_name(len(data.MEMBERS)) == "hook0"
    # The per-member triplet order, weighted by its counts, is the whole batch's (computed here directly).
    torch.manual_seed(0)
    model = FinPercepRM(RMConfig(widths=(4, 4, 4, 4), stage=3)).eval()
    b["bicubic"] = b["small"] = b["gt"]  # validate's other inputs (not part of the split)
    rows = validate(model, b, member_name=data.member_name)["members"]
    with torch.no_grad():
        s = {k: model(b[k])[0] for k in ("gt", "syn", "sr")}
    whole = float(((s["gt"] > s["syn"]) & (s["syn"] > s["sr"])).float().mean())
    assert sum(r["n"] for r in rows.values()) == 12
    assert abs(sum(r["n"] * r["triplet_acc"] for r in rows.values()) / 12 - whole) < 1e-6
