"""The Stable Diffusion ×4 upscaler as the policy (sd_upscale.py), on a tiny randomly initialised
StableDiffusionUpscalePipeline that the test builds and saves itself, in the real model's layout: a UNet with
4 + 3 input channels and a 1000-class noise-level embedding, a ×4 KL-VAE with 4 latent channels, a CLIP text
encoder, a CLIP tokenizer from vocab.json + merges.txt. Our policy is that pipeline's own __call__ (prompt "",
guidance_scale 1) at the same noise, its log-probs are torch.distributions.Normal's, ReFL and SFT train the
UNet alone, it round-trips through save/load and diffusers loads ours, evaluate.py upscale / score and
train_rl's SFT, pg and ReFL run on it, and wrong directories are one-line errors. Skipped without
transformers (requirements-models.txt)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (  # noqa: E402
    StableDiffusionUpscalePipeline,
)
from PIL import Image  # noqa: E402
from test_byo_ldm import sft_pg_and_refl  # noqa: E402
from torch.distributions import Normal  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

import evaluate  # noqa: E402
from config import ConfigError  # noqa: E402
from policy import load_policy, save_policy  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = [
    "<|startoftext|>",
    "<|endoftext|>",
    "l",
    "o",
    "w",
    "e",
    "r",
    "w</w>",
    "r</w>",
    "lo",
    "low</w>",
    "er</w>",
]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def tiny_unet(in_channels=7):
    """The real upscaler's UNet in miniature: cross-attention blocks, linear projections, and the noise level
    as a class label (class_embed_type None, num_class_embeds 1000, as the real config)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(8, 16),  # 2 levels: total stride 2 (the real one: 4 levels, stride 8)
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,  # = the text encoder's hidden size
        attention_head_dim=4,
        use_linear_projection=True,
        only_cross_attention=(True, False),
        norm_num_groups=4,
        class_embed_type=None,
        num_class_embeds=1000,
    )


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    """A tiny SD ×4 upscaler pipeline in diffusers' layout; its tokenizer/ as the real one ships it."""
    out, tok = tmp_path_factory.mktemp("sd"), tmp_path_factory.mktemp("tokenizer")
    (tok / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (tok / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                       pad_token_id=1)
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8),  # 3 levels: ×4 down-sampling, as the real upscaler's VAE
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.08333,
    )
    # v prediction as the upscaler's; leading spacing, steps_offset 1 as shipped: rl_scheduler re-configures
    sched = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", steps_offset=1,
                          set_alpha_to_one=False, clip_sample=False)  # fmt: skip
    pipe = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(tok), unet=tiny_unet(),
        low_res_scheduler=DDPMScheduler(beta_schedule="scaled_linear"), scheduler=sched, max_noise_level=350,
    )  # fmt: skip
    pipe.save_pretrained(out)
    shutil.rmtree(out / "tokenizer")  # the real layout: vocab.json + merges.txt, not transformers 5's own
    shutil.copytree(tok, out / "tokenizer")
    return str(out)


class ReplayDDIM(DDIMScheduler):
    """DDIM whose steps take their noise from `noise` (our sampler's draws, in its order), not a generator."""

    noise: list = []

    def step(self, model_output, timestep, sample, eta=0.0, generator=None, return_dict=True):
        out = super().step(model_output, timestep, sample, eta=eta, variance_noise=self.noise.pop(0))
        return out if return_dict else (out.prev_sample, out.pred_original_sample)


def test_our_policy_is_the_pipeline_at_the_same_noise(sd_dir):
    """Same weights, the same (RL) scheduler, the same noise: our samples are the pipeline's images, at
    eta = 0 (deterministic DDIM) and eta = 1 (every step a Gaussian). The pipeline draws the LR's noise first
    from its generator: seeded with the policy's lr_noise_seed, that draw is our fixed ε. atol 1e-5."""
    pipe = StableDiffusionUpscalePipeline.from_pretrained(sd_dir)
    pipe.set_progress_bar_config(disable=True)
    policy, K = load_policy(sd_dir), 3
    assert policy.cfg.space == "sd_x4" and policy.cfg.prediction_type == "v_prediction"
    assert policy.space.noise_level == 20 and policy.stride == 2 and policy.lr_multiple == 2
    pipe.scheduler = ReplayDDIM.from_config(policy.scheduler.config)
    lr = torch.rand(1, 3, 8, 8, generator=gen(1))
    for eta in (0.0, 1.0):
        g = gen(5)  # our sampler's draws: x_T, then one noise per step
        x_T = torch.randn(1, 4, 8, 8, generator=g)
        pipe.scheduler.noise = [torch.randn(1, 4, 8, 8, generator=g) for _ in range(K)]
        want = pipe(prompt="", image=lr, num_inference_steps=K, guidance_scale=1.0, noise_level=20, eta=eta,
                    generator=gen(policy.space.seed), latents=x_T, output_type="pt").images  # fmt: skip
        got = policy.sample(lr, steps=K, eta=eta, generator=gen(5))
        assert got.shape == (1, 3, 32, 32)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_sd_logprob_is_the_ddim_gaussian(sd_dir):
    """v prediction in the VAE's latent space, pinned to DDIM eq. 12/16 by hand, the pipeline's own prompt
    encoding and LR noising, and torch's Normal.log_prob; a chunk of the batch recomputes its own rows."""
    pipe = StableDiffusionUpscalePipeline.from_pretrained(sd_dir)
    policy, K = load_policy(sd_dir), 4
    lr = torch.rand(2, 3, 8, 8, generator=gen(2))
    sr, traj = policy.sample(lr, steps=K, eta=1.0, generator=gen(3), return_traj=True)
    assert sr.shape == (2, 3, 32, 32) and traj.x.shape == (K + 1, 2, 4, 8, 8)
    acp = policy.scheduler.alphas_cumprod
    with torch.no_grad():
        emb = pipe.encode_prompt("", "cpu", 1, False)[0].expand(2, -1, -1)  # the prompt "", as __call__
        eps_lr = torch.randn(1, 3, 8, 8, generator=gen(policy.space.seed))  # one fixed ε for the batch
        cond = pipe.low_res_scheduler.add_noise(lr * 2 - 1, eps_lr.expand(2, -1, -1, -1), torch.tensor([20]))
        for k in range(K):
            t, x_t, x_prev = int(traj.t[k]), traj.x[k], traj.x[k + 1]
            a_t = acp[t]
            a_prev = acp[t - 1000 // K] if t - 1000 // K >= 0 else acp[0]  # set_alpha_to_one=False
            std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
            labels = torch.tensor([20, 20])
            v = pipe.unet(torch.cat([x_t, cond], 1), t, encoder_hidden_states=emb, class_labels=labels).sample
            x0 = a_t.sqrt() * x_t - (1 - a_t).sqrt() * v  # v = sqrt(a) ε − sqrt(1 − a) x0
            eps = a_t.sqrt() * v + (1 - a_t).sqrt() * x_t
            mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * eps
            torch.testing.assert_close(
                traj.logprob[k], Normal(mean, std).log_prob(x_prev), atol=1e-4, rtol=1e-5
            )
            recomputed = policy.step_logprob(x_t, x_prev, traj.t[k], lr, K, 1.0)
            torch.testing.assert_close(recomputed, traj.logprob[k])
            # --micro_batch: a chunk sees the same ε. A batch of 1 only rounds differently in the UNet (~3e-7
            # in the mean, ~4e-5 in the log-prob at the last step's σ ≈ 0.01); another ε moves it by 0.015–8.
            chunk = policy.step_logprob(x_t[1:], x_prev[1:], traj.t[k], lr[1:], K, 1.0)
            torch.testing.assert_close(chunk, traj.logprob[k][1:], atol=1e-3, rtol=0)


def test_refl_and_sft_gradients_reach_the_unet_not_the_vae_or_text_encoder(sd_dir):
    policy = load_policy(sd_dir)
    lr, hr = torch.rand(2, 3, 8, 8, generator=gen(4)), torch.rand(2, 3, 32, 32, generator=gen(6))
    for loss in (lambda: policy.refl_sample(lr, steps=2, generator=gen(5)).mean(),  # through the decoder
                 lambda: policy.sft_loss(hr, lr, gen(7))):  # fmt: skip
        policy.zero_grad(set_to_none=True)
        loss().backward()
        g = [p.grad for p in policy.unet.parameters()]
        assert all(x is not None and torch.isfinite(x).all() for x in g) and sum(x.abs().sum() for x in g) > 0
    tokenizer, text_encoder = policy.space.text
    assert all(p.grad is None for p in policy.space.vae.parameters())
    assert all(p.grad is None and not p.requires_grad for p in text_encoder.parameters())
    assert not policy.space.prompt.requires_grad  # the embedding: a buffer, computed once at load
    # The text encoder is outside the module tree: not in state_dict, never moved with the policy.
    assert not any("text" in k for k in policy.state_dict())


def test_save_load_round_trip_and_diffusers_loads_ours(sd_dir, tmp_path):
    policy, path = load_policy(sd_dir), str(tmp_path / "policy")
    save_policy(policy, path)
    parts = {"unet", "vae", "text_encoder", "tokenizer", "scheduler", "low_res_scheduler"}
    assert parts | {"policy.json", "model_index.json"} <= set(os.listdir(path))
    meta = json.load(open(os.path.join(path, "policy.json")))
    assert (meta["space"], meta["noise_level"], meta["lr_noise_seed"]) == ("sd_x4", 20, 0)
    loaded = load_policy(path)  # its tokenizer/ now in transformers 5's layout: the same prompt embedding
    lr = torch.rand(1, 3, 8, 8, generator=gen(8))
    assert torch.equal(policy.sample(lr, generator=gen(9)), loaded.sample(lr, generator=gen(9)))
    assert loaded.scheduler.config.timestep_spacing == "trailing"  # the RL scheduler, saved as such
    pipe = StableDiffusionUpscalePipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(prompt="", image=lr, num_inference_steps=2, output_type="pt").images.shape == (1, 3, 32, 32)
    bare = tmp_path / "bare"  # another level for a downloaded pipeline: a policy.json that says it (the docs)
    shutil.copytree(sd_dir, bare)
    (bare / "policy.json").write_text('{"kind": "policy", "space": "sd_x4", "noise_level": 50}')
    assert load_policy(str(bare)).space.noise_level == 50


def test_evaluate_upscale_and_score_with_the_sd_policy(sd_dir, rm_dir, tmp_path):
    rng = np.random.default_rng(0)
    img = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (10, 14, 3), dtype=np.uint8)).save(img)  # odd sides: padded
    out = tmp_path / "out"
    up = evaluate.cli(["upscale", str(img), f"--policy={sd_dir}", f"--out_dir={out}", "--steps=2"])
    assert [Image.open(p).size for p in up] == [(56, 40)]
    rm1 = os.path.join(rm_dir, "rm_stage1")
    res = evaluate.cli(
        ["score", str(img), f"--rm={rm1}", f"--policy={sd_dir}", f"--out_dir={out}", "--steps=2"]
    )
    assert len(res) == 1 and 0 <= res[0][1] <= 1 and Image.open(out / "a_dmap.png").size == (56, 40)


def test_sft_pg_and_refl_run_on_the_sd_upscaler(sd_dir, rm_dir, tmp_path):
    for final in sft_pg_and_refl(sd_dir, "sd_x4", rm_dir, tmp_path):  # test_byo_ldm's runs, on the SD ×4
        assert StableDiffusionUpscalePipeline.from_pretrained(final).text_encoder is not None


def test_wrong_directories_are_one_line_errors(sd_dir, tmp_path, monkeypatch):
    def err(path, match):
        with pytest.raises(ConfigError, match=match) as e:
            load_policy(str(path))
        assert "\n" not in str(e.value)

    def broken(name, drop=None):  # a copy of the pipeline, with one file or folder taken out
        d = tmp_path / name
        shutil.copytree(sd_dir, d)
        if drop and os.path.isdir(d / drop):
            shutil.rmtree(d / drop)
        elif drop:
            os.remove(d / drop)
        return d

    other = tmp_path / "sd"  # a pipeline of another kind
    other.mkdir()
    (other / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    err(other, "holds a StableDiffusionPipeline, not an LDMSuperResolutionPipeline or a Stable.*SD ×4")
    (tmp_path / "junk").mkdir()
    err(tmp_path / "junk", "neither a policy directory.*LDM or SD ×4 upscaler pipeline")
    (broken("bad_index") / "model_index.json").write_text("{not json")
    err(tmp_path / "bad_index", "could not be loaded")
    for part in ("text_encoder", "tokenizer", "low_res_scheduler", "vae"):
        err(broken(f"no_{part}", part), f"cannot load {part}/")
    err(broken("no_weights", "unet/diffusion_pytorch_model.safetensors"), "cannot load unet/.*convert .bin")
    tiny_unet(in_channels=4).save_pretrained(broken("bad_unet") / "unet")  # no LR channels
    err(tmp_path / "bad_unet", "an SD ×4 unet takes latent \\(4\\) \\+ LR \\(3\\)")
    ours = tmp_path / "ours"
    save_policy(load_policy(sd_dir), str(ours))
    meta = json.load(open(ours / "policy.json"))
    json.dump({**meta, "noise_level": 400}, open(ours / "policy.json", "w"))
    err(ours, "noise_level=400 must be in 0..350")
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed (and the next test: really)
    err(sd_dir, "needs transformers: pip install -r requirements-models.txt")


def test_without_transformers_the_rest_runs_and_sd_is_one_line(sd_dir, tmp_path):
    """Two fresh interpreters. With transformers: load_policy knows the SD directory by its files alone
    (nothing imported first, no registry). Without it (site-packages copied as links, minus transformers and
    peft, which needs it): policy, train_rl and evaluate import, a pixel policy samples, the SD directory is
    one line."""
    code = ("import sys, torch, policy, train_rl, evaluate; assert 'sd_upscale' not in sys.modules\n"
            "print(policy.make_policy().sample(torch.rand(1, 3, 4, 4), steps=2).shape[-1])\n"
            f"print(type(policy.load_policy({sd_dir!r}).space).__name__)")  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["16", "UpscaleSpace"], out.stderr[-500:]
    site = tmp_path / "site"
    site.mkdir()
    for sp in [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and os.path.isdir(p)]:
        for entry in os.listdir(sp):
            if entry.split("-")[0] not in ("transformers", "peft") and not (site / entry).exists():
                os.symlink(os.path.join(sp, entry), site / entry)
    env["PYTHONPATH"] = f"{site}{os.pathsep}{ROOT}"
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    want = (
        "error: the SD ×4 upscaler's text encoder needs transformers: pip install -r requirements-models.txt"
    )
    assert out.returncode == 1 and out.stdout.split() == ["16"], out.stderr[-500:]
    assert out.stderr.strip().splitlines()[-1] == want  # ConfigError: the message alone, no traceback


def test_sd_upscale_knows_nothing_of_the_policy():
    """As ldm.py: the space never imports policy (policy imports it, lazily, when a directory says so)."""
    from test_layout import FILES, imports

    assert "policy" not in imports(next(f for f in FILES if f.stem == "sd_upscale"), {f.stem for f in FILES})
