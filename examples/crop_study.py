#!/usr/bin/env python3
"""Probe of examples/crop_study.rs: each domain's face tightness (eye
distance over the image's shorter side), then the logistic-regression
probe of examples/template_study.py on the 2816-value descriptor, with
faces tighter than a threshold taken whole and the rest aligned.

    python3 examples/crop_study.py OUT_DIR
"""
import csv
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

DOMAINS = ("ciplab", "dfdc", "ffhq_stylegan2")


def main():
    d = sys.argv[1]
    rows = list(csv.DictReader(open(f"{d}/meta.csv")))
    ds = np.array([r["dataset"] for r in rows])
    y = np.array([r["label"] == "fake" for r in rows]).astype(int)
    split = np.array([r["split"] for r in rows])
    ok = np.array([r["has_face"] == "true" for r in rows])
    tight = np.array([float(r["tightness"]) for r in csv.DictReader(open(f"{d}/tightness.csv"))])
    tr, va = (split == "Train") & ok, (split == "Val") & ok
    for n in DOMAINS:
        q = np.percentile(tight[ok & (ds == n)], [1, 10, 50, 90, 99])
        print(f"tightness {n:15} 1/10/50/90/99 %: " + " ".join(f"{v:.3f}" for v in q))
    w = np.zeros(len(rows))
    for name in set(ds):
        for label in (0, 1):
            m = tr & (ds == name) & (y == label)
            if m.sum():
                w[m] = 1.0 / m.sum()
    aligned = np.fromfile(f"{d}/aligned.f32", dtype=np.float32).reshape(len(rows), -1)
    whole = np.fromfile(f"{d}/whole.f32", dtype=np.float32).reshape(len(rows), -1)
    for t in [float(a) for a in sys.argv[2:]] or [9.0, 0.5, 0.4, 0.35, 0.3, 0.0]:
        x = np.where((tight > t)[:, None], whole, aligned)
        share = [np.mean(tight[ok & (ds == n)] > t) for n in DOMAINS]
        sc = StandardScaler().fit(x[tr])
        clf = LogisticRegression(C=0.01, max_iter=3000)
        clf.fit(sc.transform(x[tr]), y[tr], sample_weight=w[tr] * tr.sum())
        s = clf.decision_function(sc.transform(x))
        aucs = [roc_auc_score(y[va & (ds == n)], s[va & (ds == n)]) for n in DOMAINS]
        print(f"whole above {t:4}: " + " / ".join(f"{a:.3f}" for a in aucs)
              + "   (share whole: " + " / ".join(f"{v:.2f}" for v in share) + ")", flush=True)


if __name__ == "__main__":
    main()
