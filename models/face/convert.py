#!/usr/bin/env python3
"""Convert facenet-pytorch's MTCNN weights to one safetensors file.

    pip download facenet-pytorch==2.6.0 --no-deps -d /tmp/fnp
    unzip -o /tmp/fnp/facenet_pytorch-2.6.0-py3-none-any.whl -d /tmp/fnp
    pip install torch safetensors numpy
    python models/face/convert.py /tmp/fnp/facenet_pytorch/data models/face/mtcnn.safetensors

Each of pnet.pt, rnet.pt, onet.pt is a PyTorch state dict; its tensors are
written as float32 under the prefixes "pnet.", "rnet.", "onet." with their
PyTorch names (conv1.weight, prelu1.weight, conv4_1.bias, dense5.weight ...),
the names src/face/mtcnn.rs reads. The facenet-pytorch licence (MIT) is in
LICENSE-facenet-pytorch.md beside the output.
"""
import hashlib
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    tensors = {}
    for net in ("pnet", "rnet", "onet"):
        state = torch.load(src / f"{net}.pt", map_location="cpu", weights_only=True)
        for name, t in state.items():
            tensors[f"{net}.{name}"] = t.detach().to(torch.float32).contiguous()
    save_file(tensors, str(out), metadata={"source": "facenet-pytorch 2.6.0 (MIT)", "format": "pt"})
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    n = sum(t.numel() for t in tensors.values())
    print(f"{out}: {len(tensors)} tensors, {n} parameters, sha256 {digest}")


if __name__ == "__main__":
    main()
