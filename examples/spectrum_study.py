#!/usr/bin/env python3
"""Frequency and noise statistics of the aligned face: do they tell real
from fake, on the domains they are fitted on and on a domain left out?

    cargo run --release --example spectrum_study -- OUT_DIR
    python3 examples/spectrum_study.py OUT_DIR [DESCRIPTOR.f32]

Feature sets (per face, from `OUT_DIR/faces224.u8`):
  spectrum   azimuthal mean of the log power spectrum of the grey face
             (Hann window), 40 log-spaced radial bands
  residual   the high-pass residual (face minus its 3 × 3 mean, per
             channel): standard deviation, kurtosis per channel, the
             correlations between channels' residuals, and the residual
             grey face's own 40-band spectrum
  both       the two together
and, given a descriptor file of the same rows (`res_study`'s size224.f32),
each beside the faceres descriptor. The probe is template_study's
standardised logistic regression; printed: validation AUC per domain with
every domain fitted, then each domain's AUC fitted without it.
"""
import os
import sys

import numpy as np
from scipy.ndimage import uniform_filter

from template_study import DOMAINS, load_meta, probe

SIZE = 224
BANDS = 40


def radial_bands(n):
    """Band index of every rfft2 bin (log-spaced radii), -1 for DC."""
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    r = np.sqrt(fx**2 + fy**2)
    edges = np.geomspace(1.0 / n, np.sqrt(0.5), BANDS + 1)
    b = np.digitize(r, edges) - 1
    b[(r < edges[0]) | (b >= BANDS)] = -1
    return b


def band_means(power, bands):
    """[B, BANDS] mean log power per band."""
    lp = np.log(power + 1e-8).reshape(len(power), -1)
    flat = bands.ravel()
    out = np.zeros((len(power), BANDS), np.float32)
    for k in range(BANDS):
        out[:, k] = lp[:, flat == k].mean(axis=1)
    return out


def features(faces):
    win = np.outer(np.hanning(SIZE), np.hanning(SIZE)).astype(np.float32)
    bands = radial_bands(SIZE)
    spec, resid = [], []
    for i in range(0, len(faces), 256):
        x = faces[i:i + 256].astype(np.float32)  # [B, H, W, 3]
        grey = x @ np.array([0.299, 0.587, 0.114], np.float32)
        p = np.abs(np.fft.rfft2((grey - grey.mean((1, 2), keepdims=True)) * win)) ** 2
        spec.append(band_means(p, bands))
        r = x - uniform_filter(x, size=(1, 3, 3, 1), mode="reflect")
        r = r[:, 8:-8, 8:-8]  # away from the warp's border
        flat = r.reshape(len(r), -1, 3)
        sd = flat.std(axis=1) + 1e-6
        z = (flat - flat.mean(axis=1, keepdims=True)) / sd[:, None]
        kurt = (z**4).mean(axis=1)
        corr = np.stack([(z[:, :, a] * z[:, :, b]).mean(axis=1)
                         for a, b in ((0, 1), (0, 2), (1, 2))], axis=1)
        rg = r @ np.array([0.299, 0.587, 0.114], np.float32)
        w2 = np.outer(np.hanning(SIZE - 16), np.hanning(SIZE - 16)).astype(np.float32)
        pr = np.abs(np.fft.rfft2(rg * w2, s=(SIZE, SIZE))) ** 2
        resid.append(np.concatenate([np.log(sd), np.log(kurt), corr,
                                     band_means(pr, bands)], axis=1))
        print(f"\r{i + len(x)} / {len(faces)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    spec, resid = np.concatenate(spec), np.concatenate(resid)
    return {"spectrum": spec, "residual": resid,
            "both": np.concatenate([spec, resid], axis=1)}


def report(name, x, ds, y, tr, va, w):
    aucs = probe(x, ds, y, tr, va, w)
    out = []
    for i, held in enumerate(DOMAINS):
        out.append(f"{probe(x, ds, y, tr & (ds != held), va, w)[i]:.3f}")
    print(f"{name:22} fitted on all: " + " / ".join(f"{a:.3f}" for a in aucs)
          + "   left out: " + " / ".join(out), flush=True)


def main():
    d = sys.argv[1]
    ds, y, tr, va, w = load_meta(d)
    faces = np.memmap(os.path.join(d, "faces224.u8"), np.uint8, "r").reshape(len(ds), SIZE, SIZE, 3)
    cache = os.path.join(d, "spectrum_features.npz")
    if os.path.exists(cache):
        feats = dict(np.load(cache))
    else:
        feats = features(faces)
        np.savez(cache, **feats)
    print(f"{tr.sum()} training faces, {va.sum()} validation faces; AUC "
          + " / ".join(DOMAINS) + " (left out: that domain's AUC fitted without it)")
    # Bands too narrow to hold a frequency bin come out empty (NaN).
    feats = {k: v[:, np.isfinite(v).all(axis=0)] for k, v in feats.items()}
    for name, x in feats.items():
        report(name, x, ds, y, tr, va, w)
    if len(sys.argv) > 2:
        desc = np.fromfile(sys.argv[2], dtype=np.float32).reshape(len(ds), -1)
        report("descriptor", desc, ds, y, tr, va, w)
        for name, x in feats.items():
            report("descriptor+" + name, np.concatenate([desc, x], axis=1), ds, y, tr, va, w)


if __name__ == "__main__":
    main()
