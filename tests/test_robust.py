"""Nothing lost, nothing cryptic: logs that survive failures and resumes, one-line errors, the NaN policy of
every loop, score / upscale exit codes, and --compile equivalent to eager. Each case was a bug once."""

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import apply
import config
import data
import evaluate
import images
import rm
import scale
import train_rl
import train_rm
from policy import PolicyConfig, load_policy, make_policy, save_policy

TINY_RM = dict(
    base="none", widths=(4, 8, 8, 8), crop=32, batch=2, stage_steps=(2, 2, 2, 2), val_n=4, log_every=1
)
TINY_RL = dict(
    crop=32, sft_steps=2, sft_batch=2, steps=2, batch=1, group=2, sample_steps=2, unet_channels=(8, 16)
)


def rows(d):
    return [json.loads(x) for x in open(os.path.join(d, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished tiny train_rm run and a finished tiny SFT run (train_rl --sft_only)."""
    rm_dir = str(tmp_path_factory.mktemp("rm"))
    train_rm.main(train_rm.Config(out_dir=rm_dir, **TINY_RM))
    sft_dir = str(tmp_path_factory.mktemp("sft"))
    train_rl.main(train_rl.Config(out_dir=sft_dir, sft_only=True, **TINY_RL))
    return rm_dir, sft_dir


def snapshot(d):
    return {f: open(os.path.join(d, f), "rb").read() for f in ("metrics.jsonl", "config.json")}


def test_a_failing_run_leaves_the_previous_run_untouched(runs, tmp_path):
    rm_dir, sft_dir = runs
    before = snapshot(rm_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no usable image"):
        train_rm.main(train_rm.Config(out_dir=rm_dir, data=str(empty), **TINY_RM))
    assert snapshot(rm_dir) == before
    before = snapshot(sft_dir)
    with pytest.raises(SystemExit, match="no reward model"):  # checked before SFT would start
        train_rl.main(train_rl.Config(out_dir=sft_dir, rm_dir=str(tmp_path / "nope"), **TINY_RL))
    assert snapshot(sft_dir) == before
    # a directory holding another script's run is refused, with the run untouched
    before = snapshot(rm_dir)
    with pytest.raises(SystemExit, match="holds a train_rm.py run"):
        train_rl.main(train_rl.Config(out_dir=rm_dir, rm_dir=rm_dir, **TINY_RL))
    assert snapshot(rm_dir) == before


def crash_at(monkeypatch, module, name, n, exc):
    """Make module.name raise `exc` on its n-th call (1-based): an interrupt or a kill mid-run."""
    fn, calls = getattr(module, name), []

    def wrapped(*a, **k):
        calls.append(1)
        if len(calls) == n:
            raise exc
        return fn(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("exc", [KeyboardInterrupt, RuntimeError("killed")])
def test_train_rm_resume_logs_every_step_once(tmp_path, monkeypatch, exc):
    # Ctrl-C (state saved at the interrupted step) and a hard kill (state from the last checkpoint, rows
    # logged after it) both resume to exactly the uninterrupted run's rows and weights.
    ref = str(tmp_path / "ref")
    cfg = train_rm.Config(out_dir=ref, **{**TINY_RM, "stage_steps": (3, 4, 1, 1), "ckpt_every": 2})
    train_rm.main(cfg)
    run = dataclasses.replace(cfg, out_dir=str(tmp_path / "run"))
    with monkeypatch.context() as m:
        # RM_1, step 3: its steps 0–2 are logged, the last checkpoint says step 2 (a kill loses step 2's row)
        crash_at(m, data, "fgr_batch", 7, exc)
        with pytest.raises(SystemExit if exc is KeyboardInterrupt else RuntimeError):
            train_rm.main(run)
    train_rm.main(dataclasses.replace(run, resume=True))
    got, want = rows(run.out_dir), rows(ref)
    assert [(r["stage"], r["step"]) for r in got] == [(r["stage"], r["step"]) for r in want]
    assert got == want  # the same numbers too: the resumed streams are the same streams
    a = load_file(os.path.join(run.out_dir, "rm_stage3", "model.safetensors"))
    b = load_file(os.path.join(ref, "rm_stage3", "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_rm_prefetch_is_the_same_run(runs, tmp_path, monkeypatch):
    # On CUDA train_rm draws each next batch in a thread (scale.prefetch). Forced on here, with --policy,
    # whose L_group goes on drawing from the step's generator after the batch: the same rows and weights.
    _, sft_dir = runs
    pol = dict(policy=os.path.join(sft_dir, "policy_sft"), bank=2, bank_group=2, drifts=(0,))
    off = train_rm.Config(out_dir=str(tmp_path / "off"), **pol, **TINY_RM)
    train_rm.main(off)
    real, used = scale.prefetch, []
    monkeypatch.setattr(scale, "prefetch", lambda fn, steps, on: used.append(on) or real(fn, steps, True))
    on = dataclasses.replace(off, out_dir=str(tmp_path / "on"))
    train_rm.main(on)
    assert used == [False] * 4  # one per stage; on the CPU it would have been off
    assert rows(on.out_dir) == rows(off.out_dir) and "group" in rows(off.out_dir)[0]
    a = load_file(os.path.join(on.out_dir, "rm_stage3", "model.safetensors"))
    b = load_file(os.path.join(off.out_dir, "rm_stage3", "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_train_rl_resume_after_a_kill_logs_every_step_once(runs, tmp_path, monkeypatch, capsys):
    rm_dir, sft_dir = runs
    base = dict(rm_dir=rm_dir, init_policy=os.path.join(sft_dir, "policy_sft"), **{**TINY_RL, "steps": 5})
    ref = train_rl.Config(out_dir=str(tmp_path / "ref"), **base)
    train_rl.main(ref)
    run = dataclasses.replace(ref, out_dir=str(tmp_path / "run"), ckpt_every=2)
    with monkeypatch.context() as m:
        crash_at(m, train_rl, "log_row", 4, RuntimeError("killed"))  # step 3: rows 0–2, state at step 2
        with pytest.raises(RuntimeError):
            train_rl.main(run)
    assert [r["step"] for r in rows(run.out_dir)] == [0, 1, 2]
    train_rl.main(dataclasses.replace(run, resume=True))
    got, want = rows(run.out_dir), rows(ref.out_dir)
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4] and got == want
    # --resume where there is no state: one line, a fresh run
    fresh = dataclasses.replace(ref, out_dir=str(tmp_path / "fresh"), resume=True, steps=1)
    train_rl.main(fresh)
    assert "no state.pt" in capsys.readouterr().out and len(rows(fresh.out_dir)) == 1


def test_bad_flags_are_one_line_errors():
    for cls, flag, say in [
        (train_rl.Config, "--batch=0", "--batch=0 is not allowed"),
        (train_rl.Config, "--crop=60", "multiple of 16"),
        (train_rl.Config, "--crop=7", "multiple of 16"),
        (train_rl.Config, "--lr=-1", "--lr=-1.0 is not allowed"),
        (train_rl.Config, "--eta=2", "--eta=2.0 is not allowed"),
        (train_rl.Config, "--group=1", "--group=1 is not allowed"),
        (train_rm.Config, "--val_n=0", "--val_n=0 is not allowed"),
        (train_rm.Config, "--crop=60", "multiple of 8"),
        (train_rm.Config, "--stage_steps=1,2", "give 4 step counts"),
        (evaluate.Config, "--n_seeds=0", "--n_seeds=0 is not allowed"),
    ]:
        with pytest.raises(SystemExit, match=say):
            config.parse(cls, [flag])
    with pytest.raises(SystemExit, match="--device=tpu unknown"):
        config.pick_device("tpu")


def test_help_prints_the_knobs_and_exits_0(capsys):
    for argv in (["--help"], ["-h"]):
        with pytest.raises(SystemExit) as e:
            config.parse(train_rl.Config, argv, train_rl.PRESETS)
        assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--batch=2" in out and "LR images per step" in out and "--preset=NAME" in out


def test_unreadable_checkpoints_are_one_line_errors(runs, tmp_path):
    rm_dir, sft_dir = runs
    bad = tmp_path / "rm"
    os.system(f"cp -r {rm_dir}/rm_stage1 {bad}")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(SystemExit, match="could not be loaded"):
        rm.load_rm(str(bad))
    (bad / "rm.json").write_text("{not json")
    with pytest.raises(SystemExit, match="not valid JSON"):
        rm.load_rm(str(bad))
    pol = tmp_path / "pol"
    os.system(f"cp -r {sft_dir}/policy_sft {pol}")
    unet_cfg = pol / "unet" / "config.json"
    meta = json.loads(unet_cfg.read_text())
    unet_cfg.write_text(json.dumps({**meta, "block_out_channels": [16, 32]}))  # weights of another shape
    with pytest.raises(SystemExit, match="could not be loaded"):
        load_policy(str(pol))
    unet_cfg.write_text(json.dumps(meta))
    w = pol / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:200])  # truncated
    with pytest.raises(SystemExit, match="could not be loaded"):
        load_policy(str(pol))


def test_nan_runs_stop_nonzero_and_never_save_nan_weights(runs, tmp_path):
    rm_dir, sft_dir = runs
    out = str(tmp_path / "rm")
    with pytest.raises(SystemExit, match="non-finite"):
        train_rm.main(train_rm.Config(out_dir=out, lr=1e10, **TINY_RM))
    for k in range(4):  # whatever was written is finite
        p = os.path.join(out, f"rm_stage{k}", "model.safetensors")
        assert not os.path.exists(p) or all(torch.isfinite(t).all() for t in load_file(p).values())
    with pytest.raises(SystemExit, match="non-finite"):
        train_rl.main(train_rl.Config(out_dir=str(tmp_path / "sft"), sft_only=True, sft_lr=1e10, **TINY_RL))
    assert not os.path.exists(tmp_path / "sft" / "policy_sft")
    # A reward model that gives NaN: RL stops after NAN_STREAK skipped steps and blames the reward.
    nan_rm = tmp_path / "nan_rm"
    os.system(f"cp -r {rm_dir} {nan_rm}")
    for k in range(4):
        p = str(nan_rm / f"rm_stage{k}" / "model.safetensors")
        w = load_file(p)
        save_file(
            {n: torch.full_like(t, float("nan")) if n.startswith("out.") else t for n, t in w.items()}, p
        )
    cfg = train_rl.Config(out_dir=str(tmp_path / "rl"), rm_dir=str(nan_rm), **{**TINY_RL, "steps": 12})
    cfg = dataclasses.replace(cfg, init_policy=os.path.join(sft_dir, "policy_sft"))
    with (
        pytest.warns(UserWarning, match="non-finite"),
        pytest.raises(SystemExit, match="reward is not finite"),
    ):
        train_rl.main(cfg)
    assert not os.path.exists(tmp_path / "rl" / "policy_final")


def test_score_and_upscale_fail_when_nothing_was_read(runs, tmp_path):
    rm_dir, sft_dir = runs
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    cfg = evaluate.Config(out_dir=str(tmp_path / "o"), rm=os.path.join(rm_dir, "rm_stage3"))
    with pytest.raises(SystemExit, match="could be read"):
        apply.score(cfg, [str(bad), str(tmp_path / "missing.png")])
    cfg = dataclasses.replace(cfg, policy=os.path.join(sft_dir, "policy_sft"))
    with pytest.raises(SystemExit, match="could be read"):
        apply.upscale(cfg, [str(bad)])


def test_dark_16_bit_grey_keeps_its_scale(tmp_path):
    Image.fromarray(np.full((4, 4), 200, dtype=np.uint16)).save(tmp_path / "dark.png")
    with Image.open(tmp_path / "dark.png") as im:
        x = images.to_rgb_float(im)
    assert torch.allclose(x, torch.full_like(x, 200 / 65535))


def test_score_tiles_at_the_rms_training_crop(runs, tmp_path, monkeypatch):
    rm_dir, _ = runs
    seen = []
    real = apply.tiled
    monkeypatch.setattr(
        apply, "tiled", lambda fn, img, tile, *a, **k: seen.append(tile) or real(fn, img, tile, *a, **k)
    )
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    apply.score(
        evaluate.Config(out_dir=str(tmp_path), rm=os.path.join(rm_dir, "rm_stage3")),
        [str(tmp_path / "a.png")],
    )
    assert seen == [TINY_RM["crop"]]  # the tiny RM was trained on 32-px crops (rm.json "crop")


def test_compile_is_equivalent_to_eager(runs, tmp_path):
    # --compile on CPU captures the same graphs (dynamo, backend "eager"): two RL steps give the same log.
    rm_dir, sft_dir = runs
    base = dict(rm_dir=rm_dir, init_policy=os.path.join(sft_dir, "policy_sft"), **TINY_RL)
    train_rl.main(train_rl.Config(out_dir=str(tmp_path / "eager"), **base))
    torch._dynamo.reset()
    train_rl.main(train_rl.Config(out_dir=str(tmp_path / "compiled"), compile=True, **base))
    for a, b in zip(rows(tmp_path / "eager"), rows(tmp_path / "compiled")):
        for k in ("loss", "reward", "reward_final", "gold", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    # and a compiled SFT policy saves like an eager one (in-place compile keeps the state_dict keys)
    pol = make_policy(PolicyConfig(block_out_channels=(8, 16)))
    scale.compile_module(pol.unet, torch.device("cpu"), True)
    save_policy(pol, str(tmp_path / "p"))
    assert set(load_policy(str(tmp_path / "p")).unet.state_dict()) == set(pol.unet.state_dict())
