//! `sfam embed` and `sfam inspect` end to end, against the Python references.

#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::process::{Command, Output};

use candle_core::Device;

fn sfam(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sfam"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn refs(name: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(
        format!("tests/fixtures/model/refs/{name}.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn embed_image_json_matches_transformers() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    for name in ["tiny_p8", "tiny_p16", "tiny_l14"] {
        let dir = format!("tests/fixtures/model/{name}");
        let v = json(&sfam(&[
            "embed",
            "--clip",
            &dir,
            "--image",
            &format!("{dir}/image.png"),
            "--json",
        ]));
        let r = refs(name);
        let want = r["file_image_embeds"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(max_diff(&floats(&v["image_embeds"]), &want) < 1e-4);
        let patches: Vec<f32> = v["patch_embeds"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let want = r["file_patch_embeds"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(max_diff(&patches, &want) < 1e-4);
        assert_eq!(v.as_object().unwrap().len(), 2);
    }
}

#[test]
fn embed_text_json_matches_transformers() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).unwrap();
    // Entry 9 of tokenizer.json / refs/tiny_l14: "a photo of a cat".
    let v = json(&sfam(&[
        "embed",
        "--clip",
        "tests/fixtures/model/tiny_l14",
        "--text",
        "a photo of a cat",
        "--json",
    ]));
    let want = refs("tiny_l14")["text_embeds"]
        .get(9)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(max_diff(&floats(&v["text_embeds"]), &want) < 1e-4);
}

#[test]
fn inspect_json_has_every_output() {
    let v = json(&sfam(&[
        "inspect",
        "tests/fixtures/model/tiny_l14/image.png",
        "--model",
        "tests/fixtures/model/tiny_l14",
        "--json",
    ]));
    let faces = v["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 1);
    let f = &faces[0];
    let score = f["score"].as_f64().unwrap();
    assert!(score > 0.0 && score < 1.0);
    let parts: f64 = f["region_contributions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!(
        (f["global_logit"].as_f64().unwrap() + parts - f["logit"].as_f64().unwrap()).abs() < 1e-5
    );
    assert_eq!(f["regions"].as_array().unwrap().len(), 9);
    assert_eq!(f["grid"], serde_json::json!([4, 4]));
    for row in f["routing"].as_array().unwrap() {
        let g = floats(row);
        assert_eq!(g.len(), 4);
        assert_eq!(g.iter().filter(|x| **x > 0.0).count(), 2);
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(f["region_masks"].as_array().unwrap().len(), 9);
    let prompts = f["prompts"].as_array().unwrap().len();
    let maps = f["alignment_maps"].as_array().unwrap();
    assert_eq!(maps.len(), prompts);
    for i in 0..16 {
        let s: f32 = maps.iter().map(|m| m[i].as_f64().unwrap() as f32).sum();
        assert!((s - 1.0).abs() < 1e-5);
    }
}

#[test]
fn errors_name_the_file() {
    let o = sfam(&[
        "embed",
        "--clip",
        "tests/fixtures/model/none",
        "--text",
        "x",
        "--json",
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("tests/fixtures/model/none/config.json"), "{e}");
    let o = sfam(&[
        "embed",
        "--clip",
        "tests/fixtures/model/tiny_p8",
        "--text",
        "x",
        "--device",
        "cuda",
    ]);
    assert!(!o.status.success());
    let o = sfam(&[
        "inspect",
        "tests/fixtures/model/tiny_p8/image.png",
        "--model",
        "tests/fixtures/model/tiny_p8",
    ]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("sfam_head.json"), "{e}");
}
