#!/usr/bin/env python3
"""Probe of examples/crop_study.rs: each domain's face tightness (eye
distance over the image's shorter side), then the logistic-regression
probe of examples/template_study.py on the 2816-value descriptor, with
faces tighter than a threshold taken whole and the rest aligned.

    python3 examples/crop_study.py OUT_DIR [THRESHOLD...]
"""
import csv
import sys

import numpy as np

from template_study import DOMAINS, load_meta, probe


def main():
    d = sys.argv[1]
    ds, y, tr, va, w = load_meta(d)
    ok = tr | va
    tight = np.array([float(r["tightness"]) for r in csv.DictReader(open(f"{d}/tightness.csv"))])
    for n in DOMAINS:
        q = np.percentile(tight[ok & (ds == n)], [1, 10, 50, 90, 99])
        print(f"tightness {n:15} 1/10/50/90/99 %: " + " ".join(f"{v:.3f}" for v in q))
    aligned = np.fromfile(f"{d}/aligned.f32", dtype=np.float32).reshape(len(ds), -1)
    whole = np.fromfile(f"{d}/whole.f32", dtype=np.float32).reshape(len(ds), -1)
    for t in [float(a) for a in sys.argv[2:]] or [9.0, 0.5, 0.4, 0.35, 0.3, 0.0]:
        x = np.where((tight > t)[:, None], whole, aligned)
        share = [np.mean(tight[ok & (ds == n)] > t) for n in DOMAINS]
        aucs = probe(x, ds, y, tr, va, w)
        print(f"whole above {t:4}: " + " / ".join(f"{a:.3f}" for a in aucs)
              + "   (share whole: " + " / ".join(f"{v:.2f}" for v in share) + ")", flush=True)


if __name__ == "__main__":
    main()
