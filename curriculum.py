"""Co-evolutionary Curriculum Learning (CCL, method.md §5): the one place its schedules live.

Reward side (used by train_rm.py): the data difficulty of each reward-model stage RM_0 … RM_N. Early stages
see large, strong artifacts (a coarse, easy notion of "bad"); later stages see small, subtle ones, because
their finer maps can resolve them.

    from curriculum import rm_difficulty
    rm_difficulty(0, 3)   # Difficulty(area=0.35, artifact=1.0, degrade=0.5)
    rm_difficulty(3, 3)   # Difficulty(area=0.08, artifact=0.5, degrade=0.5)
"""

from data import Difficulty

# [ours] The paper gives no numbers. The endpoints: RM_0 learns a global score, so its regions cover a third
# of the image and artifacts are at full strength; RM_N localises, so regions shrink to ~8 % of the image
# (≈ 18×18 px of a 64×64 crop, still larger than its 1-px map resolution) and artifacts halve in strength.
AREA = (0.35, 0.08)  # mean mask area, first stage → last stage
ARTIFACT = (1.0, 0.5)  # zoo artifact strength, first stage → last stage
DEGRADE = 0.5  # LR degradation range is the same for all stages: it is not what the stages differ in


# The reward models' validation set uses one fixed difficulty, the middle of the curriculum, so every stage
# is scored on the same data: neither RM_0's easy triplets nor RM_N's hardest ones.
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
