#!/usr/bin/env python3
"""Logistic-regression probe on the features of examples/level_study.rs.

For each feature set: standardise on the training faces, fit scikit-learn's
LogisticRegression (C = 0.01, as examples/template_study.py; each dataset x
label group weighted equally, as sfam train balances its epochs), and print
the validation AUC per domain, their mean, and the mean Cross-AUC (real faces
of one domain against fake faces of another).

    python3 examples/level_study.py OUT_DIR [C]
"""
import csv
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

DOMAINS = ("ciplab", "dfdc", "ffhq_stylegan2")


def load(d, name, n):
    return np.fromfile(f"{d}/{name}.f32", dtype=np.float32).reshape(n, -1)


def main():
    d = sys.argv[1]
    c = float(sys.argv[2]) if len(sys.argv) > 2 else 0.01
    rows = list(csv.DictReader(open(f"{d}/meta.csv")))
    n = len(rows)
    ds = np.array([r["dataset"] for r in rows])
    y = np.array([r["label"] == "fake" for r in rows]).astype(int)
    split = np.array([r["split"] for r in rows])
    ok = np.array([r["has_face"] == "true" for r in rows])
    tr, va = (split == "Train") & ok, (split == "Val") & ok
    w = np.zeros(n)
    for name in set(ds):
        for label in (0, 1):
            m = tr & (ds == name) & (y == label)
            if m.sum():
                w[m] = 1.0 / m.sum()
    blocks = {k: load(d, f"block{k}", n) for k in range(1, 14)}
    pooled = load(d, "pooled", n)
    regions = load(d, "regions11", n)
    extra = {name: load(d, name, n) for name in ("regions7", "regions9", "regionstd9", "regionstd11")}

    def half(x, part):
        h = x.shape[1] // 2
        return x[:, :h] if part == "mean" else x[:, h:]

    sets = {}
    for k, x in blocks.items():
        sets[f"block{k} mean"] = half(x, "mean")
        sets[f"block{k} mean+std"] = x
    sets["pooled"] = pooled
    sets["pooled + block11 mean (shipped)"] = np.hstack([pooled, half(blocks[11], "mean")])
    sets["regions11 (9x512)"] = regions
    sets["shipped + regions11"] = np.hstack([pooled, half(blocks[11], "mean"), regions])
    sets["shipped + block11 std"] = np.hstack([pooled, blocks[11]])
    sets["shipped + blocks 5,7,9 mean+std"] = np.hstack(
        [pooled, half(blocks[11], "mean"), blocks[5], blocks[7], blocks[9]]
    )
    sets["shipped + blocks 9,10 mean+std"] = np.hstack(
        [pooled, half(blocks[11], "mean"), blocks[9], blocks[10]]
    )
    shipped = [pooled, half(blocks[11], "mean")]
    sets["shipped + blocks 3,5,7,9 mean+std"] = np.hstack(shipped + [blocks[k] for k in (3, 5, 7, 9)])
    sets["shipped + blocks 5,7,9,11 mean+std"] = np.hstack(shipped + [blocks[k] for k in (5, 7, 9, 11)])
    sets["shipped + blocks 5-11 mean+std"] = np.hstack(shipped + [blocks[k] for k in range(5, 12)])
    sets["shipped + blocks 5,7,9 std"] = np.hstack(shipped + [half(blocks[k], "std") for k in (5, 7, 9)])
    sets["shipped + blocks 5,7,9 mean+std + regions11"] = np.hstack(
        shipped + [blocks[k] for k in (5, 7, 9)] + [regions])
    sets["regions9 (9x512)"] = extra["regions9"]
    sets["regions7 (9x512)"] = extra["regions7"]
    sets["regionstd11 (9x512)"] = extra["regionstd11"]
    sets["regionstd9 (9x512)"] = extra["regionstd9"]
    sets["regions11 + regions9"] = np.hstack([regions, extra["regions9"]])
    sets["regions11 + regionstd11"] = np.hstack([regions, extra["regionstd11"]])
    sets["regions11 + regionstd9"] = np.hstack([regions, extra["regionstd9"]])
    sets["now + regions11"] = np.hstack(
        shipped + [half(blocks[k], "std") for k in (5, 7, 9)] + [regions])
    sets["now + regions11 + regions9"] = np.hstack(
        shipped + [half(blocks[k], "std") for k in (5, 7, 9)] + [regions, extra["regions9"]])
    only = sys.argv[3:] if len(sys.argv) > 3 else None
    print(f"{tr.sum()} training faces, {va.sum()} validation faces, C = {c}")
    print("features | width | AUC " + " / ".join(DOMAINS) + " | mean | Cross-AUC")
    for name, x in sets.items():
        if only and not any(o in name for o in only):
            continue
        sc = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=c, max_iter=3000)
        clf.fit(sc.transform(x[tr]), y[tr], sample_weight=w[tr] * tr.sum())
        s = clf.decision_function(sc.transform(x))
        aucs = [roc_auc_score(y[va & (ds == m)], s[va & (ds == m)]) for m in DOMAINS]
        cross = []
        for a in DOMAINS:
            for b in DOMAINS:
                if a == b:
                    continue
                real = s[va & (ds == a) & (y == 0)]
                fake = s[va & (ds == b) & (y == 1)]
                cross.append((fake[:, None] > real[None, :]).mean()
                             + 0.5 * (fake[:, None] == real[None, :]).mean())
        print(f"{name} | {x.shape[1]} | " + " / ".join(f"{a:.3f}" for a in aucs)
              + f" | {np.mean(aucs):.3f} | {np.mean(cross):.3f}", flush=True)


if __name__ == "__main__":
    main()
