"""LoRA: low-rank adapters on the policy's UNet, trained instead of the whole UNet (--lora_rank=R).

    python train_rl.py --init_policy=DIR --lora_rank=4 --sft_only   # SFT of DIR: adapters alone train
    python train_rl.py --init_policy=DIR --lora_rank=4              # RL of DIR: adapters alone train
    python lora.py merge out/rl/policy_final out/rl/merged          # a plain policy, adapters merged in
    policy = load_policy("out/rl/policy_final")                     # policy.py: the base, adapters on top

What LoRA does (Hu et al. 2021): a frozen weight W (out × in, or out × in × k × k for a convolution) gets a
trainable low-rank update, W x + (α / r) · B (A x), with A (r × in·k·k) and B (out × r); only A and B train.
peft (requirements-models.txt) makes the layers; this file chooses where they go and how they are stored.
- Where (TARGETS): the attention projections to_q, to_k, to_v, to_out.0 of every diffusers Attention block
  (self- and cross-attention; what DDPO adapts in Stable Diffusion), and conv1 / conv2, the two 3×3
  convolutions of every ResnetBlock2D. The convolutions are needed here: the pixel policy has no attention at
  all, and in every UNet here the resnets hold a large share of the weights. Not adapted: conv_in / conv_out
  (a few channels in and out, e.g. 6 and 3, where rank 4 is not low), the 1×1 shortcuts, the up- and
  down-samplers, the time embedding, norms and biases. Chosen by layer name, so any diffusers UNet
  (UNet2DModel, UNet2DConditionModel) works; peft matches a name or its last dotted parts.
- Rank r = --lora_rank, α = r (scale 1: the update is B A itself), dropout 0 (RL's log-probs and PPO
  ratios must come from the same deterministic network). peft's init: A Kaiming-uniform, B = 0, so the
  adapted UNet starts equal to its base, exactly (B A x = 0 is added), and the KL anchor agrees at step 0.
- Learning rate: RL trains the adapters at --lora_lr = 1e-3, 10× --lr: at the same rate LoRA moved the
  policy 20–90× less than full fine-tuning (docs/your-data.md, "LoRA"); 10× is DDPO's ratio of its LoRA and
  full fine-tuning rates. SFT keeps --sft_lr (2e-3: already a LoRA-sized rate).

A LoRA policy directory holds adapter_model.safetensors (peft's key names, adapters only) and policy.json
(the policy's config, as for any policy, plus "lora": the base directory and the adapter config). Loading
(policy.load_policy) loads the base, then puts the adapters back on top: unmerged, the very network that
was trained. The base may itself be a LoRA directory (LoRA RL of a LoRA SFT): its adapters are merged into
its weights first, then the new ones go on top. This file never imports policy.py (policy.py imports it,
lazily): it works on the UNet module, and load_policy hands it the function that loads a base.
"""

import dataclasses
import importlib.util
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

from config import ConfigError
from rundir import atomic_dir, loading, read_kind, write_json
from scale import is_main

TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")  # the module docstring says why these
WEIGHTS = "adapter_model.safetensors"  # peft's file name; its presence marks a LoRA policy directory
FIX = "python train_rl.py --init_policy=DIR --lora_rank=4"  # the command that makes a LoRA directory
NEEDS = "LoRA needs peft: pip install -r requirements-models.txt"


def rank_ok(rank: int) -> bool:
    """train_rl's check of --lora_rank: 0 (full fine-tuning), or a rank ≥ 1 with peft installed — a missing
    peft is a one-line error when the flags are parsed, before any training (peft is not imported here)."""
    if rank > 0 and importlib.util.find_spec("peft") is None:
        raise ConfigError(f"--lora_rank={rank}: {NEEDS}")
    return rank >= 0


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError(NEEDS) from None
    return peft


def spec(rank: int, base: str) -> dict:
    """The adapter config as plain JSON (policy.json's "lora"): base directory, rank, α, dropout, targets."""
    targets = list(TARGETS)
    return {"base": os.path.abspath(base), "rank": rank, "alpha": rank, "dropout": 0.0, "targets": targets}


def adapted(unet) -> bool:
    return getattr(unet, "lora_spec", None) is not None  # set by attach, removed by merge


def attach(unet, lora: dict):
    """Put fresh adapters (B = 0) on the UNet's TARGETS, in place; peft freezes every other parameter."""
    peft = _peft()
    cfg = peft.LoraConfig(
        r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["targets"]
    )
    try:
        peft.inject_adapter_in_model(cfg, unet)
    except ValueError as e:  # no module of that name: a UNet of another kind
        raise ConfigError(f"LoRA: no layer named {', '.join(lora['targets'])} in this UNet ({e})") from None
    unet.lora_spec = lora  # save_policy's sign that this policy saves adapters alone
    return unet


def merge(unet):
    """Fold the adapters into the weights (W ← W + (α/r)·B A) and take peft's layers out, in place: a plain
    diffusers UNet again, every parameter trainable (as load_policy gives a policy)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=True)  # safe: a NaN in the merged weight is an error, not a checkpoint
            parent, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent), child, module.get_base_layer())
    for attr in ("peft_config", "lora_spec"):
        unet.__dict__.pop(attr, None)
    return unet.requires_grad_(True)


def count(unet) -> tuple:
    """(trainable, adapter, all) parameter counts of the UNet: with LoRA the first two are equal."""
    params = list(unet.named_parameters())
    n = lambda keep: sum(p.numel() for name, p in params if keep(name, p))  # noqa: E731
    return n(lambda _, p: p.requires_grad), n(lambda name, _: "lora_" in name), n(lambda *_: True)


# ----------------------------------------------------------------------------------------------------
# Training: which parameters train (train_rl and sft call adapt before their optimiser)


def adapt(policy, rank: int, base: str, lr: float | None = None) -> list:
    """Prepare the policy for training with --lora_rank=rank; returns what the optimiser trains.

    rank 0 and a plain policy: nothing changes (all parameters). A policy that carries adapters (loaded from
    a LoRA directory) first has them merged. rank > 0: fresh adapters over the policy saved at `base`, the
    directory the training started from; without one (SFT from scratch) the whole UNet trains: LoRA adapts
    pretrained weights, and a fresh UNet has none. With adapters and an `lr` (RL's --lora_lr), they come as
    one AdamW parameter group with that rate, which takes precedence over the optimiser's lr=."""
    if adapted(policy.unet) or (rank > 0 and base):
        policy.__dict__.pop("_ddp", None)  # scale.distribute's wrapper saw the old layers: it is made again
    if adapted(policy.unet):
        merge(policy.unet)
    if rank > 0 and base:
        attach(policy.unet, spec(rank, base))
        trainable, adapters, total = count(policy.unet)
        print(
            f"LoRA rank {rank} over {base}: {trainable:,} parameters train (adapters: {adapters:,}),"
            f" {total - adapters:,} frozen" + (f"; lr {lr:g}" if lr else "")
        ) if is_main() else None
    elif rank > 0 and is_main():
        print(f"--lora_rank={rank}: SFT from scratch trains the whole UNet (LoRA needs a pretrained base)")
    params = [p for p in policy.unet.parameters() if p.requires_grad]
    return [{"params": params, "lr": lr}] if adapted(policy.unet) and lr else params


# ----------------------------------------------------------------------------------------------------
# Saving and loading a LoRA policy directory (policy.save_policy and policy.load_policy come here)


def save(policy, path: str) -> None:
    """Write <path>/ atomically: the adapters (safetensors, peft's key names) and policy.json, which names
    the base directory and the adapter config. The base's weights are not copied."""
    from peft import get_peft_model_state_dict

    weights = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(policy.unet).items()}
    meta = {"kind": "policy", **dataclasses.asdict(policy.cfg), "lora": policy.unet.lora_spec}
    with atomic_dir(path) as tmp:
        save_file(weights, os.path.join(tmp, WEIGHTS))
        write_json(os.path.join(tmp, "policy.json"), meta)


def _meta(path: str) -> dict:
    """policy.json of a LoRA directory, with the base checked to exist (one line when it is gone)."""
    meta = read_kind(path, "policy", FIX)
    if "lora" not in meta or not os.path.isfile(os.path.join(path, WEIGHTS)):
        raise ConfigError(f"'{path}' is not a LoRA policy directory (no {WEIGHTS}): a plain policy already")
    base = meta["lora"].get("base")
    if not base or not os.path.isdir(base):
        raise ConfigError(
            f"'{path}' holds LoRA adapters over '{base}', which does not exist; put the base back there"
            " (a merged copy, python lora.py merge, needs no base)"
        )
    return meta


def _put_on(unet, path: str, lora: dict):
    """The adapters of directory `path` on `unet` (a plain UNet, or one whose adapters are merged first)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    if adapted(unet):  # the base was a LoRA directory itself: its adapters become weights
        merge(unet)
    attach(unet, lora)
    with loading(path, FIX):  # a truncated file, or adapters of another shape: one line
        weights = load_file(os.path.join(path, WEIGHTS))
        if set(weights) != set(get_peft_model_state_dict(unet)):  # every adapter, and nothing else
            raise ValueError(f"{WEIGHTS} does not hold this UNet's adapters for {lora['targets']}")
        set_peft_model_state_dict(unet, weights)
    return unet


def load(path: str, load_base, device=None):
    """The policy of a LoRA directory: load_base(base) (policy.load_policy), adapters back on top, and the
    sampling defaults (K, eta) of the directory's own policy.json (RL sets them; the base's may differ)."""
    meta = _meta(path)
    policy = load_base(meta["lora"]["base"], device)
    _put_on(policy.unet, path, meta["lora"])
    policy.cfg.steps, policy.cfg.eta = meta["steps"], meta["eta"]
    return policy.to(device or "cpu").eval()


# ----------------------------------------------------------------------------------------------------
# The merged export: a normal policy directory, for inference and for tools that know no LoRA


def _unet(path: str):
    """The adapted UNet of a LoRA directory, on CPU, built from the files alone (no policy.py): the plain
    base's unet/ (a diffusers class named in its config.json), then each LoRA directory's adapters."""
    import diffusers

    lora = _meta(path)["lora"]
    if os.path.isfile(os.path.join(lora["base"], WEIGHTS)):
        unet = _unet(lora["base"])
    else:
        with loading(lora["base"], FIX), open(os.path.join(lora["base"], "unet", "config.json")) as f:
            cls = getattr(diffusers, json.load(f)["_class_name"])
            unet = cls.from_pretrained(os.path.join(lora["base"], "unet"), use_safetensors=True)
    return _put_on(unet, path, lora)


def export(path: str, out: str) -> str:
    """Write `out`: the plain base directory's files (scheduler/, a pipeline's vqvae/ …), the UNet with every
    adapter merged into its weights, and the LoRA directory's policy.json without "lora": a policy directory
    as save_policy writes it, loadable by load_policy and by diffusers, with no LoRA and no peft needed."""
    unet, meta, root = merge(_unet(path)), _meta(path), path
    while os.path.isfile(os.path.join(root, WEIGHTS)):  # down the chain of bases to the plain one
        root = _meta(root)["lora"]["base"]
    with atomic_dir(out) as tmp:
        for name in os.listdir(root):
            src, dst = os.path.join(root, name), os.path.join(tmp, name)
            if name not in ("unet", "policy.json"):
                shutil.copytree(src, dst) if os.path.isdir(src) else shutil.copy2(src, dst)
        unet.save_pretrained(os.path.join(tmp, "unet"))  # safetensors + config.json, diffusers' layout
        write_json(os.path.join(tmp, "policy.json"), {k: v for k, v in meta.items() if k != "lora"})
    return out


if __name__ == "__main__":  # python lora.py merge LORA_DIR OUT_DIR
    if len(sys.argv) != 4 or sys.argv[1] != "merge":
        raise SystemExit("usage: python lora.py merge LORA_DIR OUT_DIR  (a plain policy, adapters merged)")
    with torch.no_grad():
        print(f"wrote {export(*sys.argv[2:])}: {sys.argv[2]} with its adapters merged into the base")
