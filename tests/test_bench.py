"""bench.py: a tiny in-process run prints its rows and writes finite numbers; the naive baseline does the same
maths as train_rl.pg_step (so its speedup compares equal work); the call counter sees what train_rl does."""

import json
import math
import os
import re

import pytest
import torch

import bench
import train_rl
from curriculum import Schedule
from policy import PolicyConfig, make_policy
from rewards import make_source
from rm import RMConfig, freeze, make_rm

# Tiny shapes: HR 32² (LR 8²), B = 1 LR image, G = 2 samples, K = 2 DDIM steps, one timed step of each kind.
TINY = dict(
    crop=32,
    batch=1,
    group=2,
    sample_steps=2,
    unet_channels=(8, 16),
    rm_widths=(4, 8, 8, 8),
    warmup=1,
    repeats=1,
    naive_repeats=1,
    model_repeats=1,
)


def numbers(obj):
    """Every int/float inside a JSON-like object (bools are not numbers here)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    return [obj] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


def test_main_prints_rows_and_writes_json(tmp_path, capsys):
    out = bench.main(bench.Config(out_dir=str(tmp_path), presets="cpu,gpu", device="cpu", **TINY))
    lines = capsys.readouterr().out.splitlines()
    eff = [x for x in lines if re.fullmatch(r"efficiency (pg|refl) cpu \d+\.\d+", x)]
    assert [x.split()[1] for x in eff] == ["pg", "refl"]  # one line per algorithm, exactly that form
    assert not any(
        x.startswith("efficiency naive") for x in lines
    )  # the baseline has a speedup, no efficiency
    assert "gpu preset skipped: needs CUDA" in "\n".join(lines)  # --device=cpu: never a CUDA device
    assert any(x.strip().startswith("naive_pg") and "speedup" in x for x in lines)
    res = json.load(open(os.path.join(out, "bench.json")))
    assert "skipped" in res["gpu"]
    cpu = res["cpu"]
    for key in ("pg", "refl", "naive_pg", "model"):
        vals = numbers(cpu[key])
        assert vals and all(math.isfinite(v) and v > 0 for v in vals), key
    for kind in ("pg", "refl"):  # the printed line is the JSON's number, rounded
        assert f"efficiency {kind} cpu {cpu[kind]['efficiency']:.2f}" in lines
    # The call counter against train_rl's loop, counted by hand (the comment in bench_preset): pg at ccl stage
    # 0 = K rollout forwards + one no-grad forward of the KL anchor (beta_kl > 0) per trained step + RM_0
    # (reward) and RM_3 (reward_final) forwards + n_train = 1 forward+backward (the one step above the σ
    # floor: the last of K = 2 is never trained), all at B·G = 2. refl: the step with grad + sft_loss, each a forward+backward at B = 1,
    # RM_0's reward backpropagated, RM_3 logged, and `stop` no-grad forwards, stop in K − refl_last … K − 1.
    assert cpu["pg"]["work"] == {"unet fwd@2": 3, "rm0 fwd@2": 1, "rm3 fwd@2": 1, "unet fwd+bwd@2": 1}
    work = dict(cpu["refl"]["work"])
    assert work.pop("unet fwd@1", 0) in (0, 1)
    assert work == {"unet fwd+bwd@1": 2, "rm0 fwd+bwd@1": 1, "rm3 fwd@1": 1}


def test_unknown_preset_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="--presets=tpu"):
        bench.main(bench.Config(out_dir=str(tmp_path), presets="tpu"))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    policy = make_policy(PolicyConfig(block_out_channels=(8, 16), residual_scale=10.0))
    # A fresh policy's output layer is zero (it starts as bicubic), which would leave every other layer with
    # a zero gradient: give it weights so the comparison below covers the whole UNet.
    torch.nn.init.normal_(policy.unet.conv_out.weight, std=0.1)
    rms = [freeze(make_rm(RMConfig(widths=(4, 8, 8, 8), stage=k))) for k in range(4)]
    for r in rms[1:]:  # break the zero-init of the map coupling so the rewards depend on the maps
        torch.nn.init.normal_(r.map_stats.weight, std=1.0)
    # ppo_clip 1: that kernel noise (above) puts a few ratios just outside DDPO's 1 ± 1e-4 in one path and not
    # the other, zeroing those pixels' gradient there; a wide clip compares the surrogate's maths itself.
    rl = train_rl.Config(
        crop=32, batch=1, group=3, sample_steps=3, unet_channels=(8, 16), ppo_clip=1.0, beta_kl=0.0
    )
    return policy, rms, rl


def test_naive_step_does_pg_steps_maths(tiny, monkeypatch):
    policy, rms, rl = tiny
    sched = Schedule("none", 3, 10)  # RM_3 throughout: rewards and maps, so the per-pixel advantages count
    hr = torch.rand(1, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    lr_g = lr.repeat_interleave(rl.group, 0)
    gen = torch.Generator().manual_seed(0)
    source = make_source("rm", rms, rl)
    hr_g = hr.repeat_interleave(rl.group, 0)
    sr, traj, rewards, maps = bench.naive_rollout(policy, source, lr_g, hr_g, {3}, rl, gen, 5)
    assert traj.x.shape == (4, 3, 3, 32, 32) and traj.logprob.shape == (3, 3, 3, 32, 32)
    # Sampled one at a time, log-probed as a batch: the same Gaussian densities (GroupNorm is per sample).
    # Tolerance: batch 1 and batch 3 run different conv kernels, ~1e-7 apart in the mean; log N(x; μ, σ²)
    # multiplies that by |x − μ| / σ², and the last DDIM step's σ is small: up to ~1e-3 per pixel.
    for k in range(3):
        logp = policy.step_logprob(traj.x[k], traj.x[k + 1], traj.t[k], lr_g, traj.steps, traj.eta)
        torch.testing.assert_close(logp, traj.logprob[k], rtol=1e-4, atol=3e-3)
    # Scored one at a time = scored as a batch.
    batched, _ = train_rl.score_all(source, sr, hr_g, 5, {3})
    torch.testing.assert_close(rewards[3], batched[3], rtol=1e-5, atol=1e-6)

    # The update: pg_step on this very rollout (its sampler patched to return it) against naive_update.
    monkeypatch.setattr(policy, "sample", lambda *a, **k: (sr, traj))
    policy.zero_grad(set_to_none=True)
    _, _, stats = train_rl.pg_step(policy, None, source, sched, 5, hr, lr, rl, gen)
    ours = [p.grad.clone() for p in policy.unet.parameters()]
    assert float(stats["approx_kl"]) < 1e-6  # ratio ≈ 1: the stored log-probs are the recomputed ones
    r = rewards[3]
    adv = train_rl.pixel_advantages(r, maps[3], 1.0, rl.group, rl.lam_px, rl.adv_clip, sr.shape[-2:]).detach()
    policy.zero_grad(set_to_none=True)
    bench.naive_update(policy, traj, lr_g, adv, 5, rl)
    naive = [p.grad for p in policy.unet.parameters()]
    assert sum(float(g.abs().sum()) for g in ours) > 0
    # Per tensor, relative to its norm: the ratios carry the ~1e-3 log-prob noise above, so ~1e-4 apart is
    # float, a wrong normalisation (B·G, n_train) or a wrong pixel would be ≥ 1e-1. The 1e-6 floor covers the
    # biases right before a GroupNorm, whose true gradient is 0 (both give ~1e-7 of rounding).
    for a, b in zip(ours, naive):
        assert (a - b).norm() <= 1e-3 * a.norm() + 1e-6
    torch.testing.assert_close(stats["reward"], r.mean())


def test_naive_pg_step_runs_the_whole_step(tiny):
    policy, rms, rl = tiny
    sched = Schedule("ccl", 3, 10)  # stage 0: RM_0's reward, no map (the advantage without local penalties)
    hr = torch.rand(1, 3, 32, 32)
    lr = torch.nn.functional.avg_pool2d(hr, 4)
    policy.zero_grad(set_to_none=True)
    loss, sr, stats = bench.naive_pg_step(
        policy, None, make_source("rm", rms, rl), sched, 0, hr, lr, rl, torch.Generator().manual_seed(1)
    )
    assert sr.shape == (3, 3, 32, 32) and torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.unet.parameters())
    assert 0 <= float(stats["reward"]) <= 1
