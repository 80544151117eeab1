#!/usr/bin/env python3
"""facenet-pytorch baseline for benches/face.rs: MTCNN on the 14 320x320
photos of assets/samples (CIPLAB and FFHQ/StyleGAN2), CPU, N threads.

    pip install -r tests/fixtures/face/requirements.txt
    pip install --no-deps facenet-pytorch==2.6.0
    python3 benches/python/bench_mtcnn.py [--threads 2] [--rounds 20]

Timed with time.perf_counter over the decoded images (decoding excluded,
as in the Rust bench):

* detect: MTCNN(keep_all=True).detect(img, landmarks=True), boxes,
  probabilities and landmarks -- the work of the Rust "detect only" bench;
* detect+extract: MTCNN(keep_all=True)(img), detection plus facenet's own
  crop-and-resize of every face -- its counterpart of "detect+align".

Prints per-photo times (median and min over rounds) on stderr and one JSON
document on stdout.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import torch
    from PIL import Image
    from facenet_pytorch import MTCNN

    torch.set_num_threads(args.threads)
    files = sorted(
        f for f in (ROOT / "assets" / "samples").glob("*.jpg")
        if f.name.startswith(("ciplab_", "ffhq_stylegan2_"))
    )
    imgs = [Image.open(f).convert("RGB") for f in files]
    assert all(i.size == (320, 320) for i in imgs)
    mtcnn = MTCNN(keep_all=True, device="cpu")

    def run(fn):
        for img in imgs:  # warm-up
            fn(img)
        per_photo = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for img in imgs:
                fn(img)
            per_photo.append((time.perf_counter() - t0) / len(imgs))
        return {"median_ms": statistics.median(per_photo) * 1e3, "min_ms": min(per_photo) * 1e3}

    with torch.no_grad():
        results = {
            "detect": run(lambda img: mtcnn.detect(img, landmarks=True)),
            "detect+extract": run(lambda img: mtcnn(img)),
        }
    for name, r in results.items():
        print(f"facenet-pytorch {name}: {r['median_ms']:.2f} ms/photo (min {r['min_ms']:.2f})", file=sys.stderr)
    out = {
        "photos": len(imgs),
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
