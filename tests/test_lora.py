"""lora.py: LoRA adapters on the policy's UNet (--lora_rank). On the tiny pixel policy (a UNet2DModel) and a
tiny UNet2DConditionModel (the SD ×4 upscaler's kind): the adapted model starts equal to its base, only the
adapters train (SFT, pg, ReFL), a LoRA directory holds the adapters alone and loads back to the same samples,
the merged export gives the adapted model's outputs, and an interrupted LoRA run resumes to the same run."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from diffusers import UNet2DConditionModel
from test_byo_ldm import ldm_dir  # noqa: F401  (a fixture: its tiny LDM SR pipeline)
from test_rl import TINY_RL
from test_robust import crash_at, rows

import config
import data
import lora
import train_rl
from config import ConfigError
from policy import PolicyConfig, load_policy, save_policy
from rm import FinPercepRM, RMConfig, save_rm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def peft():
    return pytest.importorskip("peft")  # requirements-models.txt: without it these tests skip


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """Four untrained tiny RM stages and a tiny SFT policy (2 steps: its zero-initialised conv_out has moved,
    so gradients reach the inner layers, where the adapters are)."""
    out = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    for k in range(4):
        save_rm(FinPercepRM(RMConfig(widths=(4, 8, 8, 8), stage=k)), str(out / "rm" / f"rm_stage{k}"))
    train_rl.main(train_rl.Config(out_dir=str(out / "sft"), sft_only=True, **TINY_RL))
    return str(out / "rm"), str(out / "sft" / "policy_sft")


def adapted_policy(base, seed=1):
    """The base policy with rank-4 adapters whose B is random (as after training: B = 0 adds nothing)."""
    policy = load_policy(base)
    lora.adapt(policy, 4, base)
    with torch.no_grad():
        for name, p in policy.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen(seed)))
    return policy.eval()


# ----------------------------------------------------------------------------------------------------
# (1) equal to the base before any step, (2) trainable = adapters: the pixel policy's UNet2DModel


def test_adapted_pixel_policy_starts_equal_and_only_adapters_train(peft, dirs):
    _, base = dirs
    policy, plain = load_policy(base), load_policy(base)
    params = lora.adapt(policy, 4, base)
    lr = torch.rand(2, 3, 8, 8, generator=gen(0))
    assert torch.equal(policy.sample(lr, generator=gen(1)), plain.sample(lr, generator=gen(1)))  # exact
    trainable, adapters, total = lora.count(policy.unet)
    print(f"pixel UNet2DModel (8, 16): {trainable} trainable, {adapters} adapter, {total} in all")
    assert trainable == adapters == sum(p.numel() for p in params) > 0
    assert total - adapters == sum(p.numel() for p in plain.unet.parameters())  # the base, all frozen
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in policy.unet.named_parameters() if "lora_" in n}
    assert adapted and all(n.endswith(("conv1", "conv2")) for n in adapted)  # this UNet has no attention
    assert len(adapted) == sum(n.endswith(("conv1", "conv2")) for n, _ in plain.unet.named_modules())


# ----------------------------------------------------------------------------------------------------
# The same on a tiny UNet2DConditionModel, through lora.py alone: a stand-in holds what lora.py touches


class CondPolicy(torch.nn.Module):
    """The least of a policy that lora.py uses: .unet, .cfg (K, eta), .to, .eval."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.cfg = unet, PolicyConfig()

    def out(self, x, t, text):
        return self.unet(x, t, encoder_hidden_states=text).sample


def load_cond(path, device=None):
    return CondPolicy(UNet2DConditionModel.from_pretrained(os.path.join(path, "unet")))


@pytest.fixture(scope="module")
def cond_base(tmp_path_factory):
    """A tiny UNet2DConditionModel (cross-attention in one level, as the SD ×4 upscaler's) saved as unet/."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=7, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=4, norm_num_groups=4,
    )  # fmt: skip
    out = str(tmp_path_factory.mktemp("cond") / "base")
    unet.save_pretrained(os.path.join(out, "unet"))
    return out


def test_unet2dcondition_adapters_train_alone_save_load_and_merge(peft, cond_base, tmp_path):
    policy, plain = load_cond(cond_base), load_cond(cond_base)
    x, text = torch.randn(2, 7, 8, 8, generator=gen(0)), torch.randn(2, 3, 8, generator=gen(1))
    params = lora.adapt(policy, 4, cond_base)
    assert torch.equal(policy.out(x, 10, text), plain.out(x, 10, text))  # (1) exact, before any step
    trainable, adapters, total = lora.count(policy.unet)
    print(f"UNet2DConditionModel (8, 16): {trainable} trainable, {adapters} adapter, {total} in all")
    assert trainable == adapters == sum(p.numel() for p in params) > 0  # (2)
    adapted = {
        n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n, _ in policy.unet.named_parameters() if "lora_" in n
    }
    assert adapted == {"to_q", "to_k", "to_v", "0", "conv1", "conv2"}  # "0": to_out.0
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(2):  # (3) two steps of a loss through every layer: the base does not move
        opt.zero_grad()
        policy.out(x, 10, text).square().mean().backward()
        opt.step()
    for name, p in policy.unet.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, plain.unet.get_parameter(name.replace(".base_layer", ""))), name
    want = policy.out(x, 10, text).detach()
    assert not torch.equal(want, plain.out(x, 10, text))
    lora.save(policy, str(tmp_path / "adapters"))  # (4) adapters alone, back on top of the base
    assert sorted(os.listdir(tmp_path / "adapters")) == ["adapter_model.safetensors", "policy.json"]
    loaded = lora.load(str(tmp_path / "adapters"), load_cond)
    assert torch.equal(loaded.out(x, 10, text), want)
    lora.export(str(tmp_path / "adapters"), str(tmp_path / "merged"))  # (5) merged: a plain diffusers UNet
    merged = load_cond(str(tmp_path / "merged"))
    assert not any("lora" in n for n, _ in merged.unet.named_parameters())
    torch.testing.assert_close(merged.out(x, 10, text), want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------
# (3) train_rl.main with --lora_rank=4: SFT, pg and ReFL, two steps each; the base never moves


def unet_weights(state: dict) -> tuple:
    """(base, adapters) of a UNet state dict: the base under its plain diffusers names."""
    base = {k.replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k}
    return base, {k: v for k, v in state.items() if "lora_" in k}


def test_train_rl_with_lora_trains_the_adapters_alone(peft, dirs, tmp_path):
    rm_dir, base = dirs
    run = lambda out, **kw: train_rl.main(  # noqa: E731
        train_rl.Config(
            out_dir=str(tmp_path / out), rm_dir=rm_dir, lora_rank=4, ckpt_every=1, **TINY_RL, **kw
        )
    )
    run("sft", init_policy=base, sft_only=True)
    lora_sft = str(tmp_path / "sft" / "policy_sft")
    run("pg", init_policy=lora_sft)  # LoRA RL of a LoRA SFT: the SFT adapters are merged, new ones on top
    run("refl", init_policy=base, algo="refl")
    merged_sft = load_policy(lora_sft)
    lora.merge(merged_sft.unet)
    full = os.path.getsize(os.path.join(base, "unet", "diffusion_pytorch_model.safetensors"))
    for out, start in (("sft", load_policy(base)), ("pg", merged_sft), ("refl", load_policy(base))):
        state = torch.load(tmp_path / out / "state.pt", weights_only=True)  # the weights after the last step
        assert state["step"] == 2
        trained, adapters = unet_weights(state["unet"])
        assert set(trained) == set(start.unet.state_dict())
        assert all(torch.equal(v, start.unet.state_dict()[k]) for k, v in trained.items()), out  # base: equal
        assert any(v.abs().max() > 0 for k, v in adapters.items() if "lora_B" in k), out  # adapters: moved
        saved = tmp_path / out / ("policy_sft" if out == "sft" else "policy_final")
        assert sorted(os.listdir(saved)) == ["adapter_model.safetensors", "policy.json"]
        small = os.path.getsize(saved / "adapter_model.safetensors")
        print(f"{out}: adapters {small:,} bytes, the full UNet {full:,} bytes")
        assert small < full / 2  # ≪ at real widths; the tiny (8, 16) UNet is so narrow that rank 4 is a lot
    assert (
        json.loads((tmp_path / "pg" / "policy_final" / "policy.json").read_text())["lora"]["base"] == lora_sft
    )
    rows_ = [json.loads(x) for x in open(tmp_path / "refl" / "metrics.jsonl")]
    assert [r["step"] for r in rows_] == [0, 1]


# ----------------------------------------------------------------------------------------------------
# (4) a LoRA directory: adapters only, loads back on top of its base to the same samples; (5) merged export


def test_lora_policy_saves_adapters_alone_and_loads_back_to_the_same_samples(peft, dirs, tmp_path):
    _, base = dirs
    policy = adapted_policy(base)
    path = str(tmp_path / "lora")
    save_policy(policy, path)
    assert sorted(os.listdir(path)) == ["adapter_model.safetensors", "policy.json"]
    meta = json.loads(open(os.path.join(path, "policy.json")).read())
    assert meta["kind"] == "policy" and meta["lora"] == lora.spec(4, base)
    lr = torch.rand(2, 3, 8, 8, generator=gen(2))
    want = policy.sample(lr, generator=gen(3))
    assert not torch.equal(want, load_policy(base).sample(lr, generator=gen(3)))  # the adapters matter
    assert torch.equal(load_policy(path).sample(lr, generator=gen(3)), want)  # exact: the same network
    gone = tmp_path / "gone"  # adapters whose base was moved away: one line
    os.makedirs(gone)
    os.system(f"cp {path}/adapter_model.safetensors {gone}/")
    (gone / "policy.json").write_text(json.dumps({**meta, "lora": {**meta["lora"], "base": "/nowhere"}}))
    with pytest.raises(ConfigError, match="over '/nowhere', which does not exist"):
        load_policy(str(gone))
    with pytest.raises(ConfigError, match="is not a LoRA policy directory"):  # nothing to merge
        lora.export(base, str(tmp_path / "merged"))


def test_merged_export_gives_the_adapted_samples(peft, dirs, tmp_path):
    # The CLI in a fresh interpreter: the export is built from the files alone. Merging W + B·A changes only
    # the rounding of float32 sums: the samples agree to 1e-5 (images in [0, 1]; 1/255 = 3.9e-3).
    _, base = dirs
    policy = adapted_policy(base)
    path, out = str(tmp_path / "lora"), str(tmp_path / "merged")
    save_policy(policy, path)
    cmd = [sys.executable, "lora.py", "merge", path, out]
    res = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert res.returncode == 0 and "wrote" in res.stdout, res.stderr[-500:]
    assert sorted(os.listdir(out)) == ["policy.json", "scheduler", "unet"]  # as save_policy writes a policy
    merged = load_policy(out)
    assert not lora.adapted(merged.unet) and not any("lora" in n for n, _ in merged.unet.named_parameters())
    lr = torch.rand(2, 3, 8, 8, generator=gen(4))
    want = policy.sample(lr, generator=gen(5))
    got = merged.sample(lr, generator=gen(5))
    print(f"merged vs adapted: max |Δ| = {(got - want).abs().max():.2e}")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------
# (6) resume: an interrupted LoRA run continues to exactly the uninterrupted run (RL); SFT resumes and
# continues (its sft_loss draws t and noise from the global RNG, reseeded on resume: with or without LoRA, the
# resumed SFT is a different draw after the resumed step, not the same run)


@pytest.mark.parametrize("phase", ["rl", "sft"])
def test_lora_resume_after_a_kill(peft, dirs, tmp_path, monkeypatch, capsys, phase):
    rm_dir, base = dirs
    steps = {"sft_steps": 5} if phase == "sft" else {"steps": 5}
    kw = dict(rm_dir=rm_dir, init_policy=base, lora_rank=4, sft_only=phase == "sft", **{**TINY_RL, **steps})
    ref = train_rl.Config(out_dir=str(tmp_path / "ref"), **kw)
    train_rl.main(ref)
    run = dataclasses.replace(ref, out_dir=str(tmp_path / "run"), ckpt_every=2)
    with monkeypatch.context() as m:  # killed in step 3: rows 0–2 logged, the state says step 2
        where = (data, "training_pairs") if phase == "sft" else (train_rl, "log_row")
        crash_at(m, *where, 4, RuntimeError("killed"))
        with pytest.raises(RuntimeError):
            train_rl.main(run)
    capsys.readouterr()
    train_rl.main(dataclasses.replace(run, resume=True))
    assert f"resuming {phase.upper()} at step 2" in capsys.readouterr().out
    got, want = rows(run.out_dir), rows(ref.out_dir)
    final = os.path.join(run.out_dir, "policy_sft" if phase == "sft" else "policy_final")
    assert sorted(os.listdir(final)) == ["adapter_model.safetensors", "policy.json"]
    if phase == "sft":  # the same steps logged once each; step 0 ran before the kill, so it is the same
        assert [r["step"] for r in got] == [r["step"] for r in want] and got[0] == want[0]
        return
    assert [r["step"] for r in got] == [0, 1, 2, 3, 4] and got == want  # every number the same
    lr = torch.rand(1, 3, 8, 8, generator=gen(6))
    a, b = (
        load_policy(os.path.join(d, "policy_final")).sample(lr, generator=gen(7))
        for d in (run.out_dir, ref.out_dir)
    )
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------
# Without peft: rank 0 never imports it, and --lora_rank > 0 is one line naming requirements-models.txt


def test_without_peft_rank_0_runs_and_rank_4_is_one_line(dirs):
    _, base = dirs
    code = (
        "import sys; sys.modules['peft'] = None\n"  # as if peft were not installed
        "import config, train_rl, policy\n"
        f"p = policy.load_policy({base!r}); policy.save_policy(p, {base + '_copy'!r})\n"
        "try:\n    config.parse(train_rl.Config, ['--lora_rank=4'])\nexcept SystemExit as e:\n    print(e)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-800:]
    assert (
        res.stdout.strip() == "error: --lora_rank=4: LoRA needs peft: pip install -r requirements-models.txt"
    )
    with pytest.raises(SystemExit, match="--lora_rank=-1 is not allowed"):
        config.parse(train_rl.Config, ["--lora_rank=-1"])


# ----------------------------------------------------------------------------------------------------
# The LDM SR policy (a UNet2DModel in VQ latent space): the same round trip, and the merged export is again
# an LDMSuperResolutionPipeline directory


def test_lora_on_the_ldm_policy_round_trips_and_exports_a_pipeline(peft, request, tmp_path):
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
        LDMSuperResolutionPipeline,
    )

    ldm = request.getfixturevalue("ldm_dir")  # test_byo_ldm's tiny pipeline, saved bare (no policy.json)
    policy = adapted_policy(ldm)
    path, out = str(tmp_path / "lora"), str(tmp_path / "merged")
    save_policy(policy, path)
    assert sorted(os.listdir(path)) == ["adapter_model.safetensors", "policy.json"]
    lr = torch.rand(1, 3, 8, 8, generator=gen(8))
    want = policy.sample(lr, generator=gen(9))
    loaded = load_policy(path)
    assert loaded.cfg.space == "latent" and torch.equal(loaded.sample(lr, generator=gen(9)), want)
    lora.export(path, out)
    torch.testing.assert_close(load_policy(out).sample(lr, generator=gen(9)), want, atol=1e-5, rtol=0)
    assert LDMSuperResolutionPipeline.from_pretrained(out).vqvae is not None
