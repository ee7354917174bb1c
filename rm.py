"""FinPercep-RM: a fine-grained perceptual reward model for image SR (docs/method.md §1, §3, §5).

    from rm import RMConfig, FinPercepRM, grow, rm_losses, reward, save_rm, load_rm
    rm = FinPercepRM(RMConfig(stage=0))         # RM_0: a plain global IQA, no decoder
    rm = grow(rm)                               # RM_1: + the coarsest decoder level and a map
    score, dmap = rm(images)                    # images (B, 3, H, W) in [0, 1]

Contract: score (B,) in [0, 1], higher = better; dmap (B, 1, H, W) in [0, 1], higher = more degraded, None
at stage 0. H and W must be multiples of the total stride 2**n_stages (8 by default; `rm.stride`).

The model in one picture (N = n_stages = 3, widths (12, 24, 48, 96): what train_rm trains and the shipped
base has; RMConfig's default is (16, 32, 64, 96)):

    image ─stem─▶ f_0 (1/1, 12) ─▶ f_1 (1/2, 24) ─▶ f_2 (1/4, 48) ─▶ f_3 = f_N (1/8, 96) = d_0
    decoder level j = 1 … stage, at the size of f_{N-j}: d_j = convs(up2(lateral(d_{j-1})) + f_{N-j})
    logits z_j = up2(z_{j-1}) + head_j(d_j)   (z_1 = head_1(d_1)), at 1/2**(N-j) of the input
    dmap = sigmoid(up2 ∘ … ∘ up2 (z_stage))   to the input size
    score = sigmoid(MLP([pool(f_N), pool(f_N ⊙ area_resize(dmap, f_N))])
                    + stats_gain · W · [mean(dmap), smooth_max(dmap)])

Stage k has exactly the modules it uses: decoder levels and map heads 1..k, and from k >= 1 the score's two
map paths. `grow` adds the next ones so the new model computes what the old one did (docs/method.md §5).
"""

import dataclasses
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from config import ConfigError
from metrics import SCALES, texture_energy
from rundir import atomic_dir, check_finite, loading, read_kind, write_json

N_TEXTURE = 5 * len(SCALES)  # channels of metrics.texture_energy: 4 orientations + contrast per scale


@dataclasses.dataclass
class RMConfig:
    widths: tuple = (16, 32, 64, 96)  # stem + one per stride-2 level; train_rm trains (12, 24, 48, 96)
    n_stages: int = 3  # N: stride-2 levels = decoder levels = curriculum stages after RM_0
    stage: int = 0  # k in 0..N: RM_k has k decoder levels; its map is at 1/2**(N-k) of the input
    hidden: int = 128  # width of the score MLP's hidden layer
    groups: int = 8  # GroupNorm groups (not BatchNorm: a reward must not depend on the rest of the batch)
    map_bias: float = -2.0  # head_1 starts at sigmoid(-2) ≈ 0.12: label maps are mostly near zero
    texture_input: bool = True  # feed log texture energies (metrics.texture_energy) beside RGB; see stem
    # The map statistics' logit weights want to be large (w ≈ −15: a 3 % change of mean(M) moves the logit
    # ~0.5), but Adam moves a weight by ~lr per step at any scale. A fixed gain: same function, 20× faster.
    stats_gain: float = 20.0
    backbone: str = "conv"  # conv: the encoder below; clip:DIR: a frozen local CLIP's layers (backbone.py)
    layers: tuple = ()  # with clip: the hidden states that give f_0 … f_N (evenly spaced when empty)

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) != self.n_stages + 1:
            raise ConfigError(f"widths {self.widths} needs n_stages + 1 = {self.n_stages + 1} entries")
        if not 0 <= self.stage <= self.n_stages:
            raise ConfigError(f"stage {self.stage} is outside 0..{self.n_stages}")


def conv_block(c_in: int, c_out: int, groups: int, stride: int = 1, n: int = 2) -> nn.Sequential:
    """n × (conv3x3 → GroupNorm → SiLU); the first conv carries the stride."""
    layers = []
    for i in range(n):  # GroupNorm groups by gcd: any width works, no divisibility rule
        conv = nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride if i == 0 else 1, 1)
        layers += [conv, nn.GroupNorm(math.gcd(groups, c_out), c_out), nn.SiLU()]
    return nn.Sequential(*layers)


def up2(x: torch.Tensor) -> torch.Tensor:
    """Bilinear ×2 upsampling. The map is brought to full size by repeating this (never one big resize),
    so stage k+1's up2(z_k) followed by one fewer up2 is the very same computation as stage k's output:
    growth is exactly function-preserving (a direct ×4 resize differs from two ×2 ones)."""
    return F.interpolate(x, size=(2 * x.shape[-2], 2 * x.shape[-1]), mode="bilinear", align_corners=False)


class FinPercepRM(nn.Module):
    def __init__(self, cfg: RMConfig):
        super().__init__()
        self.cfg = cfg
        w, N, k = cfg.widths, cfg.n_stages, cfg.stage
        self.stage, self.n_stages, self.stride = k, N, 2**N
        # Encoder (docs/method.md §1): a one-conv stem f_0 (full-res convs dominate CPU time), then N stride-2
        # levels f_1..f_N. [ours] texture_input: the stem also sees the log of the image's own texture
        # energies (φ without a reference), where a ratio across scales is one linear filter away: blur,
        # noise, halos. From RGB alone they take more steps than a CPU budget has (docs/experiments.md).
        c_in = 3 + (N_TEXTURE if cfg.texture_input else 0)
        if cfg.backbone == "conv":
            self.stem = conv_block(c_in, w[0], cfg.groups, n=1)
            self.down = nn.ModuleList(
                conv_block(w[i - 1], w[i], cfg.groups, stride=2) for i in range(1, N + 1)
            )
        else:  # a pretrained encoder giving the same f_0 … f_N; imported here: transformers only when asked
            from backbone import make_encoder

            self.encoder = make_encoder(cfg)  # also records its path and layers in cfg, hence in rm.json
        # Decoder level j (1..k), FPN style at f_{N-j}'s size: 1x1 lateral conv (cheap, at the coarse size),
        # up ×2, + skip f_{N-j}, 3x3 convs (one at full res). Adding, not concatenating, halves their input.
        self.lateral = nn.ModuleList(nn.Conv2d(w[N - j + 1], w[N - j], 1) for j in range(1, k + 1))
        self.up = nn.ModuleList(
            conv_block(w[N - j], w[N - j], cfg.groups, n=1 if j == N else 2) for j in range(1, k + 1)
        )
        # 1x1 map heads: head_1 predicts logits, head_j (j >= 2) a zero-init residual on up2(z_{j-1}).
        self.heads = nn.ModuleList(nn.Conv2d(w[N - j], 1, 1) for j in range(1, k + 1))
        for j, head in enumerate(self.heads, 1):
            nn.init.normal_(head.weight, std=0.01) if j == 1 else nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, cfg.map_bias if j == 1 else 0.0)
        # Score MLP (docs/method.md §1). [ours] The paper's S = MLP(pool(f_N ⊙ M)) gives every clean image
        # (M = 0) one score, so the MLP reads [pool(f_N), pool(f_N ⊙ M)]: content, and the degraded regions'
        # features. A concatenation into a linear layer is a sum: fc_global + fc_map.
        self.fc_global = nn.Linear(w[N], cfg.hidden)
        self.fc_map = nn.Linear(w[N], cfg.hidden, bias=False) if k >= 1 else None
        self.out = nn.Linear(cfg.hidden, 1)
        # [ours] A direct coupling: mean(M) ("how much is degraded") and smooth_max(M) ("how bad is the
        # worst region", docs/method.md §4) enter the logit linearly. The pooled path must learn to read the
        # map; this one reads it at once, so a defect on 3 % of the image moves the score.
        self.map_stats = nn.Linear(2, 1, bias=False) if k >= 1 else None
        # Both couplings start at zero (RM_1 starts as RM_0); their inputs are nonzero: they grow in at once.
        for coupling in (self.fc_map, self.map_stats) if k >= 1 else ():
            nn.init.zeros_(coupling.weight)

    def check(self, images: torch.Tensor) -> None:
        """One-line errors for inputs the model cannot take (the contract in the module docstring)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"RM expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        if H % self.stride or W % self.stride:
            raise ValueError(
                f"RM needs H and W to be multiples of {self.stride} (its total stride), got {H}x{W}"
            )

    def forward_all(self, images: torch.Tensor) -> dict:
        """Everything the losses need: score (B,), dmap (B,1,H,W) and the map's logits at the stage's
        native resolution (B,1,H/2**(N-k),W/2**(N-k)) where L_map compares; both None at stage 0."""
        self.check(images)
        N, k = self.n_stages, self.stage
        if self.cfg.backbone != "conv":  # backbone.py: f_0 … f_N of the same strides and widths
            feats = self.encoder(images)
        else:
            x = images * 2 - 1  # centre the [0, 1] input
            if self.cfg.texture_input:  # log energies, shifted/scaled to about [-1, 1] (they span 0.01–0.5)
                x = torch.cat([x, (torch.log(texture_energy(images) + 0.01) + 3.0) / 1.5], dim=1)
            feats = [self.stem(x)]
            for level in self.down:
                feats.append(level(feats[-1]))
        f_N = feats[-1]
        h = self.fc_global(f_N.mean(dim=(2, 3)))  # pool(f_N): global average pooling
        dmap = logits = None
        if k >= 1:
            d = f_N
            for j, (lateral, block, head) in enumerate(zip(self.lateral, self.up, self.heads), 1):
                d = block(up2(lateral(d)) + feats[N - j])  # upsample, add the skip f_{N-j}, fuse
                logits = head(d) if j == 1 else up2(logits) + head(d)  # z_j = up2(z_{j-1}) + residual
            z = logits
            for _ in range(N - k):  # bilinear to the input size, ×2 at a time (see up2)
                z = up2(z)
            dmap = torch.sigmoid(z)  # M in [0, 1], higher = more degraded
            # Coupling (docs/method.md §1): area-resize M to f_N's size and gate the deepest features with it.
            # Taken from the full-size dmap, which growth preserves exactly, so the score is preserved too.
            gate = F.avg_pool2d(dmap, self.stride)
            h = h + self.fc_map((f_N * gate).mean(dim=(2, 3)))  # + W_map · pool(f_N ⊙ M)
        logit = self.out(F.silu(h))
        if dmap is not None:
            stats = torch.stack([dmap.mean(dim=(1, 2, 3)), smooth_max(dmap)], dim=1)  # (B, 2)
            logit = logit + self.cfg.stats_gain * self.map_stats(stats)  # RMConfig.stats_gain says why
        logit = logit.squeeze(-1)
        score = torch.sigmoid(logit)  # S in [0, 1], higher = better
        return {"score": score, "logit": logit, "dmap": dmap, "logits": logits}

    def forward(self, images: torch.Tensor, full: bool = False):
        """(score, dmap), or with full=True forward_all's dict (what the losses need). The flag lets the
        losses go through forward(), the one method DistributedDataParallel hooks (train_rm, torchrun)."""
        out = self.forward_all(images)
        return out if full else (out["score"], out["dmap"])


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def freeze(model: nn.Module) -> nn.Module:
    """A reward / S_base is a fixed function: no parameter gradients, eval mode. Returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def grow(model: FinPercepRM) -> FinPercepRM:
    """RM_k -> RM_{k+1}: progressive parameter expansion (docs/method.md §5), function-preserving at creation.
    Every weight is copied. New: the next finer decoder level (random; it reaches the output only through its
    head), its map head (zero residual for k >= 1: RM_k's map exactly), and for 0 -> 1 a fresh head_1 plus the
    zero-init fc_map and map_stats (the score is RM_0's)."""
    if model.stage >= model.n_stages:
        raise ValueError(f"RM is already at the last stage ({model.stage}); nothing to grow")
    p, cfg = next(model.parameters()), dataclasses.replace(model.cfg, stage=model.stage + 1)
    new = FinPercepRM(cfg).to(device=p.device, dtype=p.dtype)
    # strict=False: the keys missing from the old state dict are exactly the new modules, left at their init.
    unexpected = new.load_state_dict(model.state_dict(), strict=False).unexpected_keys
    assert not unexpected, unexpected  # every old weight has its place in the bigger model
    return new.train(model.training)


# ----------------------------------------------------------------------------------------------------
# Losses (docs/method.md §3). One batched forward on cat(I_GT, I_syn, I_SR): 3B images, one graph.


def rank_loss(s_gt, s_syn, s_sr, m1: float = 0.05, m2: float = 0.05) -> torch.Tensor:
    """L_rank = max(0, m1 - (S_syn - S_SR)) + max(0, m2 - (S_GT - S_syn)): wants S_SR < S_syn < S_GT,
    each gap at least its margin (scores live in [0, 1], so margins are small). Mean over the batch."""
    return (F.relu(m1 - (s_syn - s_sr)) + F.relu(m2 - (s_gt - s_syn))).mean()


GROUP_SCORE = 20.0  # weight of L_group's score part beside its map part: gold gaps inside a group are ~0.01
# λ_group, L_group's weight wherever the RM learns from policy samples (train_rm's default, and the online
# refresh, refresh.OnlineRefresh): at 1 the policy samples crowd out the zoo (docs/experiments.md).
LAM_GROUP = 0.3


def map_loss(logits: torch.Tensor, target: torch.Tensor, bce: float = 0.25) -> torch.Tensor:
    """L_map = |M - M_gt|_1 (docs/method.md §3) + bce · BCE at the stage's native map resolution, against the
    label map area-downsampled to it (a coarse stage is asked for each block's mean). [ours] BCE: L1's push
    sign(M - M_gt) is alike for all pixels and drives mostly-zero maps black (docs/experiments.md); BCE on
    the logits pulls by M - M_gt, so faint degradations are fitted too (its minimum: the target's entropy)."""
    target = F.adaptive_avg_pool2d(target, logits.shape[-2:])  # area resize (exact: sizes divide)
    l1 = (torch.sigmoid(logits) - target).abs().mean()
    return l1 if bce <= 0 else l1 + bce * F.binary_cross_entropy_with_logits(logits, target)


def group_deviation(M: torch.Tensor, G: int) -> torch.Tensor:
    """(M_i − mean_j M_j) / (pixel-mean of std_j M_j + ε) over groups of G adjacent samples, (B·G, 1, H, W):
    how much more degraded each pixel is than in the rest of its group (one LR), in units of the group's
    spread. RL's local penalty is its negative (train_rl.local_penalty); L_group trains the map on it."""
    m = M.view(-1, G, *M.shape[1:])
    dev = m - m.mean(1, keepdim=True)
    scale = m.std(1, keepdim=True, unbiased=False).mean((2, 3, 4), keepdim=True)
    return (dev / (scale + 1e-6)).view_as(M)


def group_loss(score, logits, gold, target, G: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L_group [ours] = (score part, map part) on policy samples in groups of G of one LR: the comparison RL's
    advantage makes (docs/method.md "The RM must see what RL paints"). Gold varies by ~0.01 inside a group:
    a model that ranks different images well can still rank these backwards.
    score: relu((gold_i − gold_j) − (S_i − S_j)) for each pair with gold_i > gold_j: a score gap at least the
    gold gap (L_gold puts S on gold's scale). map: |D(M) − D(M_gt)|, D = group_deviation, what RL reads."""
    s, q = score.view(-1, G), gold.view(-1, G)
    dq, ds = q[:, :, None] - q[:, None, :], s[:, :, None] - s[:, None, :]  # (groups, G, G) pairwise gaps
    ordered = (dq > 0).to(s)
    l_score = (F.relu(dq - ds) * ordered).sum() / ordered.sum().clamp_min(1)
    if logits is None:  # RM_0: no map
        return l_score, score.new_zeros(())
    t = F.adaptive_avg_pool2d(target, logits.shape[-2:])
    l_map = (group_deviation(torch.sigmoid(logits), G) - group_deviation(t, G)).abs().mean()
    return l_score, l_map


def rm_losses(
    model: FinPercepRM, batch: dict, base: nn.Module | None = None,
    lam_map: float = 1.0, lam_rank: float = 1.0, lam_align: float = 1.0, lam_gold: float = 0.0,
    lam_group: float = 0.0, m1: float = 0.05, m2: float = 0.05, bce: float = 0.25,
):  # fmt: skip
    """L = λ_map L_map + λ_rank L_rank + λ_align L_align (+ λ_gold L_gold + λ_group L_group, ours).
    Returns (total, parts), parts detached 0-dim tensors (no host sync: .item() once per logged step).
    batch: "gt", "syn", "sr" (B,3,H,W); "dmap_syn", "dmap_sr" (B,1,H,W) label maps in [0, 1]; optionally
    "gold_gt", "gold_syn", "gold_sr" (B,) gold quality in [0, 1] (1 - mean(label map)), and "group" = G,
    "n_group" = n when the last n entries of "sr" are policy samples in groups of G of one LR (L_group).
    base: the frozen RM_0 for L_align (None: no align term, e.g. when training RM_0 itself)."""
    gt, syn, sr = batch["gt"], batch["syn"], batch["sr"]
    B = gt.shape[0]
    out = model(torch.cat([gt, syn, sr]), full=True)  # model may be a DDP wrapper: call forward()
    s_gt, s_syn, s_sr = out["score"].split(B)
    zero = out["score"].new_zeros(())
    parts = {"rank": rank_loss(s_gt, s_syn, s_sr, m1, m2), "map": zero, "align": zero}  # L_rank (§3)
    # L_map on all three images (§3 + ours): I_GT is clean (zeros), I_syn and I_SR have their own labels.
    if out["logits"] is not None:  # RM_0 has no map
        target = torch.cat([torch.zeros_like(batch["dmap_syn"]), batch["dmap_syn"], batch["dmap_sr"]])
        parts["map"] = map_loss(out["logits"], target, bce)
    # L_align = |S_GT - S_base(I_GT)|: a frozen RM_0 pins the score scale, so every stage means the same
    # number by the same score (§3; in the paper S_base is CLIP-IQA, here our own RM_0).
    if base is not None:
        with torch.no_grad():
            s_base = base(gt)[0]
        parts["align"] = (s_gt - s_base).abs().mean()
    # [ours] L_gold: S regressed to the gold quality g = 1 - mean(label map) wherever there is one, so RM_0
    # learns an absolute scale (ranking only orders). BCE on the logit with soft target g: its gradient S - g
    # never vanishes, while an L1/L2 on S carries the sigmoid's slope S(1 - S), near 0 where golds crowd (~1).
    golds = [(z, batch.get(f"gold_{n}")) for z, n in zip(out["logit"].split(B), ("gt", "syn", "sr"))]
    golds = [(z, g) for z, g in golds if g is not None]
    if lam_gold > 0 and not golds:
        raise ValueError("lam_gold > 0 but the batch has no gold_gt / gold_syn / gold_sr")
    bce_gold = [F.binary_cross_entropy_with_logits(z, g.to(z)) for z, g in golds]
    parts["gold"] = torch.stack(bce_gold).mean() if golds else zero
    # L_group on the policy samples at the end of "sr" (group_loss); the map part is in z units of the
    # group's spread, the score part in gold units (~0.01): GROUP_SCORE brings it to the same order.
    G, n = batch.get("group", 0), batch.get("n_group", 0)
    parts["group"] = zero
    if lam_group > 0 and G and n:
        lg = out["logits"][3 * B - n :] if out["logits"] is not None else None
        ls, lm = group_loss(s_sr[-n:], lg, batch["gold_sr"][-n:], batch["dmap_sr"][-n:], G)
        parts["group"] = GROUP_SCORE * ls + lm
    total = (lam_map * parts["map"] + lam_rank * parts["rank"] + lam_align * parts["align"]
             + lam_gold * parts["gold"] + lam_group * parts["group"])  # fmt: skip
    return total, {name: v.detach() for name, v in {**parts, "total": total}.items()}


# ----------------------------------------------------------------------------------------------------
# The reward handed to RL (docs/method.md §4).


def smooth_max(dmap: torch.Tensor, topk: float = 0.01, tau: float | None = None) -> torch.Tensor:
    """A differentiable spatial max of M, (B,1,H,W) -> (B,), with gradient on the worst region, not one pixel:
    the mean of the top `topk` fraction ("how bad the worst 1 % is"), or with tau τ·(logsumexp(M/τ) - log n),
    in [mean(M), max(M)] (docs/method.md §4's plain τ·logsumexp(M/τ) exceeds max(M) by up to τ·log n)."""
    m = dmap.flatten(1)
    if tau is not None:
        return tau * (torch.logsumexp(m / tau, dim=1) - math.log(m.shape[1]))
    k = max(1, round(topk * m.shape[1]))
    return m.topk(k, dim=1).values.mean(dim=1)


def reward(score, dmap, fused=False, lam1=0.5, lam2=0.5, topk=0.01, tau=None) -> torch.Tensor:
    """The reward for RL, (B,), differentiable (ReFL), from an RM's output (the PG loop needs the map too).
    plain: the map-coupled score S (already sensitive to local defects through the gate, docs/method.md §1).
    fused: R = λ1·S + λ2·(1 - smooth_max(M)) (docs/method.md §4), in [0, 1] when λ1 + λ2 = 1: the worst
    region counts directly. Stage 0 (dmap None) has no map: the score alone."""
    if not fused or dmap is None:
        return score
    return lam1 * score + lam2 * (1 - smooth_max(dmap, topk, tau))


# ----------------------------------------------------------------------------------------------------
# Checkpoints: a directory with model.safetensors + rm.json (kind "rm"), written atomically.


def save_rm(model: FinPercepRM, path: str, extra: dict | None = None) -> None:
    """Write `path/` = model.safetensors + rm.json (kind "rm" and every field needed to rebuild the model).
    `extra`: optional JSON-able facts to record beside them (e.g. the training step); ignored by load_rm."""
    check_finite(model, f"the reward model for {path}", "lower --lr")  # a NaN RM is never written
    meta = {"kind": "rm", **dataclasses.asdict(model.cfg), "stride": model.stride, **(extra or {})}
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    with atomic_dir(path) as tmp:  # an interrupted save leaves the previous checkpoint intact
        save_file(state, os.path.join(tmp, "model.safetensors"))
        write_json(os.path.join(tmp, "rm.json"), meta)


def load_rm(path: str, device=None) -> FinPercepRM:
    """Rebuild an RM stage from its directory; eval mode, on CPU unless `device` is given.
    A missing directory or another kind of checkpoint (e.g. a policy) is a one-line error."""
    meta = read_kind(path, "rm", "python train_rm.py")
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        raise ConfigError(f"'{path}' has rm.json but no model.safetensors; make it with `python train_rm.py`")
    fields = {f.name for f in dataclasses.fields(RMConfig)}
    with loading(path, "python train_rm.py"):  # a truncated file or a mismatched rm.json: one line
        model = FinPercepRM(RMConfig(**{k: v for k, v in meta.items() if k in fields}))
        model.load_state_dict(load_file(weights, device="cpu"))
    return model.to(device or "cpu").eval()


def load_stages(rm_dir: str, dev) -> list:
    """Every RM stage under rm_dir, frozen (the rewards are fixed functions during RL)."""
    has = lambda f: os.path.isfile(os.path.join(rm_dir, f))  # noqa: E731  (wrong kinds: say what it is)
    if has("policy.json") or has("model_index.json"):
        raise ConfigError(
            f"--rm_dir={rm_dir} is a policy directory, not train_rm's out_dir; pass that (it holds"
            " rm_stage0/ …), e.g. out/rm from `python train_rm.py`"
        )
    if has("rm.json"):
        parent = os.path.dirname(os.path.abspath(rm_dir))
        raise ConfigError(f"--rm_dir={rm_dir} is one RM stage; pass its parent {parent}")
    if not os.path.isdir(os.path.join(rm_dir, "rm_stage0")):
        raise ConfigError(
            f"no reward model in '{rm_dir}' (rm_stage0/ missing); run `python train_rm.py`"
            f" first or pass --rm_dir=DIR"
        )
    rms, k = [], 0
    while os.path.isdir(os.path.join(rm_dir, f"rm_stage{k}")):
        rms.append(freeze(load_rm(os.path.join(rm_dir, f"rm_stage{k}"), dev)))
        k += 1
    return rms
