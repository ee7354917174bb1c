"""What the policy is rewarded by: the reward models (the method), the gold judge (the oracle), a placebo.

    source = make_source("rm", rms, cfg)          # or "gold" / "placebo"
    score, dmap = source.stages[k](sr, hr, step)  # (B,) in [0, 1] higher = better; (B, 1, H, W) or None

A reward source is a list of *stages*; the curriculum (curriculum.Schedule) says which stage(s) give the
reward at an RL step, with which weights, and the RL loop (train_rl.py) treats every source the same way.
A stage maps the policy's SR samples to a score and, where it has one, a degradation map (higher = more
degraded), the local penalty's input (method.md §4). Its other two arguments are the HR crops (only the
oracle reads them) and the RL step (only the placebo reads it).

  rm       RM_0 … RM_N, the trained FinPercep-RM stages: they never see HR (method.md §1, §5).
  gold     the label function against HR ("The honest toy world", method.md): stage 0 is its global quality
           1 − mean M alone (the ceiling of a global reward), stage 1 the same score plus the map M (the
           ceiling of the fine-grained method). Possible only because the toy world knows HR.
  placebo  seeded uniform random scores and no map: what the update's noise alone does to the policy.

Every RL claim is judged between the placebo and the oracle (method.md: "Controls first").
"""

from dataclasses import dataclass

import torch

import config
from metrics import label_map
from rm import fuse

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
    """One frozen RM stage: its score (or the fused reward λ1·S + λ2·(1 − smoothmax M), rm.fuse) and map."""

    def stage(sr, hr, step):
        score, dmap = rm(sr)
        return fuse(score, dmap, fused, lam1, lam2), dmap

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
        g = config.generator("placebo", seed, step, config.rank())
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
