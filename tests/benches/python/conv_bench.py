"""PyTorch side of `cargo bench -p dtx-tests --bench conv` (docs/performance.md).

Times torch.nn.Conv2d on the convolutions of the `dtx bench engine` U-Net
(batch 16 at 32x32), the same cases as tests/benches/conv.rs: forward under
no_grad, and forward + backward (input, weight and bias gradients, from
y.sum()). Median of --iters runs after 3 untimed ones, in milliseconds. Run
by hand, never in CI, with the thread count dtx gets:

    python tests/benches/python/conv_bench.py --threads 2
    RAYON_NUM_THREADS=2 cargo bench -p dtx-tests --bench conv

and with --size 64 (and `-- --size 64` after the cargo command) the 64x64
U-Net's convolutions.

Needs torch (pip install torch).
"""

import statistics
import time

import torch
from bench_args import torch_args

# (name, in channels, out channels, side, kernel, stride), as in conv.rs.
CASES = [
    ("3x3 64->64 at 32x32", 64, 64, 32, 3, 1),
    ("3x3 128->128 at 16x16", 128, 128, 16, 3, 1),
    ("3x3 256->128 at 16x16", 256, 128, 16, 3, 1),
    ("3x3 128->128 at 8x8", 128, 128, 8, 3, 1),
    ("3x3 s2 64->64 at 32x32", 64, 64, 32, 3, 2),
    ("1x1 256->128 at 16x16", 256, 128, 16, 1, 1),
    ("3x3 3->64 at 32x32", 3, 64, 32, 3, 1),
]

# The 64x64 U-Net's costliest convolutions (how many one forward has), as
# CASES_64 in conv.rs.
CASES_64 = [
    ("3x3 64->64 at 64x64 (7)", 64, 64, 64, 3, 1),
    ("3x3 128->128 at 32x32 (7)", 128, 128, 32, 3, 1),
    ("3x3 128->128 at 16x16 (11)", 128, 128, 16, 3, 1),
    ("3x3 256->128 at 32x32 (2)", 256, 128, 32, 3, 1),
    ("3x3 128->64 at 64x64 (2)", 128, 64, 64, 3, 1),
    ("3x3 s2 64->64 at 64x64 (1)", 64, 64, 64, 3, 2),
    ("1x1 128->64 at 64x64 (2)", 128, 64, 64, 1, 1),
    ("3x3 3->64 at 64x64 (1)", 3, 64, 64, 3, 1),
]


def median_ms(f, iters):
    for _ in range(3):
        f()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    args = torch_args(__doc__, size=True)
    print(f"{'case':<30}{'fwd':>10}{'f+b':>12}")
    for name, c, o, side, k, stride in CASES_64 if args.size == 64 else CASES:
        x = torch.randn(16, c, side, side, requires_grad=True)
        conv = torch.nn.Conv2d(c, o, k, stride, padding=k // 2)

        def forward():
            with torch.no_grad():
                conv(x)

        def forward_backward():
            conv(x).sum().backward()

        fwd = median_ms(forward, args.iters)
        both = median_ms(forward_backward, args.iters)
        print(f"{name:<30}{fwd:>8.1f}ms{both:>10.1f}ms")


if __name__ == "__main__":
    main()
