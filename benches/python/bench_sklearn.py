#!/usr/bin/env python3
"""scikit-learn baseline for the ROC AUC / Cross-AUC benchmarks.

This is what a researcher would otherwise run: scikit-learn's ``roc_auc_score``
(and, for reference, a numpy-only sort + searchsorted Cross-AUC).

    pip install -r tests/fixtures/metrics/requirements.txt
    python3 benches/python/bench_sklearn.py [--threads N] [--quick]

Measurements (timed with ``time.perf_counter``; median and min reported):

* ``auc_1e6``: ``roc_auc_score`` on 10^6 scores (uniform scores, random
  balanced labels, fake scores shifted by +0.1).
* ``cross_auc_8x125k``: 8 datasets x 125 000 scores (half real, half fake;
  real ~ N(d*0.1, 1), fake ~ N(d*0.1 + 0.8, 1)); the full 8x8 Cross-AUC
  matrix via 64 ``roc_auc_score`` calls, cell (i, j) = AUC of real_i vs fake_j.
* ``cross_auc_8x125k_numpy``: the same matrix with numpy only: sort each part
  once, count Mann-Whitney pairs per cell with ``np.searchsorted`` (left and
  right). Checked equal to the scikit-learn matrix to 1e-12.
* ``paired_bootstrap_10k``: two detectors on 5 000 real and 5 000 fake
  faces (the first's scores N(0, 1) / N(1, 1), the second's the first's
  plus N(0, 0.5) noise); 1000 paired stratified bootstrap resamples of
  their AUC difference, each resample's faces drawn with numpy and scored
  with two ``roc_auc_score`` calls (what ``sfam compare`` computes per cell).

Human-readable lines go to stderr; one JSON document goes to stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2,
                   help="value for OMP/OPENBLAS/MKL_NUM_THREADS, set before numpy is imported (default 2)")
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    p.add_argument("--seed", type=int, default=20240601, help="RNG seed for the synthetic data")
    return p.parse_args(argv)


ARGS = parse_args()
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
for _var in THREAD_VARS:
    os.environ[_var] = str(ARGS.threads)

# Imported only after the thread variables are set.
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import sklearn  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def time_it(fn, reps: int, warmup: int = 1):
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return result, times


def summary(name: str, times, extra: dict | None = None) -> dict:
    rec = {
        "name": name,
        "reps": len(times),
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
    }
    if extra:
        rec.update(extra)
    log(f"{name:28s} median {rec['median_s'] * 1e3:10.3f} ms   min {rec['min_s'] * 1e3:10.3f} ms   "
        f"({rec['reps']} reps)")
    return rec


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def make_auc_data(rng, n=1_000_000):
    labels = rng.integers(0, 2, size=n)
    scores = rng.uniform(0.0, 1.0, size=n) + 0.1 * labels
    return labels, scores


def make_cross_data(rng, n_sets=8, per_set=125_000):
    half = per_set // 2
    reals, fakes = [], []
    for d in range(n_sets):
        reals.append(rng.normal(d * 0.1, 1.0, size=half))
        fakes.append(rng.normal(d * 0.1 + 0.8, 1.0, size=per_set - half))
    return reals, fakes


# --------------------------------------------------------------------------
# Cross-AUC implementations
# --------------------------------------------------------------------------
def cross_auc_sklearn(reals, fakes):
    n = len(reals)
    m = np.empty((n, len(fakes)))
    for i in range(n):
        for j in range(len(fakes)):
            y = np.concatenate([np.zeros(len(reals[i])), np.ones(len(fakes[j]))])
            s = np.concatenate([reals[i], fakes[j]])
            m[i, j] = roc_auc_score(y, s)
    return m


def cross_auc_numpy(reals, fakes):
    # Sort each part once; per cell count, for every fake score, the reals
    # strictly below it (left) and the reals <= it (right):
    # U = sum(left) + 0.5 * sum(right - left) = sum(left + right) / 2.
    rs = [np.sort(r) for r in reals]
    fs = [np.sort(f) for f in fakes]
    m = np.empty((len(rs), len(fs)))
    for i, r in enumerate(rs):
        for j, f in enumerate(fs):
            lo = np.searchsorted(r, f, side="left")
            hi = np.searchsorted(r, f, side="right")
            u2 = int(lo.sum(dtype=np.int64)) + int(hi.sum(dtype=np.int64))
            m[i, j] = u2 / (2.0 * len(r) * len(f))
    return m


def make_paired_data(rng, n=5000):
    a_real = rng.normal(0.0, 1.0, size=n)
    a_fake = rng.normal(1.0, 1.0, size=n)
    b_real = a_real + rng.normal(0.0, 0.5, size=n)
    b_fake = a_fake + rng.normal(0.0, 0.5, size=n)
    return a_real, a_fake, b_real, b_fake


def paired_bootstrap(a_real, a_fake, b_real, b_fake, resamples=1000, seed=0):
    rng = np.random.default_rng(seed)
    nr, nf = len(a_real), len(a_fake)
    y = np.concatenate([np.zeros(nr), np.ones(nf)])
    diffs = np.empty(resamples)
    for k in range(resamples):
        ir = rng.integers(0, nr, size=nr)
        jf = rng.integers(0, nf, size=nf)
        a = roc_auc_score(y, np.concatenate([a_real[ir], a_fake[jf]]))
        b = roc_auc_score(y, np.concatenate([b_real[ir], b_fake[jf]]))
        diffs[k] = b - a
    return np.quantile(diffs, [0.025, 0.975])


def main() -> int:
    reps_auc = 3 if ARGS.quick else 15
    reps_cross = 2 if ARGS.quick else 7
    rng = np.random.default_rng(ARGS.seed)

    info = {
        "python": platform.python_version(),
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "platform_processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": {v: os.environ.get(v) for v in THREAD_VARS},
        "quick": ARGS.quick,
        "seed": ARGS.seed,
    }
    log(f"python {info['python']}  scikit-learn {info['sklearn_version']}  numpy {info['numpy_version']}")
    log(f"cpu: {info['cpu_model']} (platform.processor()={info['platform_processor']!r}, "
        f"{info['cpu_count']} logical CPUs)")
    log("threads: " + "  ".join(f"{k}={v}" for k, v in info["threads"].items()))
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [
            {k: d.get(k) for k in ("internal_api", "num_threads", "version")} for d in threadpool_info()
        ]
    except Exception:  # pragma: no cover - informational only
        pass

    results = []

    labels, scores = make_auc_data(rng)
    auc, times = time_it(lambda: roc_auc_score(labels, scores), reps_auc)
    results.append(summary("auc_1e6", times, {"n": len(scores), "auc": float(auc)}))

    reals, fakes = make_cross_data(rng)
    m_sk, times = time_it(lambda: cross_auc_sklearn(reals, fakes), reps_cross)
    results.append(summary("cross_auc_8x125k", times, {
        "datasets": len(reals), "per_dataset": len(reals[0]) + len(fakes[0]), "calls": len(reals) * len(fakes),
        "diag_mean_auc": float(np.mean(np.diag(m_sk))),
    }))

    m_np, times = time_it(lambda: cross_auc_numpy(reals, fakes), max(reps_cross, 5 if ARGS.quick else 10))
    max_diff = float(np.max(np.abs(m_np - m_sk)))
    if max_diff > 1e-12:
        log(f"ERROR: numpy Cross-AUC differs from scikit-learn by {max_diff:g}")
        return 1
    results.append(summary("cross_auc_8x125k_numpy", times, {"max_abs_diff_vs_sklearn": max_diff}))
    log(f"numpy matrix matches scikit-learn (max |diff| = {max_diff:.3g})")

    paired = make_paired_data(rng)
    ci, times = time_it(lambda: paired_bootstrap(*paired), 2 if ARGS.quick else 5)
    results.append(summary("paired_bootstrap_10k", times, {
        "faces": 2 * len(paired[0]), "resamples": 1000, "interval": [float(x) for x in ci],
    }))

    print(json.dumps({"info": info, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
