"""The command line shared by the PyTorch benchmark scripts: --threads and
--iters, applied to torch (thread count, seed) and echoed in a header."""

import argparse

import torch


def torch_args(doc, size=False):
    """Parses --threads (default 2) and --iters (default 7), and with `size`
    --size (32 or 64, default 32), for the script whose docstring is `doc`;
    sets torch's threads and seed, prints them."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=7)
    if size:
        parser.add_argument("--size", type=int, choices=(32, 64), default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    return args
