"""A pretrained latent-diffusion SR model as the policy: diffusers' LDMSuperResolutionPipeline layout.

    python train_rl.py --init_policy=PATH/ldm-super-resolution-4x-openimages --sft_only --data=paired:LR,HR
    python train_rl.py --init_policy=out/rl/policy_sft --algo=refl        # RL on the fine-tuned LDM
    policy = load_policy("PATH/ldm-super-resolution-4x-openimages")        # policy.py: the one entry point

Point --init_policy (or load_policy) at a directory with unet/, vqvae/, scheduler/ (and model_index.json),
e.g. CompVis/ldm-super-resolution-4x-openimages that you downloaded yourself; nothing is fetched here.
policy.load_policy recognises the directory and builds a Policy in LatentSpace (below): the sampler, the
log-probs, SFT and RL are policy.py's own; this file knows only what the space changes. Following the
pipeline's own __call__ (diffusers/pipelines/latent_diffusion/pipeline_latent_diffusion_superresolution.py):
- x lives in the VQ-f4 latent space at LR resolution: (B, C, h, w), C = vqvae latent_channels (3 for the
  CompVis model), unscaled (the pipeline applies no scaling_factor). The UNet input is cat([x_t, LR]) with
  LR in [-1, 1] at its own resolution, so unet.in_channels = C + 3. Epsilon prediction, as trained.
- SR = clamp(vqvae.decode(x0), -1, 1) / 2 + 1/2 at 4h × 4w. decode quantises x0 to the nearest codebook
  vectors, as the pipeline does, so our samples are exactly the pipeline's images. ReFL needs a gradient
  through it: diffusers' VectorQuantizer already returns z + (z_q − z).detach(), a straight-through
  estimator (forward: the quantised latent; backward: identity), so the reward's gradient reaches the UNet
  through the decoder as if the quantiser were not there. We keep it rather than decoding with
  force_not_quantize=True, so the image ReFL scores is the image the policy really outputs.
- SFT: the epsilon loss on x0 = vqvae.encode(2·HR − 1).latents (pre-quantisation, as LDM trains).
- The vqvae is frozen (requires_grad False): RL and SFT train the UNet only.
- The loaded scheduler is re-configured for RL (rl_scheduler below) so every step has std > 0.
"""

import json
import os

import torch
from diffusers import DDIMScheduler, UNet2DModel, VQModel
from torch import nn

from config import ConfigError

PIPELINE = "LDMSuperResolutionPipeline"  # model_index.json's _class_name for this layout
FIX = "give a policy directory (python train_rl.py --sft_only) or an LDMSuperResolutionPipeline directory"


def rl_scheduler(config) -> DDIMScheduler:
    """The loaded scheduler's noise schedule (betas, T, prediction type) as a DDIM sampler fit for RL.

    - timestep_spacing="trailing": the first step starts at t = T − 1, from pure noise (the "leading"
      spacing the LDM ships with starts K = 10 steps at t = 900, where x_T ~ N(0, I) is off-distribution).
    - set_alpha_to_one=False: the last step ends at alphas_cumprod[0] < 1 instead of 1, so its std is > 0:
      with the default the final step is deterministic and a trajectory has no log-prob (DDPO needs one).
    - clip_sample/thresholding off: x is a latent, not an image in [-1, 1].
    Whatever scheduler class the directory names (DDIM, PNDM, …), its config's schedule is what is kept."""
    return DDIMScheduler.from_config(
        config,
        timestep_spacing="trailing",
        set_alpha_to_one=False,
        steps_offset=0,
        clip_sample=False,
        thresholding=False,
    )


def check_pair(unet: UNet2DModel, vqvae: VQModel, path: str) -> int:
    """The pieces must fit together as the pipeline uses them; returns the latent channel count C."""
    c = vqvae.config.latent_channels
    f = 2 ** (len(vqvae.config.block_out_channels) - 1)  # the VQ autoencoder's down-sampling factor
    if f != 4:
        raise ConfigError(f"'{path}': the vqvae is VQ-f{f}, this project is ×4 SR (VQ-f4); {FIX}")
    if unet.config.in_channels != c + 3 or unet.config.out_channels != c:
        raise ConfigError(
            f"'{path}': unet takes {unet.config.in_channels} and gives {unet.config.out_channels} channels;"
            f" an LDM SR unet takes latent ({c}) + LR (3) and gives {c}; {FIX}"
        )
    return c


def load_part(cls, path: str, sub: str, fix: str = FIX, **kw):
    """cls.from_pretrained(path/sub, **kw) of one pipeline component (this file's and sd_upscale.py's); any
    failure (missing files, a broken config) is a one-line error naming the component and `fix`.

    Models load with use_safetensors=True: without it diffusers falls back to a pickled .bin file, and this
    project never unpickles. A download that has only .bin weights: convert it once yourself
    (docs/your-data.md)."""
    try:
        return cls.from_pretrained(os.path.join(path, sub), **kw)
    except Exception as e:  # diffusers raises OSError / ValueError / EnvironmentError with long messages
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        hint = "convert .bin weights once (docs/your-data.md), or " if "safetensors" in msg else ""
        raise ConfigError(f"'{path}': cannot load {sub}/ ({msg}); {hint}{fix}") from None


def load_ldm(path: str):
    """(unet, scheduler, LatentSpace, PolicyConfig fields) of an LDM SR pipeline directory (ours with
    policy.json, or a bare diffusers one); policy.load_policy builds the Policy from them."""
    index = os.path.join(path, "model_index.json")
    if os.path.isfile(index):  # a pipeline of another kind is a one-line error
        with open(index) as f:
            name = json.load(f).get("_class_name")
        if name != PIPELINE:
            raise ConfigError(f"'{path}' holds a {name}, not an {PIPELINE}; {FIX}")
    unet = load_part(UNet2DModel, path, "unet", use_safetensors=True)
    vqvae = load_part(VQModel, path, "vqvae", use_safetensors=True)
    check_pair(unet, vqvae, path)
    scheduler = load_rl_scheduler(path, FIX)
    return unet, scheduler, LatentSpace(vqvae), weights_fields("latent", unet, scheduler)


def load_rl_scheduler(path: str, fix: str) -> DDIMScheduler:
    """path/scheduler's schedule as rl_scheduler's DDIM (the LDM's and the SD ×4 upscaler's loaders)."""
    try:
        return rl_scheduler(DDIMScheduler.load_config(os.path.join(path, "scheduler")))
    except Exception:
        raise ConfigError(f"'{path}': no readable scheduler/scheduler_config.json; {fix}") from None


def weights_fields(space: str, unet, scheduler) -> dict:
    """The PolicyConfig fields a pretrained pipeline's weights fix; steps and eta: policy.json's, if any."""
    return {
        "space": space,
        "block_out_channels": tuple(unet.config.block_out_channels),
        "layers_per_block": unet.config.layers_per_block,
        "norm_groups": unet.config.norm_num_groups,
        "sample_size": unet.config.sample_size,
        "num_train_timesteps": scheduler.config.num_train_timesteps,
        "prediction_type": scheduler.config.prediction_type,
        "residual_scale": 1.0,  # pixel space only
    }


# ----------------------------------------------------------------------------------------------------
# The latent space: what policy.PixelSpace does, for a frozen VQ autoencoder's latents at LR size


class LatentSpace(nn.Module):
    """x lives in a frozen VQ autoencoder's latent space at LR size (module docstring)."""

    def __init__(self, vqvae: VQModel):
        super().__init__()
        self.vqvae = vqvae.requires_grad_(False).eval()  # frozen: RL and SFT train the UNet only

    def train(self, mode: bool = True) -> "LatentSpace":
        """nn.Module.train, except that the frozen VQ autoencoder stays in eval mode (it never trains)."""
        return super().train(False)

    def condition(self, lr: torch.Tensor) -> torch.Tensor:
        """LR itself in [-1, 1] at LR resolution, concatenated as LDMSuperResolutionPipeline does."""
        return lr * 2 - 1

    def encode(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """HR in [0, 1] → x0 latents (B, C, h, w): the encoder output before quantisation, as LDM trains."""
        with torch.no_grad():  # the autoencoder is frozen: SFT's target, not a path for gradients
            return self.vqvae.encode(hr * 2 - 1).latents

    def decode(self, x0: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """x0 latents → SR in [0, 1], quantised with the straight-through estimator (module docstring), so it
        is differentiable w.r.t. x0 for ReFL. fp32: the decoder is not under the UNet's bf16 autocast."""
        return (self.vqvae.decode(x0.float()).sample.clamp(-1, 1) + 1) / 2

    def x_shape(self, cond: torch.Tensor) -> tuple:
        """Shape of x_t: the vqvae's latent channels C at the LR size."""
        return (cond.shape[0], self.vqvae.config.latent_channels, *cond.shape[-2:])

    def lr_multiple(self, stride: int) -> int:
        return stride  # the UNet runs at LR size: its strides must divide the LR itself

    def save(self, tmp: str, unet, scheduler) -> None:
        """An LDMSuperResolutionPipeline (model_index.json, unet/, vqvae/, scheduler/): diffusers' own
        pipeline loads it; save_policy adds policy.json. Imported from its module path: the top-level
        diffusers name needs transformers, which requirements.txt does not install."""
        from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
            LDMSuperResolutionPipeline,
        )

        LDMSuperResolutionPipeline(vqvae=self.vqvae, unet=unet, scheduler=scheduler).save_pretrained(tmp)
