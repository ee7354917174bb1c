"""The diffusion super-resolution model, seen as an RL policy.

    from policy import PolicyConfig, make_policy, load_policy, save_policy
    policy = make_policy(PolicyConfig(residual_scale=estimate_residual_scale(lr, hr)))
    loss = policy.sft_loss(hr, lr)                          # supervised warm start (and ReFL's regulariser)
    sr, traj = policy.sample(lr, generator=g, return_traj=True)          # DDPO/GRPO rollouts
    logprob = policy.step_logprob(traj.x[k], traj.x[k + 1], traj.t[k], lr)  # PPO ratios, with grad
    sr = load_policy("out/rl/policy_final").upscale(lr)     # the contract: (B,3,h,w) -> (B,3,4h,4w)

A diffusers `UNet2DModel` + `DDIMScheduler` that denoises the *residual* x0 = (HR − up(LR)) · residual_scale,
with the bicubic-upsampled LR as 3 extra input channels. Why it is a policy (docs/method.md §4, DDPO): DDIM
with eta > 0 draws every step from a Gaussian, x_{t_prev} ~ N(mean_θ(x_t, t, LR), std_t² I), so a sampling run
is a K-step trajectory of Gaussian actions with exact log-probs. The mean is `scheduler.step` itself and
std_t = eta · sqrt(scheduler variance): sampler, stored and recomputed (PPO) log-probs share one function.
Log-probs are kept PER PIXEL (K, B, 3, H, W), so RL can weight each pixel by a local advantage from the
reward model's degradation map. Where x lives is the policy's *space*: PixelSpace below, or a pretrained
model's latent space (ldm.LatentSpace, sd_upscale.UpscaleSpace); the sampler and the log-probs stay the same.
"""

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from torch import nn

from config import ConfigError
from data import upsample
from metrics import SCALE
from rundir import atomic_dir, check_finite, loading, read_kind, write_json


@dataclass
class PolicyConfig:
    # --- the network: 1.05M params; an SFT step at batch 8, 64 px HR: ~19 ms on an H200, ~1 s on 1 CPU core
    block_out_channels: tuple = (32, 64, 64)  # width knob; 3 levels -> total stride 4, so any LR size works
    layers_per_block: int = 1  # resnets per level; 2 is ~1.5M params and slower on CPU for little gain
    norm_groups: int = 8  # GroupNorm groups; must divide every width (8 lets tests use widths of 8/16)
    sample_size: int = 64  # metadata for diffusers only: the UNet is convolutional and runs at any size
    # --- the diffusion process
    num_train_timesteps: int = 1000  # the standard DDPM grid; K sampling steps are a trailing subset of it
    prediction_type: str = "sample"  # x0 prediction: epsilon prediction failed to learn at small CPU budgets
    space: str = "pixel"  # where diffusion runs: pixel | latent (ldm.py) | sd_x4 (sd_upscale.py)
    residual_scale: float = 1.0  # x0 = (HR - up(LR)) * residual_scale; set with estimate_residual_scale()
    # --- sampling defaults (used by sample/upscale when steps/eta are None)
    steps: int = 10  # K: Flow-GRPO trains with 10 steps; short trajectories keep RL rollouts cheap
    eta: float = 1.0  # DDPO's eta = 1: every step is a proper Gaussian, so log-probs exist (eta=0 is DDIM)


@dataclass
class Trajectory:
    """One batched sampling run, everything an RL update needs (DDPO's stored rollout)."""

    x: torch.Tensor  # (K+1, B, C, H, W): x_T, ..., x_0 in policy space (pixel: scaled residual; latent: VQ)
    t: torch.Tensor  # (K,) long, on CPU: each step's timestep (CPU: reading it never syncs a GPU)
    logprob: torch.Tensor  # (K, B, C, H, W): log N(x[k+1]; mean_k, std_k^2) per pixel and channel
    steps: int  # K, needed to recompute: the scheduler's previous timestep is t - T // K
    eta: float  # needed to recompute: eta changes both the mean and the std
    std: tuple = ()  # (K,) floats: each step's std_k; RL never trains a step below its floor (train_rl.py)


def estimate_residual_scale(lr: torch.Tensor, hr: torch.Tensor) -> float:
    """1 / std of the residual HR − up(LR), computed once from data and stored in policy.json. Why: the
    residual has std ~0.05 against the noise's 1; unscaled, the sampler degenerates into "regressor + white
    noise". Scaled to unit variance, the noise schedule means what it was made for."""
    std = (hr - upsample(lr, clamp=False)).float().std()
    return float(1.0 / std.clamp_min(1e-4))  # one sync, once per run; clamp guards a flat dataset


class PixelSpace(nn.Module):
    """x0 = (HR − up(LR)) · residual_scale at SR size; the UNet sees up(LR) as 3 extra input channels. A
    space is what knows where x lives (the others: ldm.LatentSpace, sd_upscale.UpscaleSpace)."""

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg  # the policy's own: residual_scale is read from it at every call

    def condition(self, lr: torch.Tensor) -> torch.Tensor:
        """The UNet's extra input channels: up(LR) mapped to [-1, 1], the range the noise lives in."""
        return upsample(lr, clamp=False) * 2 - 1

    def encode(self, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """HR image -> x0: the residual over bicubic, scaled to about unit variance."""
        return (hr - upsample(lr, clamp=False)) * self.cfg.residual_scale

    def decode(self, x0: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """x0 -> SR image in [0, 1] (the clamp is the only non-differentiable corner)."""
        return (x0 / self.cfg.residual_scale + upsample(lr, clamp=False)).clamp(0, 1)

    def x_shape(self, cond: torch.Tensor) -> tuple:
        return tuple(cond.shape)  # RGB at SR size

    def lr_multiple(self, stride: int) -> int:
        """What an LR side must be a multiple of: the UNet runs at SR size, 4× the LR."""
        return max(1, stride // SCALE)

    def save(self, tmp: str, unet, scheduler) -> None:
        """The weights in diffusers' layout (save_policy adds policy.json): unet/ and scheduler/."""
        unet.save_pretrained(os.path.join(tmp, "unet"))  # safetensors + config.json
        scheduler.save_pretrained(os.path.join(tmp, "scheduler"))


class Policy(nn.Module):
    """UNet2DModel + DDIMScheduler as a Gaussian policy over K denoising steps (module docstring), in a
    space (PixelSpace by default)."""

    def __init__(self, cfg: PolicyConfig, unet: UNet2DModel, scheduler: DDIMScheduler, space=None):
        super().__init__()
        if scheduler.config.prediction_type != cfg.prediction_type:
            raise ConfigError(
                f"policy.json says prediction_type={cfg.prediction_type} but the scheduler says "
                f"{scheduler.config.prediction_type}; re-save the policy with save_policy"
            )
        self.cfg, self.unet, self.scheduler = cfg, unet, scheduler  # the scheduler holds no parameters
        # A device copy of abar_t for sft_loss (it follows .to(device)); the scheduler keeps its CPU table,
        # so reading a step's variance never waits on the GPU. Not saved: the scheduler config rebuilds it.
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone(), persistent=False)
        self.space = space or PixelSpace(cfg)
        # The last down block of UNet2DModel does not downsample, so the total stride is 2^(levels - 1); an
        # LR side must be a multiple of lr_multiple for it to divide the UNet's input (apply.py pads to it).
        self.stride = 2 ** (len(unet.config.block_out_channels) - 1)
        self.lr_multiple = self.space.lr_multiple(self.stride)
        self.amp = None  # bf16 autocast of the UNet alone (scale.speed); None = fp32. Not saved.

    def net(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The UNet forward, under bf16 autocast when self.amp is set. Its output is cast back to fp32, so
        the DDIM mean, the Gaussian log-probs and the PPO ratios are always computed in full precision
        (bf16 has 8 mantissa bits: a log-prob of a 64×64 image summed in bf16 would be mostly rounding)."""
        kw = self.space.unet_kwargs(x) if hasattr(self.space, "unet_kwargs") else {}  # sd_upscale.py's
        with torch.autocast(x.device.type, dtype=self.amp or torch.bfloat16, enabled=self.amp is not None):
            return self.__dict__.get("_ddp", self.unet)(x, t, **kw).sample.float()  # _ddp: scale.distribute

    # ------------------------------------------------------------------------------------------------
    # One DDIM step as a Gaussian: the single function behind sampling, stored and recomputed log-probs.

    def _stats(self, x_t, t: int, cond, eta: float):
        """(mean, std, x0_pred) of p(x_prev | x_t, LR): mean and x0 from diffusers, std as a Python float.

        The mean is `scheduler.step(...).prev_sample` with the noise set to zero, so it is exactly the
        DDIM update (DDIM paper eq. 12) for whatever prediction_type the scheduler is configured with.
        """
        # t as a tensor made on the device (a fill, not a host->device copy, which would sync).
        t_vec = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        model_output = self.net(torch.cat([x_t, cond], dim=1), t_vec)
        out = self.scheduler.step(model_output, t, x_t, eta=eta, variance_noise=torch.zeros_like(x_t))
        # sigma_t(eta) = eta * sqrt((1 - a_prev)/(1 - a_t) * (1 - a_t/a_prev)), DDIM eq. 16. The prev
        # timestep is computed the way scheduler.step does; with set_alpha_to_one=False the last step
        # (t_prev < 0) uses alphas_cumprod[0] < 1, so even the final step has std > 0 (a valid density).
        t_prev = t - self.scheduler.config.num_train_timesteps // self.scheduler.num_inference_steps
        std = eta * float(self.scheduler._get_variance(t, t_prev)) ** 0.5  # CPU table: no device sync
        return out.prev_sample, std, out.pred_original_sample

    @staticmethod
    def gaussian_logprob(x_prev, mean, std: float) -> torch.Tensor:
        """log N(x_prev; mean, std^2) per element: -(x - mu)^2 / (2 s^2) - log s - log(2 pi) / 2."""
        return -((x_prev - mean) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi)

    def _defaults(self, steps, eta):
        """(K, eta), the policy's own when None, and K set in the scheduler: scheduler.step derives
        t_prev = t − T // K from its state, so K must be set before any step."""
        steps = self.cfg.steps if steps is None else int(steps)
        eta = self.cfg.eta if eta is None else float(eta)
        if not 0.0 <= eta <= 1.0:  # eta > 1 makes 1 - a_prev - std^2 negative: NaN means
            raise ValueError(f"eta={eta} must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like)")
        if not 1 <= steps <= self.cfg.num_train_timesteps:
            raise ValueError(f"steps={steps} must be in 1..{self.cfg.num_train_timesteps}")
        if self.scheduler.num_inference_steps != steps:
            self.scheduler.set_timesteps(steps)  # no device: timesteps stay on CPU, reading them never syncs
        return steps, eta

    def step_stats(self, x_t, t, lr, steps=None, eta=None):
        """(mean, std) of one policy step, WITH gradients (the PPO recompute, the KL on means). `t`: an int
        or a 0-d CPU tensor (Trajectory.t[k]), shared by the batch, as one trajectory index is."""
        steps, eta = self._defaults(steps, eta)
        mean, std, _ = self._stats(x_t, int(t), self.space.condition(lr), eta)
        return mean, std

    def step_logprob(self, x_t, x_prev, t, lr, steps=None, eta=None) -> torch.Tensor:
        """log p_θ(x_prev | x_t, LR) per pixel (B, C, H, W), WITH gradients: the PPO ratio's numerator. With
        a trajectory's stored x[k], x[k+1], t[k], steps, eta and unchanged weights: its logprob[k]."""
        mean, std = self.step_stats(x_t, t, lr, steps, eta)
        if std <= 0:
            raise ValueError("log-probs need eta > 0: with eta = 0 DDIM is deterministic and has no density")
        return self.gaussian_logprob(x_prev, mean, std)

    # ------------------------------------------------------------------------------------------------
    # Sampling: the rollout (DDPO's "sample" phase), batched over B, a loop over the K steps only.

    @staticmethod
    def _to(x: torch.Tensor, device) -> torch.Tensor:
        """CPU -> GPU without stalling the host: via pinned memory, asynchronously (a plain copy syncs)."""
        if x.device == torch.device(device) or x.device.type != "cpu" or not torch.cuda.is_available():
            return x.to(device)
        return x.pin_memory().to(device, non_blocking=True)

    def _noise(self, shape, generator, like: torch.Tensor) -> torch.Tensor:
        """N(0, I) drawn on the generator's device, then moved: a CPU generator reproduces on any device."""
        dev = generator.device if generator is not None else like.device
        return self._to(torch.randn(shape, generator=generator, device=dev, dtype=like.dtype), like.device)

    def _check_shape(self, lr) -> None:
        """Cheap checks (no host sync) shared by all entry points; each error is one line saying the fix."""
        if not isinstance(lr, torch.Tensor) or lr.dim() != 4:
            shape = tuple(lr.shape) if isinstance(lr, torch.Tensor) else type(lr).__name__
            raise ValueError(f"lr must be a 4-D tensor (B, 3, h, w) in [0, 1], got {shape}; add a batch dim")
        b, c, h, w = lr.shape
        if b == 0:
            raise ValueError("lr is an empty batch (B = 0); pass at least one image")
        if c != 3:
            raise ValueError(f"lr has {c} channels, expected 3 (RGB); convert grayscale/RGBA images to RGB")
        if h % self.lr_multiple or w % self.lr_multiple:
            raise ValueError(
                f"LR {h}x{w}: the UNet input is not a multiple of the UNet's total stride {self.stride}; "
                f"crop or pad the LR image to a multiple of {self.lr_multiple}"
            )

    @torch.no_grad()
    def sample(self, lr, steps=None, eta=None, generator=None, return_traj=False):
        """The K-step sampler: sr (B, 3, 4h, 4w) in [0, 1], or (sr, Trajectory) if return_traj. No gradients
        (rollouts are data; PPO recomputes log-probs); the noise comes from `generator` (None: global RNG)."""
        self._check_shape(lr)
        steps, eta = self._defaults(steps, eta)
        if return_traj and eta == 0:
            raise ValueError("return_traj needs eta > 0: a deterministic DDIM step has no log-prob")
        cond = self.space.condition(lr)
        x = self._noise(self.space.x_shape(cond), generator, cond)  # x_T ~ N(0, I)
        xs, logprobs, stds = [x], [], []
        for t in self.scheduler.timesteps.tolist():  # python ints: 999, 899, ..., 99 for K=10 (trailing)
            mean, std, _ = self._stats(x, t, cond, eta)
            x = mean + std * self._noise(x.shape, generator, x)  # x_prev ~ N(mean, std^2): the action
            if return_traj:
                logprobs.append(self.gaussian_logprob(x, mean, std))
                xs.append(x)
                stds.append(std)
        # x is x_0 in policy space (the scaled residual, or a VQ latent); decode turns it into the SR image.
        sr = self.space.decode(x, lr)
        if not return_traj:
            return sr
        t = self.scheduler.timesteps.clone()
        return sr, Trajectory(torch.stack(xs), t, torch.stack(logprobs), steps, eta, tuple(stds))

    def refl_sample(self, lr, steps=None, stop_index=None, eta=None, generator=None) -> torch.Tensor:
        """ReFL (docs/method.md §4): sample WITHOUT grad to step `stop_index` (default: the last), then one
        step WITH grad; its predicted x0 decoded to an SR image (B, 3, 4h, 4w), differentiable in the UNet."""
        self._check_shape(lr)
        steps, eta = self._defaults(steps, eta)
        stop_index = steps - 1 if stop_index is None else int(stop_index)
        if not 0 <= stop_index < steps:
            raise ValueError(f"stop_index={stop_index} must be in 0..{steps - 1}")
        cond = self.space.condition(lr)
        ts = self.scheduler.timesteps.tolist()
        with torch.no_grad():  # the cheap part: no graph kept for the first stop_index steps
            x = self._noise(self.space.x_shape(cond), generator, cond)
            for t in ts[:stop_index]:
                mean, std, _ = self._stats(x, t, cond, eta)
                x = mean + std * self._noise(x.shape, generator, x)
        # pred_original_sample comes from the scheduler, so this holds for x0, epsilon or v prediction.
        _, _, x0_pred = self._stats(x, ts[stop_index], cond, eta)
        return self.space.decode(x0_pred, lr)

    def upscale(self, lr, steps=None, eta=None, generator=None) -> torch.Tensor:
        """The contract: lr (B, 3, h, w) in [0, 1] -> sr (B, 3, 4h, 4w) in [0, 1], on lr's device (the policy
        moves there). Bad input is a one-line ValueError naming the fix."""
        self._check_shape(lr)
        if not torch.isfinite(lr).all():  # one host sync per call; this is not a training loop
            raise ValueError("lr contains NaN or Inf values; check the image loading / preprocessing")
        if lr.min() < -0.01 or lr.max() > 1.01:
            raise ValueError("lr must be in [0, 1] (got values outside); divide 8-bit images by 255")
        self.to(lr.device)
        return self.sample(lr.float(), steps=steps, eta=eta, generator=generator)

    # ------------------------------------------------------------------------------------------------
    # The supervised loss: warm start, and ReFL's regulariser (docs/method.md §4).

    def sft_loss(self, hr, lr, generator=None) -> torch.Tensor:
        """Denoising loss at random timesteps, ‖f_θ(x_t, t, LR) − target‖² with x_t = sqrt(ᾱ_t) x0 +
        sqrt(1 − ᾱ_t) ε (DDPM eq. 4; by hand: scheduler.add_noise would move its tables to the GPU)."""
        self._check_shape(lr)
        x0 = self.space.encode(hr, lr)
        b = x0.shape[0]
        dev = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.cfg.num_train_timesteps, (b,), generator=generator, device=dev)
        t = self._to(t, x0.device)  # t ~ U{0, ..., T-1}, drawn where the generator lives
        eps = self._noise(x0.shape, generator, x0)  # eps ~ N(0, I)
        abar = self.alphas_cumprod[t].view(b, 1, 1, 1)  # the device copy (see __init__)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        pred = self.net(torch.cat([x_t, self.space.condition(lr)], dim=1), t)
        if self.cfg.prediction_type == "sample":
            target = x0
        elif self.cfg.prediction_type == "epsilon":
            target = eps
        else:  # v-prediction: v = sqrt(abar) eps - sqrt(1 - abar) x0
            target = abar.sqrt() * eps - (1 - abar).sqrt() * x0
        return F.mse_loss(pred, target)


# ----------------------------------------------------------------------------------------------------
# Building, saving, loading: diffusers' layout plus a small JSON that says its kind.


def make_scheduler(cfg: PolicyConfig) -> DDIMScheduler:
    """DDIM configured so that every step is a proper Gaussian (std > 0) for DDPO-style log-probs."""
    return DDIMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule="linear",  # the DDPM schedule 1e-4..0.02; fine for a unit-variance x0
        timestep_spacing="trailing",  # the first step starts at t = T-1 (pure noise), last one ends at 0
        set_alpha_to_one=False,  # final alpha = alphas_cumprod[0] < 1, so the last step's std > 0
        clip_sample=False,  # x0 is a scaled residual, not an image in [-1, 1]: clipping would cut it
        prediction_type=cfg.prediction_type,
    )


def make_policy(cfg: PolicyConfig = None) -> Policy:
    """A freshly initialised policy: UNet (6 channels in = x_t + up(LR), 3 out), no attention (CPU)."""
    cfg = cfg or PolicyConfig()
    n = len(cfg.block_out_channels)
    unet = UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=6,  # noisy residual x_t (3) concatenated with the bicubic-upsampled LR (3)
        out_channels=3,  # the prediction (x0 for prediction_type="sample")
        block_out_channels=tuple(cfg.block_out_channels),
        down_block_types=("DownBlock2D",) * n,  # plain resnet blocks: attention is slow on CPU
        up_block_types=("UpBlock2D",) * n,
        layers_per_block=cfg.layers_per_block,
        add_attention=False,  # no attention in the mid block either
        norm_num_groups=cfg.norm_groups,
    )
    # Zero-initialised output layer: a fresh policy predicts x0 = 0, i.e. it *is* bicubic upsampling (eta = 0
    # returns up(LR) up to a ~1e-3 remnant of the noise), so SFT starts from the classical baseline and only
    # learns corrections. The layer still gets gradients (its input is non-zero), so nothing is frozen.
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    return Policy(cfg, unet, make_scheduler(cfg))


POLICY_FIX = "python train_rl.py --sft_only"  # the command that makes a policy directory
# A bare diffusers pipeline directory (no policy.json): its model_index.json class → the space it loads into
PIPELINES = {"LDMSuperResolutionPipeline": "latent", "StableDiffusionUpscalePipeline": "sd_x4"}


def save_policy(policy: Policy, path: str) -> None:
    """Write <path>/ atomically (temp dir, then rename): the weights in diffusers' layout (the space's save:
    unet/ + scheduler/, or a whole LDM pipeline) and policy.json, which says its kind."""
    check_finite(policy.unet, f"the policy for {path}", "lower the learning rate")  # NaN: never written
    if getattr(policy.unet, "lora_spec", None):  # LoRA (lora.py): its adapters + policy.json naming the base
        import lora  # never at module level: peft is optional, and lora.py never imports this file

        return lora.save(policy, path)
    with atomic_dir(path) as tmp:
        policy.space.save(tmp, policy.unet, policy.scheduler)
        meta = {"kind": "policy", **dataclasses.asdict(policy.cfg), **getattr(policy.space, "meta", {})}
        write_json(os.path.join(tmp, "policy.json"), meta)  # space.meta: what a space adds (sd_upscale.py)


def load_policy(path: str, device=None) -> Policy:
    """Load a policy directory (on CPU unless `device` is given); a wrong directory is a one-line error.

    Every kind is recognised by its files: policy.json (ours), a bare SD ×4 upscaler (sd_upscale.py) or
    LDMSuperResolutionPipeline directory (model_index.json, or unet/ + vqvae/), loaded by ldm.py."""
    if os.path.isfile(os.path.join(path, "adapter_model.safetensors")):  # LoRA adapters over a base policy
        import lora  # lora.py loads the base with load_policy, then puts the adapters back on top

        return lora.load(path, load_policy, device)
    bare = _bare(path)
    meta = None if bare else read_kind(path, "policy", POLICY_FIX)
    kind = meta.get("space", "pixel") if meta else bare  # pixel, latent (ldm.py) or sd_x4 (sd_upscale.py)
    if kind != "pixel":  # a pretrained model's space, imported only now (sd_x4's text encoder: transformers)
        import ldm
        import sd_upscale

        unet, scheduler, space, fields = (ldm.load_ldm if kind == "latent" else sd_upscale.load_sd)(path)
        cfg = PolicyConfig(**{**_fields(meta or {}), **fields})  # K and eta from policy.json, if any
        return Policy(cfg, unet, scheduler, space).to(device or "cpu").eval()
    with loading(path, POLICY_FIX):  # a truncated safetensors or a mismatched config: one line
        cfg = PolicyConfig(**_fields(meta))
        cfg.block_out_channels = tuple(cfg.block_out_channels)  # JSON turned the tuple into a list
        unet = UNet2DModel.from_pretrained(os.path.join(path, "unet"))
        scheduler = DDIMScheduler.from_pretrained(os.path.join(path, "scheduler"))
        return Policy(cfg, unet, scheduler).to(device or "cpu").eval()


def _bare(path: str) -> str:
    """A directory without our JSON: the space of the diffusers pipeline it holds, "latent" (LDM) or "sd_x4"
    (SD ×4 upscaler), or a one-line error when it is none we know; "" for ours."""
    ours = any(os.path.isfile(os.path.join(path, f)) for f in ("policy.json", "rm.json"))
    if not os.path.isdir(path) or ours:
        return ""  # read_kind's errors: no such directory, or an RM checkpoint
    index, name = os.path.join(path, "model_index.json"), None
    if os.path.isfile(index):  # its class says which: another kind of pipeline is a one-line error
        with loading(path, POLICY_FIX), open(index) as f:
            name = json.load(f).get("_class_name")
    elif all(os.path.isdir(os.path.join(path, d)) for d in ("unet", "vqvae")):
        name = "LDMSuperResolutionPipeline"  # an LDM SR pipeline saved without its index
    if name not in PIPELINES:
        known = " or a ".join(PIPELINES)
        what = f"holds a {name}, not an {known}" if name else "is neither a policy directory"
        raise ConfigError(f"'{path}' {what} (policy.json, or an LDM or SD ×4 upscaler pipeline:"
                          f" model_index.json, unet/, ...); make a policy with `{POLICY_FIX}`")  # fmt: skip
    return PIPELINES[name]


def _fields(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k in PolicyConfig.__dataclass_fields__}
