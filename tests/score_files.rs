//! Score tables read from and written to real files: the fixtures under
//! `tests/fixtures/scores/`, round trips through temporary files, format
//! sniffing and I/O errors.

// Tests compare exact values on purpose and may unwrap: a panic is a failed test.
#![allow(
    clippy::float_cmp,
    clippy::many_single_char_names,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::path::{Path, PathBuf};

use sfam_studio::data::Label;
use sfam_studio::data::scores::{
    ScoreFileError, ScoreFormat, ScoreRecord, parse_scores, read_scores, write_scores,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scores")
        .join(name)
}

fn rec(path: &str, dataset: &str, label: Label, score: f64, video: Option<&str>) -> ScoreRecord {
    ScoreRecord {
        path: path.to_owned(),
        dataset: dataset.to_owned(),
        label,
        score,
        video: video.map(str::to_owned),
    }
}

/// Reads a fixture that must fail with a parse error; returns line and message.
fn parse_failure(name: &str) -> (u64, String) {
    let file = fixture(name);
    match read_scores(&file) {
        Err(ScoreFileError::Parse {
            path,
            line,
            message,
        }) => {
            assert_eq!(path, file, "error names the wrong file");
            (line, message)
        }
        other => panic!("{name}: expected a parse error, got {other:?}"),
    }
}

fn assert_bits(records: &[ScoreRecord], expected: &[ScoreRecord]) {
    assert_eq!(records, expected);
    for (a, b) in records.iter().zip(expected) {
        assert_eq!(a.score.to_bits(), b.score.to_bits(), "{}", a.path);
    }
}

#[test]
fn good_csv_with_reordered_extra_and_quoted_columns() {
    let records = read_scores(&fixture("good.csv")).unwrap();
    assert_bits(
        &records,
        &[
            rec("ff/fake/001.png", "FF++", Label::Fake, 0.9, None),
            rec("ff/real/0,02.png", "FF++", Label::Real, 0.1, None),
            rec(
                "celeb/\"odd\" name.png",
                "Celeb-DF",
                Label::Real,
                0.25,
                None,
            ),
            rec("dfdc/a.png", "DFDC", Label::Fake, 0.001, None),
        ],
    );
}

#[test]
fn good_csv_with_bom_and_video_column() {
    let records = read_scores(&fixture("good_with_video.csv")).unwrap();
    assert_bits(
        &records,
        &[
            rec("a.png", "FF++", Label::Fake, 0.75, Some("vid_001")),
            rec("b.png", "FF++", Label::Real, -3.5, None),
            rec(
                "c.png",
                "Celeb-DF",
                Label::Fake,
                0.300_000_000_000_000_04,
                Some("vid 2"),
            ),
        ],
    );
}

#[test]
fn good_json_with_integer_labels_null_video_and_extra_fields() {
    let records = read_scores(&fixture("good.json")).unwrap();
    assert_bits(
        &records,
        &[
            rec("a.png", "FF++", Label::Fake, 0.9, Some("v1")),
            rec(
                "b.png",
                "FF++",
                Label::Real,
                0.042_893_881_708_178_316,
                None,
            ),
            rec("c.png", "DFDC", Label::Fake, -2.0, None),
            rec("d.png", "DFDC", Label::Real, 1e-300, None),
        ],
    );
}

#[test]
fn bad_csv_fixtures_name_line_and_problem() {
    let cases = [
        ("bad_nan.csv", 3, "score is NaN"),
        (
            "bad_label.csv",
            5,
            "unknown label \"maybe\" (expected real, fake, 0 or 1)",
        ),
        (
            "bad_missing_column.csv",
            1,
            "missing column \"score\" in the header",
        ),
        ("bad_short_row.csv", 3, "expected 5 fields, found 3"),
        ("bad_score_text.csv", 3, "score \"abc\" is not a number"),
        ("bad_infinite.csv", 3, "score is infinite"),
        ("bad_empty_dataset.csv", 3, "empty dataset name"),
        ("bad_empty_path.csv", 4, "empty path"),
        ("bad_utf8.csv", 3, "column \"path\" is not valid UTF-8"),
    ];
    for (name, line, message) in cases {
        assert_eq!(
            parse_failure(name),
            (line, message.to_owned()),
            "fixture {name}"
        );
    }
}

#[test]
fn bad_json_fixtures_name_line_and_problem() {
    let cases = [
        (
            "bad_json_label.json",
            6,
            "unknown label 2 (expected real, fake, 0 or 1)",
        ),
        ("bad_json_missing_score.json", 7, "missing field \"score\""),
        (
            "bad_json_not_array.json",
            1,
            "invalid type: map, expected an array of score records",
        ),
        ("bad_json_empty_path.json", 5, "empty path"),
    ];
    for (name, line, message) in cases {
        assert_eq!(
            parse_failure(name),
            (line, message.to_owned()),
            "fixture {name}"
        );
    }
}

#[test]
fn parse_error_display_names_file_and_line() {
    let text = read_scores(&fixture("bad_nan.csv"))
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("line 3: score is NaN: "), "{text}");
    assert!(text.ends_with("bad_nan.csv"), "{text}");
}

#[test]
fn empty_tables_are_reported_as_empty() {
    for name in ["empty.csv", "header_only.csv", "empty_array.json"] {
        match read_scores(&fixture(name)) {
            Err(ScoreFileError::Empty { path }) => assert_eq!(path, fixture(name)),
            other => panic!("{name}: expected Empty, got {other:?}"),
        }
    }
}

#[test]
fn unknown_extensions_are_sniffed() {
    assert_eq!(
        read_scores(&fixture("sniff_csv.txt")).unwrap(),
        [rec("x.png", "DFDC", Label::Fake, 0.5, None)]
    );
    assert_eq!(
        read_scores(&fixture("sniff_json.dat")).unwrap(),
        [rec("x.png", "DFDC", Label::Real, 0.25, None)]
    );
    match read_scores(&fixture("unknown.txt")) {
        Err(ScoreFileError::UnknownFormat { path }) => assert_eq!(path, fixture("unknown.txt")),
        other => panic!("expected UnknownFormat, got {other:?}"),
    }
}

#[test]
fn missing_file_is_an_io_error_naming_the_file() {
    let missing = fixture("no_such_file.csv");
    let err = read_scores(&missing).unwrap_err();
    let text = err.to_string();
    match err {
        ScoreFileError::Io { path, source } => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }
    assert!(text.contains("no_such_file.csv"), "{text}");
}

fn tricky_records() -> Vec<ScoreRecord> {
    vec![
        rec("a.png", "FF++", Label::Fake, 0.1, Some("v1")),
        rec(
            "dir with, comma/b \"q\".png",
            "FF++",
            Label::Real,
            1e-300,
            None,
        ),
        rec("c.png", "Celeb-DF", Label::Fake, -3.5, Some("v 2")),
        rec("d.png", "DFDC", Label::Real, 0.300_000_000_000_000_04, None),
        rec(
            "e.png",
            "DFDC",
            Label::Fake,
            0.042_893_881_708_178_316,
            None,
        ),
        rec("multi\nline.png", "DFDC", Label::Real, -0.0, None),
        rec(
            "f.png",
            "DFDC",
            Label::Real,
            1.797_693_134_862_315_7e308,
            None,
        ),
        rec("g.png", "DFDC", Label::Fake, 5e-324, None),
        rec("h.png", "DFDC", Label::Fake, 123_456_789.0, None),
    ]
}

#[test]
fn csv_and_json_round_trips_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let records = tricky_records();
    for (name, format) in [("s.csv", ScoreFormat::Csv), ("s.json", ScoreFormat::Json)] {
        let file = dir.path().join(name);
        write_scores(&file, &records, format).unwrap();
        assert_bits(&read_scores(&file).unwrap(), &records);
    }
}

#[test]
fn random_scores_round_trip_bit_identical() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut records = Vec::new();
    while records.len() < 20_000 {
        let score = if records.len() % 2 == 0 {
            rng.random::<f64>()
        } else {
            f64::from_bits(rng.random::<u64>())
        };
        if score.is_finite() {
            let label = if records.len() % 3 == 0 {
                Label::Real
            } else {
                Label::Fake
            };
            let name = format!("{}.png", records.len());
            records.push(rec(&name, "D", label, score, None));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [("r.csv", ScoreFormat::Csv), ("r.json", ScoreFormat::Json)] {
        let file = dir.path().join(name);
        write_scores(&file, &records, format).unwrap();
        assert_bits(&read_scores(&file).unwrap(), &records);
    }
}

#[test]
fn csv_header_has_video_only_when_a_record_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.csv");
    let without = [rec("a.png", "D", Label::Fake, 0.5, None)];
    write_scores(&file, &without, ScoreFormat::Csv).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "path,dataset,label,score\na.png,D,fake,0.5\n"
    );
    let with = [
        rec("a.png", "D", Label::Fake, 0.5, None),
        rec("b.png", "D", Label::Real, 0.25, Some("v")),
    ];
    write_scores(&file, &with, ScoreFormat::Csv).unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "path,dataset,label,score,video\na.png,D,fake,0.5,\nb.png,D,real,0.25,v\n"
    );
    assert_eq!(read_scores(&file).unwrap(), with);
}

#[test]
fn json_output_is_a_pretty_array_without_null_videos() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.json");
    let records = [
        rec("a.png", "D", Label::Fake, 0.5, None),
        rec("b.png", "D", Label::Real, 0.25, Some("v")),
    ];
    write_scores(&file, &records, ScoreFormat::Json).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        value,
        serde_json::json!([
            {"path": "a.png", "dataset": "D", "label": "fake", "score": 0.5},
            {"path": "b.png", "dataset": "D", "label": "real", "score": 0.25, "video": "v"},
        ])
    );
    assert!(text.starts_with("[\n  {\n"), "{text}");
    assert!(!text.contains("null"), "{text}");
}

#[test]
fn writing_unreadable_records_fails_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.csv");
    let cases = [
        (
            rec("a.png", "D", Label::Fake, f64::NAN, None),
            "score is NaN",
        ),
        (
            rec("a.png", "D", Label::Fake, f64::NEG_INFINITY, None),
            "score is infinite",
        ),
        (rec(" ", "D", Label::Fake, 0.5, None), "empty path"),
        (
            rec("a.png", "", Label::Fake, 0.5, None),
            "empty dataset name",
        ),
        (
            rec("a.png", "D", Label::Fake, 0.5, Some("")),
            "blank video name (use None for no video)",
        ),
    ];
    for (bad, expected) in cases {
        let records = [rec("ok.png", "D", Label::Real, 0.1, None), bad];
        for format in [ScoreFormat::Csv, ScoreFormat::Json] {
            match write_scores(&file, &records, format) {
                Err(ScoreFileError::InvalidRecord {
                    path,
                    index,
                    message,
                }) => {
                    assert_eq!(
                        (path.as_path(), index, message.as_str()),
                        (file.as_path(), 1, expected)
                    );
                }
                other => panic!("expected InvalidRecord, got {other:?}"),
            }
        }
    }
    assert!(!file.exists());
}

#[test]
fn writing_into_a_missing_folder_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no/such/dir/s.csv");
    let records = [rec("a.png", "D", Label::Fake, 0.5, None)];
    match write_scores(&file, &records, ScoreFormat::Csv) {
        Err(ScoreFileError::Io { path, .. }) => assert_eq!(path, file),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn a_million_csv_rows_read_exactly() {
    use std::fmt::Write as _;
    let mut text = String::from("path,dataset,label,score,video\n");
    for i in 0..1_000_000u32 {
        let label = if i % 2 == 0 { "fake" } else { "real" };
        writeln!(
            text,
            "img/{i}.png,FF++,{label},{},v{}",
            f64::from(i) / 1e6,
            i / 30
        )
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.csv");
    std::fs::write(&file, &text).unwrap();
    drop(text);
    let records = read_scores(&file).unwrap();
    assert_eq!(records.len(), 1_000_000);
    assert_eq!(records[999_999].score.to_bits(), 0.999_999_f64.to_bits());
    assert_eq!(records[999_999].video.as_deref(), Some("v33333"));
}

#[test]
fn parse_scores_uses_the_given_path_in_errors() {
    let err = parse_scores(
        "path,dataset,label,score\na,b,fake,x\n",
        ScoreFormat::Csv,
        Path::new("virtual.csv"),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "line 2: score \"x\" is not a number: virtual.csv"
    );
}
