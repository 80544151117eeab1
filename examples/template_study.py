#!/usr/bin/env python3
"""Logistic-regression probe on the features of examples/template_study.rs
(rows of 2048 values) or examples/res_study.rs (rows of 2816: the global
token's descriptor).

For each feature file: standardise on the training faces, fit scikit-learn's
LogisticRegression (C = 0.01, each dataset x label group weighted equally,
as sfam train balances its epochs), and print the validation AUC per domain.

    python3 examples/template_study.py OUT_DIR scale1.4 scale1.8 scale2.2
    python3 examples/template_study.py OUT_DIR size224 size320 size448
"""
import csv
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

DOMAINS = ("ciplab", "dfdc", "ffhq_stylegan2")
PARTS = {
    "pooled": slice(0, 1024),
    "patch-mean": slice(1024, 1536),
    "patch-max": slice(1536, 2048),
    "pooled+mean": slice(0, 1536),
}
DESCRIPTOR_PARTS = {
    "pooled": slice(0, 1024),
    "patch-mean": slice(1024, 1536),
    "texture": slice(1536, 2816),
    "descriptor": slice(0, 2816),
}


def load_meta(d):
    """The rows of OUT_DIR/meta.csv as arrays: dataset, label (1 = fake),
    the training and validation masks (faces found only), and sample
    weights that give each dataset x label group of the training faces
    the same total."""
    rows = list(csv.DictReader(open(f"{d}/meta.csv")))
    ds = np.array([r["dataset"] for r in rows])
    y = np.array([r["label"] == "fake" for r in rows]).astype(int)
    split = np.array([r["split"] for r in rows])
    ok = np.array([r["has_face"] == "true" for r in rows])
    tr, va = (split == "Train") & ok, (split == "Val") & ok
    w = np.zeros(len(rows))
    for name in set(ds):
        for label in (0, 1):
            m = tr & (ds == name) & (y == label)
            if m.sum():
                w[m] = 1.0 / m.sum()
    return ds, y, tr, va, w


def probe(x, ds, y, tr, va, w):
    """Validation AUC per domain of the standardised logistic regression
    fitted on the training rows of x."""
    sc = StandardScaler().fit(x[tr])
    clf = LogisticRegression(C=0.01, max_iter=3000)
    clf.fit(sc.transform(x[tr]), y[tr], sample_weight=w[tr] * tr.sum())
    s = clf.decision_function(sc.transform(x))
    return [roc_auc_score(y[va & (ds == n)], s[va & (ds == n)]) for n in DOMAINS]


def main():
    d = sys.argv[1]
    ds, y, tr, va, w = load_meta(d)
    print(f"{tr.sum()} training faces, {va.sum()} validation faces; AUC " + " / ".join(DOMAINS))
    for name in sys.argv[2:]:
        x = np.fromfile(f"{d}/{name}.f32", dtype=np.float32).reshape(len(ds), -1)
        parts = DESCRIPTOR_PARTS if x.shape[1] == 2816 else PARTS
        for part, cols in parts.items():
            aucs = probe(x[:, cols], ds, y, tr, va, w)
            print(f"{name:10} {part:11} " + " / ".join(f"{a:.3f}" for a in aucs), flush=True)


if __name__ == "__main__":
    main()
