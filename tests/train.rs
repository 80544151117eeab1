//! Training end to end on the sample faces: a tiny random CLIP backbone
//! (frozen, or its last layer fine-tuned) and the faceres backbone (last
//! blocks fine-tuned). The loss
//! falls, checkpoints load through `SfamModel::load` and score exactly as
//! the trainer's validation did, a killed run resumes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::float_cmp,
    clippy::case_sensitive_file_extension_comparisons
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use sfam_studio::data::scores::read_scores;
use sfam_studio::face::pipeline::{FaceDetector, FaceOptions};
use sfam_studio::model::SfamModel;
use sfam_studio::model::faceres::{GLOBAL_DIM, PATCH_DIM, POOLED_DIM};
use sfam_studio::train::augment::AugmentOptions;
use sfam_studio::train::{
    BackboneChoice, FEATURE_NORM_FILE, FeatureNorm, TrainError, TrainEvent, TrainNet, TrainOptions,
    train,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `<tmp>/<domain>/{real,fake}/` from `assets/samples/<domain>_<label>_<name>`.
fn sample_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(root().join("assets/samples")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".jpg") {
            continue;
        }
        let (domain, rest) = ["ffhq_stylegan2", "ciplab", "dfdc"]
            .iter()
            .find_map(|d| name.strip_prefix(&format!("{d}_")).map(|r| (*d, r)))
            .unwrap();
        let (label, file) = rest.split_once('_').unwrap();
        let to = dir.path().join(domain).join(label);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(&path, to.join(file)).unwrap();
    }
    dir
}

fn options(data: &Path, out: &Path, backbone: BackboneChoice) -> TrainOptions {
    let mut o = TrainOptions::new(vec![data.to_path_buf()], out.to_path_buf(), backbone);
    o.val_fraction = 0.4;
    o.batch = 8;
    o.samples_per_epoch = 32;
    o.self_blend = 0.25;
    o.augment = AugmentOptions::none();
    o.dim = 16;
    o
}

fn run(
    o: &TrainOptions,
) -> (
    Result<sfam_studio::train::TrainSummary, TrainError>,
    Vec<String>,
) {
    let mut messages = Vec::new();
    let r = train(
        o,
        &mut |e| {
            if let TrainEvent::Message(m) = e {
                messages.push(m);
            }
        },
        &AtomicBool::new(false),
    );
    (r, messages)
}

/// faceres from the bundled weights, its last `train_blocks` blocks trained.
fn faceres(train_blocks: usize) -> BackboneChoice {
    BackboneChoice::FaceRes {
        weights: faceres_weights(),
        train_blocks,
    }
}

/// The tiny CLIP fixture (2 layers, float16, with a text tower).
fn tiny_clip() -> PathBuf {
    root().join("tests/fixtures/model/tiny_l14")
}

/// The CLIP folder `dir`, its last `train_blocks` layers trained.
fn clip_backbone(dir: &Path, train_blocks: usize) -> BackboneChoice {
    BackboneChoice::Clip {
        dir: dir.to_path_buf(),
        train_blocks,
    }
}

fn faceres_weights() -> PathBuf {
    root().join("models/faceres/faceres.safetensors")
}

/// Largest absolute difference (the first tensor may be stored as f16).
fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a.to_dtype(candle_core::DType::F32).unwrap() - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Scores of `best/val_scores.csv` against `SfamModel::load(best)` on the
/// same images through the face pipeline.
fn reload_and_rescore(best: &Path) {
    let model = SfamModel::load(best, &Device::Cpu).unwrap();
    let detector = FaceDetector::load_default().unwrap();
    let recorded: HashMap<String, f64> = read_scores(&best.join("val_scores.csv"))
        .unwrap()
        .into_iter()
        .map(|r| (r.path, r.score))
        .collect();
    assert!(!recorded.is_empty());
    check_suggested_threshold(&model, best);
    check_training_data(&model, best);
    check_training_images(&model, best, recorded.keys());
    for (path, score) in &recorded {
        let faces = detector.faces_in_image(Path::new(path), FaceOptions { tight_crops: true });
        let out = model.inspect_faces(&[&faces.aligned[0]]).unwrap();
        assert!(
            (f64::from(out[0].score) - score).abs() < 1e-4,
            "{path}: {} vs {score}",
            out[0].score
        );
    }
}

/// `best/` lists its training images: every file of the run's training
/// split (`split.csv`), by content, and none of the validation files.
fn check_training_images<'a>(
    model: &SfamModel,
    best: &Path,
    validation: impl Iterator<Item = &'a String>,
) {
    let listed = model
        .training_images()
        .expect("best/ lists its training images");
    let split = std::fs::read_to_string(best.parent().unwrap().join("split.csv")).unwrap();
    let train: Vec<&str> = split
        .lines()
        .skip(1)
        .filter(|l| l.ends_with(",train"))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert!(!train.is_empty());
    assert_eq!(listed.len(), train.len());
    for p in train {
        assert!(listed.contains_bytes(&std::fs::read(p).unwrap()), "{p}");
    }
    for p in validation {
        assert!(!listed.contains_bytes(&std::fs::read(p).unwrap()), "{p}");
    }
}

/// `best/` says what it was trained on: each dataset's images on each
/// side of the run's `split.csv`, and the validation AUC of its recorded
/// scores.
fn check_training_data(model: &SfamModel, best: &Path) {
    let t = model
        .head()
        .config()
        .training
        .clone()
        .expect("best/ records its training data");
    let split = std::fs::read_to_string(best.parent().unwrap().join("split.csv")).unwrap();
    let rows: Vec<Vec<&str>> = split
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let count = |d: &str, label: &str, side: &str| {
        rows.iter()
            .filter(|r| r[1] == d && r[2] == label && r[4] == side)
            .count()
    };
    let scores = read_scores(&best.join("val_scores.csv")).unwrap();
    assert!(!t.datasets.is_empty());
    assert_eq!(
        t.datasets
            .iter()
            .map(|d| d.train_real + d.train_fake + d.val_real + d.val_fake)
            .sum::<usize>(),
        rows.len()
    );
    for d in &t.datasets {
        assert_eq!(d.train_real, count(&d.name, "real", "train"), "{}", d.name);
        assert_eq!(d.train_fake, count(&d.name, "fake", "train"), "{}", d.name);
        assert_eq!(d.val_real, count(&d.name, "real", "val"), "{}", d.name);
        assert_eq!(d.val_fake, count(&d.name, "fake", "val"), "{}", d.name);
        let side = |label| {
            scores
                .iter()
                .filter(|r| r.dataset == d.name && r.label == label)
                .map(|r| r.score)
                .collect::<Vec<f64>>()
        };
        let want = sfam_studio::metrics::auc(
            &side(sfam_studio::data::Label::Real),
            &side(sfam_studio::data::Label::Fake),
        )
        .ok();
        assert_eq!(d.val_auc, want, "{}", d.name);
    }
    // `epoch 3` in best/, `epochs 2–3 averaged` in average/.
    assert!(t.validated.starts_with("epoch"), "{}", t.validated);
    let note = model.head().config().training_note();
    assert!(note.starts_with("trained on "), "{note}");
    assert!(note.contains(&t.datasets[0].name), "{note}");
}

/// `best/` suggests the threshold that flags at most 10 % of its
/// validation real faces, the lowest such one on their scores.
fn check_suggested_threshold(model: &SfamModel, best: &Path) {
    let t = model
        .head()
        .config()
        .threshold
        .clone()
        .expect("best/ suggests a threshold");
    assert!(t.rule.contains("10 %"), "{}", t.rule);
    let mut real: Vec<f64> = read_scores(&best.join("val_scores.csv"))
        .unwrap()
        .into_iter()
        .filter(|r| r.label == sfam_studio::data::Label::Real)
        .map(|r| r.score)
        .collect();
    real.sort_by(|a, b| b.total_cmp(a));
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let allowed = (0.1 * real.len() as f64 + 1e-9).floor() as usize;
    let flagged = real.iter().filter(|&&s| s >= t.value).count();
    assert!(
        flagged <= allowed,
        "{flagged} of {} flagged at {}",
        real.len(),
        t.value
    );
    if allowed < real.len() {
        // One real more than allowed would be flagged just below it.
        assert!(t.value > real[allowed], "{} vs {}", t.value, real[allowed]);
    }
}

#[test]
fn clip_backbone_trains_end_to_end() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let clip = tiny_clip();
    let mut o = options(data.path(), out.path(), clip_backbone(&clip, 0));
    o.epochs = 6;
    o.lr = 3e-3;
    let (summary, _) = run(&o);
    let summary = summary.unwrap();
    assert_eq!(summary.log.len(), 6);
    let first = summary.log.first().unwrap().loss;
    let last = summary.log.last().unwrap().loss;
    assert!(last < first, "loss {first} -> {last}");
    for f in [
        "config.json",
        "model.safetensors",
        "sfam_head.json",
        "sfam_head.safetensors",
    ] {
        assert!(summary.best_dir.join(f).is_file(), "{f}");
    }
    let log = std::fs::read_to_string(out.path().join("train_log.csv")).unwrap();
    assert_eq!(log.lines().count(), 7, "{log}");
    assert!(log.starts_with("epoch,stage,seconds,loss,bce,align,balance,region,val_auc_ciplab"));
    reload_and_rescore(&summary.best_dir);
    // The prompt vectors are the text tower's encodings of the prompts,
    // untouched by training.
    let model = SfamModel::load(&summary.best_dir, &Device::Cpu).unwrap();
    let want = text_tower_prompts(&clip, &model.head().config().prompts);
    let got = model.head().prompt_embeds().unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-5);
    let net = TrainNet::new(&o.backbone, o.head_config(), &Device::Cpu, 0).unwrap();
    assert!(net.text_prompts());
}

/// The unit encodings of `prompts` by the text tower of the CLIP folder `dir`.
fn text_tower_prompts(dir: &Path, prompts: &[String]) -> candle_core::Tensor {
    use sfam_studio::model::ClipTokenizer;
    use sfam_studio::model::clip::{ClipModel, Towers, l2_normalize};
    let clip = ClipModel::load(dir, Towers::Text, &Device::Cpu).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tok.tokenize(p).unwrap()).collect();
    l2_normalize(&clip.text().unwrap().forward(&ids).unwrap()).unwrap()
}

/// A CLIP checkpoint with the image tower alone trains with learned
/// prompt vectors (there is no text tower to read the prompts with).
#[test]
fn clip_without_a_text_tower_learns_its_prompts() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let clip = tempfile::tempdir().unwrap();
    let src = root().join("tests/fixtures/model/tiny_p8");
    std::fs::copy(src.join("config.json"), clip.path().join("config.json")).unwrap();
    let vision: HashMap<String, candle_core::Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| k.starts_with("vision_model.") || k.starts_with("visual_projection."))
            .collect();
    candle_core::safetensors::save(&vision, clip.path().join("model.safetensors")).unwrap();
    let mut o = options(data.path(), out.path(), clip_backbone(clip.path(), 1));
    o.epochs = 2;
    let net = TrainNet::new(&o.backbone, o.head_config(), &Device::Cpu, 0).unwrap();
    assert!(!net.text_prompts());
    let summary = run(&o).0.unwrap();
    reload_and_rescore(&summary.best_dir);
}

/// The last layer of a CLIP image tower fine-tuned (`tiny_l14`: 2 layers,
/// stored in float16): it moves, nothing else of the file does, the folder
/// loads and re-scores what the trainer recorded, a resumed network reads
/// the trained layer back exactly, and more layers than the tower has are
/// refused, naming the folder.
#[test]
fn clip_last_layers_finetune_and_reload() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let clip = tiny_clip();
    let mut o = options(data.path(), out.path(), clip_backbone(&clip, 1));
    o.epochs = 3;
    o.lr = 3e-3;
    o.average_last = 2;
    // A learning rate the tiny tower's weights visibly move at, and no
    // weight decay: a tensor that moves had a gradient.
    o.backbone_lr_ratio = 1.0;
    o.weight_decay = 0.0;
    let (summary, _) = run(&o);
    let summary = summary.unwrap();
    let best = &summary.best_dir;
    // The average holds the mean of the two snapshots' trained layer.
    let average = summary.average.clone().unwrap().dir;
    reload_and_rescore(&average);
    let tensors = |d: &Path| {
        candle_core::safetensors::load(d.join("model.safetensors"), &Device::Cpu).unwrap()
    };
    let (s2, s3, avg) = (
        tensors(&out.path().join("snapshots/epoch-002")),
        tensors(&out.path().join("snapshots/epoch-003")),
        tensors(&average),
    );
    let key = "vision_model.encoder.layers.1.mlp.fc1.weight";
    let mean = ((&s2[key] + &s3[key]).unwrap() * 0.5).unwrap();
    assert!(max_abs_diff(&s2[key], &s3[key]) > 0.0);
    assert!(max_abs_diff(&avg[key], &mean) < 1e-6);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("sfam_head.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["backbone"],
        "CLIP image tower (last 1 of 2 layers fine-tuned)"
    );
    reload_and_rescore(best);
    let before =
        candle_core::safetensors::load(clip.join("model.safetensors"), &Device::Cpu).unwrap();
    let after =
        candle_core::safetensors::load(best.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        before.keys().collect::<std::collections::BTreeSet<_>>(),
        after.keys().collect::<std::collections::BTreeSet<_>>()
    );
    let mut moved = 0;
    for (k, t) in &before {
        let d = max_abs_diff(t, &after[k].to_dtype(candle_core::DType::F32).unwrap());
        if k.starts_with("vision_model.encoder.layers.1.") {
            assert_eq!(after[k].dtype(), candle_core::DType::F32, "{k}");
            moved += usize::from(d > 0.0);
        } else {
            assert_eq!(after[k].dtype(), t.dtype(), "{k}");
            assert_eq!(d, 0.0, "{k} is not trained");
        }
    }
    assert!(moved >= 14, "{moved} of layer 1's 16 tensors moved");
    // Resuming reads the trained layer back: saved again, it is the same.
    let mut net = TrainNet::new(&o.backbone, o.head_config(), &Device::Cpu, 7).unwrap();
    net.load_vars(best).unwrap();
    let again = tempfile::tempdir().unwrap();
    net.save(again.path()).unwrap();
    let resaved =
        candle_core::safetensors::load(again.path().join("model.safetensors"), &Device::Cpu)
            .unwrap();
    for (k, t) in &after {
        assert_eq!(resaved[k].dtype(), t.dtype(), "{k}");
        let r = resaved[k].to_dtype(candle_core::DType::F32).unwrap();
        assert_eq!(max_abs_diff(t, &r), 0.0, "{k}");
    }
    // More layers than the tower has.
    let out3 = tempfile::tempdir().unwrap();
    let o3 = options(data.path(), out3.path(), clip_backbone(&clip, 3));
    let err = run(&o3).0.err().unwrap().to_string();
    assert!(
        err.contains("3 layers to train") && err.contains("has 2") && err.contains("tiny_l14"),
        "{err}"
    );
}

#[test]
fn faceres_backbone_finetunes_and_reloads() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let weights = faceres_weights();
    let o = options(data.path(), out.path(), faceres(2));
    let (summary, _) = run(&o);
    let summary = summary.unwrap();
    let best = &summary.best_dir;
    reload_and_rescore(best);
    // The last blocks moved, the frozen ones did not.
    let before = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let after =
        candle_core::safetensors::load(best.join("faceres.safetensors"), &Device::Cpu).unwrap();
    let diff = |k: &str| max_abs_diff(&before[k], &after[k]);
    assert!(diff("pw13.weight") > 0.0);
    assert!(diff("pw12.weight") > 0.0);
    assert_eq!(diff("pw11.weight"), 0.0);
    assert_eq!(diff("conv1.weight"), 0.0);
    assert!(after.contains_key("proj_patch.weight") && after.contains_key("proj_global.weight"));
    // The folder holds the projections with the feature standardisation
    // folded in (scored above); resuming unfolds them: loaded into a
    // network with the run's standardisation and saved again, they come
    // back unchanged.
    let norm = FeatureNorm::load(&out.path().join(FEATURE_NORM_FILE), &Device::Cpu).unwrap();
    let mut net = TrainNet::new(&o.backbone, o.head_config(), &Device::Cpu, 7).unwrap();
    net.set_feature_norm(norm);
    net.load_vars(best).unwrap();
    let again = tempfile::tempdir().unwrap();
    net.save(again.path()).unwrap();
    let resaved =
        candle_core::safetensors::load(again.path().join("faceres.safetensors"), &Device::Cpu)
            .unwrap();
    for k in [
        "proj_patch.weight",
        "proj_patch.bias",
        "proj_global.weight",
        "proj_global.bias",
    ] {
        let scale = after[k]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = max_abs_diff(&after[k], &resaved[k]);
        assert!(
            d <= 1e-5 * scale.max(1.0),
            "{k}: {d} (values up to {scale})"
        );
    }
}

#[test]
fn same_seed_same_model() {
    let data = sample_tree();
    let run_once = |seed: u64| {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), faceres(1));
        o.augment = AugmentOptions::default();
        o.seed = seed;
        run(&o).0.unwrap();
        let best = out.path().join("best");
        (
            std::fs::read(best.join("sfam_head.safetensors")).unwrap(),
            std::fs::read(best.join("faceres.safetensors")).unwrap(),
            std::fs::read_to_string(best.join("val_scores.csv")).unwrap(),
        )
    };
    let a = run_once(5);
    assert!(a == run_once(5), "same seed, different model");
    assert!(a.0 != run_once(6).0, "the seed changes nothing");
}

#[test]
fn backbone_learning_rate_ratio_scales_the_blocks_steps() {
    let data = sample_tree();
    let weights = faceres_weights();
    let before = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    // At ratio 0 the trained block stays as it was (AdamW's decay is scaled
    // by the learning rate too) while the head learns.
    let out = tempfile::tempdir().unwrap();
    let mut o = options(data.path(), out.path(), faceres(1));
    o.epochs = 1;
    o.backbone_lr_ratio = 0.0;
    let (summary, _) = run(&o);
    let best = summary.unwrap().best_dir;
    let after =
        candle_core::safetensors::load(best.join("faceres.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&before["pw13.weight"], &after["pw13.weight"]),
        0.0
    );
    assert_eq!(
        max_abs_diff(&before["dw13.weight"], &after["dw13.weight"]),
        0.0
    );
    // Resuming this folder at another ratio is another run: refused.
    o.backbone_lr_ratio = 0.3;
    o.epochs = 2;
    assert!(matches!(run(&o).0, Err(TrainError::Options(_))));
    // A negative or non-finite ratio is refused before any work.
    for bad in [-0.1, f64::NAN] {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), faceres(1));
        o.backbone_lr_ratio = bad;
        let (r, _) = run(&o);
        assert!(
            matches!(&r, Err(TrainError::Options(m)) if m.contains("ratio")),
            "{bad}: {r:?}"
        );
    }
}

/// Sum of squares of every tensor of a saved head.
fn head_sq_norm(best: &Path) -> f64 {
    let t =
        candle_core::safetensors::load(best.join("sfam_head.safetensors"), &Device::Cpu).unwrap();
    t.values()
        .map(|v| {
            f64::from(
                v.to_dtype(candle_core::DType::F32)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        })
        .sum()
}

#[test]
fn dropout_and_weight_decay_regularise_the_head() {
    let data = sample_tree();
    let clip = tiny_clip();
    let trained = |dropout: f64, weight_decay: f64| {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), clip_backbone(&clip, 0));
        o.epochs = 1;
        o.dropout = dropout;
        o.weight_decay = weight_decay;
        let best = run(&o).0.unwrap().best_dir;
        let head = candle_core::safetensors::load(best.join("sfam_head.safetensors"), &Device::Cpu)
            .unwrap();
        (out, best, head)
    };
    // Dropout is seeded (the same run twice is the same model), changes
    // what is learnt, and is off in validation: the recorded validation
    // scores are those of the saved model.
    let (_keep, best, first) = trained(0.5, 1e-4);
    let (_o2, _, again) = trained(0.5, 1e-4);
    let (_o3, _, plain) = trained(0.0, 1e-4);
    let mut changed = 0.0f32;
    for (k, v) in &first {
        assert_eq!(max_abs_diff(v, &again[k]), 0.0, "{k}: not reproducible");
        changed = changed.max(max_abs_diff(v, &plain[k]));
    }
    assert!(changed > 1e-6, "dropout changed nothing");
    reload_and_rescore(&best);
    // Weight decay shrinks the head: four steps at a decay of 200 scale
    // every weight by about 0.8 each, far more than Adam's steps move it.
    let (_o4, strong, _) = trained(0.0, 200.0);
    let (_o5, none, _) = trained(0.0, 0.0);
    let (decayed, free) = (head_sq_norm(&strong), head_sq_norm(&none));
    assert!(decayed < 0.5 * free, "decayed {decayed} vs {free}");
    // Out-of-range values are refused before any work.
    for (dropout, decay) in [(1.0, 1e-4), (0.2, -1.0), (0.2, f64::NAN)] {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), faceres(1));
        o.dropout = dropout;
        o.weight_decay = decay;
        let (r, _) = run(&o);
        assert!(
            matches!(&r, Err(TrainError::Options(m)) if m.contains("decay")),
            "{dropout} {decay}: {r:?}"
        );
    }
}

/// `--label-smoothing`: seeded like the rest, it changes what is learnt
/// (the real/fake targets move inward), the saved model re-scores what
/// the trainer recorded, and a value outside [0, 1) is refused.
#[test]
fn label_smoothing_trains_and_is_validated() {
    let data = sample_tree();
    let clip = tiny_clip();
    let trained = |smoothing: f64| {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), clip_backbone(&clip, 0));
        o.epochs = 1;
        o.label_smoothing = smoothing;
        let best = run(&o).0.unwrap().best_dir;
        let head = candle_core::safetensors::load(best.join("sfam_head.safetensors"), &Device::Cpu)
            .unwrap();
        (out, best, head)
    };
    let (_keep, best, first) = trained(0.3);
    let (_o2, _, again) = trained(0.3);
    let (_o3, _, plain) = trained(0.0);
    let mut changed = 0.0f32;
    for (k, v) in &first {
        assert_eq!(max_abs_diff(v, &again[k]), 0.0, "{k}: not reproducible");
        changed = changed.max(max_abs_diff(v, &plain[k]));
    }
    assert!(changed > 1e-6, "label smoothing changed nothing");
    reload_and_rescore(&best);
    for bad in [-0.1, 1.0, f64::NAN] {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), faceres(1));
        o.label_smoothing = bad;
        let (r, _) = run(&o);
        assert!(
            matches!(&r, Err(TrainError::Options(m)) if m.contains("label smoothing")),
            "{bad}: {r:?}"
        );
        assert!(!out.path().join("split.csv").exists());
    }
}

/// `--donor-blend` through both stages (cached probe versions and fresh
/// fine-tuning faces): seeded, it changes what is learnt (the blended
/// copies come from other faces), the saved model re-scores what the
/// trainer recorded, and a probability outside [0, 1] is refused.
#[test]
fn donor_blends_train_through_both_stages() {
    let data = sample_tree();
    let trained = |donor: f64| {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), faceres(1));
        o.probe_epochs = 1;
        o.probe_views = 2;
        o.epochs = 1;
        o.self_blend = 0.5;
        o.donor_blend = donor;
        let summary = run(&o).0.unwrap();
        let head = candle_core::safetensors::load(
            summary.best_dir.join("sfam_head.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        (out, summary, head)
    };
    let (_keep, summary, donated) = trained(1.0);
    let (_o2, _, again) = trained(1.0);
    let (_o3, _, own) = trained(0.0);
    let mut changed = 0.0f32;
    for (k, v) in &donated {
        assert_eq!(max_abs_diff(v, &again[k]), 0.0, "{k}: not reproducible");
        changed = changed.max(max_abs_diff(v, &own[k]));
    }
    assert!(changed > 1e-6, "donors changed nothing");
    let stages: Vec<&str> = summary.log.iter().map(|l| l.stage.as_str()).collect();
    assert_eq!(stages, ["probe", "finetune"]);
    reload_and_rescore(&summary.best_dir);
    for p in [1.5, -0.1, f64::NAN] {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), faceres(1));
        o.donor_blend = p;
        let (r, _) = run(&o);
        assert!(
            matches!(&r, Err(TrainError::Options(m)) if m.contains("donor")),
            "{p}: {r:?}"
        );
    }
}

#[test]
fn average_of_the_last_epochs_is_validated_and_reloads() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let mut o = options(data.path(), out.path(), faceres(1));
    o.epochs = 3;
    o.average_last = 2;
    let (r, messages) = run(&o);
    let summary = r.unwrap();
    let avg = summary.average.clone().unwrap();
    assert_eq!(avg.epochs, (2, 3));
    assert_eq!(avg.dir, out.path().join("average"));
    assert!(avg.val_auc_mean.is_some());
    assert!(
        messages.iter().any(|m| m.contains("epochs 2–3 averaged")),
        "{messages:?}"
    );
    let snap = |e: usize| out.path().join(format!("snapshots/epoch-{e:03}"));
    assert!(!snap(1).exists(), "epoch 1 is outside the window");
    let head = |dir: &Path| {
        candle_core::safetensors::load(dir.join("sfam_head.safetensors"), &Device::Cpu).unwrap()
    };
    let (second, third, mean) = (head(&snap(2)), head(&snap(3)), head(&avg.dir));
    let mut moved = 0.0f32;
    for (k, m) in &mean {
        let expect = ((&second[k] + &third[k]).unwrap() * 0.5).unwrap();
        assert!(max_abs_diff(m, &expect) < 1e-6, "{k}: not the mean");
        moved = moved.max(max_abs_diff(&second[k], &third[k]));
    }
    assert!(moved > 1e-6, "the two epochs' weights are the same");
    // The trainer's validation of the average is what the folder scores.
    reload_and_rescore(&avg.dir);

    // The finished run, resumed with another K: averaged again, not refused.
    o.average_last = 1;
    let again = run(&o).0.unwrap();
    assert_eq!(again.log.len(), 3);
    for (k, m) in head(&again.average.unwrap().dir) {
        assert_eq!(
            max_abs_diff(&m, &third[&k]),
            0.0,
            "{k}: the last epoch alone"
        );
    }
    // A window reaching before the snapshots names the missing one.
    o.average_last = 3;
    let (r, _) = run(&o);
    assert!(
        matches!(&r, Err(TrainError::Data { path, .. }) if path.ends_with("epoch-001")),
        "{r:?}"
    );
    o.average_last = 4;
    let (r, _) = run(&o);
    assert!(
        matches!(&r, Err(TrainError::Options(m)) if m.contains("average")),
        "{r:?}"
    );
}

#[test]
fn killed_run_resumes_from_its_checkpoint() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let mut o = options(data.path(), out.path(), clip_backbone(&tiny_clip(), 0));
    o.epochs = 1;
    let (first, _) = run(&o);
    assert_eq!(first.unwrap().log.len(), 1);
    o.epochs = 2;
    let (second, messages) = run(&o);
    let second = second.unwrap();
    assert_eq!(second.log.len(), 2);
    assert!(
        messages.iter().any(|m| m.contains("resumed after epoch 1")),
        "{messages:?}"
    );
    // A damaged optimizer state is named, not used; without it the run
    // resumes with the moments restarted, and says so.
    let state = out.path().join("checkpoint/train_state.safetensors");
    std::fs::write(&state, b"not safetensors").unwrap();
    o.epochs = 3;
    match run(&o).0 {
        Err(TrainError::Data { path, message }) => {
            assert_eq!(path, state);
            assert!(message.contains("--no-resume"), "{message}");
        }
        other => panic!("{:?}", other.map(|s| s.log.len())),
    }
    std::fs::remove_file(&state).unwrap();
    let (third, messages) = run(&o);
    assert_eq!(third.unwrap().log.len(), 3);
    assert!(
        messages.iter().any(|m| m.contains("moments restart")),
        "{messages:?}"
    );
    // Other options on the same folder are refused, not mixed in.
    o.dim = 32;
    o.epochs = 4;
    let (third, _) = run(&o);
    assert!(matches!(third, Err(TrainError::Options(_))));
}

/// `sfam score DATA --model MODEL --out OUT OPTION --no-cache`, which must
/// succeed; its standard output.
fn score_with(data: &Path, model: &Path, out: &Path, option: &str) -> String {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sfam"))
        .arg("score")
        .arg(data)
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args([option, "--no-cache"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `sfam score` of a run's data with its `best/`: the training images are
/// counted and marked, or left out with `--skip-training-images`.
fn scoring_knows_the_training_images(data: &Path, run: &Path) {
    // Scoring the training data with the trained model says how many of
    // the images it was trained on, and the details mark each.
    let train = std::fs::read_to_string(run.join("split.csv"))
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(",train"))
        .count();
    let scores = run.join("scores.csv");
    let stdout = score_with(data, &run.join("best"), &scores, "--details");
    assert!(
        stdout.contains(&format!(
            "warning: {train} of the 20 scored images are training images of this model"
        )),
        "{stdout}"
    );
    // Counted per dataset too, in name order.
    let mut per: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for l in std::fs::read_to_string(run.join("split.csv"))
        .unwrap()
        .lines()
    {
        if l.ends_with(",train") {
            *per.entry(l.split(',').nth(1).unwrap().to_owned())
                .or_default() += 1;
        }
    }
    let per: Vec<String> = per.iter().map(|(d, n)| format!("{d} {n}")).collect();
    assert!(
        stdout.contains(&format!("no test of it ({}); e.g.", per.join(", "))),
        "{stdout}"
    );
    let details = std::fs::read_to_string(run.join("scores.csv.details.jsonl")).unwrap();
    let mut marked = std::collections::HashSet::new();
    for line in details.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["training_image"] == serde_json::Value::Bool(true) {
            marked.insert(v["path"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(marked.len(), train);
    // Left out, what remains is the validation split.
    let held_out = run.join("held_out.csv");
    let stdout = score_with(data, &run.join("best"), &held_out, "--skip-training-images");
    assert!(
        stdout.contains(&format!("left out {train} training image(s) of this model")),
        "{stdout}"
    );
    assert!(!stdout.contains("warning"), "{stdout}");
    let rows = sfam_studio::data::scores::read_scores(&held_out).unwrap();
    assert_eq!(rows.len(), 20 - train);
    let val: std::collections::HashSet<String> = std::fs::read_to_string(run.join("split.csv"))
        .unwrap()
        .lines()
        .filter(|l| l.ends_with(",val"))
        .map(|l| l.split(',').next().unwrap().to_owned())
        .collect();
    assert!(rows.iter().all(|r| val.contains(&r.path)), "{rows:?}");
    // A model that does not list them cannot leave them out.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sfam"))
        .arg("score")
        .arg(data)
        .arg("--model")
        .arg(root().join("tests/fixtures/model/tiny_l14"))
        .arg("--out")
        .arg(run.join("nope.csv"))
        .args(["--skip-training-images", "--no-cache"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("training_images.txt"));
    assert!(!run.join("nope.csv").exists());
}

#[test]
fn cli_trains_and_reports() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sfam"))
        .args(["train", "--data"])
        .arg(data.path())
        .arg("--out")
        .arg(out.path())
        .args(["--backbone", "clip", "--clip"])
        .arg(root().join("tests/fixtures/model/tiny_l14"))
        .args([
            "--epochs",
            "1",
            "--batch",
            "8",
            "--samples-per-epoch",
            "16",
            "--dim",
            "16",
            "--val-fraction",
            "0.4",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("epoch 1 (finetune) done"), "{err}");
    assert!(out.path().join("best/sfam_head.json").is_file());
    scoring_knows_the_training_images(data.path(), out.path());
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_sfam"))
        .args(["train", "--data", "/nonexistent/data", "--out"])
        .arg(out.path().join("x"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("/nonexistent/data"));
    // An out-of-range scale of the degrading augmentations is refused
    // before any work, naming the option.
    for scale in ["-1", "NaN", "4"] {
        let bad = std::process::Command::new(env!("CARGO_BIN_EXE_sfam"))
            .args(["train", "--data"])
            .arg(data.path())
            .arg("--out")
            .arg(out.path().join("y"))
            .arg(format!("--degradations={scale}"))
            .output()
            .unwrap();
        assert!(!bad.status.success());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains("--degradations"), "{err}");
        assert!(!out.path().join("y").exists());
    }
}

/// A run stopped after an epoch — inside the probe stage, at its end, or
/// inside fine-tuning — and started again with the same options ends with
/// exactly the model of a run that was never stopped: the checkpoint
/// carries the optimizers' moments and the variables' exact values.
#[test]
fn stopped_run_resumes_exactly() {
    use std::sync::atomic::Ordering;
    let data = sample_tree();
    let options_in = |out: &Path| {
        let mut o = options(data.path(), out, faceres(1));
        o.augment = AugmentOptions::default();
        o.probe_epochs = 2;
        o.probe_views = 1;
        o.epochs = 2;
        o.dropout = 0.1;
        o
    };
    let files = |out: &Path| {
        let c = out.join("checkpoint");
        (
            std::fs::read(c.join("sfam_head.safetensors")).unwrap(),
            std::fs::read(c.join("faceres.safetensors")).unwrap(),
            std::fs::read_to_string(out.join("train_log.csv"))
                .unwrap()
                .lines()
                // The losses and AUCs, not the seconds.
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    format!("{},{},{}", f[0], f[1], f[3..].join(","))
                })
                .collect::<Vec<_>>(),
        )
    };
    let whole = tempfile::tempdir().unwrap();
    run(&options_in(whole.path())).0.unwrap();
    let want = files(whole.path());
    assert_eq!(want.2.len(), 5, "{:?}", want.2);

    for stops in [vec![1], vec![2], vec![3], vec![1, 2, 3]] {
        let out = tempfile::tempdir().unwrap();
        let o = options_in(out.path());
        let mut messages = Vec::new();
        for &stop in &stops {
            let cancel = AtomicBool::new(false);
            let r = train(
                &o,
                &mut |e| match e {
                    TrainEvent::Epoch(row) if row.epoch == stop => {
                        cancel.store(true, Ordering::Relaxed);
                    }
                    TrainEvent::Message(m) => messages.push(m),
                    _ => {}
                },
                &cancel,
            );
            assert!(matches!(r, Err(TrainError::Cancelled)), "stop {stop}");
        }
        let (r, last) = run(&o);
        r.unwrap();
        assert!(
            last.iter().any(|m| m.contains("optimizer state restored")),
            "{last:?}"
        );
        messages.extend(last);
        let got = files(out.path());
        assert_eq!(got.2, want.2, "log differs, stopped after {stops:?}");
        assert!(got.0 == want.0, "head differs, stopped after {stops:?}");
        assert!(got.1 == want.1, "backbone differs, stopped after {stops:?}");
        assert_eq!(got.2, want.2, "log differs, stopped after {stops:?}");
    }
}

/// Probe epochs fit the head on cached features and leave the backbone as
/// it was; fine-tuning epochs then continue from that head (here as a
/// resumed run with more epochs) and move the trained blocks.
#[test]
fn probe_stage_then_finetuning() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let weights = faceres_weights();
    let mut o = options(data.path(), out.path(), faceres(1));
    o.augment = AugmentOptions::default();
    o.probe_epochs = 2;
    o.probe_views = 2;
    o.epochs = 0;
    let (summary, messages) = run(&o);
    let summary = summary.unwrap();
    assert!(
        messages.iter().any(|m| m.contains("feature sets cached")),
        "{messages:?}"
    );
    let stages: Vec<&str> = summary.log.iter().map(|l| l.stage.as_str()).collect();
    assert_eq!(stages, ["probe", "probe"]);
    reload_and_rescore(&summary.best_dir);
    let load = |p: &Path| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let diff = max_abs_diff;
    let original = load(&weights);
    let probed = load(&out.path().join("checkpoint/faceres.safetensors"));
    assert_eq!(diff(&original["pw13.weight"], &probed["pw13.weight"]), 0.0);
    let head_probed = load(&out.path().join("checkpoint/sfam_head.safetensors"));

    o.epochs = 1;
    let (summary, messages) = run(&o);
    let summary = summary.unwrap();
    assert!(messages.iter().any(|m| m.contains("resumed after epoch 2")));
    assert!(!messages.iter().any(|m| m.contains("feature sets cached")));
    let stages: Vec<&str> = summary.log.iter().map(|l| l.stage.as_str()).collect();
    assert_eq!(stages, ["probe", "probe", "finetune"]);
    let tuned = load(&out.path().join("checkpoint/faceres.safetensors"));
    assert!(diff(&original["pw13.weight"], &tuned["pw13.weight"]) > 0.0);
    assert_eq!(diff(&original["pw12.weight"], &tuned["pw12.weight"]), 0.0);
    let head_tuned = load(&out.path().join("checkpoint/sfam_head.safetensors"));
    assert!(
        diff(
            &head_probed["head.global.fc.weight"],
            &head_tuned["head.global.fc.weight"]
        ) > 0.0
    );
    let log = std::fs::read_to_string(out.path().join("train_log.csv")).unwrap();
    assert!(log.contains("\n3,finetune,"), "{log}");
}

/// With the last 6 blocks trained, the texture statistics of `conv_pw_9`
/// come from a trained block (the differentiable path): the losses stay
/// finite, `pw9` moves, and the saved folder re-scores what the trainer
/// recorded. A folder of the previous format (a 1536-wide `proj_global`:
/// pooled vector and map mean, no texture statistics) loads and scores as
/// the same model with the texture columns of `proj_global` zeroed.
#[test]
fn texture_blocks_train_and_older_folders_load() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    let mut o = options(data.path(), out.path(), faceres(6));
    o.epochs = 1;
    let (summary, _) = run(&o);
    let summary = summary.unwrap();
    assert!(summary.log.iter().all(|l| l.loss.is_finite()));
    let best = &summary.best_dir;
    reload_and_rescore(best);
    let load = |p: &Path| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let original = load(&faceres_weights());
    let tuned = load(&best.join("faceres.safetensors"));
    assert!(max_abs_diff(&original["pw9.weight"], &tuned["pw9.weight"]) > 0.0);
    assert_eq!(
        max_abs_diff(&original["pw7.weight"], &tuned["pw7.weight"]),
        0.0
    );

    let older_width = POOLED_DIM + PATCH_DIM;
    let w = &tuned["proj_global.weight"];
    assert_eq!(w.dims()[1], GLOBAL_DIM);
    let folder = |weight: candle_core::Tensor| {
        let dir = tempfile::tempdir().unwrap();
        for f in ["sfam_head.json", "sfam_head.safetensors"] {
            std::fs::copy(best.join(f), dir.path().join(f)).unwrap();
        }
        let mut tensors = tuned.clone();
        tensors.insert("proj_global.weight".into(), weight);
        candle_core::safetensors::save(&tensors, dir.path().join("faceres.safetensors")).unwrap();
        dir
    };
    let narrow = folder(w.narrow(1, 0, older_width).unwrap());
    let zeros = candle_core::Tensor::zeros(
        (w.dims()[0], GLOBAL_DIM - older_width),
        w.dtype(),
        &Device::Cpu,
    )
    .unwrap();
    let zeroed = folder(
        candle_core::Tensor::cat(&[&w.narrow(1, 0, older_width).unwrap(), &zeros], 1).unwrap(),
    );
    let a = SfamModel::load(narrow.path(), &Device::Cpu).unwrap();
    let b = SfamModel::load(zeroed.path(), &Device::Cpu).unwrap();
    let detector = FaceDetector::load_default().unwrap();
    let mut scored = 0;
    for entry in std::fs::read_dir(root().join("assets/samples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "jpg") {
            continue;
        }
        let faces = detector.faces_in_image(&path, FaceOptions { tight_crops: true });
        let face = &faces.aligned[0];
        let (sa, sb) = (
            a.inspect_faces(&[face]).unwrap()[0].logit,
            b.inspect_faces(&[face]).unwrap()[0].logit,
        );
        assert!((sa - sb).abs() < 1e-4, "{}: {sa} vs {sb}", path.display());
        scored += 1;
    }
    assert!(scored >= 10);
}

/// `--region-weight`: supervising the region logits with the known edited
/// regions (CIPLAB codes, self-blends, real faces) lowers the logged
/// region loss against the same run without it.
#[test]
fn region_weight_supervises_the_region_logits() {
    let data = sample_tree();
    let run_with = |weight: f64| {
        let out = tempfile::tempdir().unwrap();
        let mut o = options(data.path(), out.path(), faceres(0));
        o.epochs = 4;
        o.lr = 3e-3;
        o.region_weight = weight;
        let (summary, _) = run(&o);
        let log = summary.unwrap().log;
        assert!(log.iter().all(|l| l.region.is_finite() && l.region > 0.0));
        log.last().unwrap().region
    };
    let without = run_with(0.0);
    let with = run_with(2.0);
    assert!(with < without, "region loss {with} with, {without} without");
}

#[test]
fn a_folder_another_run_trains_is_left_alone() {
    let data = sample_tree();
    let out = tempfile::tempdir().unwrap();
    // Another process's run holds the folder's lock.
    let other = std::fs::File::create(out.path().join(sfam_studio::train::LOCK_FILE)).unwrap();
    other.try_lock().unwrap();
    let mut o = options(data.path(), out.path(), faceres(1));
    o.epochs = 1;
    let (r, _) = run(&o);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("being trained by another run"), "{e}");
    // Nothing of this run was written there.
    assert!(!out.path().join("split.csv").exists());
    assert!(!out.path().join("checkpoint").exists());
}
