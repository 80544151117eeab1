#!/usr/bin/env python3
"""SFAM-B/16 in PyTorch, the counterpart of benches/model.rs.

transformers' CLIP ViT-B/16 image tower with visual projection (random
weights, float32, eager attention and SDPA both measured) plus the PyTorch
SFAM heads of tests/fixtures/model/generate.py (same hyper-parameters as the
Rust bench), torch.set_num_threads(2), no_grad. Prints faces per second at
batch 1 and 8 (median over repeated timed runs after warm-up) and the process
CPU time per face (less disturbed than wall time when the cores are shared).

    python benches/python/bench_torch_sfam.py [--seconds 10] [--device cuda] [--batches 1,8,64]

On a GPU the outputs are synchronised (torch.cuda.synchronize) before each
timer stops, as the Rust side reads its scores back to the host.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "fixtures", "model"))
try:  # generate.py imports open_clip for its tokenizer fixtures; the heads do not need it
    import open_clip  # noqa: F401
except ImportError:
    import types
    sys.modules["open_clip"] = types.ModuleType("open_clip")
from generate import REGIONS, SfamHead  # noqa: E402

from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: E402


def build(attn):
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, image_size=224, patch_size=16,
                           projection_dim=512, hidden_act="quick_gelu")
    cfg._attn_implementation = attn
    vision = CLIPVisionModelWithProjection(cfg).eval()
    head = SfamHead({
        "dim": 512, "grid": [14, 14], "adapter_hidden": 128, "num_experts": 4, "top_k": 2,
        "expert_hidden": 256, "layer_norm_eps": 1e-5, "mask_eps": 1e-6,
        "prompts": [f"prompt {i}" for i in range(9)], "regions": REGIONS,
    }).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.02)
    return vision, head


def forward(vision, head, px, masks):
    # Class and patch tokens through post_layernorm and the projection, one pass.
    last = vision.vision_model(pixel_values=px).last_hidden_state
    tokens = vision.visual_projection(vision.vision_model.post_layernorm(last))
    return head(tokens[:, 0], tokens[:, 1:], masks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    dev = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    torch.set_num_threads(2)
    torch.manual_seed(0)
    results = []
    for attn in ["sdpa", "eager"]:
        vision, head = build(attn)
        vision, head = vision.to(dev), head.to(dev)
        for batch in batches:
            px = torch.randn(batch, 3, 224, 224, device=dev)
            masks = torch.rand(batch, len(REGIONS), 196, device=dev)
            with torch.inference_mode():
                for _ in range(2):
                    forward(vision, head, px, masks)
                sync()
                times = []
                start = time.perf_counter()
                cpu0 = time.process_time()
                while time.perf_counter() - start < args.seconds or len(times) < 3:
                    t0 = time.perf_counter()
                    forward(vision, head, px, masks)
                    sync()
                    times.append(time.perf_counter() - t0)
                cpu = time.process_time() - cpu0
            med = statistics.median(times)
            r = {"impl": f"pytorch-{torch.__version__}-{attn}", "device": str(dev), "batch": batch,
                 "runs": len(times), "median_s": round(med, 4), "faces_per_s": round(batch / med, 3),
                 "cpu_s_per_face": round(cpu / (len(times) * batch), 4)}
            results.append(r)
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
