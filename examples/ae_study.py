#!/usr/bin/env python3
"""Do auto-encoder re-drawn faces (`examples/ae_study.rs`) teach a probe
what a generator it never saw leaves?

    python3 examples/ae_study.py FACES_DIR AE_DIR ORIGINAL_DESCRIPTORS.f32

FACES_DIR: `spectrum_study`'s output (meta.csv, faces224.u8); AE_DIR:
`ae_study`'s (recon224.u8, recon.f32); ORIGINAL_DESCRIPTORS.f32: the
faceres descriptor of every aligned face, the same rows (`crop_study`'s
aligned.f32 or `res_study`'s size224.f32). Measured with the AE trained
on the real training faces of ciplab and dfdc (docs/MODEL.md).

For each feature set (the 2816-value descriptor; the spectrum and residual
statistics of `spectrum_study.py`) the template study's standardised
logistic regression is fitted on the training faces of every domain but
the one left out, without and with the re-drawn training reals of the
fitted domains as one more group of fakes; printed: the left-out domain's
validation AUC, and how well the probe tells validation faces from their
own re-drawings (AE AUC).
"""
import os
import sys

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from spectrum_study import SIZE, features
from template_study import DOMAINS, load_meta


def fit_score(x, xr, ds, y, tr, va, w, held, with_ae):
    fit = tr & (ds != held)
    xs, ys, ws = [x[fit]], [y[fit]], [w[fit] / w[fit].sum()]
    n_groups = len({(d, l) for d, l in zip(ds[fit], y[fit])})
    if with_ae:
        m = fit & (y == 0)
        xs.append(xr[m])
        ys.append(np.ones(m.sum(), int))
        ws.append(np.full(m.sum(), 1.0 / m.sum() / n_groups))
    xf, yf, wf = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
    sc = StandardScaler().fit(xf)
    clf = LogisticRegression(C=0.01, max_iter=3000)
    clf.fit(sc.transform(xf), yf, sample_weight=wf / wf.mean())
    s = clf.decision_function(sc.transform(x))
    sr = clf.decision_function(sc.transform(xr))
    aucs = {n: roc_auc_score(y[va & (ds == n)], s[va & (ds == n)]) for n in DOMAINS}
    real_va = va & (y == 0)
    ae = roc_auc_score(np.r_[np.zeros(real_va.sum()), np.ones(real_va.sum())],
                       np.r_[s[real_va], sr[real_va]])
    return aucs, ae


def main():
    d, ae_dir, desc_path = sys.argv[1:4]
    ds, y, tr, va, w = load_meta(d)
    n = len(ds)
    sets = {}
    desc = np.fromfile(desc_path, dtype=np.float32).reshape(n, -1)
    rdesc = np.fromfile(os.path.join(ae_dir, "recon.f32"), dtype=np.float32).reshape(n, -1)
    sets["descriptor"] = (desc, rdesc)
    cache = os.path.join(d, "spectrum_features.npz")
    orig = dict(np.load(cache)) if os.path.exists(cache) else features(
        np.memmap(os.path.join(d, "faces224.u8"), np.uint8, "r").reshape(n, SIZE, SIZE, 3))
    rcache = os.path.join(ae_dir, "spectrum_features.npz")
    if os.path.exists(rcache):
        rec = dict(np.load(rcache))
    else:
        rec = features(np.memmap(os.path.join(ae_dir, "recon224.u8"), np.uint8, "r")
                       .reshape(n, SIZE, SIZE, 3))
        np.savez(rcache, **rec)
    for k in ("spectrum", "residual"):
        ok = np.isfinite(orig[k]).all(axis=0) & np.isfinite(rec[k]).all(axis=0)
        sets[k] = (orig[k][:, ok], rec[k][:, ok])
    # Mean absolute difference of the re-drawings, as a sanity check.
    faces = np.memmap(os.path.join(d, "faces224.u8"), np.uint8, "r").reshape(n, -1)
    recon = np.memmap(os.path.join(ae_dir, "recon224.u8"), np.uint8, "r").reshape(n, -1)
    idx = np.flatnonzero(va & (y == 0))[:200]
    mad = np.abs(faces[idx].astype(np.float32) - recon[idx].astype(np.float32)).mean()
    print(f"re-drawing: mean absolute difference {mad:.2f} / 255 on 200 validation reals")
    print("left-out domain's AUC (AE AUC: validation reals against their re-drawings)")
    for name, (x, xr) in sets.items():
        for held in DOMAINS:
            a0, e0 = fit_score(x, xr, ds, y, tr, va, w, held, False)
            a1, e1 = fit_score(x, xr, ds, y, tr, va, w, held, True)
            others = [k for k in DOMAINS if k != held]
            print(f"{name:10} {held:15} left out: {a0[held]:.3f} -> {a1[held]:.3f}   "
                  + "  ".join(f"{k} {a0[k]:.3f} -> {a1[k]:.3f}" for k in others)
                  + f"   AE AUC {e0:.3f} -> {e1:.3f}", flush=True)


if __name__ == "__main__":
    main()
