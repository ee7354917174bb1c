"""curriculum.py: the CCL schedule against a hand-computed table, every mode, plateau switching and resume."""

import pytest

from curriculum import Schedule, rm_difficulty, val_difficulty

# N = 3, 100 steps, default shares 2:1:1:1 → stage starts at 0, 40, 60, 80; blend over 10 steps.
TABLE = [
    (0, [(0, 1.0)]),
    (39, [(0, 1.0)]),
    (40, [(0, 0.9), (1, 0.1)]),  # first step of the blend already gives the new stage 1/10
    (44, [(0, 0.5), (1, 0.5)]),
    (49, [(1, 1.0)]),
    (59, [(1, 1.0)]),
    (60, [(1, 0.9), (2, 0.1)]),
    (85, [(2, 0.4), (3, 0.6)]),
    (99, [(3, 1.0)]),
]


@pytest.mark.parametrize("step, want", TABLE)
def test_ccl_fixed_table(step, want):
    got = Schedule("ccl", 3, 100, blend=10).at(step)
    assert [k for k, _ in got] == [k for k, _ in want]
    assert [w for _, w in got] == pytest.approx([w for _, w in want])


def test_blend_scales_with_a_short_run():
    # evaluate's 40 steps: starts 0, 16, 24, 32; the 10-step blend is capped at half a stage (4 steps), so
    # every stage, RM_N included, ends at full weight (hand-computed: 32 → 1/4 of RM_3, 35 → RM_3 alone).
    s = Schedule("ccl", 3, 40, blend=10)
    assert s.starts == [0, 16, 24, 32] and s.blend == 4
    assert s.at(16) == pytest.approx([(0, 0.75), (1, 0.25)])
    assert s.at(23) == [(1, 1.0)] and s.at(31) == [(2, 1.0)]
    assert s.at(32) == pytest.approx([(2, 0.75), (3, 0.25)])
    assert s.at(35) == s.at(39) == [(3, 1.0)]
    assert Schedule("ccl", 3, 100, blend=10).blend == 10  # long runs keep the blend asked for


def test_ablation_modes():
    for step in (0, 45, 99):
        assert Schedule("none", 3, 100).at(step) == [(3, 1.0)]
        assert Schedule("global", 3, 100).at(step) == [(0, 1.0)]
    assert Schedule("ccl", 3, 100, blend=0).at(40) == [(1, 1.0)]  # no blend: a hard switch
    with pytest.raises(ValueError, match="unknown"):
        Schedule("cc", 3, 100)


def test_plateau_switch_and_resume_mid_blend():
    s = Schedule("ccl", 2, 1000, blend=4, switch="plateau", window=3, tol=0.01, min_steps=5)
    rewards = [0.1 * i for i in range(6)] + [0.5] * 20  # rising, then flat
    switched_at = None
    for step, r in enumerate(rewards):
        if s.update(step, r) and switched_at is None:
            switched_at = step
    # rises until step 5, flat from 5: the two 3-step window means first agree at step 10 → stage 1 at 11;
    # stage 1 is flat from its start, so after its 10-step minimum (blend + 2 windows) stage 2 starts at 21
    assert switched_at == 10 and s.starts == [0, 11, 21]
    assert s.at(12) == pytest.approx([(0, 0.5), (1, 0.5)])
    # resume mid-blend: a fresh schedule with the saved state gives the same weights
    t = Schedule("ccl", 2, 1000, blend=4, switch="plateau", window=3, tol=0.01, min_steps=5)
    t.load_state_dict(s.state_dict())
    assert t.at(12) == s.at(12) and t.at(14) == [(1, 1.0)]


def test_rm_difficulty_rises():
    d = [rm_difficulty(k, 3) for k in range(4)]
    assert all(a.area > b.area and a.artifact >= b.artifact for a, b in zip(d, d[1:]))
    assert d[-1].area < val_difficulty().area < d[0].area
