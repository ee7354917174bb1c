"""The paper's Co-evolutionary Curriculum Learning (CCL, docs/method.md §5): the one place its schedules live.
(Our online refresh of the RM during RL, --coevolve, is not part of CCL: refresh.py.)

Reward side (train_rm.py): the data difficulty of each RM stage RM_0 … RM_N. Early stages see large, strong
artifacts (a coarse notion of "bad"); later stages small, subtle ones, which their finer maps can resolve.

    from curriculum import rm_difficulty
    rm_difficulty(0, 3)   # Difficulty(area=0.35, artifact=1.0, degrade=0.5)
    rm_difficulty(3, 3)   # Difficulty(area=0.08, artifact=0.5, degrade=0.5)"""

from data import Difficulty

# [ours] The paper gives no numbers. The endpoints: RM_0 learns a global score, so its regions cover a third
# of the image and artifacts are at full strength; RM_N localises, so regions shrink to ~8 % of the image
# (≈ 18×18 px of a 64×64 crop, still larger than its 1-px map resolution) and artifacts halve in strength.
AREA = (0.35, 0.08)  # mean mask area, first stage → last stage
ARTIFACT = (1.0, 0.5)  # zoo artifact strength, first stage → last stage
DEGRADE = 0.5  # LR degradation range is the same for all stages: it is not what the stages differ in

# The validation set uses one fixed difficulty, the middle of the curriculum: every stage is scored on the
# same data, neither RM_0's easy triplets nor RM_N's hardest.
VAL_AREA, VAL_ARTIFACT = (AREA[0] + AREA[1]) / 2, (ARTIFACT[0] + ARTIFACT[1]) / 2


def val_difficulty() -> Difficulty:
    """The fixed difficulty of the held-out validation triplets (train_rm.py's per-stage table)."""
    return Difficulty(area=VAL_AREA, artifact=VAL_ARTIFACT, degrade=DEGRADE)


def rm_difficulty(stage: int, n_stages: int) -> Difficulty:
    """Difficulty of reward-model stage `stage` (0 … n_stages), linear between the endpoints above."""
    if not 0 <= stage <= n_stages:
        raise ValueError(f"stage {stage} outside 0 … {n_stages}")
    f = stage / max(n_stages, 1)  # 0 at RM_0, 1 at RM_N
    lerp = lambda ab: ab[0] + (ab[1] - ab[0]) * f  # noqa: E731
    return Difficulty(area=lerp(AREA), artifact=lerp(ARTIFACT), degrade=DEGRADE)


# ----------------------------------------------------------------------------------------------------
# Policy side (train_rl.py): which RM stage(s) give the reward at RL step i.
#   sched = Schedule(mode="ccl", n_stages=3, total=200)
#   sched.at(step)            # [(stage, weight), ...], weights sum to 1: e.g. [(0, 0.5), (1, 0.5)] mid-blend
# Modes (the paper's ablation, docs/method.md §5): "ccl" RM_0 first, then stage by stage to RM_N; "none" RM_N
# from step 0 (no curriculum); "global" RM_0 throughout (the global-IQA baseline). Switching [ours]: "fixed"
# at shares of the run, RM_0 twice any later stage (40 % of the run at N = 3: the global reward is cheap to
# climb and sets a stable start), or "plateau" when the reward's moving average stops rising. Either way a
# linear blend over `blend` steps moves to the next stage, so the reward the policy optimises never jumps.


class Schedule:
    def __init__(self, mode="ccl", n_stages=3, total=100, fractions=None, blend=10, switch="fixed",
                 window=10, tol=0.002, min_steps=20):  # fmt: skip
        if mode not in ("ccl", "none", "global"):
            raise ValueError(f"curriculum mode '{mode}' unknown; use ccl, none or global")
        if switch not in ("fixed", "plateau"):
            raise ValueError(f"switch '{switch}' unknown; use fixed or plateau")
        self.mode, self.N, self.total, self.blend, self.switch = mode, n_stages, total, blend, switch
        self.window, self.tol, self.min_steps = window, tol, min_steps  # plateau rule's knobs
        f = fractions or [2.0] + [1.0] * n_stages  # default: N = 3 → 0.4, 0.2, 0.2, 0.2 of the run
        if len(f) != n_stages + 1:
            raise ValueError(f"fractions needs {n_stages + 1} entries (one per stage), got {len(f)}")
        cum = [sum(f[: k + 1]) / sum(f) for k in range(n_stages)]
        # starts[k] = the step at which stage k begins (fixed mode); plateau mode fills them as it goes.
        self.starts = [0] + ([round(c * total) for c in cum] if switch == "fixed" else [])
        # The blend takes at most half a stage, so every stage, RM_N included, gets steps at full weight (at
        # 40 steps a later stage lasts 8). Plateau mode needs no cap: a stage lasts ≥ blend + 2·window steps.
        if switch == "fixed" and n_stages > 0:
            shortest = min(b - a for a, b in zip(self.starts, self.starts[1:] + [total]))
            self.blend = min(blend, shortest // 2)
        self.history = []  # recent mean rewards (plateau mode), saved with the run for --resume

    def stage_at(self, step: int) -> int:
        """The stage the curriculum is in (or blending into) at `step`: RM_N for "none", RM_0 for "global"."""
        if self.mode != "ccl":
            return self.N if self.mode == "none" else 0
        return max(k for k, s in enumerate(self.starts) if s <= step)

    def at(self, step: int) -> list:
        """[(stage, weight), ...] with weights summing to 1; two entries only during a blend."""
        k = self.stage_at(step)
        if self.mode != "ccl" or k == 0:
            return [(k, 1.0)]
        # Linear blend from stage k−1 into k over `blend` steps; step starts[k] already has 1/blend of k.
        a = 1.0 if self.blend <= 0 else min(1.0, (step - self.starts[k] + 1) / self.blend)
        return [(k, 1.0)] if a >= 1.0 else [(k - 1, 1.0 - a), (k, a)]

    def update(self, step: int, reward: float) -> bool:
        """Plateau mode: record this step's mean reward; start the next stage at step + 1 (and return True)
        when the `window`-step moving average rose by less than `tol` over the last window, after min_steps
        in the stage and once any blend is over."""
        if self.mode != "ccl" or self.switch != "plateau" or len(self.starts) > self.N:
            return False
        self.history = (self.history + [float(reward)])[-2 * self.window :]
        k = self.stage_at(step)
        too_soon = step - self.starts[k] + 1 < max(self.min_steps, self.blend + 2 * self.window)
        if too_soon or len(self.history) < 2 * self.window:
            return False
        old = sum(self.history[: self.window]) / self.window
        new = sum(self.history[self.window :]) / self.window
        if new - old < self.tol:
            self.starts.append(step + 1)
            self.history = []
            return True
        return False

    def state_dict(self) -> dict:
        return {"starts": list(self.starts), "history": list(self.history)}

    def load_state_dict(self, st: dict) -> None:
        self.starts, self.history = [int(s) for s in st["starts"]], [float(h) for h in st["history"]]
