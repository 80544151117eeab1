#!/usr/bin/env python3
"""Where the model's evidence comes from, over labelled faces.

Reads `sfam inspect --json` output (the largest face of each image) and a
manifest with `path,label,dataset` columns, and prints per dataset:
  - the AUC of the logit, of the global logit alone and of the regions'
    part alone (logit - global_logit), and of each region's logit;
  - the mean region attention and its largest value over the faces;
  - the mean region logit.
Plain Python, no packages needed.

    awk -F, 'NR>1{print "models/default/"$1}' models/default/val_split.csv > paths.txt
    xargs -a paths.txt sfam inspect --json > val_inspect.json
    python3 models/default/logit_parts.py val_inspect.json models/default/val_split.csv models/default/
"""
import csv
import json
import os
import sys


def auc(pos, neg):
    """Mann-Whitney AUC of scores of positives against negatives (ties: half)."""
    allv = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum, i = 0.0, 0
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        mid = (i + j + 1) / 2.0  # mean 1-based rank of the tie block
        rank_sum += mid * sum(1 for k in range(i, j) if allv[k][1] == 1)
        i = j
    n1, n0 = len(pos), len(neg)
    return (rank_sum - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    inspect_json, manifest, prefix = sys.argv[1:]
    with open(inspect_json) as f:
        doc = json.load(f)
    labels = {}
    with open(manifest, newline="") as f:
        for r in csv.DictReader(f):
            labels[os.path.normpath(os.path.join(prefix, r["path"]))] = (
                r["dataset"],
                r["label"] == "fake",
            )
    faces = {}
    for face in doc["faces"]:
        key = os.path.normpath(face["image"])
        if face["face"] == 0 and key in labels:
            faces[key] = face
    if not faces:
        sys.exit("no face of the manifest's images in the inspect output")
    regions = next(iter(faces.values()))["regions"]
    print(f"{len(faces)} faces")
    for ds in sorted({d for d, _ in labels.values()}):
        rows = [(faces[k], labels[k][1]) for k in faces if labels[k][0] == ds]
        fake = [f for f, y in rows if y]
        real = [f for f, y in rows if not y]
        if not fake or not real:
            print(f"{ds}: needs real and fake faces")
            continue

        def a(get):
            return auc([get(f) for f in fake], [get(f) for f in real])

        print(
            f"{ds} ({len(real)} real, {len(fake)} fake): AUC logit {a(lambda f: f['logit']):.3f}, "
            f"global alone {a(lambda f: f['global_logit']):.3f}, "
            f"regions alone {a(lambda f: f['logit'] - f['global_logit']):.3f}"
        )
        for r, name in enumerate(regions):
            att = [f["region_attention"][r] for f, _ in rows]
            lg = [f["region_logits"][r] for f, _ in rows]
            print(
                f"  {name:14s} logit AUC {a(lambda f: f['region_logits'][r]):.3f}  "
                f"attention mean {sum(att) / len(att):.3f} max {max(att):.2g}  "
                f"logit mean {sum(lg) / len(lg):+.1f}"
            )


if __name__ == "__main__":
    main()
