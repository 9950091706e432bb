"""Time each selective-scan backend against the sequential reference, side by side, in one run.

Default size: one ES2D scan of the paper config's first stage on a 128 x 128 map:
batch 1, K = 4 directions x D = 192 channels (768 channels in 4 groups), N = 16 states,
L = 64 * 64 steps. Prints the best of --repeat runs, forward (no grad) and forward + backward.

    python benchmarks/scan.py --threads 2 --repeat 3
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from napari_fusionmamba.model import scan


def make_inputs(batch, directions, channels, n, length, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = directions * channels
    dt = torch.exp(torch.rand(total, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return dict(
        u=torch.randn(batch, total, length, generator=gen),
        delta=0.1 * torch.randn(batch, total, length, generator=gen),
        A=-torch.arange(1, n + 1, dtype=torch.float32).repeat(total, 1),
        B=torch.randn(batch, directions, n, length, generator=gen),
        C=torch.randn(batch, directions, n, length, generator=gen),
        D=torch.ones(total),
        delta_bias=dt + torch.log(-torch.expm1(-dt)),
    )


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def best_time(fn, repeat, clock):
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def timings(run, inputs, repeat, clock=time.perf_counter):
    """(forward, forward + backward) seconds of ``run(**inputs)``."""

    def forward():
        with torch.no_grad():
            run(**inputs)

    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    grad = torch.randn_like(inputs["u"])

    def both():
        run(**leaves).backward(grad)

    forward()  # warm-up: numba compiles (or loads its cache) on the first call
    both()
    return best_time(forward, repeat, clock), best_time(both, repeat, clock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--directions", type=int, default=4, help="K: groups of B and C")
    parser.add_argument("--channels", type=int, default=192, help="D: channels per direction")
    parser.add_argument("--state", type=int, default=16, help="N")
    parser.add_argument("--length", type=int, default=64 * 64, help="L")
    parser.add_argument(
        "--chunks",
        type=int,
        nargs="*",
        default=[],
        help="also time the torch backend with these chunk lengths (default: automatic)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="cpu: this process's CPU time, steadier on a busy machine but only "
        "comparable at --threads 1 (it adds up all threads)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    inputs = {
        k: v.to(device)
        for k, v in make_inputs(args.batch, args.directions, args.channels, args.state, args.length).items()
    }

    runs = {}
    for name in scan.BACKENDS:
        try:
            scan.resolve_backend(name, device)
        except RuntimeError as error:
            print(f"{name}: skipped ({error})")
            continue
        runs[name] = lambda name=name, **kw: scan.selective_scan(**kw, delta_softplus=True, backend=name)
    for chunk in args.chunks:
        runs[f"torch T={chunk}"] = lambda chunk=chunk, **kw: scan._scan_torch(
            kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["delta_bias"], True, chunk=chunk
        )

    print(
        f"selective scan, batch={args.batch} channels={args.directions}x{args.channels} "
        f"N={args.state} L={args.length}, {args.threads} thread(s), best of {args.repeat}, "
        f"{args.clock} clock, torch {torch.__version__}, device {device}"
    )
    results = {name: timings(run, inputs, args.repeat, CLOCKS[args.clock]) for name, run in runs.items()}
    ref_fwd, ref_both = results["reference"]
    print(f"{'backend':<14}{'forward s':>11}{'vs ref':>9}{'fwd+bwd s':>12}{'vs ref':>9}")
    for name, (fwd, both) in results.items():
        print(f"{name:<14}{fwd:>11.4f}{ref_fwd / fwd:>8.1f}x{both:>12.4f}{ref_both / both:>8.1f}x")


if __name__ == "__main__":
    main()
