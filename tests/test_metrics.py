"""metrics.py: the label function's behaviour, and PSNR / SSIM pinned to scikit-image."""

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import data
import images
import metrics


@pytest.fixture(scope="module")
def pair():
    g = torch.Generator().manual_seed(0)
    hr = images.procedural_images(4, 48, g)
    sr = (hr + 0.05 * torch.randn(hr.shape, generator=g)).clamp(0, 1)
    return sr, hr


def _y_numpy(x: torch.Tensor, crop: int) -> np.ndarray:
    """An independent Y: numpy, float64, the MATLAB rgb2ycbcr coefficients, cropped."""
    a = x.permute(1, 2, 0).double().numpy()
    y = 16 + a @ np.array([65.481, 128.553, 24.966])
    return y[crop:-crop, crop:-crop]


def test_psnr_ssim_match_skimage(pair):
    sr, hr = pair
    p, s = metrics.psnr_y(sr, hr), metrics.ssim_y(sr, hr)
    for i in range(sr.shape[0]):
        a, b = _y_numpy(sr[i], 4), _y_numpy(hr[i], 4)
        ref_p = peak_signal_noise_ratio(b, a, data_range=255)
        ref_s = structural_similarity(
            b, a, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert abs(float(p[i]) - ref_p) < 1e-3
        assert abs(float(s[i]) - ref_s) < 1e-4


def test_psnr_ssim_differentiable(pair):
    sr, hr = pair
    x = sr.clone().requires_grad_(True)
    (metrics.psnr_y(x, hr).sum() + metrics.ssim_y(x, hr).sum()).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_label_map_zero_for_identical_and_range(pair):
    sr, hr = pair
    assert metrics.label_map(hr, hr).abs().max() < 1e-6
    m = metrics.label_map(sr, hr)
    assert m.shape == (4, 1, 48, 48) and m.min() >= 0 and m.max() <= 1
    assert torch.allclose(metrics.gold_quality(hr, hr), torch.ones(4))


def test_label_map_higher_inside_swapped_region():
    g = torch.Generator().manual_seed(1)
    hr = images.procedural_images(6, 64, g)
    sr = data.ZOO["texture"](hr, None, torch.ones(6, 1, 1, 1), g).clamp(0, 1)
    mask = torch.zeros(6, 1, 64, 64)
    mask[..., 16:40, 20:44] = 1
    syn = mask * sr + (1 - mask) * hr
    m = metrics.label_map(syn, hr)
    inside, outside = m[..., 18:38, 22:42].mean(), m[..., :, 50:].mean()
    assert inside > 0.2 and outside < 0.02, (inside, outside)


def test_label_map_sees_blur_and_invented_texture():
    """The feature term is what makes blur a defect: its share of the map must be large for a blurred
    image even though the pixel error is small (docs/method.md §2, pixel + feature beats pixel alone)."""
    g = torch.Generator().manual_seed(2)
    hr = images.load_pool("builtin", "train", crop=64).crops(16, 64, g)
    blur = data.upsample(data.degrade(hr, 0.0))
    full, pix = metrics.label_map(blur, hr).mean(), metrics.label_map(blur, hr, alpha=1.0).mean()
    assert full > 1.5 * 0.5 * pix  # α = 0.5: the feature half contributes more than the pixel half


def test_user_phi_hook(pair):
    sr, hr = pair
    phi = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
    m = metrics.label_map(sr, hr, phi=phi)
    assert m.shape == (4, 1, 48, 48) and torch.isfinite(m).all()
    assert metrics.label_map(hr, hr, phi=phi).max() < 1e-5


def test_label_map_shape_mismatch_is_clear_error(pair):
    sr, hr = pair
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.label_map(sr, hr[..., :40])


def test_map_calibration_hand_computed():
    from validation import map_calibration

    label = torch.tensor([0.0, 0.05, 0.2, 0.6]).view(1, 1, 2, 2)  # degraded region: the last two (> 0.1)
    assert map_calibration(label, label) == pytest.approx(1.0)
    faint = torch.tensor([0.9, 0.9, 0.1, 0.1]).view(1, 1, 2, 2)  # bright outside, faint inside the region
    assert map_calibration(faint, label) == pytest.approx(0.1 / 0.4)
    assert map_calibration(faint, torch.zeros_like(label)) != map_calibration(faint, torch.zeros_like(label))
