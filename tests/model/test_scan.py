"""Selective-scan backends: each matches the sequential definition, forward and gradients."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from napari_fusionmamba.model import ModelConfig, build_model, scan
from napari_fusionmamba.model.scan import resolve_backend, selective_scan

FAST = [name for name in ("torch", "numba") if name != "numba" or scan._numba_importable()]
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def make_inputs(batch, channels, groups, n, length, seed):
    gen = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, channels, length, generator=gen),
        # positive steps, as after softplus, so the no-softplus cases stay bounded
        "delta": torch.rand(batch, channels, length, generator=gen) * 0.5,
        "A": -torch.rand(channels, n, generator=gen) * 2 - 0.1,
        "B": torch.randn(batch, groups, n, length, generator=gen),
        "C": torch.randn(batch, groups, n, length, generator=gen),
        "D": torch.randn(channels, generator=gen),
        "delta_bias": torch.randn(channels, generator=gen) * 0.3,
    }


def run(backend, inputs, grad, use_d, use_bias, softplus, dtype=torch.float32):
    leaves = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
    y = selective_scan(
        leaves["u"],
        leaves["delta"],
        leaves["A"],
        leaves["B"],
        leaves["C"],
        D=leaves["D"] if use_d else None,
        delta_bias=leaves["delta_bias"] if use_bias else None,
        delta_softplus=softplus,
        backend=backend,
    )
    y.backward(grad.to(dtype))
    grads = {k: leaves[k].grad for k in NAMES if leaves[k].grad is not None}
    return y.detach().double(), {k: g.double() for k, g in grads.items()}


def assert_close_relative(actual, expected, what):
    """Within 1e-4 of the largest magnitude of the expected tensor."""
    scale = expected.abs().max().item()
    error = (actual - expected).abs().max().item()
    assert error <= 1e-4 * max(scale, 1e-12), f"{what}: max error {error:.3g} vs scale {scale:.3g}"


CASES = [
    # batch, channels, groups, N, L, D, delta_bias, softplus
    (2, 6, 1, 4, 1, True, True, True),
    (1, 8, 2, 16, 37, True, True, True),
    (2, 4, 4, 3, 64, False, False, False),
    (1, 6, 3, 5, 129, True, False, True),
    (2, 4, 2, 8, 250, False, True, False),
]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: "b{}c{}g{}n{}L{}{}{}{}".format(*c[:5], "-D" * c[5], "-bias" * c[6], "-softplus" * c[7])
)
def test_backend_matches_reference_forward_and_gradients(backend, case):
    batch, channels, groups, n, length, use_d, use_bias, softplus = case
    inputs = make_inputs(batch, channels, groups, n, length, seed=length)
    grad = torch.randn(batch, channels, length, generator=torch.Generator().manual_seed(1))
    # float64 reference: the exact answer the float32 backends must reach
    y_ref, g_ref = run("reference", inputs, grad, use_d, use_bias, softplus, dtype=torch.float64)
    y, g = run(backend, inputs, grad, use_d, use_bias, softplus)
    assert_close_relative(y, y_ref, "y")
    expected = {"u", "delta", "A", "B", "C"} | ({"D"} if use_d else set()) | ({"delta_bias"} if use_bias else set())
    assert set(g) == set(g_ref) == expected
    for name in expected:
        assert_close_relative(g[name], g_ref[name], f"d{name}")


@pytest.mark.parametrize("backend", FAST)
def test_torch_chunk_lengths_all_agree_and_dtype_is_kept(backend):
    inputs = make_inputs(1, 4, 2, 4, 50, seed=3)
    args = [inputs[k] for k in NAMES]
    ref = scan._scan_reference(*args, True)
    for chunk in (1, 7, 16, 50, 64):
        assert_close_relative(scan._scan_torch(*args, True, chunk=chunk).double(), ref.double(), f"T={chunk}")
    half = selective_scan(*[inputs[k].to(torch.bfloat16) for k in NAMES[:5]], backend=backend)
    assert half.dtype == torch.bfloat16


def test_auto_picks_numba_on_cpu_and_names_are_checked(monkeypatch):
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    assert resolve_backend("auto", "cpu") == ("numba" if scan._numba_importable() else "torch")
    assert resolve_backend("torch", "cpu") == "torch"
    assert resolve_backend("REFERENCE", "cpu") == "reference"
    assert resolve_backend("auto", "mps") == "torch"  # device type only: nothing is allocated
    with pytest.raises(ValueError, match="choose one of auto, cuda, numba, torch, reference"):
        resolve_backend("triton", "cpu")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        resolve_backend("cuda", "cpu")
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        resolve_backend("numba", "mps")
    x = make_inputs(1, 2, 1, 2, 5, seed=0)
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        selective_scan(*[x[k] for k in NAMES[:5]], backend="cuda")


def test_environment_variable_replaces_auto_but_not_an_explicit_choice(monkeypatch):
    monkeypatch.setenv(scan.ENV_VAR, "reference")
    assert resolve_backend("auto", "cpu") == "reference"
    assert resolve_backend("torch", "cpu") == "torch"
    monkeypatch.setenv(scan.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=scan.ENV_VAR):
        resolve_backend("auto", "cpu")
    monkeypatch.setenv(scan.ENV_VAR, "cuda")
    with pytest.raises(RuntimeError, match=scan.ENV_VAR):
        resolve_backend(None, "cpu")


def test_bad_shapes_are_named():
    x = make_inputs(2, 4, 2, 3, 10, seed=0)
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"][..., :9], x["C"])
    with pytest.raises(ValueError, match="does not divide"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"][:, :1].repeat(1, 3, 1, 1), x["C"])
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=torch.ones(3))


def test_cpu_path_never_imports_mamba_ssm(tmp_path):
    # An importable stand-in for mamba-ssm that leaves a mark if anything imports it.
    fake = tmp_path / "mamba_ssm"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nopen(os.environ['MAMBA_MARK'], 'w').close()\n")
    code = textwrap.dedent("""
        import sys, torch
        from napari_fusionmamba.model.scan import selective_scan, describe_backends
        from napari_fusionmamba.model import ModelConfig, build_model
        x = torch.rand(1, 1, 16, 16)
        build_model("tiny")(x, x).sum().backward()
        print("\\n".join(describe_backends()))
        assert "mamba_ssm" not in sys.modules
    """)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tmp_path)] + sys.path),
        MAMBA_MARK=str(tmp_path / "imported"),
        CUDA_VISIBLE_DEVICES="",
    )
    env.pop(scan.ENV_VAR, None)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cuda (mamba-ssm): installed, no CUDA device" in result.stdout
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("backend", FAST)
def test_network_gives_the_same_fusion_and_gradients_with_each_backend(backend, monkeypatch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="tiny", residual="none")).eval()
    with torch.no_grad():  # the head starts at zero; give it weights so that gradients flow
        torch.nn.init.normal_(model.head.weight, std=0.02)
        model.head.bias.fill_(0.5)
    a, b = torch.rand(1, 1, 35, 42), torch.rand(1, 1, 35, 42)
    results = {}
    for name in ("reference", backend):
        monkeypatch.setenv(scan.ENV_VAR, name)
        model.zero_grad()
        out = model(a, b)
        out.square().mean().backward()
        results[name] = out.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if "A_log" in k}
    (out, grads), (ref_out, ref_grads) = results[backend], results["reference"]
    assert out.shape == a.shape
    assert out.std() > 0.01 and ((out > 0) & (out < 1)).float().mean() > 0.9  # not clamped flat
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    assert grads and grads.keys() == ref_grads.keys()
    # the deepest level sees 2 x 2 maps, sequences of one step, where A cannot matter
    moving = [key for key in grads if ref_grads[key].abs().sum() > 0]
    assert len(moving) >= len(grads) / 2
    for key in moving:
        assert_close_relative(grads[key].double(), ref_grads[key].double(), key)


@pytest.mark.skipif(not scan._numba_importable(), reason="numba not installed")
@pytest.mark.parametrize("torch_threads", ["1", "2"])  # numba's one-thread kernel, its thread pool's
def test_numba_backend_is_safe_to_call_from_several_threads_at_once(torch_threads):
    # as dask's threaded scheduler or napari workers do; run apart so an abort cannot kill pytest
    code = textwrap.dedent("""
        from concurrent.futures import ThreadPoolExecutor
        import torch
        from napari_fusionmamba.model.scan import selective_scan
        torch.manual_seed(0)
        jobs = [[torch.randn(2, 8, 300), torch.rand(2, 8, 300), -torch.rand(8, 4),
                 torch.randn(2, 2, 4, 300), torch.randn(2, 2, 4, 300)] for _ in range(8)]
        def run(args):
            args = [a.clone().requires_grad_() for a in args]
            y = selective_scan(*args, delta_softplus=True, backend="numba")
            y.sum().backward()
            return [y.detach()] + [a.grad for a in args]
        serial = [run(job) for job in jobs]
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                for got, want in zip(pool.map(run, jobs), serial):
                    assert all(torch.equal(g, w) for g, w in zip(got, want))
        print("ok")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS=torch_threads)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


@pytest.mark.skipif(not scan._numba_importable(), reason="numba not installed")
def test_numba_forward_is_the_same_on_one_thread_and_on_its_thread_pool():
    inputs = make_inputs(2, 8, 2, 16, 300, seed=3)
    args = [inputs[name] for name in ("u", "delta", "A", "B", "C")]
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                results.append(selective_scan(*args, delta_softplus=True, backend="numba"))
    finally:
        torch.set_num_threads(before)
    assert_close_relative(results[0].double(), results[1].double(), "one thread vs the pool")


def test_info_prints_the_backend_that_would_run(monkeypatch, capsys):
    from napari_fusionmamba.cli import main

    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    assert main(["info"]) == 0
    auto = "numba" if scan._numba_importable() else "torch"
    assert f"scan backend on cpu: {auto}\n" in capsys.readouterr().out
    monkeypatch.setenv(scan.ENV_VAR, "torch")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "scan backend on cpu: torch\n" in out and f"({scan.ENV_VAR}=torch)" in out
    monkeypatch.setenv(scan.ENV_VAR, "cuda")
    assert main(["info"]) == 0
    assert "scan backend on cpu: error: the cuda selective-scan backend needs CUDA tensors" in capsys.readouterr().out
