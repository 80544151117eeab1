#!/usr/bin/env python3
"""Writes models/default/training_images.txt: the BLAKE3 of every file of
the bundled model's training split, in the format `sfam train` writes into
the model folders of its runs (src/model/training_images.rs).

The bundled model was trained before `sfam train` wrote that file. Its
training split is that of any run of its command on ../shared/data (the
split depends on the data and --val-fraction only), so this takes a run's
split.csv, checks that its validation rows are exactly val_split.csv, and
hashes the files of its training rows.

    python3 models/default/list_training_images.py RUN/split.csv

Needs the `blake3` package (PyPI).
"""

import csv
import os
import sys

import blake3

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = "# sfam training images: BLAKE3 of each training-split file's bytes, one per line"


def rel(path, data):
    return os.path.relpath(os.path.realpath(path), os.path.realpath(data))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    split_csv = sys.argv[1]
    data = os.path.join(HERE, "../../../shared/data")
    with open(os.path.join(HERE, "val_split.csv"), newline="") as f:
        val = {rel(os.path.join(HERE, r["path"]), data) for r in csv.DictReader(f)}
    train, run_val = [], set()
    with open(split_csv, newline="") as f:
        for r in csv.DictReader(f):
            p = r["path"]
            if not os.path.isabs(p):
                p = os.path.join(os.path.dirname(os.path.abspath(split_csv)), p)
            (train.append(p) if r["split"] == "train" else run_val.add(rel(p, data)))
    if run_val != val:
        sys.exit(
            f"{split_csv}: its validation split ({len(run_val)} files) is not "
            f"val_split.csv's ({len(val)}): not a run of the bundled model's split"
        )
    hashes = set()
    for p in train:
        with open(p, "rb") as f:
            hashes.add(blake3.blake3(f.read()).hexdigest())
    out = os.path.join(HERE, "training_images.txt")
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(HEADER + "\n")
        for h in sorted(hashes):
            f.write(h + "\n")
    os.replace(tmp, out)
    print(f"{out}: {len(hashes)} hashes of {len(train)} training files")


if __name__ == "__main__":
    main()
