"""The pretrained base (train_rm --preset=pretrain → weights/rm_base): the shipped stages load into today's
classes and score as their rm.json says; the pretraining command runs; a run on a base starts from it."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import config
import train_rm
import validation
from rm import load_rm

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "rm_base")
TINY = ["--widths=4,8,8,8", "--crop=32", "--batch=2", "--val_n=4", "--log_every=1"]


def made_by(stage_dir: str) -> dict:
    return json.load(open(os.path.join(stage_dir, "rm.json")))["made_by"]


@pytest.mark.parametrize("k", range(4))
def test_shipped_base_scores_as_recorded(k):
    stage = load_rm(os.path.join(SHIPPED, f"rm_stage{k}"))  # today's FinPercepRM from safetensors + rm.json
    assert stage.stage == k and stage.cfg.widths == train_rm.Config().widths  # what a default run starts from
    with torch.no_grad():
        scores = stage(validation.base_check_set())[0]
    assert scores.tolist() == pytest.approx(
        made_by(os.path.join(SHIPPED, f"rm_stage{k}"))["check_scores"], abs=1e-5
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """The pretraining command, a few steps of each stage on a tiny RM."""
    out = str(tmp_path_factory.mktemp("pretrain"))
    argv = ["--preset=pretrain", "--stage_steps=2,1,1,1", f"--out_dir={out}", *TINY]
    train_rm.main(config.parse(train_rm.Config, argv, train_rm.PRESETS))
    return out


def test_pretrain_command_runs_and_records_provenance(pretrained):
    for k in range(4):
        meta = made_by(os.path.join(pretrained, f"rm_stage{k}"))
        assert {"command", "commit", "wall_s", "heldout", "check_scores"} <= set(meta)
        assert meta["heldout"]["stage"] == k and len(meta["check_scores"]) == 8
    with torch.no_grad():  # the recorded scores are the saved model's
        got = load_rm(os.path.join(pretrained, "rm_stage3"))(validation.base_check_set())[0].tolist()
    assert got == pytest.approx(meta["check_scores"], abs=1e-6)


def test_a_run_on_a_base_starts_from_its_stages(pretrained, tmp_path):
    out = str(tmp_path / "rm")
    argv = [f"--base={pretrained}", "--stage_steps=0,0,0,0", f"--out_dir={out}", *TINY]
    train_rm.main(config.parse(train_rm.Config, argv, train_rm.PRESETS))
    for k in range(4):  # no steps on top: every stage is the base's own (not a fresh growth of RM_{k-1})
        got = load_file(os.path.join(out, f"rm_stage{k}", "model.safetensors"))
        want = load_file(os.path.join(pretrained, f"rm_stage{k}", "model.safetensors"))
        assert got.keys() == want.keys() and all(torch.equal(got[n], want[n]) for n in got), k


def test_base_errors_are_one_line(pretrained, tmp_path):
    with pytest.raises(config.ConfigError, match="widths"):  # the default widths ≠ the tiny base's
        train_rm.main(train_rm.Config(base=pretrained, out_dir=str(tmp_path / "a")))
    with pytest.raises(config.ConfigError, match="no rm_stage0"):
        train_rm.main(train_rm.Config(base=str(tmp_path), out_dir=str(tmp_path / "b")))
    with pytest.raises(config.ConfigError, match="give it steps"):
        train_rm.main(train_rm.Config(base="none", out_dir=str(tmp_path / "c")))
