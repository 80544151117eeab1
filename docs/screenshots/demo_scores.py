"""Synthetic score table for the README screenshots (NOT any detector's output).

Three datasets whose real *and* fake scores shift with the domain, plus a
fake-only generator scored as "more real than real": the failure the
Cross-AUC matrix exists to show. Run: python3 docs/screenshots/demo_scores.py OUT.csv
"""
import csv
import random
import sys

rng = random.Random(7)
rows = []
for name, shift, sep in [("ciplab", 0.0, 1.2), ("ffhq_stylegan2", 0.8, 2.0), ("dfdc", -0.6, 1.0)]:
    for label, mu in [("real", shift), ("fake", shift + sep)]:
        for i in range(2000):
            s = 1 / (1 + pow(2.718281828, -(rng.gauss(mu, 1.0))))
            rows.append((f"{name}/{label}/{i:05d}.jpg", name, label, f"{s:.6f}"))
for i in range(1500):
    s = 1 / (1 + pow(2.718281828, -(rng.gauss(-1.0, 0.8))))
    rows.append((f"sd21/fake/{i:05d}.png", "sd21", "fake", f"{s:.6f}"))
with open(sys.argv[1], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["path", "dataset", "label", "score"])
    w.writerows(rows)
