//! The bundled default model (`models/default/`): within the size budget,
//! loads strictly, scores a face; and, with `../shared/data`, reproduces
//! the validation figures of its model card (`models/default/card.json`,
//! written by the training run and quoted in docs/MODEL.md) when scored
//! by the engine — the path `sfam score` takes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use sfam_studio::data::datasets::{DiscoverOptions, discover};
use sfam_studio::engine::{Engine, EngineOptions, Item};
use sfam_studio::face::pipeline::{FaceDetector, FaceOptions};
use sfam_studio::metrics::{Evaluation, EvaluationOptions};
use sfam_studio::model::SfamModel;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default")
}

#[test]
fn bundled_model_fits_the_budget_loads_and_scores() {
    let total: u64 = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= 25 * 1024 * 1024, "models/default is {total} bytes");
    let model = SfamModel::load(&dir(), &Device::Cpu).unwrap();
    let c = model.head().config();
    assert_eq!(c.prompts.len(), 9);
    assert_eq!(c.grid, [14, 14]);
    assert!(c.backbone.as_deref().unwrap_or("").starts_with("faceres"));
    let detector = FaceDetector::load_default().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let faces = detector.faces_in_image(
        &root.join("assets/samples/ffhq_stylegan2_real_109.jpg"),
        FaceOptions { tight_crops: true },
    );
    let out = model.inspect_faces(&[&faces.aligned[0]]).unwrap();
    let s = out[0].score;
    assert!((0.0..=1.0).contains(&s), "{s}");
    let parts: f32 = out[0].region_contributions.iter().sum();
    assert!((out[0].global_logit + parts - out[0].logit).abs() < 1e-4);
}

#[test]
#[ignore = "needs ../shared/data (scores the 1471 validation faces, about a minute)"]
fn engine_reproduces_the_model_card() {
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("card.json")).unwrap()).unwrap();
    let found = discover(&[dir().join("val_split.csv")], &DiscoverOptions::default());
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let items = Item::from_discovery(&found);
    assert_eq!(items.len(), 1471);
    let engine = Engine::load(&dir(), &Device::Cpu, EngineOptions::default()).unwrap();
    let report = engine
        .score(&items, None, &AtomicBool::new(false), |_| {})
        .unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let eval = Evaluation::from_records(&report.records, &EvaluationOptions::default()).unwrap();
    for d in &eval.per_dataset {
        let want = card["val_auc"][&d.name].as_f64().unwrap();
        let got = d.auc.unwrap();
        assert!(
            (got - want).abs() < 0.005,
            "{}: {got} vs card {want}",
            d.name
        );
    }
    let want = card["val_cross_auc"].as_f64().unwrap();
    let got = eval.cross_auc.summary.mean_off_diagonal.unwrap();
    assert!((got - want).abs() < 0.005, "Cross-AUC {got} vs card {want}");
}

#[test]
#[ignore = "needs ../shared/data (inspects the 324 CIPLAB validation faces, about 20 s)"]
fn region_logits_reproduce_the_explanation_figures() {
    use sfam_studio::data::Label;
    use sfam_studio::metrics::auc;
    use sfam_studio::train::data::RegionCode;
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("explain.json")).unwrap())
            .unwrap();
    let found = discover(&[dir().join("val_split.csv")], &DiscoverOptions::default());
    let model = SfamModel::load(&dir(), &Device::Cpu).unwrap();
    let detector = FaceDetector::load_default().unwrap();
    // (region code, region logits) of each CIPLAB validation face; real
    // faces have no code.
    let mut faces: Vec<(Option<RegionCode>, Vec<f32>)> = Vec::new();
    for d in found.datasets.iter().filter(|d| d.name == "ciplab") {
        for item in &d.items {
            let (path, fake) = (&item.path, item.label == Label::Fake);
            let f = detector.faces_in_image(path, FaceOptions { tight_crops: true });
            let out = model.inspect_faces(&[&f.aligned[0]]).unwrap();
            let code = if fake {
                Some(RegionCode::from_path(path).unwrap())
            } else {
                None
            };
            faces.push((code, out[0].region_logits.clone()));
        }
    }
    assert_eq!(faces.len(), 324);
    let regions = model.head().config().regions.clone();
    let edited_of = |c: &RegionCode, k: usize| [c.left_eye, c.right_eye, c.nose, c.mouth][k];
    let names = ["left_eye", "right_eye", "nose", "mouth"];
    let index: Vec<usize> = names
        .iter()
        .map(|n| regions.iter().position(|r| r == n).unwrap())
        .collect();
    for (k, name) in names.iter().enumerate() {
        let i = index[k];
        let (mut edited, mut unedited, mut real) = (Vec::new(), Vec::new(), Vec::new());
        for (code, logits) in &faces {
            let v = f64::from(logits[i]);
            match code {
                Some(c) if edited_of(c, k) => edited.push(v),
                Some(_) => unedited.push(v),
                None => real.push(v),
            }
        }
        for (key, negatives) in [
            ("logit_edited_vs_unedited", &unedited),
            ("logit_edited_vs_real", &real),
        ] {
            let got = auc(negatives, &edited).unwrap();
            let w = want["regions"][name][key].as_f64().unwrap();
            assert!((got - w).abs() < 1e-3, "{name} {key}: {got} vs {w}");
        }
    }
    let (mut hits, mut coded) = (0_u32, 0_u32);
    for (code, logits) in &faces {
        if let Some(c) = code {
            let top = (0..4)
                .max_by(|&a, &b| logits[index[a]].total_cmp(&logits[index[b]]))
                .unwrap();
            hits += u32::from(edited_of(c, top));
            coded += 1;
        }
    }
    let rate = f64::from(hits) / f64::from(coded);
    let w = want["pointing"]["hit_rate"].as_f64().unwrap();
    assert!((rate - w).abs() < 1e-9, "pointing {rate} vs {w}");
}

/// The sample faces' manifest (`assets/samples/samples.csv`) says which of
/// them trained the bundled model: a row is `validation` exactly when its
/// source file (`assets/samples/PROVENANCE.md`) is in the model's
/// validation split, and its label and dataset are the ones of that
/// source path.
#[test]
fn the_sample_faces_manifest_tells_training_from_validation_faces() {
    let root = dir().join("../..");
    let provenance = std::fs::read_to_string(root.join("assets/samples/PROVENANCE.md")).unwrap();
    let source = |name: &str| -> String {
        let cell = format!("| `{name}` | `");
        let line = provenance.lines().find(|l| l.starts_with(&cell)).unwrap();
        line[cell.len()..].split('`').next().unwrap().to_owned()
    };
    let mut val = csv::Reader::from_path(dir().join("val_split.csv")).unwrap();
    let validation: std::collections::HashSet<String> = val
        .records()
        .map(|r| {
            let r = r.unwrap();
            r[0].trim_start_matches("../../../shared/data/").to_owned()
        })
        .collect();
    let mut samples = csv::Reader::from_path(root.join("assets/samples/samples.csv")).unwrap();
    assert_eq!(
        samples.headers().unwrap(),
        vec!["path", "label", "dataset", "bundled_model_split"]
    );
    // The model's own list of its training images agrees, by content.
    let listed = SfamModel::load(&dir(), &Device::Cpu)
        .unwrap()
        .training_images()
        .cloned()
        .expect("models/default/training_images.txt");
    assert_eq!(listed.len(), 5795);
    let mut counts = [0, 0];
    for row in samples.records() {
        let row = row.unwrap();
        let bytes = std::fs::read(root.join("assets/samples").join(&row[0])).unwrap();
        assert_eq!(
            listed.contains_bytes(&bytes),
            &row[3] == "training",
            "{}",
            &row[0]
        );
        let src = source(&row[0]);
        assert_eq!(
            src,
            format!(
                "{}/{}/{}",
                &row[2],
                &row[1],
                src.rsplit('/').next().unwrap()
            )
        );
        let in_val = validation.contains(&src);
        assert_eq!(
            &row[3],
            if in_val { "validation" } else { "training" },
            "{src}"
        );
        counts[usize::from(in_val)] += 1;
    }
    assert_eq!(counts, [12, 8]);
}

/// `training_images.txt` lists every file of ../shared/data that is not in
/// the validation split, by content, and no validation file.
#[test]
#[ignore = "needs ../shared/data (hashes its 7266 images, a few seconds)"]
fn the_training_images_list_is_the_complement_of_the_validation_split() {
    let listed = SfamModel::load(&dir(), &Device::Cpu)
        .unwrap()
        .training_images()
        .cloned()
        .unwrap();
    let data = dir().join("../../../shared/data");
    let found = discover(&[data], &DiscoverOptions::default());
    assert!(found.errors.is_empty(), "{:?}", found.errors);
    let mut val = csv::Reader::from_path(dir().join("val_split.csv")).unwrap();
    let validation: std::collections::HashSet<PathBuf> = val
        .records()
        .map(|r| std::fs::canonicalize(dir().join(&r.unwrap()[0])).unwrap())
        .collect();
    assert_eq!(validation.len(), 1471);
    let (mut training, mut held_out) = (0, 0);
    for d in &found.datasets {
        for f in &d.items {
            let bytes = std::fs::read(&f.path).unwrap();
            let in_val = validation.contains(&std::fs::canonicalize(&f.path).unwrap());
            assert_eq!(
                listed.contains_bytes(&bytes),
                !in_val,
                "{}",
                f.path.display()
            );
            if in_val {
                held_out += 1;
            } else {
                training += 1;
            }
        }
    }
    assert_eq!((training, held_out), (5795, 1471));
}

/// `sfam_head.json` says what the bundled model was trained on
/// (`training_entry.py`): its validation counts are `val_split.csv`'s, its
/// training images are the 5795 of `training_images.txt`, its validation
/// AUCs and epoch are `card.json`'s.
#[test]
fn the_bundled_model_says_what_it_was_trained_on() {
    let model = SfamModel::load(&dir(), &Device::Cpu).unwrap();
    let t = model
        .head()
        .config()
        .training
        .clone()
        .expect("models/default/sfam_head.json has a training entry");
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("card.json")).unwrap()).unwrap();
    let mut val = csv::Reader::from_path(dir().join("val_split.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = val.records().map(Result::unwrap).collect();
    let names: Vec<&str> = t.datasets.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["ciplab", "dfdc", "ffhq_stylegan2"]);
    for d in &t.datasets {
        let count = |label: &str| {
            rows.iter()
                .filter(|r| &r[2] == d.name.as_str() && &r[1] == label)
                .count()
        };
        assert_eq!((d.val_real, d.val_fake), (count("real"), count("fake")));
        let want = card["val_auc"][&d.name].as_f64().unwrap();
        assert_eq!(d.val_auc, Some(want), "{}", d.name);
    }
    let trained: usize = t.datasets.iter().map(|d| d.train_real + d.train_fake).sum();
    assert_eq!(trained, model.training_images().unwrap().len());
    assert_eq!(
        t.validated,
        format!("epoch {}", card["best_epoch"].as_u64().unwrap())
    );
    let note = model.head().config().training_note();
    assert!(
        note.contains("ciplab (676 real, 619 fake)") && note.contains("ffhq_stylegan2 0.958"),
        "{note}"
    );
}
