"""train_rl.py: the advantage algebra on hand examples, the PPO surrogate, ReFL gradients, and 2-step runs
of both algorithms under all three curriculum modes (and the SFT phase) on tiny models."""

import dataclasses
import json
import math
import os

import pytest
import torch

import rewards
import train_rl
import train_rm
import validation
from metrics import label_map
from policy import PolicyConfig, load_policy, make_policy
from rm import FinPercepRM, RMConfig, freeze, load_rm

TINY_RM = dict(
    base="none", widths=(4, 8, 8, 8), crop=32, batch=2, stage_steps=(2, 2, 2, 2), val_n=4, log_every=1
)
TINY_RL = dict(
    crop=32,
    sft_steps=2,
    sft_batch=2,
    steps=2,
    batch=1,
    group=2,
    sample_steps=2,
    unet_channels=(8, 16),
    blend=1,
    coevolve_steps=1,
)
# pg_step / refl_step called alone: no KL anchor (it needs the reference policy train_rl.main loads)
STEP = {**{k: v for k, v in TINY_RL.items() if k in train_rl.Config.__annotations__}, "beta_kl": 0.0}


def test_local_penalty_and_pixel_advantages_by_hand():
    # one group of G = 2 samples, maps of 1 × 2 pixels: sample 0 is worse at pixel 0, sample 1 at pixel 1
    M = torch.tensor([[[[0.6, 0.2]]], [[[0.2, 0.4]]]])  # (2, 1, 1, 2)
    # mean_j M = [0.4, 0.3]; deviations [+0.2, −0.1] and [−0.2, +0.1]; std_j = [0.2, 0.1] → pixel mean 0.15
    D = train_rl.local_penalty(M, 2)
    want = -torch.tensor([[[[0.2, -0.1]]], [[[-0.2, 0.1]]]]) / (0.15 + 1e-6)
    assert torch.allclose(D, want, atol=1e-5)
    # rewards 0.7, 0.5: A = ±1 (group z-score); A_i(p) = clip(A_i + 0.5 · D_i(p), ±5)
    A = train_rl.pixel_advantages(torch.tensor([0.7, 0.5]), M, 1.0, 2, 0.5, 5.0, (1, 2))
    assert torch.allclose(A, torch.tensor([1.0, -1.0]).view(2, 1, 1, 1) + 0.5 * want, atol=1e-4)
    A = train_rl.pixel_advantages(torch.tensor([0.7, 0.5]), M, 1.0, 2, 50.0, 5.0, (1, 2))
    assert A.abs().max() == 5.0  # clipped
    # the blend weight of the map-giving stages scales D: 0.1 into a blend, a tenth of the local penalty
    A = train_rl.pixel_advantages(torch.tensor([0.7, 0.5]), M, 0.1, 2, 0.5, 5.0, (1, 2))
    assert torch.allclose(A, torch.tensor([1.0, -1.0]).view(2, 1, 1, 1) + 0.05 * want, atol=1e-4)
    # stage 0 (no map): λ_px terms vanish, A_i broadcast
    A0 = train_rl.pixel_advantages(torch.tensor([0.7, 0.5]), None, 0.0, 2, 0.5, 5.0, (1, 2))
    assert torch.allclose(A0, torch.tensor([1.0, -1.0]).view(2, 1, 1, 1).expand(2, 1, 1, 2), atol=1e-4)


def test_ppo_loss_at_theta_old_equals_plain_surrogate():
    logp = torch.randn(2, 3, 4, 4, requires_grad=True)
    adv = torch.randn(2, 1, 4, 4)
    loss, ratio = train_rl.ppo_loss(logp, logp.detach(), adv, 1e-4)
    assert ratio.shape == (2,) and torch.allclose(ratio, torch.ones_like(ratio))  # one ratio per sample
    (g1,) = torch.autograd.grad(loss, logp)
    (g2,) = torch.autograd.grad(-(adv * logp).mean(), logp)
    assert torch.allclose(loss, -adv.expand_as(logp).mean()) and torch.allclose(g1, g2)


def test_ppo_clip_is_per_sample_and_keeps_per_pixel_advantages():
    # Sample 0 moved up (mean log-ratio +0.1: ρ_0 = e^0.1 > 1 + ε), sample 1 did not move (ρ_1 = 1).
    old = torch.zeros(2, 1, 1, 2)
    shift = torch.tensor([[[[0.3, -0.1]]], [[[0.0, 0.0]]]])  # sample 0: +0.3 and −0.1, mean +0.1
    logp = (old + shift).requires_grad_()
    adv = torch.tensor([[[[1.0, -1.0]]], [[[2.0, -3.0]]]])
    loss, rho = train_rl.ppo_loss(logp, old, adv, 0.05)
    assert torch.allclose(rho, torch.tensor([0.1, 0.0]).exp())
    (g,) = torch.autograd.grad(loss, logp)
    # Sample 0's ratio left the band upwards: its positive-advantage pixel is clipped (no gradient), the
    # negative one still pulls down — by its own advantage and its own ratio e^−0.1, not the sample's.
    # Sample 1 is inside the band: the plain per-pixel gradient −A(p)·ρ(p)/n.
    n = logp.numel()
    want = -torch.tensor([[[[0.0, -1.0 * math.exp(-0.1)]]], [[[2.0, -3.0]]]]) / n
    assert torch.allclose(g, want, atol=1e-6)


def test_sigma_floor_never_trains_the_last_step():
    # A hand case: the stds of K = 8 trailing DDIM steps (the measured ones); only the last is below 0.05.
    std = (0.95, 0.93, 0.90, 0.84, 0.74, 0.58, 0.35, 0.010)
    for seed in range(20):  # whatever the draw, the last step is never among the trained ones
        ks = train_rl.trained_steps(std, 0.05, 0.5, torch.Generator().manual_seed(seed))
        assert 7 not in ks and len(ks) == 4 and ks == sorted(ks)
    assert train_rl.trained_steps(std, 0.05, 1.0, torch.Generator()) == list(range(7))
    with pytest.raises(ValueError, match="sigma_min"):
        train_rl.trained_steps((0.01,), 0.05, 0.5, torch.Generator())
    # and a real trajectory reports a last-step std below the floor
    pol = make_policy(PolicyConfig(block_out_channels=(8, 16)))
    _, traj = pol.sample(torch.rand(1, 3, 8, 8), 8, 1.0, torch.Generator().manual_seed(0), return_traj=True)
    assert len(traj.std) == 8 and traj.std[-1] < 0.05 < min(traj.std[:-1])


def test_reward_sources():
    cfg = train_rl.Config()
    sr, hr = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    gold = rewards.make_source("gold", [], cfg)
    score, dmap = gold.stages[1](sr, hr, 0)
    M = label_map(sr, hr)
    assert torch.allclose(score, 1 - M.mean((1, 2, 3))) and torch.equal(dmap, M)
    assert gold.stages[0](sr, hr, 0)[1] is None and gold.n_stages == 1  # stage 0: the score alone
    placebo = rewards.make_source("placebo", [], cfg)
    a, m = placebo.stages[0](sr, hr, 3)
    b, _ = placebo.stages[0](torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16), 3)  # other images
    c, _ = placebo.stages[0](sr, hr, 4)  # another step
    assert m is None and torch.equal(a, b) and not torch.equal(a, c) and ((a >= 0) & (a <= 1)).all()
    with pytest.raises(SystemExit, match="--reward=x unknown"):
        rewards.make_source("x", [], cfg)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(block_out_channels=(8, 16), residual_scale=10.0))
    rms = [freeze(FinPercepRM(RMConfig(widths=(4, 8, 8, 8), stage=k))) for k in range(4)]
    for r in rms[1:]:  # break the zero-init of the map coupling so rewards depend on the maps
        torch.nn.init.normal_(r.map_stats.weight, std=1.0)
    return policy, rms


def src(rms):
    return rewards.make_source("rm", rms, train_rl.Config())


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("rm"))
    train_rm.main(train_rm.Config(out_dir=out, **TINY_RM))
    return out


def test_train_rm_writes_every_stage(rm_dir):
    for k in range(4):
        assert os.path.isfile(os.path.join(rm_dir, f"rm_stage{k}", "model.safetensors"))
    rows = [json.loads(x) for x in open(os.path.join(rm_dir, "metrics.jsonl"))]
    assert {r["stage"] for r in rows} == {0, 1, 2, 3} and all(r["phase"] == "rm" for r in rows)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, rm_dir):
    out = str(tmp_path_factory.mktemp("sft"))
    train_rl.main(train_rl.Config(out_dir=out, rm_dir=rm_dir, sft_only=True, **TINY_RL))
    return out


def test_sft_writes_loadable_policy(sft_dir):
    pol = load_policy(os.path.join(sft_dir, "policy_sft"))
    assert pol.upscale(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    rows = [json.loads(x) for x in open(os.path.join(sft_dir, "metrics.jsonl"))]
    assert rows and all(r["phase"] == "sft" for r in rows)


@pytest.mark.parametrize(
    "algo, curriculum, coevolve",
    [
        ("pg", "ccl", False),
        ("pg", "none", False),
        ("pg", "global", False),
        ("refl", "ccl", False),
        ("pg", "ccl", True),
    ],
)
def test_two_step_rl_runs(tmp_path, rm_dir, sft_dir, algo, curriculum, coevolve):
    cfg = train_rl.Config(
        out_dir=str(tmp_path),
        rm_dir=rm_dir,
        algo=algo,
        curriculum=curriculum,
        coevolve=coevolve,
        init_policy=os.path.join(sft_dir, "policy_sft"),
        **TINY_RL,
    )
    train_rl.main(cfg)
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1]
    for key in ("reward", "reward_final", "gold", "psnr", "stage", "blend", "phase"):
        assert key in rows[0], key
    assert os.path.isfile(tmp_path / "policy_final" / "policy.json")
    # 2 steps, N = 3: ccl starts at 0, 1, 1, 2 (shares 2:1:1:1 of 2 steps) → stage 0 then stage 2
    assert [r["stage"] for r in rows] == {"ccl": [0, 2], "none": [3, 3], "global": [0, 0]}[curriculum]


def test_missing_rm_dir_is_one_line_error(tmp_path, sft_dir):
    cfg = train_rl.Config(
        out_dir=str(tmp_path),
        rm_dir=str(tmp_path / "nope"),
        init_policy=os.path.join(sft_dir, "policy_sft"),
        **TINY_RL,
    )
    with pytest.raises(SystemExit, match="python train_rm.py"):
        train_rl.main(cfg)


def test_resume_continues(tmp_path, rm_dir, sft_dir):
    base = dict(
        out_dir=str(tmp_path),
        rm_dir=rm_dir,
        init_policy=os.path.join(sft_dir, "policy_sft"),
        **{**TINY_RL, "ckpt_every": 1},
    )
    train_rl.main(train_rl.Config(**base))
    train_rl.main(dataclasses.replace(train_rl.Config(**base), steps=3, resume=True))
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [0, 1, 2]


def test_bf16_channels_last_run_keeps_fp32_logprobs(tmp_path, rm_dir, sft_dir):
    # The gpu preset's speed knobs on CPU: the UNet runs under bf16 autocast in NHWC, while the log-probs
    # and the PPO ratio stay fp32 — at θ_old the recomputed ratio is still 1 (approx_kl ~ 0).
    cfg = train_rl.Config(
        out_dir=str(tmp_path),
        rm_dir=rm_dir,
        init_policy=os.path.join(sft_dir, "policy_sft"),
        amp="bf16",
        channels_last=True,
        **TINY_RL,
    )
    train_rl.main(cfg)
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert len(rows) == 2 and all(r["approx_kl"] < 1e-6 and r["clip_frac"] == 0 for r in rows)
    with pytest.raises(SystemExit, match="--amp=fp16 is not allowed"):
        train_rl.main(dataclasses.replace(cfg, amp="fp16"))


def test_coevolve_refreshes_the_rm_online_and_keeps_its_contract(tmp_path, rm_dir, sft_dir):
    # Every step (coevolve_every = 1) the active stage learns from the rollout; --rm_dir is only read, the
    # refreshed stages land under the RL run and are still RMs: (score (B,) in [0, 1], map or None).
    before = {k: load_rm(os.path.join(rm_dir, f"rm_stage{k}")) for k in range(4)}
    mtime = os.path.getmtime(os.path.join(rm_dir, "rm_stage3", "model.safetensors"))
    cfg = train_rl.Config(
        out_dir=str(tmp_path),
        rm_dir=rm_dir,
        init_policy=os.path.join(sft_dir, "policy_sft"),
        coevolve=True,
        curriculum="none",  # RM_3 is the active stage throughout
        **{**TINY_RL, "coevolve_every": 1},
    )
    train_rl.main(cfg)
    assert os.path.getmtime(os.path.join(rm_dir, "rm_stage3", "model.safetensors")) == mtime
    after = load_rm(os.path.join(tmp_path, "rm_coevolved", "rm_stage3"))
    moved = [
        (a - b).abs().max() for a, b in zip(after.state_dict().values(), before[3].state_dict().values())
    ]
    assert max(moved) > 0  # RM_3 learned
    same = load_rm(os.path.join(tmp_path, "rm_coevolved", "rm_stage0"))
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), before[0].state_dict().values()))
    score, dmap = after(torch.rand(2, 3, 32, 32))
    assert score.shape == (2,) and ((score >= 0) & (score <= 1)).all() and dmap.shape == (2, 1, 32, 32)
    with pytest.raises(SystemExit, match="needs --reward=rm"):
        train_rl.main(dataclasses.replace(cfg, reward="gold"))


def rollout(policy, rms, n_lr=1, G=2, seed=0):
    """A pg rollout of tiny images with its advantages (train_rl.main's sampling → reward → advantages)."""
    cfg = train_rl.Config(**{**STEP, "group": G})
    lr, hr = torch.rand(n_lr, 3, 8, 8), torch.rand(n_lr, 3, 32, 32)
    lr_g, hr_g = lr.repeat_interleave(G, 0), hr.repeat_interleave(G, 0)
    sr, traj = policy.sample(
        lr_g, cfg.sample_steps, cfg.eta, torch.Generator().manual_seed(seed), return_traj=True
    )
    r, M, w_map, _ = rewards.reward_and_map(src(rms), [(3, 1.0)], sr, hr_g, lr_g, 0, cfg)
    adv = train_rl.pixel_advantages(
        r, M, w_map, G, cfg.lam_px, cfg.adv_clip, traj.logprob.shape[-2:]
    ).detach()
    ks = train_rl.trained_steps(traj.std, cfg.sigma_min, 1.0, torch.Generator())
    return cfg, lr, hr, lr_g, traj, r, M, adv, ks


def grads(policy):
    return torch.cat([p.grad.flatten() for p in policy.unet.parameters() if p.grad is not None])


def test_equal_rewards_and_maps_give_zero_gradient(tiny):
    # every sample of the group identical → equal rewards and maps → A = D = 0 → no gradient, 1 flat group
    policy, rms = tiny
    cfg, lr, hr, lr_g, traj, r, M, adv, ks = rollout(policy, rms)
    same = lambda x: x[:, :1].expand_as(x).clone()  # noqa: E731  (sample 0 everywhere)
    traj.x, traj.logprob = same(traj.x), same(traj.logprob)
    r, M = r[:1].expand(2).clone(), M[:1].expand_as(M).clone()
    adv = train_rl.pixel_advantages(r, M, 1.0, 2, cfg.lam_px, cfg.adv_clip, traj.logprob.shape[-2:])
    policy.zero_grad()
    train_rl.ppo_pass(policy, None, traj, lr_g, hr, lr, adv, ks, cfg, math.inf)
    assert validation.flat_groups(r, M, 2) == 1 and grads(policy).abs().max() == 0


def test_batched_gradient_equals_per_sample(tiny):
    # The per-sample ("naive") update a first implementation writes — each sample's log-prob recomputed alone,
    # its loss weighted 1 / (B·G · n_train) — gives the batched update's gradient.
    policy, rms = tiny
    cfg, lr, hr, lr_g, traj, r, M, adv, ks = rollout(policy, rms, n_lr=2)
    policy.zero_grad()
    train_rl.ppo_pass(policy, None, traj, lr_g, hr, lr, adv, ks, cfg, math.inf)
    batched = grads(policy)
    policy.zero_grad()
    n = lr_g.shape[0]
    for k in ks:
        for i in range(n):
            s = slice(i, i + 1)
            logp = policy.step_logprob(
                traj.x[k][s], traj.x[k + 1][s], traj.t[k], lr_g[s], traj.steps, traj.eta
            )
            (train_rl.ppo_loss(logp, traj.logprob[k][s], adv[s], math.inf)[0] / (n * len(ks))).backward()
    assert batched.abs().sum() > 0
    assert torch.allclose(grads(policy), batched, rtol=1e-3, atol=1e-6 * batched.abs().max())


def test_micro_batch_recompute_gives_the_same_gradient(tiny):
    # Chunking the log-prob recompute (the gpu preset's memory bound) must not change the update.
    policy, rms = tiny
    cfg, lr, hr, lr_g, traj, r, M, adv, ks = rollout(policy, rms, n_lr=2)  # B·G = 4 samples
    got = {}
    for mb in (0, 1, 3):  # whole batch, one sample per chunk, uneven chunks (3 + 1)
        policy.zero_grad()
        train_rl.ppo_pass(
            policy, None, traj, lr_g, hr, lr, adv, ks, dataclasses.replace(cfg, micro_batch=mb), math.inf
        )
        got[mb] = grads(policy)
    assert got[0].abs().sum() > 0
    for mb in (1, 3):
        assert torch.allclose(got[mb], got[0], rtol=1e-4, atol=1e-6 * got[0].abs().max())


def test_refl_gradient_reaches_the_unet_not_the_rm(tiny):
    # ReFL as train_rl.main runs it: one differentiable step, the frozen RM's reward of its x0, relu(c − r).
    policy, rms = tiny
    hr = torch.rand(2, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    policy.zero_grad()
    sr = policy.refl_sample(lr, 2, 1, 1.0, torch.Generator().manual_seed(0))
    r = src(rms).stages[3](sr, hr, 0)[0]
    torch.nn.functional.relu(1.0 - r).mean().backward()
    g = [p.grad for p in policy.unet.parameters()]
    assert all(x is not None and torch.isfinite(x).all() for x in g) and sum(x.abs().sum() for x in g) > 0
    assert all(p.grad is None for r in rms for p in r.parameters())


def test_ppo_epochs_step_between_passes_so_the_clip_binds(tmp_path, rm_dir, sft_dir):
    # With one pass the ratio is exactly 1 (θ = θ_old) and nothing is clipped; with two passes the optimiser
    # steps in between, so the second pass sees θ ≠ θ_old and a tight clip binds on some samples.
    base = dict(
        rm_dir=rm_dir, init_policy=os.path.join(sft_dir, "policy_sft"), **{**TINY_RL, "ppo_clip": 1e-7}
    )
    clip = {}
    for epochs in (1, 2):
        out = tmp_path / f"e{epochs}"
        train_rl.main(train_rl.Config(out_dir=str(out), ppo_epochs=epochs, **base))
        clip[epochs] = max(json.loads(x)["clip_frac"] for x in open(out / "metrics.jsonl"))
    assert clip[1] == 0.0 and clip[2] > 0.0
    with pytest.raises(SystemExit, match="--ppo_epochs=0 is not allowed"):
        train_rl.Config(ppo_epochs=0)
