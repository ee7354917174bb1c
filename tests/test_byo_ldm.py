"""A pretrained diffusers LDM SR model as the policy, on a tiny randomly initialised LDM SR pipeline that the
test builds and saves itself: diffusers' own LDMSuperResolutionPipeline runs on it, our latent policy
reproduces that pipeline exactly, its log-probs are pinned to torch.distributions.Normal, it round-trips
through save/load, and SFT, policy gradient and ReFL run on it for 2 steps. Plus every wrong-directory
error, one line each."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel, VQModel
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
    LDMSuperResolutionPipeline,  # the top-level diffusers name needs transformers; the module path does not
)
from PIL import Image
from test_rl import TINY_RL
from torch.distributions import Normal

import evaluate
import train_rl
from apply import score
from config import ConfigError
from evaluate import Config as EvalConfig
from policy import load_policy, save_policy
from rm import load_rm, load_stages


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory):
    """A tiny LDM SR pipeline in diffusers' layout (VQ-f4, 3 latent channels, UNet in = 3 + 3)."""
    torch.manual_seed(0)
    vqvae = VQModel(
        block_out_channels=(8, 8, 8),  # 3 levels: down-sampling ×4, as the CompVis model's VQ-f4
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=3,
        num_vq_embeddings=32,
        norm_num_groups=4,
    )
    unet = UNet2DModel(
        in_channels=6,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D",) * 2,
        up_block_types=("UpBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
        add_attention=False,
    )
    # the CompVis model's schedule as shipped: leading spacing, set_alpha_to_one (last step deterministic)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0155)
    out = str(tmp_path_factory.mktemp("ldm"))
    LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=sched).save_pretrained(out)
    return out


def test_diffusers_pipeline_runs_and_our_policy_is_that_pipeline(ldm_dir):
    pipe = LDMSuperResolutionPipeline.from_pretrained(ldm_dir)
    pipe.set_progress_bar_config(disable=True)
    lr = torch.rand(2, 3, 8, 8, generator=gen(1))
    assert pipe(lr * 2 - 1, num_inference_steps=2, output_type="pt").images.shape == (2, 3, 32, 32)
    policy = load_policy(ldm_dir)
    assert policy.cfg.space == "latent" and policy.cfg.prediction_type == "epsilon"
    # Same weights, same (RL) scheduler, same initial noise, eta = 0: the images agree to float precision.
    pipe.scheduler = DDIMScheduler.from_config(policy.scheduler.config)
    want = pipe(lr * 2 - 1, num_inference_steps=3, eta=0.0, generator=gen(5), output_type="pt").images
    got = policy.sample(lr, steps=3, eta=0.0, generator=gen(5))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_load_policy_knows_an_ldm_directory_in_a_fresh_interpreter(ldm_dir):
    """load_policy recognises the pipeline by its files alone: nothing else imported first (no registry)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"from policy import load_policy; print(type(load_policy({ldm_dir!r}).space).__name__)"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "LatentSpace", out.stderr[-500:]


def test_rl_scheduler_has_std_above_zero_at_every_step(ldm_dir):
    policy = load_policy(ldm_dir)
    cfg = policy.scheduler.config
    assert cfg.timestep_spacing == "trailing" and not cfg.set_alpha_to_one and cfg.beta_start == 0.0015
    x, lr = torch.randn(1, 3, 8, 8), torch.rand(1, 3, 8, 8)
    for K in (1, 2, 4, 10, 50):
        policy._defaults(K, None)  # sets K in the scheduler
        stds = [policy.step_stats(x, t, lr, steps=K, eta=1.0)[1] for t in policy.scheduler.timesteps]
        assert min(stds) > 0 and policy.scheduler.timesteps[0] == 999, (K, stds)


def test_latent_logprob_is_the_ddim_gaussian(ldm_dir):
    """Epsilon prediction in VQ space, pinned to DDIM eq. 12/16 by hand and torch's Normal.log_prob."""
    policy, K = load_policy(ldm_dir), 4
    lr = torch.rand(2, 3, 8, 8, generator=gen(2))
    sr, traj = policy.sample(lr, steps=K, eta=1.0, generator=gen(3), return_traj=True)
    assert sr.shape == (2, 3, 32, 32) and traj.x.shape == (K + 1, 2, 3, 8, 8)
    acp = policy.scheduler.alphas_cumprod
    with torch.no_grad():
        for k in range(K):
            t, x_t, x_prev = int(traj.t[k]), traj.x[k], traj.x[k + 1]
            a_t = acp[t]
            a_prev = acp[t - 1000 // K] if t - 1000 // K >= 0 else acp[0]  # set_alpha_to_one=False
            std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            eps = policy.unet(torch.cat([x_t, lr * 2 - 1], 1), t).sample  # LR at its own size, in [-1, 1]
            x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
            ref = Normal(mean, std).log_prob(x_prev)
            torch.testing.assert_close(traj.logprob[k], ref, atol=1e-4, rtol=1e-5)
            recomputed = policy.step_logprob(x_t, x_prev, traj.t[k], lr, K, 1.0)
            torch.testing.assert_close(recomputed, traj.logprob[k])


def test_refl_and_sft_gradients_reach_the_unet_not_the_vqvae(ldm_dir):
    policy = load_policy(ldm_dir)
    lr = torch.rand(2, 3, 8, 8, generator=gen(4))
    sr = policy.refl_sample(lr, steps=2, generator=gen(5))  # through the straight-through quantiser
    (sr.mean() + policy.sft_loss(torch.rand(2, 3, 32, 32, generator=gen(6)), lr, gen(7))).backward()
    g = [p.grad for p in policy.unet.parameters()]
    assert all(x is not None and torch.isfinite(x).all() for x in g) and sum(x.abs().sum() for x in g) > 0
    assert all(p.grad is None for p in policy.space.vqvae.parameters())


def test_save_load_round_trip_and_diffusers_loads_ours(ldm_dir, tmp_path):
    policy = load_policy(ldm_dir)
    path = str(tmp_path / "policy")
    save_policy(policy, path)
    assert {"unet", "vqvae", "scheduler", "policy.json", "model_index.json"} <= set(os.listdir(path))
    loaded = load_policy(path)
    lr = torch.rand(1, 3, 8, 8, generator=gen(8))
    assert torch.equal(policy.sample(lr, generator=gen(9)), loaded.sample(lr, generator=gen(9)))
    pipe = LDMSuperResolutionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(lr * 2 - 1, num_inference_steps=2, output_type="pt").images.shape == (1, 3, 32, 32)


def sft_pg_and_refl(pretrained: str, space: str, rm_dir: str, tmp_path) -> list:
    """train_rl's SFT from a pretrained pipeline directory, then 2 pg steps from it and 2 ReFL steps from the
    SFT policy (also the SD ×4 upscaler's test): every run logs its steps, every saved policy keeps `space`.
    Returns the two policy_final directories."""
    base = dict(TINY_RL, rm_dir=rm_dir)
    sft_out = str(tmp_path / "sft")  # train_rl's SFT phase, started from the pretrained weights
    train_rl.main(train_rl.Config(out_dir=sft_out, init_policy=pretrained, sft_only=True, **base))
    sft_policy = os.path.join(sft_out, "policy_sft")
    assert load_policy(sft_policy).cfg.space == space
    rows = [json.loads(x) for x in open(os.path.join(sft_out, "metrics.jsonl"))]
    assert rows and all(r["phase"] == "sft" for r in rows)
    finals = []
    for algo, init in (("pg", pretrained), ("refl", sft_policy)):
        out = str(tmp_path / algo)
        train_rl.main(train_rl.Config(out_dir=out, init_policy=init, algo=algo, **base))
        rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
        assert [r["step"] for r in rows] == [0, 1] and all(r["reward"] == r["reward"] for r in rows)
        finals.append(os.path.join(out, "policy_final"))
        assert load_policy(finals[-1]).cfg.space == space
    return finals


def test_sft_pg_and_refl_run_on_the_ldm(ldm_dir, rm_dir, tmp_path):
    for final in sft_pg_and_refl(ldm_dir, "latent", rm_dir, tmp_path):
        assert LDMSuperResolutionPipeline.from_pretrained(final).vqvae is not None


def test_wrong_directories_are_one_line_errors(ldm_dir, rm_dir, tmp_path):
    def err(fn, *a, match):
        with pytest.raises(ConfigError, match=match) as e:
            fn(*a)
        assert "\n" not in str(e.value)

    policy_dir = str(tmp_path / "policy")
    save_policy(load_policy(ldm_dir), policy_dir)
    err(load_policy, os.path.join(rm_dir, "rm_stage1"), match="not a policy checkpoint \\(a rm checkpoint\\)")
    err(load_policy, rm_dir, match="neither a policy directory")  # train_rm's out_dir as a policy
    err(load_rm, policy_dir, match="not a rm checkpoint \\(a policy checkpoint\\)")
    err(load_rm, ldm_dir, match="not a rm checkpoint \\(a diffusers pipeline\\)")
    err(score, EvalConfig(rm=ldm_dir), ["x.png"], match="not a rm checkpoint")
    err(load_stages, policy_dir, "cpu", match="is a policy directory, not train_rm's out_dir")
    err(load_stages, os.path.join(rm_dir, "rm_stage2"), "cpu", match="one RM stage; pass its parent")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hello")
    err(load_policy, str(tmp_path / "junk"), match="neither a policy directory")
    other = tmp_path / "sd"  # a pipeline of another kind
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    err(load_policy, str(other), match="holds a StableDiffusionPipeline, not an LDMSuperResolutionPipeline")
    broken = tmp_path / "broken"  # an LDM directory whose unet weights are missing
    shutil.copytree(ldm_dir, broken)
    os.remove(broken / "unet" / "diffusion_pytorch_model.safetensors")
    err(load_policy, str(broken), match="cannot load unet/")
    bad_unet = tmp_path / "bad_unet"  # a UNet that does not take latent + LR channels
    shutil.copytree(ldm_dir, bad_unet)
    kw = dict(down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
    bad = UNet2DModel(in_channels=3, out_channels=3, block_out_channels=(8, 16), **kw)
    bad.save_pretrained(bad_unet / "unet")
    err(load_policy, str(bad_unet), match="an LDM SR unet takes latent \\(3\\) \\+ LR \\(3\\)")


def test_lr_folder_no_reference_scoring_with_the_ldm(ldm_dir, rm_dir, tmp_path, capsys):
    """--data=lr:LR_DIR (RealLR200-style: LR only): upscale with the policy, then RM scores and maps."""
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(lr_dir / "a.png")  # odd: padded
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(lr_dir / "b.jpg")
    rm1, out = os.path.join(rm_dir, "rm_stage1"), tmp_path / "out"
    flags = [f"--data=lr:{lr_dir}", f"--rm={rm1}", f"--policy={ldm_dir}", f"--out_dir={out}", "--steps=2"]
    res = evaluate.cli(["score", *flags])
    assert [os.path.basename(p) for p, _ in res] == ["a.png", "b.jpg"] and all(0 <= s <= 1 for _, s in res)
    assert Image.open(out / "a_x4.png").size == (56, 40) == Image.open(out / "a_dmap.png").size
    assert "mean score over 2 images" in capsys.readouterr().out
    up = evaluate.cli(["upscale", *flags[:1], *flags[2:]])  # the same folder, upscaled only
    assert [Image.open(p).size for p in up] == [(56, 40), (32, 32)]
    with pytest.raises(ConfigError, match="it has no HR"):
        evaluate.main(evaluate.Config(data=f"lr:{lr_dir}", out_dir=str(tmp_path / "e")))
    with pytest.raises(ConfigError, match="take lr:LR_DIR"):
        evaluate.cli(["score", f"--data={lr_dir}", f"--rm={rm1}"])
