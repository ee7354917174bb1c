"""policy.py on tiny UNets and tiny images, CPU only: log-probs pinned to torch.distributions, exact PPO
ratios, reproducible sampling, gradients, real sample diversity, save/load, the upscale contract."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch.distributions import Normal

from config import ConfigError
from policy import PolicyConfig, estimate_residual_scale, load_policy, make_policy, save_policy, upsample

TINY = dict(block_out_channels=(8, 16), sample_size=16)  # 2 levels, stride 2, ~41k params


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convs gain nothing from 2 threads, and on a shared CPU the OpenMP spin-waits can cost 10x.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return make_policy(PolicyConfig(**TINY, residual_scale=5.0))


@pytest.fixture(scope="module")
def lr():
    return torch.rand(2, 3, 4, 4, generator=gen(1))  # -> SR 16x16


@pytest.fixture(scope="module")
def rollout(policy, lr):
    return policy.sample(lr, steps=4, eta=1.0, generator=gen(2), return_traj=True)


def test_trajectory_shapes(policy, lr, rollout):
    sr, traj = rollout
    assert sr.shape == (2, 3, 16, 16) and 0 <= sr.min() and sr.max() <= 1
    assert traj.x.shape == (5, 2, 3, 16, 16) and traj.logprob.shape == (4, 2, 3, 16, 16)
    assert traj.t.tolist() == [999, 749, 499, 249]  # trailing spacing: starts at T-1 (pure noise)
    assert torch.allclose(policy.space.decode(traj.x[-1], lr), sr)


def test_stored_logprob_is_the_ddim_gaussian(policy, lr, rollout):
    """Pin the step to independent references: DDIM eq. 12/16 by hand, and torch's Normal.log_prob."""
    _, traj = rollout
    acp, T, K = policy.scheduler.alphas_cumprod, 1000, 4
    with torch.no_grad():
        for k in range(K):
            t = int(traj.t[k])
            x_t, x_prev = traj.x[k], traj.x[k + 1]
            a_t = acp[t]
            a_prev = acp[t - T // K] if t - T // K >= 0 else acp[0]  # set_alpha_to_one=False
            std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()  # sigma_t, eta = 1
            x0 = policy.unet(torch.cat([x_t, upsample(lr) * 2 - 1], 1), t).sample  # x0 prediction
            eps = (x_t - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
            ref = Normal(mean, std).log_prob(x_prev)
            torch.testing.assert_close(traj.logprob[k], ref, atol=1e-4, rtol=1e-5)
            m, s = policy.step_stats(x_t, traj.t[k], lr, steps=K, eta=1.0)
            torch.testing.assert_close(m, mean, atol=1e-5, rtol=1e-5)
            assert math.isclose(s, float(std), rel_tol=1e-5)


def test_recomputed_logprob_gives_ratio_one(policy, lr, rollout):
    _, traj = rollout
    for k in range(traj.steps):  # the PPO recompute: one call per trajectory index, batched over samples
        new = policy.step_logprob(traj.x[k], traj.x[k + 1], traj.t[k], lr, traj.steps, traj.eta)
        assert new.requires_grad
        ratio = torch.exp(new.detach() - traj.logprob[k]).mean(dim=(1, 2, 3))  # DDPO averages over pixels
        torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)


def test_generator_reproducibility(policy, lr):
    a = policy.sample(lr, steps=3, generator=gen(7))
    b = policy.sample(lr, steps=3, generator=gen(7))
    c = policy.sample(lr, steps=3, generator=gen(8))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_every_step_has_positive_std(policy, lr, rollout):
    _, traj = rollout
    stds = [policy.step_stats(traj.x[k], traj.t[k], lr, 4, 1.0)[1] for k in range(4)]
    assert stds[-1] > 0 and all(s > 0 for s in stds)  # the last step too: a valid density everywhere


def test_gradients_flow_into_unet(policy, lr, rollout):
    _, traj = rollout
    policy.zero_grad()
    policy.step_logprob(traj.x[-2], traj.x[-1], traj.t[-1], lr, 4, 1.0).mean().backward()
    grads = [p.grad for p in policy.unet.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    policy.zero_grad()


def test_sft_and_refl_losses_backprop(policy, lr):
    hr = (upsample(lr) + 0.05 * torch.randn(2, 3, 16, 16, generator=gen(3))).clamp(0, 1)
    loss = policy.sft_loss(hr, lr, generator=gen(4))
    assert loss.dim() == 0 and torch.isfinite(loss)
    sr = policy.refl_sample(lr, steps=4, stop_index=2, generator=gen(5))
    assert sr.shape == (2, 3, 16, 16) and sr.requires_grad
    policy.zero_grad()
    (loss + sr.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in policy.unet.parameters())
    policy.zero_grad()


def test_estimate_residual_scale_gives_unit_variance(lr):
    hr = (upsample(lr) + 0.05 * torch.randn(2, 3, 16, 16, generator=gen(6))).clamp(0, 1)
    s = estimate_residual_scale(lr, hr)
    assert 10 < s < 40  # residual std ~0.05 -> scale ~20
    p = make_policy(PolicyConfig(**TINY, residual_scale=s))
    assert math.isclose(float(p.space.encode(hr, lr).std()), 1.0, rel_tol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Diversity: the randomness of the samples must sit where the model is uncertain, not be white noise.


class OracleDenoiser(torch.nn.Module):
    """The exact posterior mean for x0 = 0 on the right half, x0 ~ N(0, 1) i.i.d. on the left half:
    E[x0 | x_t] = mask * sqrt(abar_t) x_t (x_t has unit variance, Cov(x0, x_t) = sqrt(abar_t))."""

    def __init__(self, mask, abar):
        super().__init__()
        self.mask, self.abar = mask, abar

    def forward(self, inp, t):
        return SimpleNamespace(sample=self.mask * self.abar[t].sqrt().view(-1, 1, 1, 1) * inp[:, :3])


def test_sampler_turns_an_exact_denoiser_into_the_right_spread():
    """With the Bayes-optimal x0 predictor the sampler's output variance follows, per pixel, the linear
    recursion x_prev = c_k x_t + sigma_k z, computed here by hand (DDIM eq. 12/16). Where x0 ~ N(0, 1) it
    stays near 1 (K=10 DDIM slightly under-disperses), where x0 = 0 it collapses to ~0. A "regressor +
    white noise" sampler would instead give the same std everywhere."""
    policy = make_policy(PolicyConfig(**TINY, residual_scale=10.0))
    acp = policy.scheduler.alphas_cumprod
    mask = (torch.arange(16) < 8).float().view(1, 1, 1, 16)
    policy.unet = OracleDenoiser(mask, acp)
    lr = torch.full((512, 3, 4, 4), 0.5)  # one grey LR image, 512 seeds in one batch
    std = policy.sample(lr, steps=10, eta=1.0, generator=gen(0)).std(0).mean(0)  # (16, 16) per pixel
    var = {"tex": 1.0, "flat": 1.0}  # x_T ~ N(0, I)
    for t in range(999, 0, -100):  # trailing timesteps for K=10: 999, 899, ..., 99
        a_t, a_p = acp[t], acp[t - 100] if t >= 100 else acp[0]
        sig2 = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        eps_gain = (1 - a_p - sig2).sqrt() / (1 - a_t).sqrt()  # eps_hat = (x_t - sqrt(a_t) x0_hat) / ...
        c_tex = a_p.sqrt() * a_t.sqrt() + eps_gain * (1 - a_t)  # x0_hat = sqrt(a_t) x_t
        c_flat = eps_gain  # x0_hat = 0
        var = {"tex": c_tex**2 * var["tex"] + sig2, "flat": c_flat**2 * var["flat"] + sig2}
    want_tex, want_flat = var["tex"].sqrt() / 10, var["flat"].sqrt() / 10  # decode divides by residual_scale
    tex, flat = std[:, :6].mean(), std[:, 10:].mean()
    assert math.isclose(tex, want_tex, rel_tol=0.05), (tex, want_tex)
    assert math.isclose(flat, want_flat, rel_tol=0.1), (flat, want_flat)
    assert tex > 20 * flat, (tex, flat)


def half_textured(b, g, size=32):
    """HR: left half texture (LR-visible 4x4 blocks + per-pixel detail lost in the LR), right half flat."""
    blocks = (
        torch.randn(b, 3, size // 4, size // 4, generator=g).repeat_interleave(4, 2).repeat_interleave(4, 3)
    )
    tex = (0.5 + 0.2 * blocks + 0.2 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1)
    flat = torch.rand(b, 3, 1, 1, generator=g).expand(b, 3, size, size)
    hr = torch.where((torch.arange(size) < size // 2).view(1, 1, 1, size), tex, flat)
    return hr, F.avg_pool2d(hr, 4)


@pytest.fixture(scope="module")
def trained():
    """A tiny policy SFT-trained for 100 steps (~5 s). It learns where the texture is (always left here;
    with a random side 100 steps are too few for a 41k-param net to learn it from LR content)."""
    g = gen(0)
    hr, lr = half_textured(64, g)
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(block_out_channels=(8, 16), sample_size=32))
    policy.cfg.residual_scale = estimate_residual_scale(lr, hr)
    steps = 100
    opt = torch.optim.Adam(policy.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        hr, lr = half_textured(8, g)
        loss = policy.sft_loss(hr, lr, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return policy


def test_learned_sample_diversity_is_in_textured_regions(trained):
    _, lr = half_textured(1, gen(50))
    std = trained.sample(lr.expand(8, -1, -1, -1), generator=gen(1)).std(0).mean(0)  # 8 seeds
    tex, flat = std[:, :12].mean(), std[:, 20:].mean()  # 4 px margin around the seam
    assert tex > 3 * flat, (tex, flat)


# ---------------------------------------------------------------------------------------------------
# Save / load and the upscale contract.


def test_save_load_roundtrip(trained, tmp_path):
    path = str(tmp_path / "policy_sft")
    save_policy(trained, path)
    meta = json.load(open(os.path.join(path, "policy.json")))
    assert meta["kind"] == "policy" and meta["space"] == "pixel" and meta["prediction_type"] == "sample"
    assert os.path.isfile(os.path.join(path, "unet", "diffusion_pytorch_model.safetensors"))
    loaded = load_policy(path)
    assert loaded.cfg == trained.cfg
    _, lr = half_textured(2, gen(9))
    assert torch.equal(trained.sample(lr, generator=gen(3)), loaded.sample(lr, generator=gen(3)))
    assert isinstance(UNet2DModel.from_pretrained(os.path.join(path, "unet")), UNet2DModel)
    save_policy(trained, path)  # overwriting an existing checkpoint is atomic and leaves no temp dirs
    assert sorted(os.listdir(tmp_path)) == ["policy_sft"]


def test_load_rejects_non_policy_dirs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_policy(str(tmp_path / "nope"))
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "rm.json").write_text('{"kind": "rm"}')
    with pytest.raises(ConfigError, match="not a policy checkpoint.*train_rl.py --sft_only"):
        load_policy(str(tmp_path / "rm"))


def test_upscale_contract(trained):
    _, lr = half_textured(3, gen(11))
    sr = trained.upscale(lr[:, :, :4, :6])  # non-square is fine: any size that is a multiple of the stride
    assert sr.shape == (3, 3, 16, 24) and sr.min() >= 0 and sr.max() <= 1


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(1, 1, 4, 4), "1 channels, expected 3"),
        (torch.rand(3, 4, 4), "4-D tensor"),
        (torch.rand(0, 3, 4, 4), "empty batch"),
        (torch.full((1, 3, 4, 4), float("nan")), "NaN or Inf"),
        (torch.rand(1, 3, 4, 4) * 255, r"in \[0, 1\]"),
        (torch.rand(1, 3, 3, 4), "not a multiple of the UNet's total stride 8; crop or pad"),
    ],
)
def test_upscale_rejects_bad_input(bad, match):
    deep = make_policy(PolicyConfig(block_out_channels=(8, 8, 8, 8)))  # 4 levels: stride 8
    with pytest.raises(ValueError, match=match) as err:
        deep.upscale(bad)
    assert "\n" not in str(err.value)
