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
