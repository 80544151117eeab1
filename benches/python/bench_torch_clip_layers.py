#!/usr/bin/env python3
"""PyTorch counterpart of `benches/train.rs`'s CLIP group: forward and
backward of the last 1 and 2 transformer layers of a CLIP ViT-B/16 image
tower (real dimensions, random weights), then the final layer norm and the
visual projection, at batch 8 from given hidden states, on the CPU.

The layer is transformers' CLIPEncoderLayer written out (pre-norm
attention with separate q/k/v projections and the query scale, quick GELU
MLP), so that no download is needed.

    python3 benches/python/bench_torch_clip_layers.py --threads 2

Prints one JSON line per case: median and minimum seconds per step.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

D, MLP, HEADS, TOKENS, PROJ, BATCH = 768, 3072, 12, 197, 512, 8


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D, eps=1e-5)
        self.q = nn.Linear(D, D)
        self.k = nn.Linear(D, D)
        self.v = nn.Linear(D, D)
        self.o = nn.Linear(D, D)
        self.ln2 = nn.LayerNorm(D, eps=1e-5)
        self.fc1 = nn.Linear(D, MLP)
        self.fc2 = nn.Linear(MLP, D)

    def forward(self, x):
        b, s, _ = x.shape
        h = self.ln1(x)
        split = lambda t: t.view(b, s, HEADS, D // HEADS).transpose(1, 2)
        q = split(self.q(h) * (D // HEADS) ** -0.5)
        k, v = split(self.k(h)), split(self.v(h))
        att = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, D)
        x = x + self.o(y)
        h = self.fc1(self.ln2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    post = nn.LayerNorm(D, eps=1e-5).requires_grad_(False)
    proj = nn.Linear(D, PROJ, bias=False).requires_grad_(False)
    x = torch.randn(BATCH, TOKENS, D)
    for layers in (1, 2):
        stack = nn.Sequential(*[Layer() for _ in range(layers)])

        def step():
            stack.zero_grad(set_to_none=True)
            out = proj(post(stack(x)))
            out.sum().backward()

        for _ in range(2):
            step()
        times = []
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        print(json.dumps({
            "case": f"torch/{layers}_layers",
            "threads": a.threads,
            "torch": torch.__version__,
            "median_s": statistics.median(times),
            "min_s": min(times),
        }))


if __name__ == "__main__":
    main()
