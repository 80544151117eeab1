//! `sfam faces` end to end: the real binary on real files.

// Helpers may unwrap too: a panic is a failed test.
#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

use std::path::Path;
use std::process::{Command, Output};

use image::{Rgb, RgbImage};

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

const PORTRAIT: &str = "assets/samples/ciplab_real_real_00311.jpg";
const TWO_FACES: &str = "tests/fixtures/face/two_faces.jpg";
const NO_FACE_CROP: &str = "assets/samples/dfdc_fake_mbmruhrpfd.jpg";

#[test]
fn json_has_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let gradient = dir.path().join("gradient.png");
    RgbImage::from_fn(200, 150, |x, y| {
        #[allow(clippy::cast_possible_truncation)]
        Rgb([x as u8, y as u8, 90])
    })
    .save(&gradient)
    .unwrap();
    let missing = dir.path().join("missing.jpg");
    let aligned = dir.path().join("aligned");
    let (g, m, a) = (
        gradient.to_str().unwrap(),
        missing.to_str().unwrap(),
        aligned.to_str().unwrap(),
    );
    let o = sfam(&[
        "faces",
        PORTRAIT,
        TWO_FACES,
        g,
        m,
        "--json",
        "--save-aligned",
        a,
    ]);
    // An unreadable file fails the run, after reporting every image.
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 4);
    for (entry, path) in arr.iter().zip([PORTRAIT, TWO_FACES, g, m]) {
        assert_eq!(entry["path"], path, "paths as given");
        let keys: Vec<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["path", "faces", "precropped", "error"]);
        assert_eq!(entry["precropped"], false);
    }
    // The portrait: one face, with a box, a score and 5 landmarks.
    let face = &arr[0]["faces"][0];
    assert_eq!(arr[0]["faces"].as_array().unwrap().len(), 1);
    assert!(arr[0]["error"].is_null());
    assert_eq!(face["box"].as_array().unwrap().len(), 4);
    assert!(face["score"].as_f64().unwrap() > 0.99);
    let lm = face["landmarks"].as_array().unwrap();
    assert_eq!(lm.len(), 5);
    assert!(lm.iter().all(|p| p.as_array().unwrap().len() == 2));
    // Two faces, largest first.
    let faces = arr[1]["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 2);
    let area = |f: &serde_json::Value| {
        let b: Vec<f64> = f["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        (b[2] - b[0]) * (b[3] - b[1])
    };
    assert!(area(&faces[0]) > area(&faces[1]));
    // No face, and an unreadable file, each say so with the file's name.
    assert!(arr[2]["faces"].as_array().unwrap().is_empty());
    assert_eq!(arr[2]["error"], format!("no face found: {g}"));
    let err = arr[3]["error"].as_str().unwrap();
    assert!(
        err.starts_with("cannot read image") && err.ends_with(m),
        "{err}"
    );
    // Aligned faces: 1 + 2 PNGs of 224×224.
    let mut names: Vec<String> = std::fs::read_dir(&aligned)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "ciplab_real_real_00311_face0.png",
            "two_faces_face0.png",
            "two_faces_face1.png"
        ]
    );
    let img = image::open(aligned.join("two_faces_face1.png")).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));
    assert!(stderr(&o).contains("4 image(s): 3 face(s) detected, 1 without a face"));
}

#[test]
fn tight_crops_are_flagged_precropped() {
    let o = sfam(&["faces", NO_FACE_CROP, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["precropped"], false);
    assert!(v[0]["error"].as_str().unwrap().starts_with("no face found"));

    let o = sfam(&["faces", NO_FACE_CROP, "--json", "--tight-crops"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v[0]["precropped"], true);
    assert!(v[0]["error"].is_null());
    assert_eq!(
        v[0]["faces"][0]["box"],
        serde_json::json!([0.0, 0.0, 224.0, 224.0])
    );
}

#[test]
fn table_and_folders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(PORTRAIT),
        dir.path().join("a.jpg"),
    )
    .unwrap();
    RgbImage::from_pixel(80, 80, Rgb([10, 10, 10]))
        .save(dir.path().join("b.png"))
        .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "skipped").unwrap();
    let o = sfam(&["faces", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("a.jpg") && out.contains("b.png"), "{out}");
    assert!(out.contains("no face found"), "{out}");
    assert!(!out.contains("notes.txt"));
}

#[test]
fn no_arguments_is_a_usage_error() {
    let o = sfam(&["faces"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("IMG"));
}
