#!/usr/bin/env python3
"""Which pretrained network's descriptor tells real from fake, on the
domains it is fitted on and on a domain it never saw?

The features are `examples/res_study.rs` rows (2816 values: the global
token's descriptor) of the same faces, one file per network — the shipped
`faceres` and, by `SFAM_STUDY_FACERES`, another network of its graph:

    cargo run --release --example res_study -- OUT_A 224
    SFAM_STUDY_FACERES=deep.safetensors cargo run --release --example res_study -- OUT_B 224
    python3 examples/backbone_study.py OUT_A/size224.f32 OUT_B/size224.f32

For each file (and the two side by side): the logistic-regression probe of
`examples/template_study.py` fitted on every domain's training faces, then
once per domain fitted without that domain (its validation faces scored by
a model that never saw its kind of fake or its real faces). Prints
validation AUC per domain. meta.csv is read beside the first file.
"""
import os
import sys

import numpy as np

from template_study import DOMAINS, load_meta, probe


def main():
    files = sys.argv[1:]
    ds, y, tr, va, w = load_meta(os.path.dirname(files[0]))
    feats = {f: np.fromfile(f, dtype=np.float32).reshape(len(ds), -1) for f in files}
    if len(files) == 2:
        feats["both"] = np.concatenate(list(feats.values()), axis=1)
    print(f"{tr.sum()} training faces, {va.sum()} validation faces; AUC "
          + " / ".join(DOMAINS))
    for name, x in feats.items():
        aucs = probe(x, ds, y, tr, va, w)
        print(f"{name}\n  all domains fitted: " + " / ".join(f"{a:.3f}" for a in aucs),
              flush=True)
        out = []
        for i, held in enumerate(DOMAINS):
            keep = ds != held
            # Refit without the held domain: its rows leave the training
            # mask; the other domains' weights are unchanged.
            aucs = probe(x, ds, y, tr & keep, va, w)
            out.append(f"{held} {aucs[i]:.3f}")
        print("  each domain left out (its AUC): " + ", ".join(out), flush=True)


if __name__ == "__main__":
    main()
