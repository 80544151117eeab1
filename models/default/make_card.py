"""Writes models/default/card.json from a finished `sfam train` run.

Run by hand after training (the Rust tests never run Python):

    python3 models/default/make_card.py RUN_DIR [--average K]

It reads RUN_DIR/train_log.csv and RUN_DIR/checkpoint/state.json (the best
epoch; without it, the first epoch of highest mean validation AUC in the log) and evaluates RUN_DIR/best/val_scores.csv with `sfam cross-auc
--format json` (the release binary, or $SFAM_BIN), so every figure of the
card comes from the run's own files. tests/default_model.rs checks that the
engine, scoring models/default/val_split.csv, reproduces them.

With `--average K` the bundled model is the run's `average/` (`sfam train
--average-last K`: the weights of its last K epochs averaged): the card's
figures are then those of RUN_DIR/average/val_scores.csv, and it records
the epochs averaged beside the best single epoch.
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

run = Path(sys.argv[1])
average = int(sys.argv[3]) if len(sys.argv) == 4 and sys.argv[2] == "--average" else 0
if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and average < 1):
    sys.exit("usage: make_card.py RUN_DIR [--average K]")
model_dir = run / ("average" if average else "best")
root = Path(__file__).resolve().parents[2]
log = list(csv.DictReader(open(run / "train_log.csv")))
state_file = run / "checkpoint" / "state.json"
if state_file.exists():
    best = json.loads(state_file.read_text())["best_epoch"]
else:
    # A run whose checkpoint stayed elsewhere (a lent GPU machine): the trainer's
    # own rule, the first epoch with the highest mean validation AUC.
    best = int(max(log, key=lambda r: (float(r["val_auc_mean"]), -int(r["epoch"])))["epoch"])
ev = json.loads(
    subprocess.run(
        [os.environ.get("SFAM_BIN", str(root / "target/release/sfam")), "cross-auc", str(model_dir / "val_scores.csv"), "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
card = {
    "model": "average" if average else "best",
    **({"averaged_epochs": [len(log) - average + 1, len(log)]} if average else {}),
    "best_epoch": best,
    "epochs": len(log),
    "train_seconds": round(sum(float(r["seconds"]) for r in log), 1),
    "val_auc": {name: d["auc"] for name, d in ev["per_dataset"].items()},
    "val_eer": {name: d["eer"] for name, d in ev["per_dataset"].items()},
    "val_counts": {name: [d["n_real"], d["n_fake"]] for name, d in ev["per_dataset"].items()},
    "val_cross_auc": ev["summary"]["mean_off_diagonal"],
    "val_matrix": {"datasets": ev["datasets"], "rows_real_cols_fake": ev["matrix"]},
    "log": log,
}
(root / "models/default/card.json").write_text(json.dumps(card, indent=2) + "\n")
print(json.dumps({k: card[k] for k in ("model", "best_epoch", "train_seconds", "val_auc", "val_cross_auc")}, indent=2))
