"""PyTorch counterpart of benches/train.rs: forward and backward of a 3 x 3
depthwise convolution (groups = channels, "same" padding as faceres: TF's
asymmetric padding for stride 2), plus bias and relu6, at batch 32, on the
CPU, for the shapes of the faceres blocks that `--train-blocks 9` trains.

    python3 benches/python/bench_torch_depthwise.py --threads 2

Prints one line per shape and memory format: the median of --repeat steps.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(28, 256, 1), (28, 256, 2), (14, 512, 1), (7, 1024, 1)]


def step(x, w, b, stride):
    if stride == 1:
        xp = F.pad(x, (1, 1, 1, 1))
    else:  # TF "SAME" for even sizes: the extra row/column at the bottom/right
        xp = F.pad(x, (0, 1, 0, 1))
    y = F.conv2d(xp, w, b, stride=stride, groups=x.shape[1]).clamp(0, 6)
    y.sum().backward()
    return w.grad.sum().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}")
    for size, ch, stride in SHAPES:
        for fmt in ("nchw", "channels_last"):
            x = torch.randn(a.batch, ch, size, size)
            if fmt == "channels_last":
                x = x.contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True)
            w = (0.3 * torch.randn(ch, 1, 3, 3)).requires_grad_(True)
            b = torch.zeros(ch, requires_grad=True)
            times = []
            for _ in range(a.repeat + 2):
                x.grad = w.grad = b.grad = None
                t = time.perf_counter()
                step(x, w, b, stride)
                times.append(time.perf_counter() - t)
            med = statistics.median(times[2:])
            print(f"{size}x{size}x{ch}_s{stride} {fmt}: {med * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
