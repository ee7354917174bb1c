"""Tests for rm.py: the (score, dmap) contract, the losses against hand arithmetic, the score-map coupling,
the reward's gradients, function-preserving growth, and checkpoints. Tiny model, 32x32 images, CPU."""

import json
import os

import pytest
import torch

from rm import FinPercepRM, RMConfig, freeze, group_loss, grow, load_rm, rank_loss, reward, rm_losses, save_rm
from rundir import write_json  # tests/conftest.py puts the repo root on sys.path

TINY = dict(widths=(8, 8, 16, 16), n_stages=3, hidden=16, groups=4)  # total stride 8


def tiny(stage: int):
    torch.manual_seed(stage)
    return FinPercepRM(RMConfig(stage=stage, **TINY))


def jitter(model, std: float = 0.05):
    """Perturb every weight (zero-inits included) so equalities are not true merely by initialisation."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, and with 2 threads on a busy 2-core box OpenMP's spinning makes
    each step ~100x slower. Restored afterwards, so other test files keep their setting."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def images():
    torch.manual_seed(123)
    return torch.rand(2, 3, 32, 32)


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_contract_shapes_and_ranges(stage, images):
    score, dmap = tiny(stage)(images)
    assert score.shape == (2,) and ((score >= 0) & (score <= 1)).all()
    if stage == 0:
        assert dmap is None
    else:
        assert dmap.shape == (2, 1, 32, 32) and ((dmap >= 0) & (dmap <= 1)).all()


def test_native_map_resolution(images):
    # RM_k predicts its map at 1/2**(N-k) of the input; RM_N at full resolution.
    for stage, size in [(1, 8), (2, 16), (3, 32)]:
        assert tiny(stage).forward_all(images)["logits"].shape[-2:] == (size, size)


@pytest.mark.parametrize("shape", [(2, 3, 30, 32), (2, 3, 32, 20), (2, 1, 32, 32), (3, 32, 32)])
def test_bad_input_is_one_line_error(shape):
    with pytest.raises(ValueError) as e:
        tiny(1)(torch.rand(shape))
    assert "\n" not in str(e.value) and ("multiples of 8" in str(e.value) or "(B, 3, H, W)" in str(e.value))


def test_rank_loss_hand_computed():
    # Case A, ordered with room to spare: 0.9 > 0.5 > 0.2 and both gaps >= 0.1 -> 0.
    # Case B, SR above syn: relu(0.1 - (0.45 - 0.5)) = 0.15, relu(0.1 - (0.5 - 0.45)) = 0.05 -> 0.2.
    s_gt, s_syn, s_sr = torch.tensor([0.9, 0.5]), torch.tensor([0.5, 0.45]), torch.tensor([0.2, 0.5])
    assert rank_loss(s_gt, s_syn, s_sr, 0.1, 0.1).item() == pytest.approx((0.0 + 0.2) / 2)
    # Unequal margins, one case: relu(0.3 - (0.6 - 0.4)) = 0.1, relu(0.05 - (0.7 - 0.6)) = 0 -> 0.1.
    one = lambda v: torch.tensor([v])
    assert rank_loss(one(0.7), one(0.6), one(0.4), 0.3, 0.05).item() == pytest.approx(0.1)


def test_score_gradient_reaches_map(images):
    rm = tiny(1)
    head = rm.heads[0]  # the map head touches the score only through the map (the coupling)
    rm(images)[0].sum().backward()
    # At creation fc_map is zero: RM_1 scores like RM_0, so the map does not yet move the score...
    assert head.weight.grad.abs().sum() == 0
    assert rm.fc_map.weight.grad.abs().sum() > 0  # ...but the gate's own weights learn from step one.
    rm.zero_grad()
    with torch.no_grad():
        rm.fc_map.weight.normal_(std=0.1)  # as after some training
    rm(images)[0].sum().backward()
    assert head.weight.grad.abs().sum() > 0 and torch.isfinite(head.weight.grad).all()


REWARD_CASES = [(0, False, None), (2, False, None), (2, True, None), (3, True, 0.1)]  # stage, fused, tau


@pytest.mark.parametrize("stage,fused,tau", REWARD_CASES)
def test_reward_gradient_wrt_image(stage, fused, tau, images):
    rm = freeze(jitter(tiny(stage)))
    x = images.clone().requires_grad_(True)
    r = reward(*rm(x), fused=fused, tau=tau)
    assert r.shape == (2,) and ((r >= 0) & (r <= 1)).all()
    r.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_fused_reward_hand_computed(images):
    # Fused reward = λ1·S + λ2·(1 - top-k mean of M); check against the pieces computed here.
    rm = freeze(jitter(tiny(3)))
    score, dmap = rm(images)
    k = max(1, round(0.05 * 32 * 32))
    worst = dmap.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(1)
    want = 0.7 * score + 0.3 * (1 - worst)
    assert torch.allclose(reward(*rm(images), fused=True, lam1=0.7, lam2=0.3, topk=0.05), want, atol=1e-6)


def test_growth_is_function_preserving(images):
    rm = jitter(tiny(0))
    for _ in range(3):
        new = grow(rm)
        assert new.stage == rm.stage + 1
        assert sum(p.numel() for p in new.parameters()) > sum(p.numel() for p in rm.parameters())
        (s0, d0), (s1, d1) = rm(images), new(images)
        assert torch.allclose(s0, s1, atol=1e-6)
        if d0 is not None:
            assert torch.allclose(d0, d1, atol=1e-6)
        # Train-like perturbation of every weight (new zero-init heads / gate included), so the next growth
        # starts from a model whose map really drives its score.
        rm = jitter(new)
    with pytest.raises(ValueError):
        grow(rm)


def test_save_load_roundtrip(tmp_path, images):
    rm = jitter(tiny(2)).eval()
    path = str(tmp_path / "rm_stage2")
    save_rm(rm, path)
    save_rm(rm, path, extra={"step": 7})  # overwriting an existing checkpoint is atomic and works
    meta = json.load(open(os.path.join(path, "rm.json")))
    assert meta["kind"] == "rm" and meta["stage"] == 2 and meta["n_stages"] == 3 and meta["step"] == 7
    loaded = load_rm(path)
    assert not loaded.training and loaded.stage == 2 and loaded.stride == 8
    (s0, d0), (s1, d1) = rm(images), loaded(images)
    assert torch.equal(s0, s1) and torch.equal(d0, d1)


def test_load_errors_are_one_line(tmp_path):
    policy = tmp_path / "policy_sft"
    policy.mkdir()
    write_json(str(policy / "policy.json"), {"kind": "policy"})
    cases = [(policy, "policy checkpoint"), (tmp_path, "no rm.json"), (tmp_path / "nope", "not exist")]
    for path, words in cases:
        with pytest.raises(SystemExit) as e:
            load_rm(str(path))
        assert words in str(e.value.code) and "\n" not in str(e.value.code)


def toy_batch(B: int = 4):
    """GT: smooth gradients; SR: GT + strong noise everywhere; syn: SR pasted into the left half."""
    torch.manual_seed(0)
    ramp = torch.linspace(0, 1, 32)
    gt = (ramp[None, None, :, None] * ramp[None, None, None, :]).expand(B, 3, 32, 32) * torch.rand(B, 3, 1, 1)
    sr = (gt + 0.3 * torch.randn_like(gt)).clamp(0, 1)
    mask = torch.zeros(B, 1, 32, 32)
    mask[..., :16] = 1
    syn = mask * sr + (1 - mask) * gt  # region swap (docs/method.md §2)
    gold = lambda m: 1 - m.mean(dim=(1, 2, 3))
    ones = torch.ones_like(mask)
    return {"gt": gt, "syn": syn, "sr": sr, "dmap_syn": mask, "dmap_sr": ones}, gold(mask), gold(ones)


def test_rm_losses_decrease_on_toy_batch():
    batch, gold_syn, gold_sr = toy_batch()
    batch.update(gold_gt=torch.ones(4), gold_syn=gold_syn, gold_sr=gold_sr)
    base = freeze(tiny(0))
    rm = tiny(1)
    opt = torch.optim.Adam(rm.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        total, parts = rm_losses(rm, batch, base=base, lam_gold=1.0)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert set(parts) == {"map", "rank", "align", "gold", "group", "total"}
    assert all(not v.requires_grad for v in parts.values())
    assert losses[-1] < 0.8 * losses[0], losses


def test_rm_losses_stage0_and_missing_gold():
    batch, _, _ = toy_batch(2)
    total, parts = rm_losses(tiny(0), batch)  # RM_0: no map, no base -> rank only
    assert parts["map"] == 0 and parts["align"] == 0 and torch.allclose(total, parts["rank"])
    with pytest.raises(ValueError):
        rm_losses(tiny(0), batch, lam_gold=1.0)


def test_group_loss_hand_case():
    # One group of G = 3: gold 0.9 > 0.8 > 0.7. Scores in that order with gaps ≥ the gold gaps: no loss.
    gold = torch.tensor([0.9, 0.8, 0.7])
    good = torch.tensor([0.95, 0.80, 0.60])
    ls, lm = group_loss(good, None, gold, None, 3)
    assert float(ls) == 0.0 and float(lm) == 0.0  # RM_0: no map part
    # Reversed scores: pairs (0,1), (0,2), (1,2) with gold gaps 0.1, 0.2, 0.1 and score gaps −0.15, −0.35,
    # −0.2 → hinge (0.1 + 0.15) + (0.2 + 0.35) + (0.1 + 0.2) = 1.1 over 3 ordered pairs.
    ls, _ = group_loss(good.flip(0), None, gold, None, 3)
    assert float(ls) == pytest.approx(1.1 / 3)
    # The map part compares within-group deviations in units of the group spread: a map that is the target
    # plus a constant (the same for the whole group) has the target's deviations exactly: no loss.
    target = torch.rand(3, 1, 4, 4)
    logits = torch.logit((target * 0.5 + 0.2).clamp(1e-4, 1 - 1e-4))  # an affine map of the target
    _, lm = group_loss(good, logits, gold, target, 3)
    assert float(lm) < 1e-4
    _, lm = group_loss(good, torch.logit(target.flip(0).clamp(1e-4, 1 - 1e-4)), gold, target, 3)
    assert float(lm) > 0.5  # samples swapped: the deviations are wrong
