//! `sfam runs`: training runs in brief, on the bundled model's own log
//! and on logs made from it.
#![allow(clippy::unwrap_used)]

mod common;

use common::{fails_with, root, s, sfam, succeeds, text};

/// The bundled model's `train_log.csv`, and a run folder holding its
/// first 30 epochs.
fn runs() -> (std::path::PathBuf, tempfile::TempDir) {
    let full = root().join("models/default");
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::read_to_string(full.join("train_log.csv")).unwrap();
    let first: Vec<&str> = log.lines().take(31).collect();
    std::fs::write(dir.path().join("train_log.csv"), first.join("\n")).unwrap();
    (full, dir)
}

#[test]
fn runs_side_by_side_with_their_best_and_last_epochs() {
    let (full, short) = runs();
    let o = succeeds(&["runs", s(&full), s(short.path())]);
    let out = text(&o.stdout);
    // The card's best epoch and its AUCs (models/default/train_log.csv,
    // epoch 48: 0.8035, 0.8416, 0.9579, mean 0.8677).
    let line = out.lines().find(|l| l.contains("models/default")).unwrap();
    for v in [" 48 |", "0.8035", "0.8416", "0.9579", "0.8677"] {
        assert!(line.contains(v), "{v} not in {line}");
    }
    assert!(out.contains("last 10 epochs"), "{out}");

    // The CSV's averages are the means of the last K rows of the log.
    let o = succeeds(&[
        "runs",
        s(&full),
        s(&short.path().join("train_log.csv")),
        "--format",
        "csv",
        "--last",
        "4",
    ]);
    let csv = text(&o.stdout);
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!(
        header,
        [
            "run",
            "epochs",
            "best_epoch",
            "best_ciplab",
            "best_dfdc",
            "best_ffhq_stylegan2",
            "best_mean",
            "last_epochs",
            "last_ciplab",
            "last_dfdc",
            "last_ffhq_stylegan2",
            "last_mean"
        ]
    );
    let log = std::fs::read_to_string(full.join("train_log.csv")).unwrap();
    let cols: Vec<&str> = log.lines().next().unwrap().split(',').collect();
    let ciplab = cols.iter().position(|c| *c == "val_auc_ciplab").unwrap();
    let values: Vec<f64> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(ciplab).unwrap().parse().unwrap())
        .collect();
    for (row, n) in rows.zip([52usize, 30]) {
        let f: Vec<&str> = row.split(',').collect();
        assert_eq!(f[1], n.to_string());
        assert_eq!(f[7], "4");
        let want = values[n - 4..n].iter().sum::<f64>() / 4.0;
        let got: f64 = f[8].parse().unwrap();
        assert!((got - want).abs() < 1e-4, "{got} vs {want} ({row})");
    }

    // JSON, written atomically to a file.
    let out = short.path().join("runs.json");
    succeeds(&["runs", s(&full), "--format", "json", "--out", s(&out)]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v[0]["best_epoch"], 48);
    assert_eq!(v[0]["last_epochs"], 10);
    assert!((v[0]["best"]["dfdc"].as_f64().unwrap() - 0.8416).abs() < 1e-9);
}

#[test]
fn unreadable_runs_are_named_and_the_others_shown() {
    let (full, dir) = runs();
    let bad = dir.path().join("scores.csv");
    std::fs::write(&bad, "path,dataset,label,score\na.jpg,x,real,0.5\n").unwrap();
    let missing = dir.path().join("nothing-here");
    let o = sfam(&["runs", s(&full), s(&bad), s(&missing)]);
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
    assert!(!o.status.success());
    assert!(stdout.contains("models/default"), "{stdout}");
    assert!(
        stderr.contains("no column epoch") && stderr.contains("scores.csv"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing-here"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    fails_with(&["runs", s(&missing)], "no training run could be read");
    fails_with(
        &["runs", s(&full), "--last", "0"],
        "--last must be at least 1",
    );
}
