"""config.py: the --key=value CLI contract (README: every script takes --key=value flags)."""

from dataclasses import dataclass

import pytest

import config
import rundir


@dataclass
class Cfg:
    steps: int = 10  # a test knob
    lr: float = 1e-3
    name: str = "x"
    flag: bool = False
    preset: str = "cpu"


PRESETS = {"cpu": {}, "gpu": {"steps": 1000, "flag": True}}


def test_parse_values_bools_presets():
    c = config.parse(Cfg, ["--steps=5", "--lr=0.5", "--name=abc", "--flag"])
    assert (c.steps, c.lr, c.name, c.flag) == (5, 0.5, "abc", True)
    assert config.parse(Cfg, ["--flag=false"]).flag is False
    g = config.parse(Cfg, ["--preset=gpu", "--steps=7"], PRESETS)
    assert (g.steps, g.flag, g.preset) == (7, True, "gpu")  # explicit flags beat the preset
    c, pos = config.parse(Cfg, ["a.png", "--steps=2", "b.png"], positional_ok=True)
    assert pos == ["a.png", "b.png"] and c.steps == 2


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--stpes=3"], "unknown config key '--stpes'.*--steps"),
        (["--steps=abc"], "not a valid int"),
        (["--steps"], "needs a value"),
        (["--preset=tpu"], "unknown preset"),
        (["x"], "unexpected argument"),
    ],
)
def test_bad_flags_are_one_line_errors(argv, match):
    with pytest.raises(SystemExit, match=match):
        config.parse(Cfg, argv, PRESETS)


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    p = str(tmp_path / "ckpt")
    with rundir.atomic_dir(p) as d:
        open(f"{d}/a", "w").write("1")
    with pytest.raises(RuntimeError):
        with rundir.atomic_dir(p) as d:
            open(f"{d}/a", "w").write("2")
            raise RuntimeError("interrupted")
    assert open(f"{p}/a").read() == "1"
