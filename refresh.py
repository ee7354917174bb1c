"""The online refresh of the reward model during RL (train_rl --coevolve) [ours, beyond the paper; not CCL].

    live = OnlineRefresh(rms, pool, cfg, dev)       # live copies: the RMs under --rm_dir are only read
    source = make_source("rm", live.rms, cfg)       # the reward reads the live copies
    live.refresh(step, stage, sr, hr, G)            # after each RL step; acts every coevolve_every steps

A frozen RM knows the zoo, but a policy under RL soon paints things no zoo had (docs/method.md "The RM must
see what RL paints"). So every coevolve_every RL steps the RM stage in use takes a few AdamW steps on the
rollout itself, labelled against HR (known in training): FGR triplets of the policy's groups plus L_group,
mixed with zoo triplets so it keeps what it knew (cf. Adv-GRPO).
"""

import copy

import torch

import config
import data
import scale
from curriculum import rm_difficulty
from rm import LAM_GROUP, freeze, rm_losses


class OnlineRefresh:
    """Live copies of the RM stages that learn from the rollouts (module docstring); the reward reads them."""

    def __init__(self, rms: list, pool, cfg, dev):
        self.rms = [copy.deepcopy(r) for r in rms]  # the live reward models; rms itself stays as it was
        self.base = rms[0]  # S_base for L_align: the original, frozen RM_0
        self.pool, self.cfg, self.dev = pool, cfg, dev
        self.opts = {}  # one AdamW per stage, made when the stage is first refreshed

    def _opt(self, stage: int):
        if stage not in self.opts:
            self.opts[stage] = torch.optim.AdamW(self.rms[stage].parameters(), lr=self.cfg.coevolve_lr)
        return self.opts[stage]

    def state_dict(self) -> dict:
        """For --resume: every live stage's weights and the optimisers made so far (tensors and numbers)."""
        st = {f"rm{k}": r.state_dict() for k, r in enumerate(self.rms)}
        return st | {f"rm_opt{k}": o.state_dict() for k, o in self.opts.items()}

    def load_state_dict(self, st: dict) -> None:
        for k, r in enumerate(self.rms):
            r.load_state_dict(st[f"rm{k}"])
            if f"rm_opt{k}" in st:
                self._opt(k).load_state_dict(st[f"rm_opt{k}"])

    def due(self, step: int) -> bool:
        """Is RL step `step` followed by a refresh? (every coevolve_every steps; ≤ 0 = never)"""
        return self.cfg.coevolve_every > 0 and (step + 1) % self.cfg.coevolve_every == 0

    def refresh(self, step: int, stage: int, sr: torch.Tensor, hr: torch.Tensor, G: int) -> None:
        """After RL step `step`, when due: rank 0 refreshes RM_stage on this rollout (no collectives inside),
        then every rank gets its weights, in place: whoever holds self.rms[stage] sees them."""
        if self.due(step):
            if scale.is_main():
                self.step(step, stage, sr, hr, G)
            scale.broadcast_module(self.rms[stage])

    def step(self, step: int, stage: int, sr: torch.Tensor, hr: torch.Tensor, G: int) -> None:
        """Refresh RM_stage on RL step `step`'s rollout, labelled against HR: sr (B·G, 3, H, W), each LR's G
        samples adjacent, hr matching."""
        cfg, model = self.cfg, self.rms[stage].train().requires_grad_(True)
        opt = self._opt(stage)
        g = config.generator("rl/coevolve", cfg.seed, step)
        groups, diff = data.labelled_groups(sr, hr, G), rm_difficulty(stage, len(self.rms) - 1)
        for _ in range(cfg.coevolve_steps):
            zoo = data.fgr_batch(self.pool, cfg.coevolve_zoo, hr.shape[-1], diff, g, device=self.dev)
            batch = data.merge(zoo, data.group_triplets(groups, len(sr) // G, diff.area, g))
            base = self.base if stage > 0 else None  # RM_0 is its own anchor
            loss, _ = rm_losses(model, batch, base, lam_gold=1.0, lam_group=LAM_GROUP if G > 1 else 0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        freeze(model)
