"""The Stable Diffusion ×4 upscaler as the policy: diffusers' StableDiffusionUpscalePipeline layout.

    python train_rl.py --init_policy=PATH/stable-diffusion-x4-upscaler --sft_only --data=paired:LR,HR
    python evaluate.py upscale lr.png --policy=PATH/stable-diffusion-x4-upscaler --out_dir=out/sr
    policy = load_policy("PATH/stable-diffusion-x4-upscaler")             # policy.py: the one entry point

Point --init_policy (or load_policy) at a directory with model_index.json (_class_name
StableDiffusionUpscalePipeline), unet/, vae/, text_encoder/, tokenizer/, scheduler/ and low_res_scheduler/,
e.g. stabilityai/stable-diffusion-x4-upscaler that you downloaded yourself; nothing is fetched here. The text
encoder needs transformers (requirements-models.txt), imported by load_sd only. policy.load_policy recognises
the directory and builds a Policy in UpscaleSpace (below); as in ldm.py, the sampler, the log-probs, SFT and
RL are policy.py's own and this file knows only what the space changes. Following the pipeline's __call__
(diffusers/pipelines/stable_diffusion/pipeline_stable_diffusion_upscale.py) with prompt "" and
guidance_scale 1 (no classifier-free guidance: one UNet forward per step, one Gaussian per step):
- x lives in the VAE's latent space at LR resolution, (B, 4, h, w), scaled by vae scaling_factor (0.08333);
  SR = clamp(vae.decode(x0 / scaling_factor), −1, 1) / 2 + 1/2 at 4h × 4w. v prediction, as the model ships.
- The condition is the LR in [-1, 1] noised to `noise_level` (the pipeline's default 20; policy.json) by the
  low_res_scheduler: sqrt(ᾱ_n) LR + sqrt(1 − ᾱ_n) ε. The UNet takes cat([x_t, noised LR]) (4 + 3 = 7
  channels) plus class_labels = noise_level and encoder_hidden_states = the empty prompt's CLIP embedding,
  computed ONCE at load and kept as a buffer; Policy.net asks the space for these two (unet_kwargs).
- ε, the LR's noise, is the one design decision. The pipeline draws it from the call's generator; a policy
  cannot: the PPO recompute (train_rl.ppo_pass) calls step_stats later with x_t, t and LR alone, and a step's
  mean depends on the noised LR, so ε must be the same then as when sampling. Here ε is a fixed function of
  the LR's size: torch.randn((1, 3, h, w)) from a generator seeded with lr_noise_seed (policy.json), shared
  by every image of a batch — so a chunk of a batch (--micro_batch, grad_share) sees the ε it was sampled
  with. For one image it is the pipeline's own draw with generator=torch.Generator().manual_seed(seed).
- ReFL's gradient passes the VAE decoder (continuous: no quantiser here) to the UNet. SFT's x0 is the VAE
  posterior's mean of 2·HR − 1, times scaling_factor (SD trains on a sample; the mean is deterministic).
- The VAE and the text encoder are frozen: RL and SFT train the UNet only. The text encoder stays on the CPU
  outside the module tree (not in state_dict, never moved to a GPU): save() alone needs it again.
- The loaded scheduler is re-configured for RL (ldm.rl_scheduler): every step has std > 0.
"""

import json
import os

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn

from config import ConfigError
from ldm import load_part, load_rl_scheduler, weights_fields

PIPELINE = "StableDiffusionUpscalePipeline"  # model_index.json's _class_name for this layout
FIX = "give a policy directory (python train_rl.py --sft_only) or a StableDiffusionUpscalePipeline directory"
NOISE_LEVEL = 20  # StableDiffusionUpscalePipeline.__call__'s default; policy.json's noise_level overrides it
LR_NOISE_SEED = 0  # the seed of the LR's fixed noise ε (module docstring); policy.json's lr_noise_seed
SCALING = 0.08333  # the ×4 upscaler's latent scale: the pipeline's __init__ forces the VAE config to it


def _transformers():
    """(CLIPTextModel, CLIPTokenizer), or a one-line error: transformers is an optional dependency."""
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        raise ConfigError(
            "the SD ×4 upscaler's text encoder needs transformers: pip install -r requirements-models.txt"
        ) from None
    return CLIPTextModel, CLIPTokenizer


def _json(path: str, name: str) -> dict:
    """A JSON file of the directory ({} when absent); unreadable JSON is a one-line error."""
    f = os.path.join(path, name)
    if not os.path.isfile(f):
        return {}
    try:
        with open(f) as fh:
            return json.load(fh)
    except ValueError as e:
        raise ConfigError(f"'{f}' is not valid JSON ({e}); {FIX}") from None


def check_parts(unet, vae, text_encoder, noise_level: int, max_noise_level: int, path: str) -> None:
    """The pieces must fit together as the pipeline uses them; each mismatch is a one-line error."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's down-sampling factor
    c = vae.config.latent_channels
    if f != 4:
        raise ConfigError(
            f"'{path}': the VAE downsamples ×{f}; this project is ×4 SR (latents at LR size); {FIX}"
        )
    if unet.config.in_channels != c + 3 or unet.config.out_channels != c:
        raise ConfigError(
            f"'{path}': unet takes {unet.config.in_channels} and gives {unet.config.out_channels} channels;"
            f" an SD ×4 unet takes latent ({c}) + LR (3) and gives {c}; {FIX}"
        )
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise ConfigError(
            f"'{path}': unet cross_attention_dim {unet.config.cross_attention_dim} != the text encoder's"
            f" hidden size {text_encoder.config.hidden_size}; {FIX}"
        )
    if not 0 <= noise_level <= min(max_noise_level, (unet.config.num_class_embeds or 0) - 1):
        raise ConfigError(
            f"'{path}': noise_level={noise_level} must be in 0..{max_noise_level} (the pipeline's"
            f" max_noise_level) and below unet num_class_embeds={unet.config.num_class_embeds}; {FIX}"
        )


@torch.no_grad()
def empty_prompt(tokenizer, text_encoder) -> torch.Tensor:
    """The prompt "" as the pipeline encodes it (encode_prompt, clip_skip None): (1, L, D) in fp32."""
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")  # fmt: skip
    use_mask = getattr(text_encoder.config, "use_attention_mask", False)  # as encode_prompt decides
    return text_encoder(ids.input_ids, attention_mask=ids.attention_mask if use_mask else None)[0].float()


def load_sd(path: str):
    """(unet, scheduler, UpscaleSpace, PolicyConfig fields) of a StableDiffusionUpscalePipeline directory
    (ours with policy.json, or a bare diffusers one); policy.load_policy builds the Policy from them."""
    CLIPTextModel, CLIPTokenizer = _transformers()  # first: the cheapest error
    index, meta = _json(path, "model_index.json"), _json(path, "policy.json")
    if index.get("_class_name") != PIPELINE:
        raise ConfigError(f"'{path}' holds a {index.get('_class_name')}, not a {PIPELINE}; {FIX}")
    try:  # policy.json's, or the pipeline's defaults for a bare directory
        noise_level, seed = (
            int(meta.get("noise_level", NOISE_LEVEL)),
            int(meta.get("lr_noise_seed", LR_NOISE_SEED)),
        )
    except (TypeError, ValueError):
        raise ConfigError(
            f"'{path}/policy.json': noise_level and lr_noise_seed must be integers; {FIX}"
        ) from None
    safe = {"use_safetensors": True}  # never a pickled .bin (module docstring)
    unet = load_part(UNet2DConditionModel, path, "unet", FIX, **safe)
    vae = load_part(AutoencoderKL, path, "vae", FIX, **safe)
    text_encoder = load_part(CLIPTextModel, path, "text_encoder", FIX, dtype=torch.float32, **safe).eval()
    tokenizer = load_part(CLIPTokenizer, path, "tokenizer", FIX)
    max_level = int(index.get("max_noise_level", 350))  # the pipeline's own bound (its __init__ default)
    check_parts(unet, vae, text_encoder, noise_level, max_level, path)
    low_res = load_part(DDPMScheduler, path, "low_res_scheduler", FIX)
    scheduler = load_rl_scheduler(path, FIX)  # re-configured for RL (ldm.rl_scheduler)
    text = (tokenizer, text_encoder.requires_grad_(False))
    space = UpscaleSpace(vae, text, low_res, noise_level, seed, max_level)
    return unet, scheduler, space, weights_fields("sd_x4", unet, scheduler)


# ----------------------------------------------------------------------------------------------------
# The space: what policy.PixelSpace does, for the upscaler's VAE latents, noised LR and text embedding


class UpscaleSpace(nn.Module):
    """x lives in a frozen KL-VAE's latent space at LR size; the UNet also gets the noise level and the empty
    prompt's embedding (module docstring)."""

    def __init__(self, vae: AutoencoderKL, text: tuple, low_res: DDPMScheduler, noise_level: int, seed: int,
                 max_noise_level: int = 350):  # fmt: skip
        super().__init__()
        if vae.config.scaling_factor != SCALING:  # as the pipeline's __init__ does (it warns, then sets it)
            vae.register_to_config(scaling_factor=SCALING)
        self.vae = vae.requires_grad_(False).eval()  # frozen: RL and SFT train the UNet only
        self.__dict__["text"] = text  # (tokenizer, text encoder): outside the module tree (docstring)
        self.low_res, self.noise_level, self.max_noise_level = low_res, noise_level, max_noise_level
        self.seed = seed  # of the LR's noise ε
        self.register_buffer("prompt", empty_prompt(*text), persistent=False)  # (1, L, D), once
        # sqrt(ᾱ_n), sqrt(1 − ᾱ_n) of the LR's noise, float32 as low_res_scheduler.add_noise computes them
        abar = low_res.alphas_cumprod[self.noise_level]
        self.register_buffer("lr_coef", torch.stack([abar**0.5, (1 - abar) ** 0.5]), persistent=False)
        self._eps = {}  # (h, w, device, dtype) -> the LR's fixed noise ε: drawn once per size (a CPU draw)

    @property
    def meta(self) -> dict:
        """What save_policy adds to policy.json: the LR noise's level and seed."""
        return {"noise_level": self.noise_level, "lr_noise_seed": self.seed}

    def train(self, mode: bool = True) -> "UpscaleSpace":
        """nn.Module.train, except that the frozen VAE stays in eval mode (it never trains)."""
        return super().train(False)

    def lr_noise(self, lr: torch.Tensor) -> torch.Tensor:
        """ε (1, 3, h, w): the same for every call with this LR size, whatever the batch (docstring)."""
        key = (*lr.shape[-2:], lr.device, lr.dtype)
        if key not in self._eps:
            g = torch.Generator().manual_seed(self.seed)  # CPU: the same numbers on any device
            self._eps[key] = torch.randn((1, 3, *lr.shape[-2:]), generator=g, dtype=lr.dtype).to(lr.device)
        return self._eps[key]

    def condition(self, lr: torch.Tensor) -> torch.Tensor:
        """The LR in [-1, 1] at LR size, noised to noise_level: low_res_scheduler.add_noise with ε fixed."""
        return self.lr_coef[0] * (lr * 2 - 1) + self.lr_coef[1] * self.lr_noise(lr)

    def unet_kwargs(self, x: torch.Tensor) -> dict:
        """The UNet's extra inputs for a batch of B: the empty prompt's embedding and the noise level."""
        b = x.shape[0]
        level = torch.full((b,), self.noise_level, device=x.device, dtype=torch.long)  # a fill: no sync
        return {"encoder_hidden_states": self.prompt.expand(b, -1, -1), "class_labels": level}

    def encode(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """HR in [0, 1] → x0 latents (B, 4, h, w): the posterior mean, scaled (SFT's target)."""
        with torch.no_grad():  # the VAE is frozen: a target, not a path for gradients
            return self.vae.encode(hr * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, x0: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """x0 latents → SR in [0, 1], differentiable w.r.t. x0 (ReFL). fp32: outside the UNet's autocast."""
        img = self.vae.decode(x0.float() / self.vae.config.scaling_factor).sample
        return (img.clamp(-1, 1) + 1) / 2

    def x_shape(self, cond: torch.Tensor) -> tuple:
        """Shape of x_t: the VAE's latent channels at the LR size."""
        return (cond.shape[0], self.vae.config.latent_channels, *cond.shape[-2:])

    def lr_multiple(self, stride: int) -> int:
        return stride  # the UNet runs at LR size: its strides must divide the LR itself

    def save(self, tmp: str, unet, scheduler) -> None:
        """A StableDiffusionUpscalePipeline (model_index.json and the six components): diffusers' own pipeline
        loads it; save_policy adds policy.json (with noise_level). The scheduler saved is the RL one."""
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
            StableDiffusionUpscalePipeline,
        )

        tokenizer, text_encoder = self.text
        parts = dict(vae=self.vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
        pipe = StableDiffusionUpscalePipeline(**parts, low_res_scheduler=self.low_res, scheduler=scheduler,
                                              max_noise_level=self.max_noise_level)  # fmt: skip
        pipe.save_pretrained(tmp)
