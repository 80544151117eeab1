//! `sfam scan` as an analyst runs it (the real binary, the tiny model of
//! `tests/fixtures/model/tiny_l14`): photos and folders without labels,
//! every face a row, bad and missing files reported while the rest is
//! scored, the JSON table, the cache, and runs that cannot proceed.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Output;

use sfam_studio::engine::table::CSV_HEADER;

mod common;

use common::{fails_with, root, s, sfam, succeeds, text, tiny};

fn scan(inputs: &[&Path], out: &Path, extra: &[&str]) -> Output {
    let model = tiny();
    let mut args = vec!["scan"];
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend(["--out", s(out), "--model", s(&model)]);
    args.extend_from_slice(extra);
    succeeds(&args)
}

/// A folder of photos as an analyst has one: a subfolder, a note, a
/// hidden resource fork, a broken JPEG; plus a group photo named directly.
fn photos(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let folder = dir.join("case 17");
    std::fs::create_dir_all(folder.join("more")).unwrap();
    for (name, to) in [
        ("ciplab_real_real_00128.jpg", "a.jpg"),
        ("ciplab_fake_mid_66_1100.jpg", "more/b.jpg"),
        ("dfdc_fake_mbmruhrpfd.jpg", "c.jpg"),
    ] {
        std::fs::copy(root().join("assets/samples").join(name), folder.join(to)).unwrap();
    }
    std::fs::write(folder.join("notes.txt"), "seized 2026-11-01").unwrap();
    std::fs::write(folder.join("._a.jpg"), b"\0\x05\x16\x07").unwrap();
    let broken = folder.join("truncated.jpg");
    std::fs::copy(root().join("tests/bad/truncated.jpg"), &broken).unwrap();
    let group = dir.join("group.jpg");
    std::fs::copy(root().join("tests/fixtures/face/two_faces.jpg"), &group).unwrap();
    (folder, group, broken)
}

fn csv_rows(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header = r.headers().unwrap().iter().map(str::to_owned).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

#[test]
fn photos_and_folders_are_scanned_face_by_face() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, group, broken) = photos(dir.path());
    let missing = dir.path().join("gone.jpg");
    let out = dir.path().join("faces.csv");
    let o = scan(
        &[&folder, &group, &missing],
        &out,
        &["--max-faces", "3", "--threshold", "0.5", "--top", "2"],
    );
    let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));

    let (header, rows) = csv_rows(&out);
    assert_eq!(header, CSV_HEADER);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    // The folder's three photos in file-name order (the subfolder's after
    // `a.jpg`), then both faces of the group photo; nothing hidden or
    // non-image, nothing from the broken or the missing file.
    let paths: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[col("path")].as_str(), r[col("face")].as_str()))
        .collect();
    let first = folder.join("a.jpg");
    let nested = folder.join("more/b.jpg");
    let third = folder.join("c.jpg");
    assert_eq!(
        paths,
        [
            (s(&first), "0"),
            (s(&third), "0"),
            (s(&nested), "0"),
            (s(&group), "0"),
            (s(&group), "1"),
        ]
    );
    let group_rows: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == s(&group)).collect();
    assert!(group_rows.iter().all(|r| r[col("faces_found")] == "2"));
    // Largest face first: the first box is the larger.
    let area = |r: &Vec<String>| {
        let v = |c: &str| r[col(c)].parse::<f64>().unwrap();
        (v("x2") - v("x1")) * (v("y2") - v("y1"))
    };
    assert!(area(group_rows[0]) >= area(group_rows[1]));

    let mut fakes = 0;
    for r in &rows {
        let score: f64 = r[col("score")].parse().unwrap();
        let logit: f64 = r[col("logit")].parse().unwrap();
        assert!((0.0..=1.0).contains(&score));
        assert!((score - 1.0 / (1.0 + (-logit).exp())).abs() < 1e-5);
        let fake = score >= 0.5;
        fakes += usize::from(fake);
        assert_eq!(r[col("verdict")], if fake { "fake" } else { "real" });
        assert!(!r[col("top_region")].is_empty());
    }
    assert!(
        stdout.contains(&format!(
            "5 face(s): {fakes} likely fake (score >= 0.5000), {} likely real",
            5 - fakes
        )),
        "{stdout}"
    );

    // The same faces' scores as `sfam inspect` gives them (the model
    // run directly, not through the engine).
    let inspect = sfam(&["inspect", s(&group), "--json", "--model", s(&tiny())]);
    assert!(inspect.status.success(), "{}", text(&inspect.stderr));
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    for (face, row) in json["faces"].as_array().unwrap().iter().zip(&group_rows) {
        let direct = face["score"].as_f64().unwrap();
        let scanned: f64 = row[col("score")].parse().unwrap();
        assert!((direct - scanned).abs() < 1e-4, "{direct} vs {scanned}");
    }

    check_top_list(&stdout, &rows, col("score"));
    // The broken and the missing file: in the log, the summary and the
    // errors file; the rest was scored.
    let errors = std::fs::read_to_string(dir.path().join("faces.csv.errors.csv")).unwrap();
    assert_eq!(errors.lines().count(), 3, "{errors}");
    for p in [&broken, &missing] {
        assert!(stderr.contains(s(p)), "{stderr}");
        assert!(stdout.contains(s(p)), "{stdout}");
        assert!(errors.contains(s(p)), "{errors}");
    }
    assert!(stdout.contains("scored 4 of 6 photos"), "{stdout}");
}

/// The summary lists the two highest scores of the table, highest first.
fn check_top_list(stdout: &str, rows: &[Vec<String>], score_col: usize) {
    let mut scores: Vec<f64> = rows.iter().map(|r| r[score_col].parse().unwrap()).collect();
    scores.sort_by(|x, y| y.total_cmp(x));
    let listed: Vec<f64> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("highest scores:"))
        .skip(1)
        .take_while(|l| l.starts_with("  0") || l.starts_with("  1"))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{stdout}");
    for (shown, expected) in listed.iter().zip(&scores) {
        assert!((shown - expected).abs() < 1e-4, "{shown} vs {expected}");
    }
}

#[test]
fn the_json_table_has_every_face_in_full_and_reruns_come_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (folder, group, _) = photos(dir.path());
    let out = dir.path().join("faces.json");
    scan(&[&folder, &group], &out, &["--max-faces", "2"]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let faces = json.as_array().unwrap();
    assert_eq!(faces.len(), 5);
    for f in faces {
        for key in [
            "path",
            "face",
            "verdict",
            "score",
            "box",
            "landmarks",
            "size",
            "region_logits",
            "region_attention",
            "region_contributions",
            "routing",
            "top_region",
        ] {
            assert!(f.get(key).is_some(), "no {key} in {f}");
        }
        let parts: f64 = f["region_contributions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .sum();
        let logit = f["logit"].as_f64().unwrap();
        let global = f["global_logit"].as_f64().unwrap();
        assert!((global + parts - logit).abs() < 1e-3);
    }

    // Again: every photo from the cache, the same table.
    let before = std::fs::read_to_string(&out).unwrap();
    let o = scan(&[&folder, &group], &out, &["--max-faces", "2"]);
    assert!(
        text(&o.stdout).contains("0 computed, 4 from cache"),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), before);
}

/// A copy of the tiny model in `dir/model`: the folder, its
/// `sfam_head.json` and that file's contents, to be changed by a test.
fn tiny_copy(dir: &Path) -> (PathBuf, PathBuf, serde_json::Value) {
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(tiny()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    let head = model.join("sfam_head.json");
    let cfg = serde_json::from_str(&std::fs::read_to_string(&head).unwrap()).unwrap();
    (model, head, cfg)
}

/// Without --threshold, the model's suggested threshold decides; without
/// one in the model, 0.5.
#[test]
fn the_models_suggested_threshold_is_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let (model, head, mut cfg) = tiny_copy(dir.path());
    let photo = root().join("assets/samples/ciplab_real_real_00128.jpg");
    let out = dir.path().join("faces.csv");
    for (value, verdict) in [(0.0, "fake"), (1.0, "real")] {
        cfg["threshold"] = serde_json::json!({"value": value, "rule": "a test's"});
        std::fs::write(&head, cfg.to_string()).unwrap();
        let o = sfam(&["scan", s(&photo), "--out", s(&out), "--model", s(&model)]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let stdout = text(&o.stdout);
        assert!(
            stdout.contains(&format!(
                "threshold {value:.4} (suggested by the model: a test's)"
            )),
            "{stdout}"
        );
        let table = std::fs::read_to_string(&out).unwrap();
        assert_eq!(
            table.lines().nth(1).unwrap().split(',').nth(4),
            Some(verdict)
        );
    }
    // --threshold wins; a threshold outside [0, 1] in the model is refused.
    let o = sfam(&[
        "scan",
        s(&photo),
        "--out",
        s(&out),
        "--model",
        s(&model),
        "--threshold",
        "0.25",
    ]);
    assert!(text(&o.stdout).contains("threshold 0.2500 (--threshold)"));
    cfg["threshold"] = serde_json::json!({"value": 1.5, "rule": "wrong"});
    std::fs::write(&head, cfg.to_string()).unwrap();
    let o = sfam(&["scan", s(&photo), "--out", s(&out), "--model", s(&model)]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("outside [0, 1]"),
        "{}",
        text(&o.stderr)
    );
    // The tiny model suggests none.
    let o = sfam(&["scan", s(&photo), "--out", s(&out), "--model", s(&tiny())]);
    assert!(text(&o.stdout).contains("threshold 0.5000 (the default; the model suggests none)"));
}

#[test]
fn scans_that_cannot_proceed_exit_non_zero_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir.path().join("faces.csv");
    let tiny = tiny();

    let empty_scan = ["scan", s(&empty), "--out", s(&out), "--model", s(&tiny)];
    fails_with(&empty_scan, "no images found in");
    fails_with(&empty_scan, "no photos found");

    let photo = root().join("assets/samples/ciplab_real_real_00128.jpg");
    let txt = dir.path().join("faces.txt");
    fails_with(
        &["scan", s(&photo), "--out", s(&txt), "--model", s(&tiny)],
        ".csv or .json",
    );
    fails_with(
        &["scan", s(&photo), "--out", s(&out), "--threshold", "1.5"],
        "between 0 and 1",
    );
    let missing = dir.path().join("no_model");
    fails_with(
        &["scan", s(&photo), "--out", s(&out), "--model", s(&missing)],
        "no_model",
    );
    assert!(!out.exists());
}

/// A model that lists one of the photos as its training image: its row
/// says so, and the summary warns (by content: the photo was renamed).
#[test]
fn a_training_image_of_the_model_is_marked_and_counted() {
    use sfam_studio::model::training_images::{TRAINING_IMAGES_FILE, TrainingImages};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(tiny()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    let trained = std::fs::read(root().join("assets/samples/ciplab_real_real_00128.jpg")).unwrap();
    let list = TrainingImages::of_bytes([trained.as_slice()]);
    std::fs::write(model.join(TRAINING_IMAGES_FILE), list.to_text()).unwrap();
    let (folder, _, _) = photos(dir.path());
    let out = dir.path().join("faces.csv");
    let o = succeeds(&["scan", s(&folder), "--out", s(&out), "--model", s(&model)]);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("warning: 1 of the 3 scored photos are training images of this model"),
        "{stdout}"
    );
    // Photos have no dataset: no count per dataset.
    assert!(
        stdout.contains("their scores are no test of it; e.g."),
        "{stdout}"
    );
    let (header, rows) = csv_rows(&out);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let marked: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[col("path")].as_str(), r[col("training_image")].as_str()))
        .collect();
    let a = folder.join("a.jpg");
    let c = folder.join("c.jpg");
    let b = folder.join("more/b.jpg");
    assert_eq!(
        marked,
        [(s(&a), "true"), (s(&c), "false"), (s(&b), "false")]
    );
}

/// The summary says what the model was trained on, from its
/// `sfam_head.json`, with the caveat about other kinds of faces; so does
/// `sfam inspect` (on stderr, clear of its JSON). A model that does not
/// record it is said to.
#[test]
fn the_summary_says_what_the_model_was_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let (model, head, mut cfg) = tiny_copy(dir.path());
    let photo = root().join("assets/samples/ciplab_real_real_00128.jpg");
    let out = dir.path().join("faces.csv");
    let caveat = "a low score is no proof that a face is real";
    let o = sfam(&["scan", s(&photo), "--out", s(&out), "--model", s(&model)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("the model: what it was trained on is not recorded"),
        "{stdout}"
    );
    assert!(stdout.contains(caveat), "{stdout}");
    cfg["training"] = serde_json::json!({
        "datasets": [{"name": "lab", "train_real": 40, "train_fake": 30,
                      "val_real": 9, "val_fake": 8, "val_auc": 0.75}],
        "validated": "epoch 5"
    });
    std::fs::write(&head, cfg.to_string()).unwrap();
    let o = sfam(&["scan", s(&photo), "--out", s(&out), "--model", s(&model)]);
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains(
            "the model: trained on lab (40 real, 30 fake); validation AUC (epoch 5): lab 0.750"
        ),
        "{stdout}"
    );
    assert!(stdout.contains(caveat), "{stdout}");
    let o = sfam(&["inspect", s(&photo), "--json", "--model", s(&model)]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("trained on lab (40 real, 30 fake)"),
        "{}",
        text(&o.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["model_training"], cfg["training"]);
}
