"""The label function's user-supplied φ (metrics.set_phi), tested with tiny modules in place of DINOv2."""

import pytest
import torch
from torch import nn

import metrics


class TinyPhi(nn.Module):
    """A stand-in for a ViT: a 4×4 patch embedding, (B, 3, H, W) -> (B, 8, H/4, W/4)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 4, stride=4)

    def forward(self, x):
        return self.embed(x)


@pytest.fixture
def reset_phi():
    norm = metrics.NORM
    yield
    metrics.set_phi(None, norm=norm)  # never leak a φ into other tests


def test_identity_phi_gives_the_papers_cosine_term_by_hand():
    x, ref = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    d = metrics.feature_distance(x, ref, phi=nn.Identity())  # φ = the RGB vector itself, per pixel
    want = (1 - (x * ref).sum(1) / (x.norm(dim=1) * ref.norm(dim=1))) / 2
    torch.testing.assert_close(d[:, 0], want, atol=1e-5, rtol=1e-5)


def test_set_phi_reaches_every_label_map_and_keeps_gradients(reset_phi):
    phi = TinyPhi()
    ref = torch.rand(2, 3, 32, 32)
    x = ref.clone()
    x[:, :, :8, :8] = torch.rand(2, 3, 8, 8)  # a changed corner
    default = metrics.label_map(x, ref)
    metrics.set_phi(phi, norm=0.5)
    assert metrics.NORM == 0.5
    M = metrics.label_map(x, ref)  # what fgr_batch and the gold judge call: no phi argument
    torch.testing.assert_close(M, metrics.label_map(x, ref, phi=phi))
    assert not torch.allclose(M, default) and M[:, :, :8, :8].mean() > 5 * M[:, :, 20:, 20:].mean()
    assert metrics.label_map(ref, ref).abs().max() < 1e-6  # identical images: no degradation (cos = 1)
    xg = x.clone().requires_grad_(True)
    metrics.label_map(xg, ref).sum().backward()  # RL's gold judge and the RM's labels stay differentiable
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_set_phi_rejects_a_wrong_wrapper_in_one_line(reset_phi):
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 4))  # returns (B, C) tokens, not a map
    with pytest.raises(ValueError, match="must return \\(B, C, h, w\\) features, got \\(1, 4\\)"):
        metrics.set_phi(flat)
    with pytest.raises(TypeError, match="callable"):
        metrics.set_phi("dinov2")  # a name is never resolved into code
    assert metrics.PHI is None


def test_set_phi_none_restores_the_default_norm(reset_phi):
    metrics.set_phi(TinyPhi(), norm=0.9)
    assert metrics.NORM == 0.9
    metrics.set_phi(None)  # back to the texture-energy φ and its calibrated constant
    assert metrics.PHI is None and metrics.NORM == metrics.DEFAULT_NORM == 0.34
