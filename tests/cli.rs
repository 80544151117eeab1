//! End-to-end tests of the `sfam` binary: real processes, real files.

// Tests compare exact values on purpose and may unwrap: a panic is a failed test.
#![allow(clippy::float_cmp, clippy::many_single_char_names, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn sfam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sfam"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const SCORES: &str = "tests/fixtures/cli/scores.csv";

#[test]
fn cross_auc_json_has_the_documented_shape_and_values() {
    let o = sfam(&["cross-auc", SCORES, "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["datasets"], serde_json::json!(["A", "B", "SD"]));
    // Brute-force values (tests/fixtures/cli/scores.csv, by hand).
    let m = &v["matrix"];
    let close = |x: &serde_json::Value, want: f64| (x.as_f64().unwrap() - want).abs() < 1e-12;
    assert!(close(&m[0][0], 8.0 / 9.0));
    assert!(close(&m[0][1], 1.0));
    assert!(close(&m[0][2], 5.0 / 12.0));
    assert!(close(&m[1][0], 0.5) && close(&m[1][1], 0.75) && close(&m[1][2], 0.0));
    assert!(m[2][0].is_null() && m[2][1].is_null() && m[2][2].is_null());
    let s = &v["summary"];
    assert!(close(
        &s["mean_off_diagonal"],
        (1.0 + 5.0 / 12.0 + 0.5 + 0.0) / 4.0
    ));
    assert!(close(&s["mean_diagonal"], f64::midpoint(8.0 / 9.0, 0.75)));
    assert_eq!(s["worst"]["real"], "B");
    assert_eq!(s["worst"]["fake"], "SD");
    let a = &v["per_dataset"]["A"];
    assert_eq!(
        (a["n_real"].as_u64(), a["n_fake"].as_u64()),
        (Some(3), Some(3))
    );
    assert!(close(&a["auc"], 8.0 / 9.0));
    assert!(a["eer"].is_number() && a["ap"].is_number());
    assert!(v["per_dataset"]["SD"]["auc"].is_null());
    assert_eq!(v["undefined_cells"].as_array().unwrap().len(), 3);
}

#[test]
fn cross_auc_aggregates_videos_when_asked() {
    let get = |agg: &str| {
        let o = sfam(&["cross-auc", SCORES, "--format", "json", "--video-agg", agg]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        (
            v["matrix"][0][2].as_f64().unwrap(),
            v["per_dataset"]["A"]["n_real"].as_u64(),
        )
    };
    // A's reals become videos ra, rb; SD has no videos (rows stay faces).
    assert_eq!(get("mean"), (0.5, Some(2)));
    assert_eq!(get("max"), (0.375, Some(2)));
    let o = sfam(&["cross-auc", SCORES, "--video-agg", "median"]);
    assert!(!o.status.success());
}

#[test]
fn cross_auc_csv_is_the_matrix() {
    let o = sfam(&["cross-auc", SCORES, "--format", "csv"]);
    assert!(o.status.success());
    let text = stdout(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "real\\fake,A,B,SD");
    assert_eq!(lines[2], "B,0.5,0.75,0");
    assert_eq!(lines[3], "SD,,,");
}

#[test]
fn cross_auc_table_shows_matrix_summaries_and_transfer() {
    let o = sfam(&[
        "cross-auc",
        SCORES,
        "--transfer",
        "fpr=0.5",
        "--bootstrap",
        "100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = stdout(&o);
    for needle in [
        "| real \\ fake |",
        "| A           | 0.8889 | 1.0000 | 0.4167 |",
        "mean off-diagonal (Cross-AUC)  0.4792",
        "worst cell                     0.0000  (real faces of B, fake faces of SD)",
        "undefined: SD has no real faces (3 cells)",
        "AUC 95% CI",
        "95% bootstrap intervals of the cells (100 resamples, seed 0)",
        "Threshold transfer",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in\n{t}");
    }
    // The cells' intervals: SD's row (no reals) has none.
    assert!(
        t.contains("| SD          |               - |               - |               - |"),
        "{t}"
    );
    // The same intervals in the JSON export, `null` where undefined.
    let o = sfam(&[
        "cross-auc",
        SCORES,
        "--bootstrap",
        "100",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ci = &v["matrix_ci"];
    assert_eq!(ci.as_array().unwrap().len(), 3);
    assert!(
        ci[2]
            .as_array()
            .unwrap()
            .iter()
            .all(serde_json::Value::is_null)
    );
    let (low, high) = (
        ci[0][0]["low"].as_f64().unwrap(),
        ci[0][0]["high"].as_f64().unwrap(),
    );
    assert!(low <= 0.8889 && 0.8889 <= high, "{ci}");
    assert_eq!(v["per_dataset"]["A"]["auc_ci"]["low"].as_f64(), Some(low));
    // Without --bootstrap there are none.
    let o = sfam(&["cross-auc", SCORES, "--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v.get("matrix_ci").is_none());
}

#[test]
fn cross_auc_writes_output_file_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.json");
    let o = sfam(&[
        "cross-auc",
        SCORES,
        "--format",
        "json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(stdout(&o).is_empty());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v["datasets"][2], "SD");
}

#[test]
fn bad_score_files_fail_with_file_and_line() {
    let o = sfam(&["cross-auc", "tests/fixtures/cli/bad_score.csv"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("line 3") && e.contains("bad_score.csv") && e.contains("oops"),
        "{e}"
    );
    let o = sfam(&["cross-auc", "tests/fixtures/cli/does_not_exist.csv"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does_not_exist.csv"));
    let o = sfam(&["cross-auc", SCORES, "--transfer", "fpr=2"]);
    assert!(!o.status.success());
}

#[test]
fn datasets_lists_counts_and_problems() {
    let o = sfam(&[
        "datasets",
        "tests/fixtures/datasets/multi",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> = v["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "gen_only"]);
    assert_eq!(v["datasets"][1]["n_real"], 0);
    assert_eq!(v["datasets"][1]["n_fake"], 2);

    let o = sfam(&["datasets", "tests/fixtures/datasets/multi", "no/such/root"]);
    assert!(o.status.success(), "found datasets: the run succeeds");
    assert!(stderr(&o).contains("no/such/root"));
    assert!(stdout(&o).contains("| alpha"));

    let o = sfam(&["datasets", "tests/fixtures/datasets/no_datasets"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no datasets found"));
}

#[test]
fn every_subcommand_explains_itself() {
    for cmd in ["cross-auc", "datasets"] {
        let o = sfam(&[cmd, "--help"]);
        assert!(o.status.success());
        assert!(stdout(&o).len() > 400, "{cmd} --help is too short");
    }
    // No subcommand opens the app; without a display that fails cleanly.
    let o = Command::new(env!("CARGO_BIN_EXE_sfam"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("WAYLAND_SOCKET")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot open the app window"),
        "{}",
        stderr(&o)
    );
}

#[test]
#[ignore = "needs ../shared/data (not in a fresh clone)"]
fn datasets_finds_the_shared_data() {
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data")
            .is_dir()
    );
    let o = sfam(&["datasets", "../shared/data", "--format", "json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["datasets"].as_array().unwrap().len(), 3);
}

/// `sfam compare`: the fixture table against a second detector's that
/// ranks A's fake `a/fake/2.jpg` above every real face (A: 8/9 → 1) and
/// lacks one face, in another row order, with one face of its own.
#[test]
fn compare_pairs_two_detectors_and_bootstraps_each_cell() {
    let dir = tempfile::tempdir().unwrap();
    let original =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(SCORES)).unwrap();
    let mut rows: Vec<String> = original
        .lines()
        .skip(1)
        .filter(|l| !l.starts_with("b/real/2.jpg"))
        .map(|l| l.replace("a/fake/2.jpg,A,fake,0.25", "a/fake/2.jpg,A,fake,0.95"))
        .collect();
    rows.reverse();
    rows.push("extra.jpg,A,real,0.5,".into());
    let second = dir.path().join("second.csv");
    std::fs::write(
        &second,
        format!("path,dataset,label,score,video\n{}\n", rows.join("\n")),
    )
    .unwrap();
    let second = second.to_str().unwrap();

    let o = sfam(&["compare", SCORES, second, "--bootstrap", "200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let t = stdout(&o);
    for needle in [
        "11 faces in both tables (1 only in the first, 1 only in the second)",
        "| A       |    3 |    3 |    0.8889 |     1.0000 |        +0.1111 |",
        "95% paired bootstrap interval (200 resamples, seed 0)",
        "Cross-AUC (mean of the off-diagonal cells, every cell on the same resampled faces): first 0.5208, second 0.6042, second - first +0.0833",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in\n{t}");
    }
    let o = sfam(&[
        "compare",
        SCORES,
        second,
        "--bootstrap",
        "200",
        "--format",
        "json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["datasets"], serde_json::json!(["A", "B", "SD"]));
    assert_eq!(
        (v["paired_faces"].as_u64(), v["only_first"].as_u64()),
        (Some(11), Some(1))
    );
    let a = &v["cells"][0][0];
    assert!((a["difference"].as_f64().unwrap() - 1.0 / 9.0).abs() < 1e-12);
    assert!(a["low"].as_f64().unwrap() <= a["high"].as_f64().unwrap());
    // B lost one real face: its own AUC over the faces both scored.
    assert_eq!(v["cells"][1][1]["auc_first"].as_f64(), Some(1.0));
    assert!(
        v["cells"][2]
            .as_array()
            .unwrap()
            .iter()
            .all(serde_json::Value::is_null)
    );
    assert!(v["cross_auc"]["low"].as_f64().unwrap() <= v["cross_auc"]["high"].as_f64().unwrap());

    // Tables that disagree on a face, share no face, or bad options: errors
    // naming what is wrong, nothing on standard output.
    let relabelled = dir.path().join("relabelled.csv");
    std::fs::write(
        &relabelled,
        original.replace("b/fake/1.jpg,B,fake", "b/fake/1.jpg,B,real"),
    )
    .unwrap();
    let o = sfam(&["compare", SCORES, relabelled.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("disagree on b/fake/1.jpg") && e.contains("relabelled.csv"),
        "{e}"
    );
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "path,dataset,label,score\nz.jpg,A,real,0.5\n").unwrap();
    let o = sfam(&["compare", SCORES, other.to_str().unwrap()]);
    assert!(!o.status.success() && stdout(&o).is_empty());
    assert!(
        stderr(&o).contains("no path is in both score tables"),
        "{}",
        stderr(&o)
    );
    let o = sfam(&["compare", SCORES, second, "--level", "1.5"]);
    assert!(!o.status.success() && stderr(&o).contains("--level"));
}
