"""PyTorch + diffusers side of `dtx bench engine` (docs/performance.md).

Times, on the CPU with the same thread count as dtx (or on a GPU with
--device cuda), a diffusers
UNet2DModel with the configuration `dtx bench engine` builds
(host/src/bench.rs, `unet_config`):

- a training step: forward, ε-MSE, backward, AdamW step (lr 1e-4);
- a DDIM sampling step: forward under no_grad, then DDIMScheduler.step;

median over --iters steps after --warmup untimed ones, and the peak resident
memory of the process (VmHWM; ru_maxrss where there is no /proc). Run by hand, never in CI:

    python tests/benches/python/unet_bench.py --threads 2
    target/release/dtx bench engine        # with RAYON_NUM_THREADS=2

or both at once, interleaved, with the ratios (dtx embeds this file):

    target/release/dtx bench engine --compare "$(which python)" --rounds 3

Needs torch and diffusers (pip install torch diffusers).
"""

import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import DDIMScheduler, UNet2DModel


def unet_config(channels, layers, size):
    n = len(channels)
    return dict(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(channels),
        layers_per_block=layers,
        down_block_types=tuple("DownBlock2D" if i == 0 else "AttnDownBlock2D" for i in range(n)),
        up_block_types=tuple("UpBlock2D" if i == n - 1 else "AttnUpBlock2D" for i in range(n)),
        norm_num_groups=32,
        attention_head_dim=32,
    )


def peak_rss_mib():
    """This process's peak resident memory, MiB: Linux's VmHWM, which starts
    afresh at exec; ru_maxrss elsewhere. (On Linux ru_maxrss keeps the
    parent's high-water mark across fork and exec, so a script started by a
    6.8 GiB `dtx bench engine --compare` reported 6.8 GiB whatever it used.)"""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", default="64,128,128")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (peak memory is then the GPU's)")
    a = p.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    channels = [int(c) for c in a.channels.split(",")]
    model = UNet2DModel(**unet_config(channels, a.layers, a.size)).to(dev)
    params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    shape = (a.batch, 3, a.size, a.size)
    t = torch.full((a.batch,), 500, dtype=torch.long, device=dev)

    model.train()
    train = []
    for i in range(a.warmup + a.iters):
        x, eps = torch.randn(shape, device=dev), torch.randn(shape, device=dev)
        sync()
        start = time.perf_counter()
        out = model(x, t).sample
        loss = ((out - eps) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if i >= a.warmup:
            train.append(time.perf_counter() - start)

    model.eval()
    sync()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    sched.set_timesteps(50)
    x = torch.randn(shape, device=dev)
    ddim = []
    with torch.no_grad():
        for i in range(a.warmup + a.iters):
            start = time.perf_counter()
            eps = model(x, t).sample
            x = sched.step(eps, 500, x, eta=0.0).prev_sample
            sync()
            if i >= a.warmup:
                ddim.append(time.perf_counter() - start)

    print(json.dumps(dict(
        parameters=params,
        train_step_s=statistics.median(train),
        ddim_step_s=statistics.median(ddim),
        peak_rss_mib=peak_rss_mib() if dev.type == "cpu" else torch.cuda.max_memory_allocated() / 2**20,
        threads=a.threads,
        torch=torch.__version__,
    )))


if __name__ == "__main__":
    main()
