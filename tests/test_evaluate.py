"""evaluate.py, report.py, apply.py: the comparison's arithmetic on hand examples, run reuse, a tiny
end-to-end main(cfg) that writes report.md and every figure, score / upscale on awkward images, the pyiqa
skip path."""

import dataclasses
import functools
import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import apply
import config
import evaluate
import images
import report
import validation
from policy import PolicyConfig, make_policy, save_policy
from rm import FinPercepRM, RMConfig, save_rm

# The same tiny sizes as tests/test_rl.py's TINY_RM / TINY_RL, passed through evaluate's rm_args / rl_args.
TINY = dict(
    arm_steps=2,
    sft_steps=2,
    eval_n=4,
    eval_crop=32,
    n_show=2,
    rm_steps=(2, 2, 2, 2),
    rm_args="--base=none --widths=4,8,8,8 --crop=32 --batch=2 --val_n=4 --log_every=1",
    rl_args="--crop=32 --sft_batch=2 --batch=1 --group=2 --sample_steps=2 --unet_channels=8,16 --blend=1",
    n_seeds=2,  # the smallest count with a standard error
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine two OpenMP threads spin-wait for
    each other: this file took 130 s with 2 threads and 15 s with 1 under the same load."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------
# The arithmetic, by hand


def test_hacking_gap_by_hand():
    # SFT proxy [0, 1, 2]: mean 1, sample std 1; the arm's proxy [2, 3, 4] is +2 std.
    # SFT gold quality [0.5, 0.7, 0.9]: std 0.2; the arm's [0.4, 0.6, 0.8] is −0.1 / 0.2 = −0.5 std.
    t = torch.tensor
    gap, dp, dq = report.hacking_gap(t([2.0, 3, 4]), t([0.0, 1, 2]), t([0.4, 0.6, 0.8]), t([0.5, 0.7, 0.9]))
    assert (dp, dq) == pytest.approx((2.0, -0.5)) and gap == pytest.approx(2.5)
    # Proxy and gold improving together by the same number of stds: no hacking.
    same = torch.tensor([0.0, 1, 2])
    assert report.hacking_gap(same + 1, same, same + 1, same)[0] == pytest.approx(0.0)


def test_instability_by_hand():
    # 15 rows: windows of 5 with means 1, 3, 2 → drops 1→3 (none), 3→2 = 1; tail = last ceil(0.2·15) = 3 rows.
    v = [1.0] * 5 + [3.0] * 5 + [2.0, 2.0, 2.0, 1.0, 3.0]
    tail_std, drop = report.instability(v)
    assert tail_std == pytest.approx(float(torch.tensor([2.0, 1.0, 3.0]).std()))  # sample std = 1
    assert drop == pytest.approx(1.0)
    assert report.instability([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10])[1] == 0.0  # a rising curve never drops
    tail_std, drop = report.instability([0.5, 0.7])  # too short for two windows
    assert tail_std == pytest.approx(math.sqrt(0.02)) and math.isnan(drop)
    assert torch.allclose(report.trailing_mean(torch.tensor([2.0, 4, 6, 8]), 2), torch.tensor([2.0, 3, 5, 7]))


def test_noise_rule_over_seeds_by_hand():
    # Seeds [1, 2, 3]: mean 2, sample std 1, SE 1/√3; against a fixed policy (SE 0) the difference's SE too.
    m, se = evaluate.mean_se([1.0, 2.0, 3.0])
    assert m == pytest.approx(2.0) and se == pytest.approx(1 / math.sqrt(3))
    assert evaluate.mean_se([5.0], trained=False) == (5.0, 0.0)  # SFT / bicubic: no seed noise
    assert math.isnan(evaluate.mean_se([5.0])[1])  # one trained seed: unknown SE
    d, se = evaluate.compare([1.0, 2.0, 3.0], [0.5], b_trained=False)
    assert d == pytest.approx(1.5) and se == pytest.approx(1 / math.sqrt(3))
    d, se = evaluate.compare([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])  # SE² adds: 1/3 + 4/3
    assert d == pytest.approx(-2.0) and se == pytest.approx(math.sqrt(5 / 3))
    assert evaluate.outcome(1.2, 0.5) == "reproduced"  # > 2 SE
    assert evaluate.outcome(-1.2, 0.5) == "not reproduced"
    assert evaluate.outcome(0.9, 0.5) == "within noise"
    assert evaluate.outcome(5.0, math.nan) == "within noise"  # one seed: no verdict either way


def test_verdicts_by_hand():
    r = {
        "sft": {"gold": [0.20], "proxy0": [0.5]},
        "placebo": {"gold": [0.21, 0.22, 0.20], "proxy0": [0.50, 0.51, 0.49]},
        "global": {"gold": [0.23, 0.24, 0.22], "proxy0": [0.60, 0.61, 0.59]},  # proxy up, gold worse: hacking
        "oracle_map": {"gold": [0.17, 0.18, 0.16]},
    }
    v = evaluate.verdicts(r, trained={"placebo", "global", "oracle_map"})
    assert v["RL works: the oracle (gold map) beats SFT on gold"][0] == "reproduced"
    assert v[evaluate.HACK_CLAIM][0] == "reproduced"
    r["global"]["gold"] = [0.15, 0.16, 0.14]  # the proxy and gold both improve: no hacking
    assert evaluate.verdicts(r, {"placebo", "global"})[evaluate.HACK_CLAIM][0] == "not reproduced"
    r["global"]["proxy0"] = [0.50, 0.52, 0.48]  # the proxy did not move beyond noise
    r["global"]["gold"] = [0.23, 0.24, 0.22]
    assert evaluate.verdicts(r, {"placebo", "global"})[evaluate.HACK_CLAIM][0] == "within noise"
    assert len(v) == 2  # claims whose arms did not run are not decided
    # a second algorithm's arms carry its prefix, and its claims its tag; SFT is shared
    r.update({f"refl_{a}": r[a] for a in ("placebo", "global", "oracle_map")})
    v = evaluate.verdicts(r, {"placebo", "global", "refl_placebo", "refl_global"}, ("", "refl_"))
    assert v["refl: " + evaluate.HACK_CLAIM] == v[evaluate.HACK_CLAIM] and len(v) == 4


def test_run_once_reuses_only_finished_matching_fresh_runs(tmp_path):
    calls = []

    @dataclasses.dataclass
    class C:
        out_dir: str
        steps: int = 2
        widths: tuple = (4, 8)

    def fake_main(cfg):  # what every script does: save config.json, write its final checkpoint
        calls.append(cfg.steps)
        os.makedirs(cfg.out_dir, exist_ok=True)
        json.dump(dataclasses.asdict(cfg), open(os.path.join(cfg.out_dir, "config.json"), "w"))
        open(os.path.join(cfg.out_dir, "final"), "w").close()

    cfg, final, up = C(str(tmp_path / "run")), str(tmp_path / "run" / "final"), str(tmp_path / "input")
    open(up, "w").close()
    os.utime(up, (1, 1))  # an old input
    log = []
    report.run_once(fake_main, cfg, final, [up], log)
    report.run_once(fake_main, cfg, final, [up], log)  # same config (tuple vs JSON list too): reused
    assert calls == [2] and [s for _, s, _ in log] == ["trained", "reused"]
    report.run_once(fake_main, dataclasses.replace(cfg, steps=3), final, [up], log)  # config changed
    os.utime(up, (2e10, 2e10))  # the input is newer than the run's checkpoint: stale
    report.run_once(fake_main, dataclasses.replace(cfg, steps=3), final, [up], log)
    os.remove(final)  # an unfinished run
    report.run_once(fake_main, dataclasses.replace(cfg, steps=3), final, [], log)
    assert calls == [2, 3, 3, 3]


def test_pyiqa_skip_path(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyiqa", None)  # `import pyiqa` raises ImportError, as on this machine
    iqa, msg = report.load_iqa(torch.device("cpu"))
    assert iqa is None and "skipped" in msg and "skipped" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------
# The main job, end to end on tiny models


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("eval"))
    with pytest.MonkeyPatch.context() as mp:  # SLIC superpixels of the photos once, not once per run
        mp.setattr(images, "load_pool", functools.lru_cache(None)(images.load_pool))
        mp.setattr(
            validation, "psnr_table", lambda *a, **k: {}
        )  # SFT's printout: tested in test_rl, slow here
        assert evaluate.main(evaluate.Config(out_dir=out, **TINY)) == out
    return out


def test_controls_all_adds_the_global_ceiling_and_the_online_refresh():
    default = [name for name, _, _ in evaluate.arm_list(evaluate.Config())]
    every = {name: kw for name, _, kw in evaluate.arm_list(evaluate.Config(controls="all"))}
    assert set(every) - set(default) == {
        "oracle_score",
        "ccl_coevolve",
        "refl_oracle_score",
        "refl_ccl_coevolve",
    }
    assert [a for a in default if not a.startswith("refl_")] == list(
        evaluate.ARMS
    )  # pg's arms keep their names
    alone = evaluate.arm_list(config.parse(evaluate.Config, ["--algos=refl"]))  # one algorithm: plain names
    assert [(n, algo) for n, algo, _ in alone] == [(a, "refl") for a in evaluate.ARMS]
    with pytest.raises(config.ConfigError, match="--algos"):
        config.parse(evaluate.Config, ["--algos=pg,pg"])
    assert every["ccl_coevolve"] == {"reward": "rm", "curriculum": "ccl", "coevolve": True}
    assert every["oracle_score"] == {"reward": "gold", "curriculum": "global"}


def test_main_writes_report_results_and_figures(eval_dir):
    for f in (
        "report.md",
        "results.json",
        "curves.png",
        "samples.png",
        "hacked.png",
        "rm_maps.png",
        "config.json",
    ):
        assert os.path.isfile(os.path.join(eval_dir, f)), f
    arms = ("placebo", "global", "none", "ccl", "oracle_map")  # the default arms (--controls=default)
    for run in (
        "sft/policy_sft",
        "rm/rm_stage3",
        *(f"rl_{algo}_{a}_s{s}/policy_final" for algo in ("pg", "refl") for a in arms for s in (0, 1)),
    ):
        assert os.path.isdir(os.path.join(eval_dir, "work", run)), run
    # results.json, the contract: every RL arm has one value per seed, bicubic and SFT one; verdicts named
    res = json.load(open(os.path.join(eval_dir, "results.json")))
    assert res["n_seeds"] == 2 and res["wall_s"] > 0
    assert set(res["arms"]) == {"bicubic", "sft", *arms, *(f"refl_{a}" for a in arms)}  # pg's plain, ReFL's
    for name, m in res["arms"].items():
        for key in ("gold", "psnr", "ssim", "proxy0", "proxyN"):
            assert len(m[key]) == (1 if name in ("bicubic", "sft") else 2), (name, key)
    assert set(res["verdicts"].values()) <= {"reproduced", "not reproduced", "within noise"}
    claims = res["verdicts"]
    assert evaluate.HACK_CLAIM in claims and "RM_N + CCL beats the global reward on gold" in claims
    assert "RL works: the oracle (gold map) beats SFT on gold" in claims
    assert "refl: " + evaluate.HACK_CLAIM in claims and "refl: RM_N + CCL beats the placebo on gold" in claims
    assert json.load(open(os.path.join(eval_dir, "work", "rl_refl_ccl_s1", "config.json")))["algo"] == "refl"
    text = open(os.path.join(eval_dir, "report.md")).read()
    for arm in ("| sft |", "| placebo |", "| oracle_map |", "| ccl |", "| RM_0 |", "| RM_3 |", "skipped"):
        assert arm in text, arm
    assert "![training curves](curves.png)" in text and "standard errors" in text
    # The arms were trained with the explicit budget, from the SFT policy, on the RM trained on its samples;
    # each reward source as ARMS says, and the policies record the K and eta they sample with.
    acfg = json.load(open(os.path.join(eval_dir, "work", "rl_pg_oracle_map_s1", "config.json")))
    assert acfg["steps"] == 2 and acfg["init_policy"].endswith("sft/policy_sft") and acfg["seed"] == 1
    assert (acfg["reward"], acfg["curriculum"]) == ("gold", "none")
    pol = json.load(open(os.path.join(eval_dir, "work", "rl_pg_ccl_s0", "policy_final", "policy.json")))
    assert (pol["steps"], pol["eta"]) == (acfg["sample_steps"], acfg["eta"])
    rcfg = json.load(open(os.path.join(eval_dir, "work", "rm", "config.json")))
    assert rcfg["policy"].endswith("policy_sft") and rcfg["stage_steps"] == [2, 2, 2, 2]


# ----------------------------------------------------------------------------------------------------
# The user commands


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    for k in (0, 1):
        save_rm(FinPercepRM(RMConfig(widths=(4, 8, 8, 8), stage=k)), str(d / f"rm_stage{k}"))
    save_policy(
        make_policy(PolicyConfig(block_out_channels=(8, 16), residual_scale=10.0, steps=2)), str(d / "pol")
    )
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (29, 37, 3), dtype=np.uint8)).save(d / "odd.png")  # 37×29 RGB
    Image.fromarray(rng.integers(0, 255, (11, 13), dtype=np.uint8), "L").save(d / "gray.png")  # 13×11 grey
    Image.fromarray(rng.integers(0, 65535, (9, 10), dtype=np.uint16)).save(d / "deep.png")  # 16-bit grey
    Image.fromarray(rng.integers(0, 255, (7, 5, 4), dtype=np.uint8), "RGBA").save(d / "alpha.png")
    (d / "bad.png").write_bytes(b"not an image")
    return d


def cfg_for(tmp_path, **kw):
    return evaluate.Config(out_dir=str(tmp_path), **kw)


def test_score_any_size_grey_tiled_and_unreadable(ckpts, tmp_path, capsys):
    imgs = [str(ckpts / f) for f in ("odd.png", "gray.png", "deep.png", "alpha.png", "bad.png")]
    cfg = cfg_for(tmp_path, rm=str(ckpts / "rm_stage1"), tile=32)  # 37×29 → pad 40×32 → 2 overlapping tiles
    res = apply.score(cfg, imgs)
    assert [os.path.basename(p) for p, _ in res] == ["odd.png", "gray.png", "deep.png", "alpha.png"]
    assert all(0 <= s <= 1 for _, s in res) and "skipped" in capsys.readouterr().out
    assert Image.open(tmp_path / "odd_dmap.png").size == (37, 29)  # cropped back after padding
    assert Image.open(tmp_path / "alpha_dmap.png").size == (5, 7)  # smaller than the stride: replicate pad
    # Without tiling the same image gets a similar, valid score; RM_0 (no map) scores and writes no overlay.
    whole = apply.score(cfg_for(tmp_path / "w", rm=str(ckpts / "rm_stage1")), imgs[:1])[0][1]
    assert abs(whole - res[0][1]) < 0.2
    assert len(apply.score(cfg_for(tmp_path / "s0", rm=str(ckpts / "rm_stage0")), imgs[:2])) == 2
    assert not os.path.exists(tmp_path / "s0" / "odd_dmap.png")


def test_upscale_any_size_grey_and_tiled(ckpts, tmp_path):
    imgs = [str(ckpts / f) for f in ("odd.png", "gray.png", "bad.png")]
    out = evaluate.cli(["upscale", *imgs, f"--policy={ckpts / 'pol'}", f"--out_dir={tmp_path}", "--tile=8"])
    assert [Image.open(p).size for p in out] == [(148, 116), (52, 44)] and Image.open(out[1]).mode == "RGB"


def test_tiled_blend_is_exact_for_a_pointwise_fn():
    # A pointwise fn (×4 nearest upsampling) must come out of pad → tiles → blend → crop unchanged.
    x = torch.rand(1, 3, 13, 11)
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731
    for tile, mult in ((4, 1), (8, 2), (64, 8)):
        assert torch.allclose(apply.tiled(up, x, tile, mult, 4, batch=3), up(x), atol=1e-6), (tile, mult)


def test_wrong_or_missing_checkpoint_is_one_line_error(ckpts, tmp_path):
    img = [str(ckpts / "odd.png")]
    with pytest.raises(SystemExit, match="python train_rm.py"):
        apply.score(cfg_for(tmp_path, rm=str(ckpts / "pol")), img)  # a policy is not an RM
    with pytest.raises(SystemExit, match="train_rl.py --sft_only"):
        apply.upscale(cfg_for(tmp_path, policy=str(ckpts / "rm_stage1")), img)
    with pytest.raises(SystemExit, match="--rm=DIR"):
        apply.score(cfg_for(tmp_path), img)
    with pytest.raises(SystemExit, match="unknown command"):
        evaluate.cli(["scroe", *img])
