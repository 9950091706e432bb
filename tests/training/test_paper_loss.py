"""The paper's loss: each term does what MODEL.md says, the weights act as stated, a per-pixel
weight map restricts the loss to the pixels it marks, and gradients reach the whole network."""

import pytest
import torch

from napari_fusionmamba.model import build_model
from napari_fusionmamba.training.objectives import MS_SSIM_MIN_SIZE, FusionLoss, ms_ssim, sobel, ssim


def _pair(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(1, 1, size, size, generator=g)
    b = torch.rand(1, 1, size, size, generator=g)
    return a, b


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a fresh head is zero: act as after one step
    a, b = _pair(128)  # the deepest scan must see more than one step for A to matter
    total, _ = FusionLoss()(model(a, b), a, b)
    total.backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert missing == []


def test_max_fusion_has_a_lower_intensity_term_than_either_source():
    a, b = _pair()
    loss = FusionLoss()
    _, fused_terms = loss(torch.maximum(a, b), a, b)
    _, a_terms = loss(a.clone(), a, b)
    _, b_terms = loss(b.clone(), a, b)
    assert fused_terms["intensity"] < a_terms["intensity"]
    assert fused_terms["intensity"] < b_terms["intensity"]
    assert fused_terms["intensity"] == 0


def test_total_is_the_weighted_sum_and_weights_change_it_as_stated():
    a, b = _pair()
    f = (a + b) / 2
    total, terms = FusionLoss(1.0, 2.0, 3.0)(f, a, b)
    expected = 1 * terms["intensity"] + 2 * terms["texture"] + 3 * terms["structure"]
    assert torch.allclose(total, expected)
    # Defaults are the authors' 10, 1, 10.
    total_default, terms_default = FusionLoss()(f, a, b)
    assert torch.allclose(total_default, 10 * terms["intensity"] + terms["texture"] + 10 * terms["structure"])
    # b and g weigh SSIM to source a and to source b.
    _, only_a = FusionLoss(b=1.0, g=0.0)(f, a, b)
    assert torch.allclose(only_a["structure"], 1 - ssim(f, a))
    _, only_b = FusionLoss(b=0.0, g=1.0)(f, a, b)
    assert torch.allclose(only_b["structure"], 1 - ssim(f, b))
    assert torch.allclose(terms["structure"], 0.5 * only_a["structure"] + 0.5 * only_b["structure"])


def test_texture_term_compares_sobel_maps():
    a, b = _pair()
    flat = torch.full_like(a, 0.5)
    assert sobel(flat)[..., 1:-1, 1:-1].abs().max() == 0  # zero padding only shows at the border
    _, terms = FusionLoss()(flat, a, b)
    assert torch.allclose(terms["texture"], torch.maximum(sobel(a), sobel(b)).sub(sobel(flat)).abs().mean())


def test_weight_map_ignores_unmarked_pixels():
    a, b = _pair()
    f = torch.maximum(a, b).clone()
    weight = torch.zeros(1, 1, 64, 64)
    weight[..., :32, :] = 1.0
    loss = FusionLoss()
    base, _ = loss(f, a, b, weight)
    spoiled = f.clone()
    spoiled[..., 48:, :] = torch.rand(1, 1, 16, 64)  # far from the marked half (beyond the SSIM window)
    after, _ = loss(spoiled, a, b, weight)
    assert torch.allclose(base, after)
    unweighted_base, _ = loss(f, a, b)
    unweighted_after, _ = loss(spoiled, a, b)
    assert unweighted_after > unweighted_base
    # A weight map of ones is the unweighted loss; a region weighted 2x counts more.
    ones, _ = loss(spoiled, a, b, torch.ones(1, 1, 64, 64))
    assert torch.allclose(ones, unweighted_after)
    heavy = torch.ones(1, 1, 64, 64)
    heavy[..., 48:, :] = 2.0
    assert loss(spoiled, a, b, heavy)[0] > unweighted_after
    with pytest.raises(ValueError, match="zero everywhere"):
        loss(f, a, b, torch.zeros(1, 1, 64, 64))


def test_ssim_and_ms_ssim():
    a, b = _pair(MS_SSIM_MIN_SIZE)
    assert torch.allclose(ssim(a, a), torch.tensor(1.0))
    assert torch.allclose(ms_ssim(a, a), torch.tensor(1.0))
    assert ssim(a, b) < 0.2 and ms_ssim(a, b) < ms_ssim(a, (a + b) / 2)
    # "auto" uses MS-SSIM when the crop is large enough, plain SSIM below.
    _, big = FusionLoss(ssim="auto", b=1.0, g=0.0)(b, a, b)
    assert torch.allclose(big["structure"], 1 - ms_ssim(b, a))
    small_a, small_b = _pair(64)
    _, small = FusionLoss(ssim="auto", b=1.0, g=0.0)(small_b, small_a, small_b)
    assert torch.allclose(small["structure"], 1 - ssim(small_b, small_a))
    with pytest.raises(ValueError, match="MS-SSIM needs"):
        FusionLoss(ssim="ms-ssim")(small_a, small_a, small_b)
    with pytest.raises(ValueError, match="unknown ssim mode"):
        FusionLoss(ssim="psnr")
