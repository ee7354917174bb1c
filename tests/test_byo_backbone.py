"""Real models from local paths, on tiny random transformers models the tests build and save themselves: a
CLIP vision tower as the RM's encoder (backbone.py, train_rm --backbone=clip:DIR) and DINOv2 as the label
function's φ (the wrapper metrics.py's comment gives, plugged in with metrics.set_phi). Random weights: these
pin the plumbing (shapes, checkpoints, freezing, gradients, errors), never the quality of a real CLIP."""

import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
from test_rl import TINY_RM  # noqa: E402  (after the skip: nothing here runs without transformers)

import backbone  # noqa: E402
import metrics  # noqa: E402
import train_rm  # noqa: E402
import validation  # noqa: E402
from config import ConfigError  # noqa: E402
from rm import FinPercepRM, RMConfig, grow, load_rm, rm_losses, save_rm  # noqa: E402

TINY = dict(widths=(4, 8, 8, 8), n_stages=3, hidden=16, groups=4)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIPVisionModel in transformers' layout: 4 layers of width 32, 8-px patches, 32-px in."""
    torch.manual_seed(0)
    cfg = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=32,
        patch_size=8,
    )  # fmt: skip
    path = str(tmp_path_factory.mktemp("clip") / "tiny-clip")
    transformers.CLIPVisionModel(cfg).save_pretrained(path)
    return path


def clip_rm(clip_dir, stage=1):
    torch.manual_seed(stage)
    return FinPercepRM(RMConfig(stage=stage, backbone=f"clip:{clip_dir}", **TINY))


@pytest.fixture(scope="module")
def rm_dir(clip_dir, tmp_path_factory):
    """train_rm end to end on the CLIP backbone: 2 steps of every stage RM_0 … RM_3 (--base=none)."""
    out = str(tmp_path_factory.mktemp("clip_rm") / "rm")
    train_rm.main(train_rm.Config(out_dir=out, backbone=f"clip:{clip_dir}", **TINY_RM))
    return out


def test_train_rm_writes_every_stage_and_records_the_backbone(rm_dir, clip_dir):
    for k in range(4):
        meta = json.load(open(os.path.join(rm_dir, f"rm_stage{k}", "rm.json")))
        assert meta["backbone"] == f"clip:{os.path.abspath(clip_dir)}" and meta["layers"] == [1, 2, 3, 4]
        assert meta["stage"] == k
    # The checkpoint holds the RM's own weights only: CLIP is named by its path, never copied.
    weights = load_file(os.path.join(rm_dir, "rm_stage3", "model.safetensors"))
    assert any(n.startswith("encoder.proj.") for n in weights) and not any("clip" in n for n in weights)
    rows = [json.loads(x) for x in open(os.path.join(rm_dir, "metrics.jsonl"))]
    assert {r["stage"] for r in rows} == {0, 1, 2, 3}


@pytest.mark.parametrize("k", [0, 3])
def test_a_loaded_stage_scores_as_the_model_in_memory(rm_dir, k):
    # rm.json's check_scores were computed by the trained model in memory (validation.provenance).
    stage = load_rm(os.path.join(rm_dir, f"rm_stage{k}"))
    with torch.no_grad():
        got = stage(validation.base_check_set())[0].tolist()
    want = json.load(open(os.path.join(rm_dir, f"rm_stage{k}", "rm.json")))["made_by"]["check_scores"]
    assert got == pytest.approx(want, abs=1e-6)


def test_save_load_roundtrip_is_exact_and_the_map_has_the_input_size(clip_dir, tmp_path):
    model = clip_rm(clip_dir, stage=2).eval()
    with torch.no_grad():
        for p in model.parameters():  # zero-inits included: equality must not come from initialisation
            p.add_(torch.randn_like(p) * 0.05)
    save_rm(model, str(tmp_path / "rm"))
    again = load_rm(str(tmp_path / "rm"))
    x = torch.rand(2, 3, 40, 56)  # not CLIP's 32 × 32, not square: a multiple of the stride is enough
    with torch.no_grad():
        (s1, m1), (s2, m2) = model(x), again(x)
    assert torch.equal(s1, s2) and torch.equal(m1, m2)
    assert s1.shape == (2,) and m1.shape == (2, 1, 40, 56) and 0 <= float(m1.min()) <= float(m1.max()) <= 1


def test_growth_stays_function_preserving(clip_dir):
    rm0 = clip_rm(clip_dir, stage=0).eval()
    rm1 = grow(rm0).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rm0(x)[0], rm1(x)[0], atol=1e-6)  # RM_1 starts as RM_0 scores
        rm2 = grow(rm1).eval()
        assert torch.allclose(rm1(x)[1], rm2(x)[1], atol=1e-6)  # RM_2 starts with RM_1's map


def test_clip_is_frozen_outside_the_rm_yet_passes_the_image_gradient(clip_dir):
    model = clip_rm(clip_dir, stage=1).train()
    clip = model.encoder.clip
    before = {n: t.clone() for n, t in clip.state_dict().items()}
    clip_ids = {id(p) for p in clip.parameters()}
    assert not clip_ids & {id(p) for p in model.parameters()}  # the optimiser never sees CLIP
    assert not any("clip" in n for n in model.state_dict())  # nor does the checkpoint
    assert not clip.training and not any(p.requires_grad for p in clip.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    img = lambda: torch.rand(2, 3, 32, 32)  # noqa: E731
    batch = {"gt": img(), "syn": img(), "sr": img(), "dmap_syn": torch.rand(2, 1, 32, 32)}
    batch["dmap_sr"] = torch.rand(2, 1, 32, 32)
    assert sorted(model.encoder.proj) == ["2", "3"]  # RM_1 reads f_2 and f_3: only their readouts exist
    proj = model.encoder.proj["2"][1].weight.clone()
    for _ in range(2):
        loss, _ = rm_losses(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(proj, model.encoder.proj["2"][1].weight)  # the readouts train
    assert all(torch.equal(before[n], t) for n, t in clip.state_dict().items())  # CLIP does not
    model.double()  # .to(dtype/device) moves the CLIP with the RM
    assert next(clip.parameters()).dtype == torch.float64
    model.float()
    x = torch.rand(1, 3, 32, 32, requires_grad=True)  # ReFL: the reward's gradient reaches the image
    model(x)[0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_backbone_errors_are_one_line(clip_dir, rm_dir, tmp_path, monkeypatch):
    def err(**kw):
        with pytest.raises(ConfigError) as e:
            train_rm.main(train_rm.Config(**{**TINY_RM, "out_dir": str(tmp_path / "out"), **kw}))
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "does not exist" in err(backbone=f"clip:{tmp_path / 'nope'}")
    assert "no config.json" in err(backbone=f"clip:{tmp_path}")
    assert "use conv or clip:DIR" in err(backbone="vit:/models/x")
    assert "--base=none" in err(backbone=f"clip:{clip_dir}", base="weights/rm_base")
    assert not os.path.exists(tmp_path / "out")  # every error came before the run touched its out_dir
    # An RM whose CLIP moved away: load_rm names the missing path in one line.
    moved = tmp_path / "rm_stage0"
    shutil.copytree(os.path.join(rm_dir, "rm_stage0"), moved)
    meta = json.load(open(moved / "rm.json"))
    json.dump({**meta, "backbone": f"clip:{tmp_path / 'gone'}"}, open(moved / "rm.json", "w"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_rm(str(moved))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    assert "requirements-models.txt" in err(backbone=f"clip:{clip_dir}", base="none")


def test_even_layers():
    assert backbone.even_layers(12, 4) == (3, 6, 9, 12) and backbone.even_layers(24, 4) == (6, 12, 18, 24)
    assert backbone.even_layers(4, 4) == (1, 2, 3, 4) and backbone.even_layers(12, 3) == (4, 8, 12)


# ----------------------------------------------------------------------------------------------------
# DINOv2 as the label function's φ: the wrapper of metrics.py's comment (its transformers variant), verbatim.


class DinoPhi(torch.nn.Module):  # images in [0, 1] -> (B, C, h, w) patch features
    def __init__(self, net):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x):
        H, W = x.shape[-2] // 14 * 14, x.shape[-1] // 14 * 14  # ViT-14: whole patches only
        x = (x[..., :H, :W] - self.mean) / self.std
        tok = self.net(pixel_values=x).last_hidden_state[:, 1:]  # (B, h*w, C), CLS dropped
        return tok.transpose(1, 2).reshape(x.shape[0], -1, H // 14, W // 14)


@pytest.fixture
def reset_phi():
    norm = metrics.NORM
    yield
    metrics.set_phi(None, norm=norm)  # never leak a φ into other tests


def test_dinov2_phi_from_a_local_snapshot_gives_label_maps(tmp_path, reset_phi):
    src = open(metrics.__file__).read()  # the recipe this test follows is the one metrics.py documents
    assert "self.net(pixel_values=x).last_hidden_state[:, 1:]" in src and "AutoModel.from_pretrained" in src
    torch.manual_seed(0)
    cfg = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=14,
        image_size=56,
    )  # fmt: skip
    transformers.Dinov2Model(cfg).save_pretrained(tmp_path / "dinov2")
    dino = transformers.AutoModel.from_pretrained(str(tmp_path / "dinov2"))  # as the comment loads it
    metrics.set_phi(DinoPhi(dino), norm=0.5)
    ref = torch.rand(2, 3, 56, 70)
    x = ref.clone()
    x[:, :, :14, :14] = torch.rand(2, 3, 14, 14)  # one changed patch
    M = metrics.label_map(x, ref)
    assert M.shape == (2, 1, 56, 70) and 0 <= float(M.min()) <= float(M.max()) <= 1
    assert M[:, :, :14, :14].mean() > 2 * M[:, :, 28:, 28:].mean()  # higher where the image changed
    assert metrics.label_map(ref, ref).abs().max() < 1e-5  # identical images: no degradation
    metrics.set_phi(None, norm=metrics.DEFAULT_NORM)
    assert metrics.PHI is None


def test_register_tokens_follow_cls_as_metrics_comment_says():
    torch.manual_seed(0)
    cfg = transformers.Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, patch_size=14,
        image_size=56, num_register_tokens=4,
    )  # fmt: skip
    tok = transformers.Dinov2WithRegistersModel(cfg)(pixel_values=torch.rand(1, 3, 56, 42)).last_hidden_state
    assert tok.shape[1] == 1 + 4 + 4 * 3  # CLS, the registers, then the 4 × 3 patches: [:, 1 + 4:] are these
