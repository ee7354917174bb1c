"""bench.py: a tiny in-process run of the real loop prints its rows and writes finite numbers, and the call
counter sees exactly the network calls train_rl.main makes (counted by hand below)."""

import json
import math
import os
import re

import pytest
import torch

import bench

# Tiny shapes: HR 32² (LR 8²), B = 1 LR image, G = 2 samples, K = 2 DDIM steps, one timed step of each kind.
TINY = dict(crop=32, batch=1, group=2, sample_steps=2, unet_channels=(8, 16), rm_widths=(4, 8, 8, 8))


def numbers(obj):
    """Every int/float inside a JSON-like object (bools are not numbers here)."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    return [obj] if isinstance(obj, int | float) and not isinstance(obj, bool) else []


def test_main_prints_rows_and_writes_json(tmp_path, capsys):
    cfg = bench.Config(out_dir=str(tmp_path), presets="cpu,gpu", device="cpu", steps=2, repeats=1, **TINY)
    out = bench.main(cfg)
    lines = capsys.readouterr().out.splitlines()
    eff = [x for x in lines if re.fullmatch(r"efficiency (pg|refl) cpu \d+\.\d+", x)]
    assert [x.split()[1] for x in eff] == ["pg", "refl"]  # one line per algorithm, exactly that form
    assert "gpu preset skipped: needs CUDA" in "\n".join(lines)  # --device=cpu: never a CUDA device
    res = json.load(open(os.path.join(out, "bench.json")))
    assert "skipped" in res["gpu"]
    cpu = res["cpu"]
    for key in ("pg", "refl", "model"):
        vals = numbers(cpu[key])
        assert vals and all(math.isfinite(v) and v >= 0 for v in vals), key
    for kind in ("pg", "refl"):  # the printed line is the JSON's number, rounded
        assert f"efficiency {kind} cpu {cpu[kind]['efficiency']:.2f}" in lines
        assert 0 < cpu[kind]["data_share"] < 1 and len(cpu[kind]["efficiency_per_step"]) == 2
    # The work of a pg step at ccl stage 0, counted by hand from train_rl.main: K = 2 rollout forwards at
    # B·G = 2 (x_t + up(LR): 6 channels); the one step above the σ floor (the last of K = 2 is never trained)
    # as a forward+backward, plus the KL anchor's no-grad forward (beta_kl > 0) at the same shape; RM_0's
    # reward, then the judges: RM_3's reward_final and RM_0's reward0, one forward each.
    assert cpu["pg"]["work"] == {
        "rm0 fwd@2×32²": 2, "rm3 fwd@2×32²": 1, "unet fwd+bwd@2×32²": 1, "unet fwd@2×32²": 3,
    }  # fmt: skip
    # refl at B = 1: `stop` no-grad forwards (stop in K − refl_last … K − 1: 0 or 1 here), the step with grad,
    # RM_0's reward backpropagated into the image, RM_3 and RM_0 logged, and the supervised regulariser (−1:
    # refl's own weight 3), one more UNet forward+backward at the batch.
    work = dict(cpu["refl"]["work"])
    assert work.pop("unet fwd@1×32²", 0) in (0, 1)
    assert work == {"rm0 fwd+bwd@1×32²": 1, "rm0 fwd@1×32²": 1, "rm3 fwd@1×32²": 1, "unet fwd+bwd@1×32²": 2}


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA, --device=auto runs the gpu preset there")
def test_auto_device_without_cuda_skips_the_gpu_preset(tmp_path, capsys):
    bench.main(bench.Config(out_dir=str(tmp_path), presets="gpu"))  # --device=auto, the default
    assert "gpu preset skipped: needs CUDA" in capsys.readouterr().out
    assert "skipped" in json.load(open(os.path.join(tmp_path, "bench.json")))["gpu"]


def test_unknown_preset_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="--presets=tpu"):
        bench.main(bench.Config(out_dir=str(tmp_path), presets="tpu"))
