"""A pretrained RM encoder from a local path: a frozen CLIP vision tower (the paper's RM builds on CLIP-IQA).

    python train_rm.py --backbone=clip:/models/clip-vit-base-patch16 --base=none --preset=scratch

rm.FinPercepRM asks for one when RMConfig.backbone is not "conv" (its own encoder) and feeds what it returns
to the SAME staged decoder, map head and coupled score: f_0 … f_N, f_i (B, widths[i], H/2**i, W/2**i).
How a ViT's tokens become that pyramid (DPT-style readouts; docs/method.md §3, the backbone):

    image (B,3,H,W) in [0,1] ─resize─▶ S×S (CLIP's image_size) ─CLIP mean/std─▶ frozen CLIP ─▶ hidden states
    f_i = resize(Linear_i(LayerNorm_i(h_{layer_i}[patch tokens])) as an S/p × S/p grid, to H/2**i × W/2**i)

- **Layers**: N + 1 evenly spaced hidden states, the shallowest to the finest level, the last layer to f_N
  (which the score pools): 3, 6, 9, 12 of a 12-layer ViT-B at N = 3; 1 … 4 of the tests' 4-layer tiny CLIP.
- **Frozen** [ours]: CLIP's weights get no gradient and are no part of the RM's parameters or checkpoint;
  only the per-level LayerNorm + Linear readouts (and the decoder, heads, score) train. Why: the RM learns
  from a few thousand synthetic 64-px triplets, and CLIP's prior is the point of using it; a frozen tower
  needs no backward pass in RM training (no input needs a gradient there) and no optimiser state; and the RM
  directory stays small and names its CLIP by path (rm.json), loaded again from there. The gradient still
  flows through CLIP to the image, which ReFL needs. Measured costs: docs/your-data.md.
- **Input size** [ours]: every image is resized to CLIP's own S×S (bicubic, antialiased) — the position
  embeddings it was trained with, the same token count (cost) for every tile, and 64-px crops get 14×14
  patches of a ViT-B/16 rather than 4×4. Each axis is scaled on its own, so any H, W (multiples of the RM's
  stride) maps back exactly: the grid is resized to H/2**i × W/2**i, and the map has the input's size.
"""

import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from config import ConfigError

# CLIP's input normalisation (OpenAI's; a snapshot's preprocessor_config.json overrides it when present).
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
FIX = "pip install -r requirements-models.txt"


def check(spec: str) -> str:
    """One-line errors for a --backbone value, before anything runs; returns the CLIP directory ("": conv)."""
    kind, _, path = spec.partition(":")
    if spec == "conv":
        return ""
    if kind != "clip" or not path:
        raise ConfigError(f"--backbone={spec}: use conv or clip:DIR (a local transformers CLIP snapshot)")
    if not os.path.isdir(path):
        raise ConfigError(f"backbone {spec}: '{path}' does not exist (a local CLIPVisionModel directory)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"backbone {spec}: '{path}' has no config.json (not a transformers snapshot)")
    try:
        import transformers  # noqa: F401  (only here: the project runs without it)
    except ImportError:
        raise ConfigError(f"--backbone={spec} needs transformers: {FIX}") from None
    return path


def even_layers(n_layers: int, n: int) -> tuple:
    """n evenly spaced layers of n_layers, the last one included: (3, 6, 9, 12) for 12 and 4."""
    return tuple(round(n_layers * (i + 1) / n) for i in range(n))


def make_encoder(cfg) -> nn.Module:
    """The encoder an RMConfig with backbone "clip:DIR" asks for. Records in cfg (hence rm.json) the absolute
    path and the layers it reads; a checkpoint's own layers (cfg.layers from rm.json) are kept."""
    path = os.path.abspath(check(cfg.backbone))
    from transformers import CLIPVisionModel

    try:  # safetensors only (nothing unpickled), fp32 whatever the snapshot's dtype
        clip = CLIPVisionModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32)
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0][:160]
        raise ConfigError(f"backbone clip:{path} could not be loaded as a CLIPVisionModel ({msg})") from None
    L, n = clip.config.num_hidden_layers, cfg.n_stages + 1
    layers = tuple(int(i) for i in cfg.layers) or even_layers(L, n)
    if len(layers) != n or not all(1 <= i <= L for i in layers):
        raise ConfigError(f"backbone layers {layers}: give {n} layers in 1..{L} (f_0 … f_N)")
    mean, std = CLIP_MEAN, CLIP_STD
    pre = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(pre):  # the snapshot's own normalisation, as its image processor would apply it
        meta = json.load(open(pre))
        mean, std = meta.get("image_mean", mean), meta.get("image_std", std)
    cfg.backbone, cfg.layers = f"clip:{path}", layers
    return ClipEncoder(clip, layers, cfg.widths, cfg.n_stages - cfg.stage, mean, std)


class ClipEncoder(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> [f_0, …, f_N], f_i (B, widths[i], H/2**i, W/2**i): the contract of
    rm.FinPercepRM's own encoder (its forward_all), from a frozen CLIP's hidden states (module docstring).
    The levels are parallel readouts, not a chain: RM_k reads f_{N-k} … f_N only (`first` = N − k), so only
    those exist (None below them): no unused weights (DistributedDataParallel refuses those), no wasted
    full-resolution resize. grow() adds the next level's readout, as it adds the next decoder level."""

    def __init__(self, clip, layers: tuple, widths: tuple, first: int, mean, std):
        super().__init__()
        # Held outside the module tree: no parameters(), state_dict() or train() reach it, so the optimiser,
        # the checkpoint and requires_grad_(True) on the RM leave it alone; _apply moves it with the RM.
        self.__dict__["clip"] = clip.eval().requires_grad_(False)
        self.layers, self.size = layers, clip.config.image_size
        self.grid = self.size // clip.config.patch_size
        D = clip.config.hidden_size
        # One readout per level: LayerNorm (a ViT's residual stream has a few huge channels) and a linear map
        # to the decoder's width, at the grid's size (cheap), before the resize to the level's size.
        readout = lambda w: nn.Sequential(nn.LayerNorm(D), nn.Linear(D, w))  # noqa: E731
        self.proj = nn.ModuleDict({str(i): readout(widths[i]) for i in range(first, len(widths))})
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def _apply(self, fn, recurse=True):
        """.to(device, dtype), .cuda(), channels_last …: the frozen CLIP follows the RM it belongs to."""
        self.clip._apply(fn)
        return super()._apply(fn, recurse)

    def forward(self, images: torch.Tensor) -> list:
        H, W, S, g = *images.shape[-2:], self.size, self.grid
        x = F.interpolate(images, size=(S, S), mode="bicubic", align_corners=False, antialias=True)
        hidden = self.clip(pixel_values=(x - self.mean) / self.std, output_hidden_states=True).hidden_states
        feats = [None] * (len(self.layers) - len(self.proj))  # the levels this stage does not read
        for key, proj in self.proj.items():  # levels first … N, in order
            i = int(key)
            t = proj(hidden[self.layers[i]][:, 1:])  # (B, g*g, w): patch tokens, the CLS token dropped
            t = t.transpose(1, 2).reshape(len(x), -1, g, g)
            size = (H // 2**i, W // 2**i)  # f_i at 1/2**i of the input, each axis scaled on its own
            feats.append(F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True))
        return feats
