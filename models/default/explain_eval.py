"""Do the model's explanations point at what was edited? The CIPLAB
validation faces' file names say which of the left eye, right eye, nose and
mouth an expert edited (`{easy,mid,hard}_N_LRNM.jpg`, 1 = edited; image
left and right, as the trainer reads them): ground truth for the region
logits and the alignment maps that `sfam inspect` and the app show.

    SFAM_BIN=target/release/sfam python3 models/default/explain_eval.py [--model DIR]
        [--manifest CSV] [--out FILE.json]

(numpy only; the model defaults to this folder, the manifest — `path,label,
dataset`, paths relative to its folder — to val_split.csv.) Runs `sfam
inspect --json` on the manifest's CIPLAB faces and prints, with AUC = the chance that
an edited region's value exceeds an unedited one's:

- the face score's AUC per difficulty (easy / mid / hard fakes against all
  the real faces);
- per region (left eye, right eye, nose, mouth): the AUC of its region
  logit, edited against unedited among the coded fakes, and edited against
  the same region of real faces;
- the same for the region's prompt ("inconsistent or distorted eyes", "a
  distorted nose", "artifacts around the mouth and teeth"): its alignment
  map's mean weight inside the region's mask;
- pointing: how often the coded region with the highest region logit is an
  edited one, against the rate of a random pick (the mean share of edited
  regions).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

here = Path(__file__).resolve().parent
REGIONS = ["left_eye", "right_eye", "nose", "mouth"]
PROMPTS = {
    "left_eye": "inconsistent or distorted eyes",
    "right_eye": "inconsistent or distorted eyes",
    "nose": "a distorted nose",
    "mouth": "artifacts around the mouth and teeth",
}


def auc(pos, neg):
    """Mann-Whitney AUC, ties counted half."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum()
    eq = (pos[:, None] == neg[None, :]).sum()
    return float((gt + 0.5 * eq) / (len(pos) * len(neg)))


def code_of(path):
    code = Path(path).stem.rsplit("_", 1)[-1]
    if len(code) != 4 or set(code) - {"0", "1"} or "1" not in code:
        return None
    return [c == "1" for c in code]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=here)
    ap.add_argument("--manifest", type=Path, default=here / "val_split.csv")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    model, out = args.model, args.out
    sfam = os.environ.get("SFAM_BIN", "sfam")
    base = args.manifest.resolve().parent
    rows = [r for r in csv.DictReader(open(args.manifest)) if r["dataset"] == "ciplab"]
    paths = [str((base / r["path"]).resolve()) for r in rows]
    faces = []
    for i in range(0, len(paths), 64):
        res = subprocess.run([sfam, "inspect", "--model", str(model), "--json", *paths[i:i + 64]],
                             check=True, capture_output=True, text=True)
        doc = json.loads(res.stdout)
        for e in doc["errors"]:
            print(f"error: {e}", file=sys.stderr)
        faces.extend(doc["faces"])
    # The first face of each image (what `sfam score` scores).
    first = {}
    for f in faces:
        if f["face"] == 0:
            first[str(Path(f["image"]).resolve())] = f
    report = {"model": model.resolve().name, "manifest": args.manifest.name, "faces": len(first)}

    real = [first[p] for p, r in zip(paths, rows) if r["label"] == "real" and p in first]
    fakes = [(p, first[p]) for p, r in zip(paths, rows) if r["label"] == "fake" and p in first]
    coded = [(code_of(p), f) for p, f in fakes if code_of(p) is not None]
    print(f"{len(real)} real, {len(fakes)} fake CIPLAB faces ({len(coded)} fakes with a code)")

    rs = [f["score"] for f in real]
    report["score_auc_by_difficulty"] = {}
    for level in ("easy", "mid", "hard"):
        fs = [f["score"] for p, f in fakes if Path(p).name.startswith(level + "_")]
        a = auc(fs, rs)
        report["score_auc_by_difficulty"][level] = {"fakes": len(fs), "auc": a}
        print(f"face score, {level:4} fakes ({len(fs):3}) against the real faces: AUC {a:.3f}")

    names = coded[0][1]["regions"] if coded else []
    prompts = coded[0][1]["prompts"] if coded else []
    report["regions"] = {}
    for k, region in enumerate(REGIONS):
        ri = names.index(region)
        pi = prompts.index(PROMPTS[region])

        def logit(f):
            return f["region_logits"][ri]

        def prompt_weight(f):
            m = np.asarray(f["region_masks"][ri])
            a = np.asarray(f["alignment_maps"][pi])
            return float((m * a).sum() / max(m.sum(), 1e-9))

        edited = [f for c, f in coded if c[k]]
        unedited = [f for c, f in coded if not c[k]]
        entry = {"edited": len(edited), "unedited": len(unedited)}
        for what, fn in (("logit", logit), ("prompt", prompt_weight)):
            e = [fn(f) for f in edited]
            entry[f"{what}_edited_vs_unedited"] = auc(e, [fn(f) for f in unedited])
            entry[f"{what}_edited_vs_real"] = auc(e, [fn(f) for f in real])
        report["regions"][region] = entry
        print(f"{region:9} ({len(edited):3} edited, {len(unedited):3} not): region logit AUC "
              f"{entry['logit_edited_vs_unedited']:.3f} against unedited, "
              f"{entry['logit_edited_vs_real']:.3f} against real; prompt '{PROMPTS[region]}' "
              f"{entry['prompt_edited_vs_unedited']:.3f} / {entry['prompt_edited_vs_real']:.3f}")

    idx = [names.index(r) for r in REGIONS]
    hits, chance = [], []
    for c, f in coded:
        top = int(np.argmax([f["region_logits"][i] for i in idx]))
        hits.append(c[top])
        chance.append(sum(c) / 4)
    report["pointing"] = {"hit_rate": float(np.mean(hits)), "random_pick": float(np.mean(chance)),
                          "fakes": len(hits)}
    print(f"pointing: the top coded region is an edited one for {np.mean(hits):.3f} of "
          f"{len(hits)} fakes (a random pick: {np.mean(chance):.3f})")
    single = [(c, f) for c, f in coded if sum(c) == 1]
    if single:
        hit1 = np.mean([c[int(np.argmax([f["region_logits"][i] for i in idx]))] for c, f in single])
        report["pointing"]["single_region_fakes"] = len(single)
        report["pointing"]["single_region_hit_rate"] = float(hit1)
        print(f"  fakes with one edited region ({len(single)}): {hit1:.3f} (a random pick: 0.250)")
    if out:
        out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
