"""What the policy is rewarded by: the reward models (the method), the gold judge (the oracle), a placebo.

    source = make_source("rm", rms, cfg)          # or "gold" / "placebo"
    score, dmap = source.stages[k](sr, hr, step)  # (B,) in [0, 1] higher = better; (B, 1, H, W) or None

A reward source is a list of *stages*; the curriculum (curriculum.Schedule) says which stage(s) give the
reward at an RL step, with which weights, and the RL loop (train_rl.py) treats every source the same way.
A stage maps the policy's SR samples to a score and, where it has one, a degradation map (higher = more
degraded), the local penalty's input (docs/method.md §4). Its other two arguments are the HR crops (only the
oracle reads them) and the RL step (only the placebo reads it).

  rm       RM_0 … RM_N, the trained FinPercep-RM stages: they never see HR (docs/method.md §1, §5).
  gold     the label function against HR (docs/method.md, "The honest toy world"): stage 0 its global quality
           1 − mean M alone (the ceiling of a global reward), stage 1 the same score plus the map M (the
           ceiling of the fine-grained method). Possible only because the toy world knows HR.
  placebo  seeded uniform random scores and no map: what the update's noise alone does to the policy.

Every RL claim is judged between the placebo and the oracle (docs/method.md: "Controls first").
"""

from dataclasses import dataclass

import torch

import config
import scale
from metrics import label_map, lr_consistency
from rm import reward

SOURCES = ("rm", "gold", "placebo")


@dataclass
class RewardSource:
    kind: str  # rm | gold | placebo
    stages: list  # callables (sr, hr, step) -> (score (B,), dmap (B, 1, H, W) or None)

    @property
    def n_stages(self) -> int:
        """N: the index of the last stage (the curriculum's RM_N), 0 when there is one stage."""
        return len(self.stages) - 1


def rm_stage(rm, fused: bool, lam1: float, lam2: float):
    """One frozen RM stage: its score (or the fused reward λ1·S + λ2·(1 − smoothmax M), rm.reward) and map."""

    def stage(sr, hr, step):
        score, dmap = rm(sr)
        return reward(score, dmap, fused, lam1, lam2), dmap

    return stage


def gold_stage(with_map: bool):
    """The oracle: gold quality 1 − mean M(SR; HR) (metrics.gold_quality) and, for stage 1, the map M."""

    def stage(sr, hr, step):
        M = label_map(sr, hr)
        return 1 - M.mean((1, 2, 3)), (M if with_map else None)

    return stage


def placebo_stage(seed: int):
    """Random scores, uniform in [0, 1], drawn from (seed, step, rank) alone: independent of the images, the
    same on a resumed run. `+ 0 · mean(SR)` gives the score a (zero) derivative, so ReFL's loss, which
    backpropagates the reward, runs unchanged: the placebo's gradient is exactly zero, as it should be."""

    def stage(sr, hr, step):
        g = config.generator("placebo", seed, step, scale.rank())
        r = torch.rand(sr.shape[0], generator=g).to(sr.device)
        return r + 0 * sr.mean((1, 2, 3)), None

    return stage


def make_source(kind: str, rms: list, cfg) -> RewardSource:
    """The reward source of a run (train_rl --reward): cfg supplies fused / lam1 / lam2 / seed."""
    if kind == "rm":
        return RewardSource(kind, [rm_stage(rm, cfg.fused, cfg.lam1, cfg.lam2) for rm in rms])
    if kind == "gold":
        return RewardSource(kind, [gold_stage(False), gold_stage(True)])
    if kind == "placebo":
        return RewardSource(kind, [placebo_stage(cfg.seed)])
    raise config.ConfigError(f"--reward={kind} unknown; use one of {', '.join(SOURCES)}")


@torch.no_grad()
def reward_and_map(source, weights, sr, hr_g, lr_g, step: int, cfg):
    """(r (B·G,), the blended map M or None, its weight w_map, {stage: its rewards}) of the stages in use.
    One forward per stage; the map is the weighted mean of the map-giving stages' maps (weight w_map)."""
    rewards, maps = {}, {}
    for s in sorted(s for s, _ in weights):
        rewards[s], maps[s] = source.stages[s](sr, hr_g, step)
    r = sum(w * rewards[s] for s, w in weights)
    if cfg.lam_lr > 0:  # LR consistency as a reward penalty: SR is a sample here, not differentiable
        r = r - cfg.lam_lr * lr_consistency(sr, lr_g)
    with_map = [(s, w) for s, w in weights if maps[s] is not None]
    w_map = sum(w for _, w in with_map)  # the curriculum weight of the map-giving stages
    M = sum(w * maps[s] for s, w in with_map) / w_map if with_map else None  # their blended map
    return r, M, w_map, rewards
