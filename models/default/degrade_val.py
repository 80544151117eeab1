"""Degraded copies of the validation faces, for the model card's robustness table.

    python3 models/default/degrade_val.py OUT      # needs Pillow

writes OUT/{jpeg75,jpeg50,half}/... (each face re-encoded as JPEG at quality
75 or 50, or halved in width and height with bicubic filtering, then saved as
PNG so that nothing else changes) and the manifests OUT/{jpeg75,jpeg50,half}.csv
(`path,label,dataset`, as models/default/val_split.csv). Then, for each:

    sfam score OUT/jpeg75.csv --no-cache --out jpeg75_scores.csv
    sfam cross-auc jpeg75_scores.csv
"""

import csv
import io
import os
import sys
from pathlib import Path

from PIL import Image

here = Path(__file__).resolve().parent
out_root = Path(sys.argv[1]).resolve()
rows = list(csv.DictReader(open(here / "val_split.csv")))


def jpeg(im, quality):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


variants = {
    "jpeg75": lambda im: jpeg(im, 75),
    "jpeg50": lambda im: jpeg(im, 50),
    "half": lambda im: im.resize((max(1, im.width // 2), max(1, im.height // 2)), Image.BICUBIC),
}
for name, degrade in variants.items():
    manifest = []
    for r in rows:
        src = Path(os.path.normpath(here / r["path"]))
        rel = Path(r["dataset"]) / r["label"] / (src.stem + ".png")
        dst = out_root / name / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        degrade(Image.open(src).convert("RGB")).save(dst)
        manifest.append((str(dst), r["label"], r["dataset"]))
    with open(out_root / f"{name}.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "dataset"])
        w.writerows(manifest)
    print(name, len(manifest), "faces")
