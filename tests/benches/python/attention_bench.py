"""PyTorch side of `cargo bench -p dtx-tests --bench attention`
(docs/performance.md).

Times torch.nn.functional.scaled_dot_product_attention (what diffusers'
attention processor calls) on the shapes of tests/benches/attention.rs:
batch 16, the token counts of the `dtx bench engine` U-Net's attention
levels, heads x values per head. Forward, and backward from a fixed output
gradient, each the median of --iters runs after 2 untimed ones, in
milliseconds. Run by hand, never in CI, with the thread count dtx gets:

    python tests/benches/python/attention_bench.py --threads 2
    RAYON_NUM_THREADS=2 cargo bench -p dtx-tests --bench attention

Needs torch (pip install torch).
"""

import statistics
import time

import torch
import torch.nn.functional as F
from bench_args import torch_args

# (tokens, heads, values per head) at batch 16, as in attention.rs.
CASES = [(64, 4, 32), (256, 4, 32), (1024, 4, 32), (1024, 1, 128)]


def main():
    args = torch_args(__doc__)
    print(f"{'case':<26} {'forward':>10} {'backward':>10}")
    for n, heads, d in CASES:
        q, k, v = (torch.randn(16, heads, n, d, requires_grad=True) for _ in range(3))
        d_out = torch.randn(16, heads, n, d)
        forward, backward = [], []
        for i in range(args.iters + 2):
            start = time.perf_counter()
            out = F.scaled_dot_product_attention(q, k, v)
            middle = time.perf_counter()
            out.backward(d_out)
            end = time.perf_counter()
            for t in (q, k, v):
                t.grad = None
            if i >= 2:
                forward.append(middle - start)
                backward.append(end - middle)
        print(
            f"{f'N={n} {heads}x{d}':<26} {statistics.median(forward) * 1e3:>8.1f}ms"
            f" {statistics.median(backward) * 1e3:>8.1f}ms"
        )


if __name__ == "__main__":
    main()
