"""The supervised warm start (SFT) of the diffusion SR policy: train_rl.py's phase 0.

    python train_rl.py --sft_only             # writes out/rl/policy_sft, then stops
    python train_rl.py --sft_only --resume    # continue an interrupted SFT
    python train_rl.py --sft_only --init_policy=DIR --data=paired:LR,HR   # fine-tune a pretrained policy

RL needs a sensible starting point: a policy that already super-resolves, whose samples vary where the image
is uncertain (texture) and not where it is not (flat regions). That is the denoising loss on (LR, HR) pairs
(policy.sft_loss). The LR images come from data.degrade with a strength drawn per batch from a range that
includes 0 (clean bicubic LR, the classical protocol) — 30 % of batches exactly 0 — so the policy serves both
classical and real-world LR; with --data=paired:LR_DIR,HR_DIR the LR is the real one (images.PairedPool). With
--init_policy (e.g. a pretrained LDMSuperResolutionPipeline directory) SFT starts from those weights instead
of a fresh, bicubic-initialised UNet. The result is cached as out_dir/policy_sft: later runs reuse it.
"""

import json
import math
import os

import torch
from tqdm import tqdm

import config
import data
import lora
import rundir
import scale
import validation
from policy import PolicyConfig, estimate_residual_scale, load_policy, make_policy, save_policy
from rm import freeze


def train_sft(cfg, pool, dev, log, st=None):
    """Return the SFT policy: out_dir/policy_sft if it exists, else train it and save it there. st: the
    resume state train_rl read (rundir.resume_state); an SFT state continues where it stopped."""
    path, main_rank, rank = os.path.join(cfg.out_dir, "policy_sft"), scale.is_main(), scale.rank()
    # A finished SFT is reused, never retrained: every RL arm of evaluate starts from the same policy.
    if os.path.isfile(os.path.join(path, "policy.json")):
        extra = f" (not --init_policy={cfg.init_policy}: delete it to redo)" if cfg.init_policy else ""
        print(f"reusing the cached SFT policy {path}{extra}") if main_rank else None
        return load_policy(path, dev)
    g = config.generator("sft/residual_scale", cfg.seed)
    if cfg.init_policy:  # fine-tune given weights (e.g. a pretrained latent-diffusion SR model)
        policy = load_policy(cfg.init_policy, dev)
    else:  # the residual scale from 64 pairs, 4 degradation strengths (policy.estimate_residual_scale: why)
        hr, lr = pool.pairs(64, cfg.crop, g, lambda: data.draw_strength(cfg.degrade_max, g), groups=4)
        policy = make_policy(PolicyConfig(
            residual_scale=estimate_residual_scale(lr, hr), block_out_channels=cfg.unet_channels,
            layers_per_block=cfg.unet_layers, steps=cfg.sample_steps, eta=cfg.eta,  # sample as RL will
        ))  # fmt: skip
    params = lora.adapt(policy, cfg.lora_rank, cfg.init_policy)  # --lora_rank > 0: the adapters alone train
    scale.for_training(policy.to(dev).train(), dev, cfg)  # bf16 / NHWC / compile / DDP, never saved
    torch.manual_seed(config.seed("sft/global", cfg.seed, rank))  # sft_loss's t and noise differ per rank
    fused = dev.type == "cuda"  # fused AdamW: one kernel on CUDA
    opt = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=1e-4, fused=fused)
    start = 0
    if st is not None and st.get("phase") == "sft":  # --resume: weights and AdamW moments; data needs none
        policy.unet.load_state_dict(st["unet"])
        opt.load_state_dict(st["opt"])
        start = int(st["step"])
        print(f"resuming SFT at step {start}") if main_rank else None
    nan, resume_at = rundir.NanGuard("SFT"), start  # resume_at: the first step not yet done

    # The loop: cosine learning rate, one batch from (seed, step, rank), the denoising loss, the NaN guard,
    # a log row every 10 steps and a resume point every ckpt_every; Ctrl-C saves the state first.

    save = lambda: rundir.save_state(cfg.out_dir, phase="sft", step=resume_at, unet=policy.unet, opt=opt)

    bar = tqdm(range(start, cfg.sft_steps), desc=f"SFT (residual scale {policy.cfg.residual_scale:.1f})",
               initial=start, total=cfg.sft_steps, disable=not main_rank)  # fmt: skip
    with rundir.saved_on_interrupt(save, lambda: f"SFT step {resume_at}"):
        for step in bar:
            for group in opt.param_groups:  # cosine decay to 2 % of the peak rate
                group["lr"] = config.cosine_lr(cfg.sft_lr, step, cfg.sft_steps)
            # This step's images from (seed, step, rank) alone: ranks differ, --resume needs no RNG state.
            g = config.generator("sft/draw", cfg.seed, step, rank)
            hr, lr = data.training_pairs(pool, cfg.sft_batch, cfg.crop, cfg.degrade_max, g)
            loss = policy.sft_loss(hr.to(dev), lr.to(dev))  # ‖f_θ(x_t, t, LR) − x0‖² at random t (DDPM)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under torchrun: the all-reduce of the gradients happens here
            gnorm = torch.nn.utils.clip_grad_norm_(policy.unet.parameters(), 1.0)
            # The step's host sync: a non-finite loss or gradient skips the update (rundir.NanGuard).
            if nan.ok(bool(torch.isfinite(loss) & torch.isfinite(gnorm)), step, "lower --sft_lr"):
                opt.step()
            if step % 10 == 0 or step == cfg.sft_steps - 1:  # one host sync per logged step
                loss_value = float(scale.mean_over_ranks({"loss": loss.detach()})["loss"])
                log.write(json.dumps({"step": step, "phase": "sft", "loss": loss_value}) + "\n")
                log.flush()
                bar.set_postfix(loss=f"{loss_value:.4f}")
            resume_at = step + 1
            if resume_at % cfg.ckpt_every == 0:
                save()
    nan.done()  # the last steps non-finite: a failed run (exit non-zero), nothing saved
    policy.eval()
    if main_rank:  # rank 0 checks, saves and reports; the others wait for the file, then go on to RL
        t = validation.psnr_table(policy, cfg.data, cfg.crop, seed=cfg.seed)  # non-finite images: never saved
        if not all(math.isfinite(v["policy"]) for v in t.values()):
            raise SystemExit("error: the SFT policy gives non-finite images; not saved. Lower --sft_lr")
        save_policy(policy, path)
        log.write(json.dumps({"step": cfg.sft_steps, "phase": "sft", "psnr_val": t}) + "\n")
        cells = [f"{k} LR: policy {v['policy']:.2f} dB, bicubic {v['bicubic']:.2f} dB" for k, v in t.items()]
        print("SFT done. PSNR-Y on held-out crops (eta = 0):  " + "  ".join(cells))
    scale.barrier()
    return policy


def anchor(cfg, dev):
    """RL's KL anchor (train_rl --beta_kl): a frozen copy of the starting policy — --init_policy or this SFT
    policy — at the policy's precision (or rounding alone would read as KL), loaded from disk (rank 0 wrote
    policy_sft before the barrier); None when beta_kl is 0."""
    if cfg.beta_kl <= 0:
        return None
    ref = freeze(load_policy(start_dir(cfg), dev))
    return scale.speed(ref, scale.amp_dtype(cfg.amp), cfg.channels_last)


def start_dir(cfg) -> str:
    """The directory RL starts from (its KL anchor, its LoRA base): --init_policy, or the SFT policy."""
    return cfg.init_policy or os.path.join(cfg.out_dir, "policy_sft")
