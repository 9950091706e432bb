"""The network: shapes for any input size, every config trains, ES2D covers each pixel once."""

import warnings

import pytest
import torch

from napari_fusionmamba.model import MODEL_CONFIGS, FusionMamba, ModelConfig, build_model, count_parameters, scan
from napari_fusionmamba.model.blocks import LDC
from napari_fusionmamba.model.ssm2d import FAST_ENV, SelectiveScan2D, phase_merge, phase_split


def test_phase_split_reads_each_pixel_once_in_the_stated_orders():
    x = torch.arange(4 * 6, dtype=torch.float32).view(1, 1, 4, 6)
    seqs = phase_split(x)
    assert seqs.shape == (1, 4, 1, 6)
    assert sorted(seqs.flatten().tolist()) == x.flatten().tolist()
    # (even row, even col) row by row; (odd row, even col) column by column.
    assert seqs[0, 0, 0].tolist() == [0, 2, 4, 12, 14, 16]
    assert seqs[0, 1, 0].tolist() == [6, 18, 8, 20, 10, 22]
    assert torch.equal(phase_merge(seqs, 4, 6), x)


def test_ldc_modulates_only_the_centre_tap():
    ldc = LDC(2, 3)
    with torch.no_grad():
        ldc.theta.fill_(0.0)
    x = torch.randn(1, 5, 5, 2)
    plain = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), ldc.weight, padding=1).permute(0, 2, 3, 1)
    assert torch.allclose(ldc(x), plain, atol=1e-6)
    with torch.no_grad():
        ldc.theta.fill_(0.5)
    impulse = torch.zeros(1, 3, 3, 2)
    impulse[0, 1, 1, 0] = 1.0
    centre = ldc(impulse)[0, 1, 1]
    w = ldc.weight.detach()
    expected = w[:, 0, 1, 1] * (1 - 0.5 * w[:, 0].sum(dim=(1, 2)))
    assert torch.allclose(centre, expected, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "small", "paper", "paper-lite"])
def test_every_config_runs_forward_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name)
    torch.nn.init.normal_(model.head.weight, std=0.1)  # a fresh head is zero: act as after one step
    a, b = torch.rand(1, 1, 40, 36), torch.rand(1, 1, 40, 36)
    out = model(a, b)
    assert out.shape == a.shape
    assert out.min() >= 0 and out.max() <= 1
    out.mean().backward()
    assert model.fusions[0].cmfm.scan.A_log.grad is not None
    assert model.encoder[0][0].essm.scan.dt_bias.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(67, 131), (1, 1), (32, 32), (5, 200)])
def test_any_size_in_same_size_out(shape):
    model = build_model("tiny").eval()
    a, b = torch.rand(2, 1, *shape), torch.rand(2, 1, *shape)
    with torch.no_grad():
        out = model(a, b)
    assert out.shape == a.shape
    assert torch.isfinite(out).all()


def test_padding_does_not_leak_between_batch_items():
    model = build_model("tiny").eval()
    a, b = torch.rand(2, 1, 50, 70), torch.rand(2, 1, 50, 70)
    with torch.no_grad():
        together = model(a, b)
        alone = model(a[1:], b[1:])
    assert torch.allclose(together[1:], alone, atol=1e-5)


def test_configs_differ_only_in_width_and_depth():
    modules = {name: {type(m).__name__ for m in build_model(name).modules()} for name in ("tiny", "paper-lite")}
    assert modules["tiny"] == modules["paper-lite"]
    paper = MODEL_CONFIGS["paper"]
    assert (paper.embed_dim, paper.encoder_depths, paper.decoder_depths) == (96, (2, 2, 9, 2), (2, 9, 2, 2))
    assert count_parameters(build_model("tiny")) < count_parameters(build_model("small"))


@pytest.mark.parametrize("residual", ["sum2", "mean", "max", "keep-both", "none"])
def test_residual_choices_and_config_round_trip(residual):
    config = ModelConfig(residual=residual, shallow_skip=residual != "max")
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = FusionMamba(config).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)).shape == (1, 1, 32, 32)


@pytest.mark.parametrize("residual", ["sum2", "mean", "max", "keep-both", "none"])
def test_an_untrained_network_returns_its_residual(residual):
    # The head starts at zero, so training starts from a fair fusion instead of from noise.
    torch.manual_seed(0)
    model = FusionMamba(ModelConfig(residual=residual)).eval()
    a, b = torch.rand(2, 1, 48, 40), torch.rand(2, 1, 48, 40)
    keep_both = b + 1.1 * torch.relu(a - 0.035)  # the keep-both objective's target
    expected = {"sum2": 2 * a + 2 * b, "mean": (a + b) / 2, "max": torch.maximum(a, b), "keep-both": keep_both}
    expected = expected.get(residual, 0 * a)
    with torch.no_grad():
        assert torch.allclose(model(a, b), expected.clamp(0, 1), atol=1e-7)


def test_bad_inputs_and_configs_are_refused():
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        build_model("huge")
    with pytest.raises(ValueError, match="unknown residual"):
        FusionMamba(ModelConfig(residual="triple"))
    with pytest.raises(ValueError, match="unknown model config keys: width"):
        ModelConfig.from_dict({"width": 3})
    with pytest.raises(ValueError, match="expected two"):
        build_model("tiny")(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_a_traced_network_keeps_the_scan_loops_and_runs_other_sizes():
    """torch.jit.trace keeps the torch scan compiled (TorchScript), not unrolled for the traced
    length, so the traced network equals the eager one at every multiple of the stride."""
    model = build_model("tiny").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.1, generator=generator)  # the output depends on the network
        example = torch.rand(1, 1, 64, 64, generator=generator)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trace warns about the shape checks it fixes
            traced = torch.jit.trace(model, (example, example.flip(-1)), check_trace=False)
        for shape in ((1, 1, 96, 64), (2, 1, 32, 128)):
            a, b = torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)
            torch.testing.assert_close(traced(a, b), model(a, b), rtol=0, atol=1e-5)


@pytest.mark.skipif(not scan._numba_importable(), reason="numba not installed")
@pytest.mark.parametrize("threads", [1, 2])  # numba's one-thread kernel, and its thread pool
@pytest.mark.parametrize(
    ("config", "shape"),
    [
        (ModelConfig(name="tiny", residual="none"), (2, 1, 67, 131)),  # odd sizes: padding
        (ModelConfig(name="odd", embed_dim=5, d_state=3, patch_size=8, residual="none"), (1, 1, 70, 36)),
    ],  # 10, 20, 40, 80 channels in the scans: lanes left over; an 8x head
)
def test_inference_paths_give_the_general_result(config, shape, threads, monkeypatch):
    """Without gradients on the CPU the network takes its channels-last scan and its
    low-resolution head; switched off (FUSIONMAMBA_FAST_INFERENCE=0) or with gradients, the
    general path: the same fusion within float tolerance."""
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():  # the head starts at zero: give it weights so that the output depends on the network
        torch.nn.init.normal_(model.head.weight, std=0.02)
        model.head.bias.fill_(0.5)
        torch.nn.init.normal_(model.head_expand.norm.weight, 1.0, 0.2)  # the head folds the norm in
        torch.nn.init.normal_(model.head_expand.norm.bias, 0.0, 0.2)
    a, b = torch.rand(shape), torch.rand(shape)
    taken = []
    infer = SelectiveScan2D._infer
    monkeypatch.setattr(SelectiveScan2D, "_infer", lambda self, x: taken.append(1) or infer(self, x))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        monkeypatch.delenv(scan.ENV_VAR, raising=False)
        with torch.inference_mode():
            fast = model(a, b)
        scans = len(taken)
        monkeypatch.setenv(FAST_ENV, "0")
        with torch.inference_mode():
            general = model(a, b)
        monkeypatch.delenv(FAST_ENV)
        trained = model(a, b).detach()  # with gradients: the path training takes
    finally:
        torch.set_num_threads(before)
    assert scans == 12 and len(taken) == scans  # every scan of the network, and only without gradients
    assert fast.std() > 0.01 and ((fast > 0) & (fast < 1)).float().mean() > 0.9  # not clamped flat
    torch.testing.assert_close(fast, general, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast, trained, rtol=1e-4, atol=1e-5)
