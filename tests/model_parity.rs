//! Parity of the candle model with the Python reference
//! (`tests/fixtures/model/generate.py`: transformers' `CLIPModel`, `open_clip`'s
//! tokenizer, transformers' PIL image processor, the PyTorch SFAM heads),
//! and strict loading of broken model folders.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sfam_studio::data::image::load_rgb;
use sfam_studio::model::Weights;
use sfam_studio::model::clip::{
    ClipModel, Towers, l2_normalize, layer_forward_differentiable, layer_tensor_shapes,
};
use sfam_studio::model::preprocess::{preprocess_clip, to_tensor};
use sfam_studio::model::{CLIP_MEAN, CLIP_STD, ClipTokenizer, ModelError, SfamModel};

const TOL: f32 = 1e-4;
const MODELS: [&str; 3] = ["tiny_p8", "tiny_p16", "tiny_l14"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/model")
}

fn refs(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures().join("refs").join(format!("{name}.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_diff(a, b);
    println!("{what}: max |Δ| = {d:.2e}");
    assert!(d <= tol, "{what}: max |Δ| = {d} > {tol}");
}

fn sequences(name: &str) -> Vec<Vec<u32>> {
    let text =
        std::fs::read_to_string(fixtures().join("refs").join(format!("{name}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["sequences"].clone()).unwrap()
}

#[test]
fn tokenizer_matches_open_clip() {
    let text = std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let mut failures = Vec::new();
    for c in &cases {
        let t = c["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(c["ids"].clone()).unwrap();
        let got = tok.tokenize(t).unwrap();
        if got != want {
            failures.push(format!("{t:?}\n  open_clip {want:?}\n  ours      {got:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(cases.len() >= 25);
}

#[test]
fn vision_tower_matches_transformers() {
    for name in MODELS {
        let dir = fixtures().join(name);
        let r = refs(name);
        let clip = ClipModel::load(&dir, Towers::Both, &Device::Cpu).unwrap();
        let vision = clip.vision().unwrap();
        let out = vision.forward(&r["pixel_values"]).unwrap();
        assert_close(
            &format!("{name} image_embeds"),
            &out.image_embeds,
            &r["image_embeds"],
            TOL,
        );
        assert_close(
            &format!("{name} patch_embeds"),
            &out.patch_embeds,
            &r["patch_embeds"],
            TOL,
        );
    }
}

#[test]
fn text_tower_matches_transformers() {
    for name in MODELS {
        let r = refs(name);
        let clip = ClipModel::load(&fixtures().join(name), Towers::Text, &Device::Cpu).unwrap();
        let seqs = sequences(name);
        let out = clip.text().unwrap().forward(&seqs).unwrap();
        assert_close(&format!("{name} text_embeds"), &out, &r["text_embeds"], TOL);
        // One at a time (no padding) gives the same.
        let one = clip.text().unwrap().forward(&seqs[1..2]).unwrap();
        assert_close(
            &format!("{name} text_embeds[1] alone"),
            &one,
            &r["text_embeds"].narrow(0, 1, 1).unwrap(),
            TOL,
        );
    }
}

#[test]
fn tokenizer_and_text_tower_together() {
    // tiny_l14 has CLIP's real vocabulary: our tokenizer's ids feed it.
    let r = refs("tiny_l14");
    let clip = ClipModel::load(&fixtures().join("tiny_l14"), Towers::Text, &Device::Cpu).unwrap();
    let text = std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap();
    let cases: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let ids: Vec<Vec<u32>> = cases
        .iter()
        .map(|c| tok.tokenize(c["text"].as_str().unwrap()).unwrap())
        .collect();
    let out = clip.text().unwrap().forward(&ids).unwrap();
    assert_close(
        "tiny_l14 text_embeds from our tokenizer",
        &out,
        &r["text_embeds"],
        TOL,
    );
}

#[test]
fn preprocessing_matches_pil_and_image_files_match() {
    for name in MODELS {
        let dir = fixtures().join(name);
        let r = refs(name);
        let clip = ClipModel::load(&dir, Towers::Vision, &Device::Cpu).unwrap();
        let vision = clip.vision().unwrap();
        let size = vision.config().image_size;
        for (file, key) in [
            ("image.png", "file_pixels"),
            ("image_exact.png", "exact_pixels"),
        ] {
            let img = load_rgb(&dir.join(file)).unwrap();
            let px = to_tensor(
                &[preprocess_clip(&img, size, CLIP_MEAN, CLIP_STD)],
                size,
                &Device::Cpu,
            )
            .unwrap();
            assert_close(
                &format!("{name} {key}"),
                &px.squeeze(0).unwrap(),
                &r[key],
                1e-6,
            );
            if key == "file_pixels" {
                let out = vision.forward(&px).unwrap();
                assert_close(
                    &format!("{name} file image_embeds"),
                    &out.image_embeds,
                    &r["file_image_embeds"],
                    TOL,
                );
                assert_close(
                    &format!("{name} file patch_embeds"),
                    &out.patch_embeds,
                    &r["file_patch_embeds"],
                    TOL,
                );
            }
        }
    }
}

#[test]
fn sfam_heads_match_pytorch() {
    let r = refs("sfam_head");
    let model = SfamModel::load(&fixtures().join("tiny_l14"), &Device::Cpu).unwrap();
    let out = model
        .head()
        .forward(&r["global"], &r["patches"], &r["masks"])
        .unwrap();
    let pairs = [
        ("score", &out.score),
        ("logit", &out.logit),
        ("global_logit", &out.global_logit),
        ("region_logits", &out.region_logits),
        ("region_attention", &out.region_attention),
        ("region_contributions", &out.region_contributions),
        ("router_probs", &out.router_probs),
        ("routing", &out.routing),
        ("alignment_maps", &out.alignment_maps),
    ];
    for (key, t) in pairs {
        assert_close(&format!("head {key}"), t, &r[key], TOL);
    }
    // The whole model from pixels: backbone + heads.
    let px = refs("tiny_l14")["pixel_values"].clone();
    let faces = model.forward(&px, &r["masks"]).unwrap();
    let score = Tensor::new(
        faces.iter().map(|f| f.score).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap();
    assert_close("model score from pixels", &score, &r["score"], TOL);
    let f = &faces[0];
    assert_eq!(f.regions.len(), 9);
    assert_eq!(f.alignment_maps.len(), f.prompts.len());
    assert_eq!(f.routing[0].iter().filter(|g| **g > 0.0).count(), 2);
    let parts: f32 = f.region_contributions.iter().sum();
    assert!((f.global_logit + parts - f.logit).abs() < 1e-5);
}

#[test]
fn head_prompt_vectors_are_the_text_towers() {
    let dir = fixtures().join("tiny_l14");
    let model = SfamModel::load(&dir, &Device::Cpu).unwrap();
    let clip = ClipModel::load(&dir, Towers::Text, &Device::Cpu).unwrap();
    let tok = ClipTokenizer::new().unwrap();
    let ids: Vec<Vec<u32>> = model
        .head()
        .config()
        .prompts
        .iter()
        .map(|p| tok.tokenize(p).unwrap())
        .collect();
    let t = l2_normalize(&clip.text().unwrap().forward(&ids).unwrap()).unwrap();
    assert_close(
        "prompt vectors",
        &t,
        &model.head().prompt_embeds().unwrap(),
        TOL,
    );
}

#[test]
fn template_masks_come_from_the_face_pipeline() {
    let model = SfamModel::load(&fixtures().join("tiny_l14"), &Device::Cpu).unwrap();
    let m = model.template_masks().unwrap();
    assert_eq!(m.dims(), [9, 16]);
    let img = load_rgb(&fixtures().join("tiny_l14/image.png")).unwrap();
    let out = model.inspect_aligned(&[img]).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0].score > 0.0 && out[0].score < 1.0);
    assert_eq!(out[0].region_masks, m.to_vec2::<f32>().unwrap());
}

// ---- strict loading ----------------------------------------------------

fn copy_model(name: &str) -> (tempfile::TempDir, HashMap<String, Tensor>) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join(name).join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let map = candle_core::safetensors::load(
        fixtures().join(name).join("model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    (tmp, map)
}

fn load_err(dir: &Path, map: &HashMap<String, Tensor>) -> String {
    let path = dir.join("model.safetensors");
    candle_core::safetensors::save(map, &path).unwrap();
    ClipModel::load(dir, Towers::Both, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_tensor_is_an_error_naming_file_tensor_and_shape() {
    let (tmp, mut map) = copy_model("tiny_p8");
    map.remove("vision_model.embeddings.class_embedding")
        .unwrap();
    let e = load_err(tmp.path(), &map);
    assert!(
        e.contains("missing tensor `vision_model.embeddings.class_embedding`"),
        "{e}"
    );
    assert!(e.contains("[32]") && e.contains("model.safetensors"), "{e}");
}

#[test]
fn unexpected_tensor_is_an_error() {
    let (tmp, mut map) = copy_model("tiny_p8");
    map.insert(
        "vision_model.extra.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = load_err(tmp.path(), &map);
    assert!(
        e.contains("1 unexpected") && e.contains("vision_model.extra.weight"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_an_error() {
    let (tmp, mut map) = copy_model("tiny_p8");
    map.insert(
        "text_model.encoder.layers.1.mlp.fc1.weight".into(),
        Tensor::zeros((64, 31), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = load_err(tmp.path(), &map);
    assert!(
        e.contains("text_model.encoder.layers.1.mlp.fc1.weight")
            && e.contains("[64, 31]")
            && e.contains("expected [64, 32]"),
        "{e}"
    );
}

#[test]
fn truncated_or_mismatched_files_are_errors() {
    let (tmp, map) = copy_model("tiny_p8");
    let path = tmp.path().join("model.safetensors");
    candle_core::safetensors::save(&map, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = ClipModel::load(tmp.path(), Towers::Both, &Device::Cpu).unwrap_err();
    assert!(matches!(e, ModelError::Corrupt { .. }), "{e}");
    // The weights of another configuration.
    std::fs::copy(fixtures().join("tiny_p16/model.safetensors"), &path).unwrap();
    let e = ClipModel::load(tmp.path(), Towers::Both, &Device::Cpu).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::WrongShape { .. } | ModelError::MissingTensor { .. }
        ),
        "{e}"
    );
    // A model folder without a head.
    let e = SfamModel::load(&fixtures().join("tiny_p8"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sfam_head.json"), "{e}");
    // A broken config.
    std::fs::write(
        tmp.path().join("config.json"),
        "{\"vision_config\": {\"patch_size\": 0}}",
    )
    .unwrap();
    let e = ClipModel::load(tmp.path(), Towers::Both, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config.json") && e.contains("patch_size"), "{e}");
}

/// The bf16 matrix products (AVX-512 BF16) move the towers' outputs and the
/// score only slightly; on a CPU without them the model stays in float32.
#[test]
fn bf16_products_stay_close_to_float32() {
    use sfam_studio::model::Precision;
    let on = sfam_studio::model::bf16::supported();
    for name in MODELS {
        let r = refs(name);
        let clip = ClipModel::load(&fixtures().join(name), Towers::Vision, &Device::Cpu).unwrap();
        let mut vision = clip.into_vision().unwrap();
        let used = vision.set_bf16(true).unwrap();
        assert_eq!(used == Precision::Bf16, on);
        let out = vision.forward(&r["pixel_values"]).unwrap();
        let cos = (l2_normalize(&out.image_embeds).unwrap()
            * l2_normalize(&r["image_embeds"]).unwrap())
        .unwrap()
        .sum(1)
        .unwrap()
        .min(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        let d = max_diff(&out.patch_embeds, &r["patch_embeds"]);
        println!("{name} bf16: image cosine {cos:.6}, patch max |Δ| {d:.2e}");
        assert!(cos > 0.999, "{name}: cosine {cos}");
        if on {
            // Really another computation, not the float32 one.
            assert!(d > 1e-6, "{name}: bf16 changed nothing");
        }
        vision.set_bf16(false).unwrap();
        let back = vision.forward(&r["pixel_values"]).unwrap();
        assert_close(
            &format!("{name} back to f32"),
            &back.patch_embeds,
            &r["patch_embeds"],
            TOL,
        );
    }
    let hr = refs("sfam_head");
    let mut model = SfamModel::load(&fixtures().join("tiny_l14"), &Device::Cpu).unwrap();
    assert_eq!(model.precision(), Precision::F32);
    model.set_precision(Precision::Bf16).unwrap();
    let px = refs("tiny_l14")["pixel_values"].clone();
    let faces = model.forward(&px, &hr["masks"]).unwrap();
    let want = hr["score"].to_vec1::<f32>().unwrap();
    for (f, w) in faces.iter().zip(want) {
        assert!((f.score - w).abs() <= 0.01, "score {} vs {w}", f.score);
    }
}

/// The tensors of the image tower's layer `i` in `dir`'s checkpoint, by
/// the names of `layer_tensor_shapes`, as `dtype`.
fn layer_tensors(dir: &Path, i: usize, dtype: DType) -> HashMap<String, Tensor> {
    let clip = ClipModel::load(dir, Towers::Vision, &Device::Cpu).unwrap();
    let c = clip.vision().unwrap().config().clone();
    let ws = Weights::open(&dir.join("model.safetensors"), dtype, &Device::Cpu).unwrap();
    layer_tensor_shapes(c.hidden_size, c.intermediate_size)
        .into_iter()
        .map(|(name, shape)| {
            let key = format!("vision_model.encoder.layers.{i}.{name}");
            (name.to_owned(), ws.get(&key, &shape).unwrap())
        })
        .collect()
}

/// The image tower with its last layers run by the trainer's
/// differentiable layer (`layer_forward_differentiable`, then
/// `project_differentiable`) gives what the inference tower gives — and
/// so what transformers gives — for every number of trained layers.
#[test]
fn trainable_layers_match_the_inference_tower() {
    for name in MODELS {
        let dir = fixtures().join(name);
        let r = refs(name);
        let clip = ClipModel::load(&dir, Towers::Vision, &Device::Cpu).unwrap();
        let vision = clip.vision().unwrap();
        let c = vision.config();
        let shape = vision.layer_shape();
        let want = vision.forward(&r["pixel_values"]).unwrap();
        for trained in 0..=c.num_hidden_layers {
            let first = c.num_hidden_layers - trained;
            let mut x = vision.hidden_states(&r["pixel_values"], first).unwrap();
            for i in first..c.num_hidden_layers {
                let t = layer_tensors(&dir, i, DType::F32);
                let get = |n: &str| Ok(t[n].clone());
                x = layer_forward_differentiable(&x, &get, shape).unwrap();
            }
            let got = vision.project_differentiable(&x).unwrap();
            let what = format!("{name}, last {trained} layers differentiable");
            assert_close(
                &format!("{what}: image_embeds"),
                &got.image_embeds,
                &want.image_embeds,
                1e-5,
            );
            assert_close(
                &format!("{what}: patch_embeds"),
                &got.patch_embeds,
                &want.patch_embeds,
                1e-5,
            );
            assert_close(
                &format!("{what}: against transformers"),
                &got.patch_embeds,
                &r["patch_embeds"],
                TOL,
            );
        }
    }
}

/// Values in [-1, 1] that do not repeat (no random generator needed).
fn wobble(n: usize, phase: f64) -> Vec<f64> {
    #[allow(clippy::cast_precision_loss)]
    (0..n).map(|i| (i as f64 * 0.7311 + phase).sin()).collect()
}

/// The gradients of the trainer's differentiable CLIP layer (with respect
/// to every kind of tensor in it and to its input) agree with central
/// finite differences, in double precision, for both activations
/// (`tiny_p8`: quick GELU, `tiny_p16`: GELU) — with the parity above, the
/// backward pass of a fine-tuned CLIP layer is right.
#[test]
#[allow(clippy::many_single_char_names)] // b, s, d, h, k, x, y: the usual names
fn trainable_layer_gradients_match_finite_differences() {
    for name in ["tiny_p8", "tiny_p16"] {
        let dir = fixtures().join(name);
        let clip = ClipModel::load(&dir, Towers::Vision, &Device::Cpu).unwrap();
        let c = clip.vision().unwrap().config().clone();
        let shape = clip.vision().unwrap().layer_shape();
        let (b, s, d) = (2, c.num_patches() + 1, c.hidden_size);
        let vars: HashMap<String, candle_core::Var> = layer_tensors(&dir, 0, DType::F64)
            .into_iter()
            .map(|(k, t)| (k, candle_core::Var::from_tensor(&t).unwrap()))
            .collect();
        let x = candle_core::Var::from_tensor(
            &Tensor::from_vec(wobble(b * s * d, 0.3), (b, s, d), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let weights = Tensor::from_vec(wobble(b * s * d, 1.9), (b, s, d), &Device::Cpu).unwrap();
        let loss = || -> f64 {
            let get = |n: &str| Ok(vars[n].as_tensor().clone());
            let y = layer_forward_differentiable(x.as_tensor(), &get, shape).unwrap();
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let get = |n: &str| Ok(vars[n].as_tensor().clone());
        let y = layer_forward_differentiable(x.as_tensor(), &get, shape).unwrap();
        let grads = (y * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let mut checked = 0;
        let mut targets: Vec<(&str, &candle_core::Var)> =
            vars.iter().map(|(k, v)| (k.as_str(), v)).collect();
        targets.push(("input", &x));
        for (what, var) in targets {
            let analytic: Vec<f64> = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {what}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let values: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let n = values.len();
            for &k in &[0, n / 3, n - 1] {
                let h = 1e-5;
                let at = |delta: f64| {
                    let mut v = values.clone();
                    v[k] += delta;
                    let t = Tensor::from_vec(v, var.as_tensor().shape(), &Device::Cpu).unwrap();
                    var.set(&t).unwrap();
                    loss()
                };
                let numeric = (at(h) - at(-h)) / (2.0 * h);
                at(0.0);
                let err = (analytic[k] - numeric).abs();
                assert!(
                    err <= 1e-6 * numeric.abs().max(1.0),
                    "{name} {what}[{k}]: autograd {} vs finite differences {numeric}",
                    analytic[k]
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 3 * 17, "{name}");
    }
}
