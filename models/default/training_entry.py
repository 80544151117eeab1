"""Writes the "training" entry of models/default/sfam_head.json: what the
bundled model was trained and validated on, as `sfam train` now writes it
into every model folder it saves (`train::training_data`).

The bundled model was trained before that existed; this script gives it
the same entry from its run's files:

    python3 models/default/training_entry.py RUN_DIR/split.csv

It counts each dataset's training and validation images in the run's
`split.csv` (the split is the same for every seed: `val_split.csv` is its
validation side) and takes the validation AUCs of the bundled weights from
`card.json`. `tests/default_model.rs` checks the entry against
`val_split.csv`, `training_images.txt` and `card.json`.
"""

import csv
import json
import sys
from pathlib import Path

here = Path(__file__).resolve().parent
if len(sys.argv) != 2:
    sys.exit("usage: training_entry.py RUN_DIR/split.csv")
card = json.loads((here / "card.json").read_text())
datasets = {}
for row in csv.DictReader(open(sys.argv[1], newline="")):
    d = datasets.setdefault(row["dataset"], {"name": row["dataset"], "train_real": 0,
                                             "train_fake": 0, "val_real": 0, "val_fake": 0})
    side = "train" if row["split"] == "train" else "val"
    d[f"{side}_{row['label']}"] += 1
for name, d in datasets.items():
    d["val_auc"] = card["val_auc"][name]
head_path = here / "sfam_head.json"
head = json.loads(head_path.read_text())
head["training"] = {
    "datasets": list(datasets.values()),
    # `sfam train`'s words for its default --self-blend 0.15 (no donors).
    "synthetic_fakes": "self-blended real training faces (15 % of each epoch)",
    "validated": f"epoch {card['best_epoch']}",
}
head_path.write_text(json.dumps(head, indent=2) + "\n")
print(f"wrote the training entry of {head_path}")
