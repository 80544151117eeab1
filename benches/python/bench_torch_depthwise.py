"""PyTorch counterpart of benches/train.rs: forward and backward of a 3 x 3
depthwise convolution (groups = channels, "same" padding as faceres: TF's
asymmetric padding for stride 2), plus bias and relu6, and of a 1 x 1
pointwise convolution plus bias and relu6, at batch 32, on the CPU, for the
shapes of the faceres blocks that `--train-blocks 9` trains.

    python3 benches/python/bench_torch_depthwise.py --threads 2

Prints one line per shape and memory format: the median of --repeat steps.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

SHAPES = [(28, 256, 1), (28, 256, 2), (14, 512, 1), (7, 1024, 1)]
POINTWISE = [(28, 256, 256), (14, 512, 512), (7, 512, 1024), (7, 1024, 1024)]


def step(x, w, b, stride):
    if stride == 1:
        xp = F.pad(x, (1, 1, 1, 1))
    else:  # TF "SAME" for even sizes: the extra row/column at the bottom/right
        xp = F.pad(x, (0, 1, 0, 1))
    y = F.conv2d(xp, w, b, stride=stride, groups=x.shape[1]).clamp(0, 6)
    y.sum().backward()
    return w.grad.sum().item()


def step_pointwise(x, w, b, _stride):
    y = F.conv2d(x, w, b).clamp(0, 6)
    y.sum().backward()
    return w.grad.sum().item()


def input_map(batch, ch, size, fmt):
    x = torch.randn(batch, ch, size, size)
    if fmt == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(True)


def median_ms(fn, x, w, b, stride, repeat):
    times = []
    for _ in range(repeat + 2):
        x.grad = w.grad = b.grad = None
        t = time.perf_counter()
        fn(x, w, b, stride)
        times.append(time.perf_counter() - t)
    return statistics.median(times[2:]) * 1e3


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
            x = input_map(a.batch, ch, size, fmt)
            w = (0.3 * torch.randn(ch, 1, 3, 3)).requires_grad_(True)
            b = (0.1 * torch.randn(ch)).requires_grad_(True)
            med = median_ms(step, x, w, b, stride, a.repeat)
            print(f"depthwise {size}x{size}x{ch}_s{stride} {fmt}: {med:.1f} ms")
    for size, cin, cout in POINTWISE:
        for fmt in ("nchw", "channels_last"):
            x = input_map(a.batch, cin, size, fmt)
            w = (0.05 * torch.randn(cout, cin, 1, 1)).requires_grad_(True)
            b = (0.1 * torch.randn(cout)).requires_grad_(True)
            med = median_ms(step_pointwise, x, w, b, 1, a.repeat)
            print(f"pointwise {size}x{size}x{cin}_to_{cout} {fmt}: {med:.1f} ms")


if __name__ == "__main__":
    main()
