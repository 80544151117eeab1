//! UI flows driven headless with `egui_kittest` (no display, no GPU).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT as _, Queryable};

use super::{Settings, SfamApp, View};

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn harness(app: SfamApp) -> Harness<'static, SfamApp> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 1000.0))
        .build_ui_state(
            |ui, app: &mut SfamApp| {
                app.poll();
                app.show(ui);
            },
            app,
        )
}

/// Steps the UI until `done` holds (the workers run on their own threads).
fn step_until(h: &mut Harness<'_, SfamApp>, done: impl Fn(&SfamApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker never finished"
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.run_steps(3);
}

#[test]
fn a_score_file_shows_the_matrix_and_a_cells_distributions() {
    let mut app = SfamApp::new(Settings::default(), None);
    app.open_scores(fixture("tests/fixtures/cli/scores.csv"));
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.datasets.loaded.is_some() || !a.errors.is_empty()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    // Matrix cells (brute-force values of the fixture) and an undefined row.
    h.get_by_label("0.889");
    h.get_by_label("0.417");
    assert_eq!(h.get_all_by_label("n/a").count(), 3);
    h.get_by_label_contains("mean off-diagonal 0.4792");
    // Clicking A's reals against SD's fakes shows that cell's distributions.
    h.get_by_label("0.417").click();
    h.run_steps(3);
    h.get_by_label_contains("Cell [A][SD]: real faces of A against fake faces of SD");
    let d = h.state().datasets.detail.as_ref().unwrap();
    assert_eq!((d.real, d.fake), (0, 2));
    assert!((d.hists.0.fractions.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    // Bootstrap intervals: the cell's in its heading, each dataset's in the
    // table, the same as the library's (and `sfam cross-auc --bootstrap
    // 1000`'s) for this small table; none for the fake-only dataset.
    let l = h.state().datasets.loaded.as_ref().unwrap();
    let (a, sd) = (&l.eval.domains[0], &l.eval.domains[2]);
    let cell = sfam_studio::metrics::bootstrap_auc(&a.real, &sd.fake, 1000, 0.95, 0).unwrap();
    let own = sfam_studio::metrics::bootstrap_auc(&a.real, &a.fake, 1000, 0.95, 0).unwrap();
    assert!(cell.low < cell.high && own.low <= 0.889 && 0.889 <= own.high);
    assert_eq!(l.eval.cross_auc_ci[0][2].as_ref(), Some(&cell));
    assert_eq!(l.eval.per_dataset[0].auc_ci.as_ref(), Some(&own));
    assert!(
        l.eval.cross_auc_ci[2].iter().all(Option::is_none),
        "SD has no reals"
    );
    h.get_by_label_contains(&format!(
        "AUC 0.4167 (95% CI {:.3}–{:.3}, 1000 bootstrap resamples)",
        cell.low, cell.high
    ));
    h.get_by_label(&format!("{:.3}–{:.3}", own.low, own.high));
    // The transfer table is there, with the fake-only dataset's reason.
    h.get_by_label_contains("A -> B");
    assert_eq!(h.get_all_by_label("SD: no real faces").count(), 3);
}

/// Compare the loaded table with a second detector's: `a/fake/2.jpg`
/// moved above every real face of A (A: 8/9 → 1), one face missing.
#[test]
fn a_second_table_is_compared_cell_by_cell_and_bad_ones_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(fixture("tests/fixtures/cli/scores.csv")).unwrap();
    let second = dir.path().join("second.csv");
    std::fs::write(
        &second,
        original
            .replace("a/fake/2.jpg,A,fake,0.25", "a/fake/2.jpg,A,fake,0.95")
            .replace("b/real/2.jpg,B,real,0.65,\n", ""),
    )
    .unwrap();
    let mut app = SfamApp::new(Settings::default(), None);
    app.open_scores(fixture("tests/fixtures/cli/scores.csv"));
    let mut h = harness(app);
    step_until(&mut h, |a| a.datasets.loaded.is_some());
    h.get_by_label("Compare with...");
    h.state_mut().compare_scores(second.clone());
    step_until(&mut h, |a| {
        a.datasets.comparison.is_some() || !a.errors.is_empty()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    h.get_by_label_contains("its AUC minus this table's, on the 11 faces both scored");
    h.get_by_label_contains("(1 only in this table, 0 only in that one)");
    h.get_by_label_contains("Cross-AUC (mean off-diagonal): 0.5208 here, 0.6042 there: +0.0833");
    let c = h.state().datasets.comparison.as_ref().unwrap();
    let a = c.cells[0][0].unwrap();
    assert!((a.difference - 1.0 / 9.0).abs() < 1e-12);
    assert!(c.cells[2].iter().all(Option::is_none), "SD has no reals");
    h.get_by_label("+0.111");
    assert_eq!(
        h.get_all_by_label("n/a").count(),
        3 + 3,
        "the matrix's and the comparison's"
    );
    h.get_by_label("Close comparison").click();
    h.run_steps(3);
    assert!(h.state().datasets.comparison.is_none());

    // A table that shares no path: one error naming it, the app goes on.
    let other = dir.path().join("other.csv");
    std::fs::write(&other, "path,dataset,label,score\nz.jpg,A,real,0.5\n").unwrap();
    h.state_mut().compare_scores(other);
    step_until(&mut h, |a| !a.errors.is_empty());
    let errors = &h.state().errors;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("other.csv") && errors[0].contains("no path is in both"),
        "{errors:?}"
    );
    assert!(h.state().datasets.loaded.is_some());

    // `sfam --open A --compare B`: the comparison starts when A has loaded.
    let mut app = SfamApp::new(Settings::default(), None);
    app.datasets.compare_after_load = Some(second);
    app.open_scores(fixture("tests/fixtures/cli/scores.csv"));
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.datasets.comparison.is_some() || !a.errors.is_empty()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert!(h.state().datasets.compare_after_load.is_none());
    h.get_by_label("+0.111");
}

#[test]
fn a_bad_score_file_is_reported_once_and_the_app_goes_on() {
    let mut app = SfamApp::new(Settings::default(), None);
    app.open_scores(fixture("tests/fixtures/cli/bad_score.csv"));
    let mut h = harness(app);
    step_until(&mut h, |a| !a.errors.is_empty());
    assert_eq!(h.state().errors.len(), 1);
    h.get_by_label_contains("line 3");
    h.get_by_label("dismiss").click();
    h.run_steps(2);
    assert!(h.state().errors.is_empty());
    assert!(h.state().datasets.loaded.is_none());
}

/// A long error (a run's file errors) wraps inside the window, and its
/// "dismiss" stays on screen and works.
#[test]
fn a_long_error_wraps_and_stays_dismissable() {
    let mut app = SfamApp::new(Settings::default(), None);
    app.errors.push(format!(
        "4 image(s) could not be scored: {}",
        "not a supported image (unknown format): /data/some/deep/folder/photo.jpg; ".repeat(20)
    ));
    let mut h = harness(app);
    h.run_steps(2);
    let button = h.get_by_label("dismiss").rect();
    let message = h
        .get_by_label_contains("4 image(s) could not be scored")
        .rect();
    assert!(button.max.x <= 1400.0, "{button:?}");
    assert!(message.max.x <= 1400.0, "{message:?}");
    // Wrapped over several lines, not cut at the window's edge.
    assert!(message.height() > 3.0 * button.height(), "{message:?}");
    h.get_by_label("dismiss").click();
    h.run_steps(2);
    assert!(h.state().errors.is_empty());
}

#[test]
fn dataset_folders_are_discovered_in_the_background() {
    let mut app = SfamApp::new(Settings::default(), None);
    app.add_root(fixture("tests/fixtures/datasets/multi"));
    let mut h = harness(app);
    step_until(&mut h, |a| a.datasets.discovery.is_some());
    h.get_by_label_contains("Dataset folders (2 datasets)")
        .click();
    h.run_steps(2);
    h.get_by_label("gen_only");
}

#[test]
fn settings_survive_a_round_trip_and_views_switch() {
    let mut s = Settings {
        threshold: 0.7,
        ..Settings::default()
    };
    s.recent_scores.push(PathBuf::from("/x/s.csv"));
    let text = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<Settings>(&text).unwrap(), s);
    // Older or partial settings fall back to defaults field by field.
    let partial: Settings = serde_json::from_str(r#"{"threshold": 0.2}"#).unwrap();
    assert_eq!((partial.threshold, partial.view), (0.2, View::Datasets));

    let mut app = SfamApp::new(Settings::default(), None);
    app.inspect.bundled = None;
    let mut h = harness(app);
    h.get_by_label("Inspect").click();
    h.run_steps(2);
    assert_eq!(h.state().settings.view, View::Inspect);
    // No model chosen and none bundled: said so, with a way to pick one.
    h.get_by_label_contains("No bundled model yet");
    h.get_by_label("Pick a model folder...");
    h.get_by_label_contains("No photos yet");
}

// ---- Inspect ----

/// The tiny random CLIP model (4x4 patches, 9 regions, text tower).
fn tiny_model() -> PathBuf {
    fixture("tests/fixtures/model/tiny_l14")
}

/// A copy of the tiny model, to change.
fn tiny_model_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(tiny_model()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    dir
}

/// A copy of the tiny model that lists these sample faces as its training
/// images.
fn tiny_model_listing(samples: &[&str]) -> tempfile::TempDir {
    let model = tiny_model_copy();
    let bytes: Vec<Vec<u8>> = samples
        .iter()
        .map(|n| std::fs::read(fixture(&format!("assets/samples/{n}"))).unwrap())
        .collect();
    let list = sfam_studio::model::training_images::TrainingImages::of_bytes(
        bytes.iter().map(Vec::as_slice),
    );
    std::fs::write(model.path().join("training_images.txt"), list.to_text()).unwrap();
    model
}

/// An app on the Inspect view with this model folder and no bundled model.
fn inspect_app(model: Option<PathBuf>) -> SfamApp {
    let settings = Settings {
        view: View::Inspect,
        model_dir: model,
        ..Settings::default()
    };
    let mut app = SfamApp::new(settings, None);
    app.inspect.bundled = None;
    app
}

fn inspected(h: &mut Harness<'_, SfamApp>) {
    step_until(h, |a| !a.inspect.busy());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

#[test]
fn a_photo_shows_its_score_verdict_and_region_charts() {
    let mut app = inspect_app(Some(tiny_model()));
    app.open_paths(vec![fixture("assets/samples/ffhq_stylegan2_real_109.jpg")]);
    let mut h = harness(app);
    inspected(&mut h);
    let (score, regions, experts) = {
        let (_, _, f) = h.state().inspect.selected_face().unwrap();
        let o = &f.output;
        assert_eq!(o.grid, [4, 4]);
        assert_eq!(o.alignment_maps.len(), o.prompts.len());
        (o.score, o.regions.len(), o.routing[0].len())
    };
    assert_eq!((regions, experts), (9, 4));
    // The verdict at the threshold in use, and its flip across the score.
    let word = if score >= 0.5 { "FAKE" } else { "REAL" };
    h.get_by_label(&format!("Likely {word}"));
    h.get_by_label_contains(&format!("score {score:.4}"));
    h.get_by_label_contains("threshold 0.50");
    h.state_mut().settings.inspect_threshold = f64::from(score) + 0.01;
    h.run_steps(2);
    h.get_by_label("Likely REAL");
    h.state_mut().settings.inspect_threshold = f64::from(score) - 0.01;
    h.run_steps(2);
    h.get_by_label("Likely FAKE");
    // The thumbnail carries the score.
    h.get_by_label(&format!("{score:.3}"));
    // Region contributions and routing: every region in both charts.
    h.get_by_label("Contribution of each region to the logit (attention x region logit)");
    h.get_by_label("Mixture-of-experts routing weights (regions x experts)");
    assert_eq!(h.get_all_by_label("chin / jaw").count(), 2);
    h.get_by_label("expert 4");
    h.get_by_label("global (whole face)");
    // The region overlay adds its legend.
    h.get_by_label("regions").click();
    h.run_steps(2);
    assert_eq!(h.get_all_by_label("chin / jaw").count(), 3);
}

#[test]
fn the_sample_faces_open_in_one_click_from_the_empty_inspect_view() {
    // A model that lists two of them as its training images.
    let trained = ["ciplab_fake_mid_20_1111.jpg", "dfdc_real_kbodjivgqu.jpg"];
    let model = tiny_model_listing(&trained);
    let app = inspect_app(Some(model.path().to_path_buf()));
    assert!(app.inspect.samples.is_some());
    let mut h = harness(app);
    h.get_by_label_contains("No photos yet");
    h.get_by_label("Open the sample faces").click();
    h.run_steps(1);
    step_until(&mut h, |a| {
        a.inspect.entries.len() == 20 && !a.inspect.busy()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().settings.view, View::Inspect);
    // The photos only: not their manifest or provenance note.
    assert!(
        h.state()
            .inspect
            .entries
            .iter()
            .all(|e| { e.path.extension().is_some_and(|x| x == "jpg") })
    );
    // Every photo has its face (DFDC's crops through the tight-crop
    // fallback).
    assert_eq!(
        h.get_all_by_label_contains("20 photos, 20 inspected: 20 faces, ")
            .count(),
        1
    );
    assert_eq!(
        h.get_all_by_label_contains("; 2 of the photos trained this model")
            .count(),
        1
    );
    // Their thumbnails say so, and so does the face view of each.
    assert_eq!(h.get_all_by_label_contains("· trained").count(), 2);
    let names: Vec<String> = h
        .state()
        .inspect
        .entries
        .iter()
        .map(|e| e.path.file_name().unwrap().to_str().unwrap().to_owned())
        .collect();
    for (k, name) in names.iter().enumerate() {
        h.state_mut().inspect.select(k);
        h.run_steps(2);
        let warned = h
            .query_by_label_contains("A training image of this model")
            .is_some();
        assert_eq!(warned, trained.contains(&name.as_str()), "{name}");
        // The face's exported result says it too.
        let v = h.state().inspect.face_json(0.5).unwrap();
        assert_eq!(v["training_image"], warned, "{name}");
    }
    assert!(h.query_by_label("Open the sample faces").is_none());
}

#[test]
fn a_first_start_opens_the_sample_faces_and_later_starts_do_not() {
    let tiny = Some(tiny_model());
    let app = SfamApp::starting(None, Vec::new(), tiny.clone(), None, None);
    assert_eq!(app.settings.view, View::Inspect);
    assert_eq!(app.settings.model_dir, tiny);
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.inspect.entries.len() == 20 && !a.inspect.busy()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    drop(h);
    // Settings stored by an earlier start: the view it showed, nothing
    // opened.
    let stored = Settings {
        view: View::Train,
        ..Settings::default()
    };
    let app = SfamApp::starting(Some(stored), Vec::new(), tiny.clone(), None, None);
    assert_eq!(app.settings.view, View::Train);
    assert!(app.inspect.entries.is_empty());
    // Paths on the command line win over the samples on a first start.
    let table = fixture("tests/fixtures/cli/scores.csv");
    let app = SfamApp::starting(None, vec![table.clone()], tiny, None, None);
    assert_eq!(app.settings.view, View::Datasets);
    assert!(app.inspect.entries.is_empty());
    assert_eq!(app.settings.recent_scores, [table]);
}

#[test]
fn prompts_switch_and_a_typed_prompt_gets_its_heatmap() {
    let mut app = inspect_app(Some(tiny_model()));
    app.open_images(vec![fixture("assets/samples/dfdc_fake_hlsbacxpca.jpg")]);
    let mut h = harness(app);
    inspected(&mut h);
    assert_eq!(h.state().inspect.prompt, 1, "the first artifact prompt");
    h.get_by_label("prompt").click();
    h.run_steps(2);
    h.get_by_label("a face with unnatural skin texture").click();
    h.run_steps(2);
    assert_eq!(h.state().inspect.prompt, 2);
    h.get_by_label_contains("typed prompts available");

    let input = h.get_by_label("Prompt:");
    input.focus();
    input.type_text("a face with glasses");
    h.run_steps(2);
    h.get_by_label("Show heatmap").click();
    h.run_steps(1);
    step_until(&mut h, |a| {
        a.inspect.prompt_job.is_none()
            && a.inspect
                .selected_face()
                .is_some_and(|(_, _, f)| !f.typed.is_empty())
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let (_, _, f) = h.state().inspect.selected_face().unwrap();
    let (text, map) = &f.typed[0];
    assert_eq!(text, "a face with glasses");
    assert_eq!(map.len(), 16);
    assert!(map.iter().all(|v| (0.0..=1.0).contains(v)));
    // The new heatmap is shown (the prompt selector's value).
    assert_eq!(h.state().inspect.prompt, f.output.prompts.len());
    assert_eq!(
        h.get_by_label("prompt").value().as_deref(),
        Some("a face with glasses (typed)")
    );
}

#[test]
fn several_faces_are_selectable_and_results_export() {
    let mut app = inspect_app(Some(tiny_model()));
    app.open_images(vec![fixture("tests/fixtures/face/two_faces.jpg")]);
    let mut h = harness(app);
    inspected(&mut h);
    h.get_by_label_contains("2 faces (click a box");
    h.get_by_label_contains("Face 2: ").click();
    h.run_steps(2);
    assert_eq!(h.state().inspect.face, 1);
    h.get_by_label("face 2 of photo 1");

    let dir = tempfile::tempdir().unwrap();
    let (json, png) = (dir.path().join("face.json"), dir.path().join("face.png"));
    h.state_mut().export_face_json(json.clone());
    step_until(&mut h, |a| a.status.is_some() || !a.errors.is_empty());
    h.state_mut().status = None;
    h.state_mut().export_face_png(png.clone());
    step_until(&mut h, |a| a.status.is_some() || !a.errors.is_empty());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (_, _, f) = h.state().inspect.selected_face().unwrap();
    assert_eq!(v["face"], 1);
    assert_eq!(v["score"].as_f64().unwrap(), f64::from(f.output.score));
    assert_eq!(v["routing"].as_array().unwrap().len(), 9);
    assert_eq!(v["alignment_maps"].as_array().unwrap().len(), 9);
    assert!(v["verdict"] == "fake" || v["verdict"] == "real");
    assert_eq!(v["box"].as_array().unwrap().len(), 4);
    assert_eq!(v["training_image"], false);
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));
}

/// A folder triaged: the tally above the strip, the strip ordered by the
/// highest face score, every inspected face exported as `sfam scan`'s
/// table (CSV and JSON).
#[test]
fn a_folder_is_ordered_by_suspicion_and_its_faces_export_as_a_table() {
    let dir = tempfile::tempdir().unwrap();
    for (name, to) in [
        ("assets/samples/ciplab_real_real_00128.jpg", "a.jpg"),
        ("assets/samples/dfdc_fake_hlsbacxpca.jpg", "b.jpg"),
        ("tests/fixtures/face/two_faces.jpg", "c.jpg"),
    ] {
        std::fs::copy(fixture(name), dir.path().join(to)).unwrap();
    }
    std::fs::write(dir.path().join("d.jpg"), b"not a JPEG").unwrap();
    let mut app = inspect_app(Some(tiny_model()));
    app.open_paths(vec![dir.path().to_path_buf()]);
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.inspect.entries.len() == 4 && !a.inspect.busy()
    });
    h.run_steps(3);
    assert_eq!(h.state().errors.len(), 1, "{:?}", h.state().errors);
    h.state_mut().errors.clear();
    let photos = h.state().inspect.face_table();
    assert_eq!(photos.len(), 3);
    assert_eq!(photos[2].1.faces.len(), 2);
    let threshold = h.state().settings.inspect_threshold;
    let likely_fake = photos
        .iter()
        .flat_map(|(_, p, _)| &p.faces)
        .filter(|f| f64::from(f.score) >= threshold)
        .count();
    h.get_by_label(&format!(
        "4 photos, 3 inspected: 4 faces, {likely_fake} likely fake at {threshold:.3}, 1 could not be inspected"
    ));

    assert_eq!(h.state().inspect.strip_order(), [0, 1, 2, 3]);
    h.get_by_label("most suspicious first").click();
    h.run_steps(2);
    assert!(h.state().inspect.most_suspicious_first);
    let order = h.state().inspect.strip_order();
    let best = |i: usize| {
        photos[i]
            .1
            .faces
            .iter()
            .map(|f| f.score)
            .fold(f32::MIN, f32::max)
    };
    let mut expected = vec![0, 1, 2];
    expected.sort_by(|&a, &b| best(b).total_cmp(&best(a)));
    expected.push(3); // the photo that failed, last
    assert_eq!(order, expected);

    let out = tempfile::tempdir().unwrap();
    for name in ["faces.csv", "faces.json"] {
        h.state_mut().status = None;
        h.state_mut().export_face_table(out.path().join(name));
        step_until(&mut h, |a| a.status.is_some() || !a.errors.is_empty());
        assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    }
    let mut r = csv::Reader::from_path(out.path().join("faces.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(&rows[3][0], dir.path().join("c.jpg").to_str().unwrap());
    assert_eq!(&rows[3][1], "1");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("faces.json")).unwrap())
            .unwrap();
    let faces = json.as_array().unwrap();
    assert_eq!(faces.len(), 4);
    for (f, row) in faces.iter().zip(&rows) {
        let csv_score: f64 = row[5].parse().unwrap();
        assert!((f["score"].as_f64().unwrap() - csv_score).abs() < 1e-6);
        assert_eq!(f["verdict"], row[4].to_owned());
    }
    // A name that is neither: an error, nothing written.
    h.state_mut()
        .export_face_table(out.path().join("faces.txt"));
    assert!(h.state().errors[0].contains(".csv or .json"));
    assert!(!out.path().join("faces.txt").exists());
}

/// A dropped folder goes where its contents belong, whichever view is
/// shown: photos to Inspect, a dataset layout to Datasets.
#[test]
fn a_folder_opens_in_the_view_its_contents_belong_to() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    std::fs::copy(
        fixture("assets/samples/ciplab_real_real_00128.jpg"),
        photos.join("a.jpg"),
    )
    .unwrap();
    let mut app = inspect_app(Some(tiny_model()));
    app.settings.view = View::Datasets;
    app.open_paths(vec![photos]);
    assert_eq!(app.settings.view, View::Inspect);
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.inspect.entries.len() == 1 && !a.inspect.busy()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);

    h.state_mut()
        .open_paths(vec![fixture("tests/fixtures/datasets/multi")]);
    assert_eq!(h.state().settings.view, View::Datasets);
    step_until(&mut h, |a| a.datasets.discovery.is_some());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

/// A model that suggests a threshold offers it next to the slider.
#[test]
fn the_models_suggested_threshold_is_one_click_away() {
    let dir = tiny_model_copy();
    let head = dir.path().join("sfam_head.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&head).unwrap()).unwrap();
    cfg["threshold"] = serde_json::json!({"value": 0.3164, "rule": "a test's"});
    std::fs::write(&head, cfg.to_string()).unwrap();
    let mut app = inspect_app(Some(dir.path().to_path_buf()));
    app.open_paths(vec![fixture("assets/samples/ffhq_stylegan2_real_109.jpg")]);
    let mut h = harness(app);
    inspected(&mut h);
    // The model's threshold is the one in use until another is chosen.
    assert!(h.state().settings.inspect_threshold_auto);
    assert_eq!(h.state().settings.inspect_threshold, 0.3164);
    h.get_by_label_contains("threshold 0.32");
    assert!(
        h.get_by_label("use the model's 0.316")
            .accesskit_node()
            .is_disabled()
    );
    // The slider: the user's threshold, kept.
    // (The first slider: the threshold's; the overlay's opacity follows.)
    h.get_all_by_role(egui::accesskit::Role::Slider)
        .next()
        .unwrap()
        .increment_accesskit();
    h.run_steps(2);
    assert!(!h.state().settings.inspect_threshold_auto);
    let chosen = h.state().settings.inspect_threshold;
    assert!(chosen > 0.3164, "{chosen}");
    h.run_steps(2);
    assert_eq!(h.state().settings.inspect_threshold, chosen);
    // One click back to the model's.
    h.get_by_label("use the model's 0.316").click();
    h.run_steps(2);
    assert_eq!(h.state().settings.inspect_threshold, 0.3164);
    assert!(h.state().settings.inspect_threshold_auto);
    h.get_by_label_contains("threshold 0.32");
}

#[test]
fn an_unreadable_photo_is_reported_once_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"this is not a JPEG").unwrap();
    std::fs::copy(
        fixture("assets/samples/ciplab_real_real_00128.jpg"),
        dir.path().join("real.jpg"),
    )
    .unwrap();
    let mut app = inspect_app(Some(tiny_model()));
    app.open_paths(vec![dir.path().to_path_buf()]);
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.inspect.entries.len() == 2 && !a.inspect.busy()
    });
    h.run_steps(5);
    assert_eq!(h.state().errors.len(), 1, "{:?}", h.state().errors);
    assert!(h.state().errors[0].contains("broken.jpg"));
    h.get_by_label("error");
    // The first photo (sorted: broken.jpg) is selected and says why.
    h.get_by_label_contains("Could not inspect");
    // The other photo was inspected; selecting it shows its verdict.
    assert!(matches!(
        h.state().inspect.entries[1].state,
        super::inspect::EntryState::Done(_)
    ));
    h.state_mut().inspect.select(1);
    h.run_steps(3);
    h.get_by_label_contains("Likely ");
}

#[test]
fn a_bad_model_folder_is_reported_once() {
    let mut app = inspect_app(Some(fixture("tests/fixtures/cli")));
    app.open_images(vec![fixture("assets/samples/dfdc_real_kbodjivgqu.jpg")]);
    let mut h = harness(app);
    step_until(&mut h, |a| !a.errors.is_empty());
    h.run_steps(5);
    assert_eq!(h.state().errors.len(), 1, "{:?}", h.state().errors);
    assert!(
        h.state().errors[0].contains("config.json"),
        "{:?}",
        h.state().errors
    );
    h.get_by_label_contains("Model not loaded");
    h.get_by_label("waiting for a model");
}

#[test]
fn a_model_without_text_encoder_says_typing_is_unavailable() {
    // The tiny model's head on a copy of its CLIP weights without the
    // text tower: SfamModel loads, the text encoder does not.
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_model();
    for f in ["config.json", "sfam_head.json", "sfam_head.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let st = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("text_") && k != "logit_scale")
        .collect();
    safetensors::serialize_to_file(kept, None, &dir.path().join("model.safetensors")).unwrap();
    let mut app = inspect_app(Some(dir.path().to_path_buf()));
    app.open_images(vec![fixture("assets/samples/dfdc_real_kbodjivgqu.jpg")]);
    let mut h = harness(app);
    inspected(&mut h);
    h.get_by_label_contains("no text encoder");
    h.get_by_label_contains("Typing a prompt needs a CLIP text encoder");
    assert!(h.query_by_label("Show heatmap").is_none());
}

/// Frame cost with a million scores loaded (plot data is computed once, on
/// the worker; a frame only draws it). Prints the numbers for
/// BENCHMARKS.md; asserts nothing about time.
#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn frame_time_with_a_million_scores() {
    use std::fmt::Write as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.csv");
    let mut text = String::from("path,dataset,label,score\n");
    let mut x: u64 = 1;
    for i in 0..1_000_000u32 {
        // xorshift: deterministic, no extra crate.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        #[allow(clippy::cast_precision_loss)]
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        let (label, score) = if i % 2 == 0 {
            ("real", u)
        } else {
            ("fake", 0.2 + 0.8 * u)
        };
        writeln!(text, "f{i}.jpg,d{},{label},{score}", i % 4).unwrap();
    }
    std::fs::write(&path, text).unwrap();
    let mut app = SfamApp::new(Settings::default(), None);
    let start = Instant::now();
    app.open_scores(path);
    let mut h = harness(app);
    step_until(&mut h, |a| a.datasets.loaded.is_some());
    eprintln!(
        "load + evaluate + plot data, 1e6 scores: {:?}",
        start.elapsed()
    );
    h.state_mut().datasets.select_cell(0, 1);
    h.run_steps(2);
    let frames = 60;
    let start = Instant::now();
    for _ in 0..frames {
        h.step();
    }
    eprintln!(
        "UI frame (layout + tessellation, no GPU) with 1e6 scores loaded: {:?} per frame",
        start.elapsed() / frames
    );
}

#[test]
fn cancelling_leaves_the_rest_marked_and_a_click_queues_one_again() {
    use super::inspect::EntryState;
    let sample = fixture("assets/samples/ciplab_fake_mid_66_1100.jpg");
    let mut app = inspect_app(Some(tiny_model()));
    app.open_images(vec![sample; 12]);
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.inspect
            .entries
            .iter()
            .any(|e| matches!(e.state, EntryState::Done(_)))
    });
    h.get_by_label("Cancel inspection").click();
    h.run_steps(3);
    let states = |a: &SfamApp| {
        a.inspect
            .entries
            .iter()
            .map(|e| match e.state {
                EntryState::Done(_) => 'd',
                EntryState::Cancelled => 'c',
                EntryState::Pending => 'p',
                EntryState::Failed(_) => 'f',
            })
            .collect::<String>()
    };
    let s = states(h.state());
    assert!(!h.state().inspect.busy(), "{s}");
    assert!(!s.contains('p') && !s.contains('f'), "{s}");
    // The worker may have finished them all before the click; otherwise a
    // cancelled photo is inspected when selected.
    if let Some(k) = s.find('c') {
        h.state_mut().inspect.select(k);
        step_until(&mut h, |a| !a.inspect.busy());
        assert!(matches!(
            h.state().inspect.entries[k].state,
            EntryState::Done(_)
        ));
    }
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

// ---- Scoring dataset folders ----

/// `<tmp>/dsA/{real,fake}/` and `<tmp>/dsB/{real,fake}/`, two sample
/// photos each (eight different files).
fn dataset_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("dsA/real", "dfdc_real_kbodjivgqu.jpg"),
        ("dsA/real", "dfdc_real_vyaxwjevgp.jpg"),
        ("dsA/fake", "dfdc_fake_hlsbacxpca.jpg"),
        ("dsA/fake", "dfdc_fake_mbmruhrpfd.jpg"),
        ("dsB/real", "dfdc_real_wtaghbgiln.jpg"),
        ("dsB/real", "ciplab_real_real_00311.jpg"),
        ("dsB/fake", "dfdc_fake_pnpyiohvrh.jpg"),
        ("dsB/fake", "ciplab_fake_easy_55_0011.jpg"),
    ];
    for (sub, name) in files {
        let to = dir.path().join(sub);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(fixture(&format!("assets/samples/{name}")), to.join(name)).unwrap();
    }
    dir
}

/// An app on the Datasets view with this model folder, no bundled model,
/// the score cache in `cache`, and `root` discovered.
fn scoring_app(
    model: PathBuf,
    root: &std::path::Path,
    cache: &std::path::Path,
) -> Harness<'static, SfamApp> {
    let settings = Settings {
        model_dir: Some(model),
        ..Settings::default()
    };
    let mut app = SfamApp::new(settings, None);
    app.inspect.bundled = None;
    app.datasets.cache_root = cache.to_path_buf();
    app.add_root(root.to_path_buf());
    let mut h = harness(app);
    step_until(&mut h, |a| a.datasets.discovery.is_some());
    h
}

fn scored(h: &mut Harness<'_, SfamApp>) {
    step_until(h, |a| a.datasets.score_job.is_none());
}

#[test]
fn dataset_folders_are_scored_with_the_model_and_rescored_from_the_cache() {
    let tree = dataset_tree();
    let cache = tempfile::tempdir().unwrap();
    let mut h = scoring_app(tiny_model(), tree.path(), cache.path());
    h.get_by_label_contains("model: ");
    h.get_by_label_contains("chosen in Inspect");
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    assert!(h.state().datasets.score_job.is_some());
    scored(&mut h);
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    // The scores are the loaded evaluation: the matrix with both datasets.
    let loaded = h.state().datasets.loaded.clone().unwrap();
    let c = &loaded.eval.cross_auc;
    assert_eq!(c.datasets, ["dsA", "dsB"]);
    assert_eq!(loaded.eval.n_records, 8);
    assert!(c.matrix.iter().flatten().all(|cell| cell.value().is_some()));
    h.get_by_label("real \\ fake");
    assert!(h.get_all_by_label("dsA").count() >= 2);
    h.get_by_label_contains("mean off-diagonal");
    h.get_by_label_contains("Scored 8 of 8 images: 8 computed, 0 from cache, 0 failed");

    // The table saves (CSV, atomically, on a worker).
    let out = cache.path().join("scores.csv");
    h.state_mut().save_scores(out.clone());
    step_until(&mut h, |a| a.status.is_some() || !a.errors.is_empty());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let saved = sfam_studio::data::scores::read_scores(&out).unwrap();
    assert_eq!(saved.len(), 8);
    assert_eq!(saved, *h.state().datasets.scored.as_ref().unwrap().records);

    // Scoring again takes every score from the cache.
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    scored(&mut h);
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let p = h.state().datasets.scored.as_ref().unwrap().progress;
    assert_eq!((p.cached, p.computed, p.total), (8, 0, 8));
    h.get_by_label_contains("0 computed, 8 from cache");
    // Same scores as the first run.
    let again = h.state().datasets.loaded.clone().unwrap();
    assert_eq!(again.eval.n_records, 8);
    assert_eq!(
        again.eval.cross_auc.matrix[0][1].value(),
        c.matrix[0][1].value()
    );
    // Asked to leave out the training images of a model that does not
    // list them: all scored, and said so.
    h.state_mut().settings.skip_training_images = true;
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    scored(&mut h);
    let run = h.state().datasets.scored.as_ref().unwrap();
    assert_eq!((run.left_out, run.records.len()), (None, 8));
    h.get_by_label_contains("does not list its training images");
}

#[test]
fn the_sample_faces_score_in_one_click_from_the_empty_datasets_view() {
    use sfam_studio::data::Label;
    let cache = tempfile::tempdir().unwrap();
    let model = tiny_model_listing(&["ciplab_real_real_00311.jpg", "dfdc_fake_hlsbacxpca.jpg"]);
    let settings = Settings {
        model_dir: Some(model.path().to_path_buf()),
        ..Settings::default()
    };
    let mut app = SfamApp::new(settings, None);
    app.inspect.bundled = None;
    app.datasets.cache_root = cache.path().to_path_buf();
    assert!(app.datasets.samples.is_some(), "assets/samples/samples.csv");
    let mut h = harness(app);
    h.get_by_label_contains("No scores yet");
    h.get_by_label("Score the sample faces").click();
    h.run_steps(1);
    step_until(&mut h, |a| {
        (a.datasets.loaded.is_some() && a.datasets.score_job.is_none()) || !a.errors.is_empty()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    // Their manifest is the root; the three domains with every label.
    let d = &h.state().datasets;
    assert_eq!(d.roots, [d.samples.clone().unwrap()]);
    assert!(d.roots[0].is_absolute() && d.roots[0].ends_with(super::SAMPLES_MANIFEST));
    let loaded = d.loaded.clone().unwrap();
    assert_eq!(loaded.eval.n_records, 20);
    assert_eq!(
        loaded.eval.cross_auc.datasets,
        ["ciplab", "dfdc", "ffhq_stylegan2"]
    );
    let by_label = |label| loaded.records.iter().filter(|r| r.label == label).count();
    assert_eq!((by_label(Label::Real), by_label(Label::Fake)), (10, 10));
    // Every row's label is the one its file name says.
    for r in loaded.records.iter() {
        let name = std::path::Path::new(&r.path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let word = if r.label == Label::Real {
            "_real_"
        } else {
            "_fake_"
        };
        assert!(name.starts_with(&format!("{}{word}", r.dataset)), "{name}");
    }
    h.get_by_label_contains("Scored 20 of 20 images");
    // Two of them are listed as the model's training images.
    h.get_by_label_contains(
        "2 of these images trained this model (the same bytes are in its \
         training_images.txt): their scores are no test of it (ciplab 1, dfdc 1).",
    );
    // What the (tiny) model says of its training data: nothing.
    h.get_by_label_contains("The model: what it was trained on is not recorded");
    h.get_by_label_contains("a low score is no proof that a face is real");
    let p = h.state().datasets.scored.as_ref().unwrap().progress;
    assert_eq!(p.trained_on, 2);
    // Scored again without them: 18 images, none a training image.
    h.get_by_label("leave out the model's training images")
        .click();
    h.run_steps(1);
    assert!(h.state().settings.skip_training_images);
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    step_until(&mut h, |a| a.datasets.score_job.is_none());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let run = h.state().datasets.scored.as_ref().unwrap();
    assert_eq!((run.left_out, run.records.len()), (Some(2), 18));
    assert_eq!(run.progress.trained_on, 0);
    h.get_by_label("2 training images of the model left out.");
    assert!(h.query_by_label_contains("trained this model").is_none());
    // Once there are scores the offer is gone.
    assert!(h.query_by_label("Score the sample faces").is_none());
}

#[test]
fn without_a_model_the_sample_faces_are_not_scored() {
    let mut app = SfamApp::new(Settings::default(), None);
    app.inspect.bundled = None;
    app.score_samples();
    assert!(app.datasets.roots.is_empty());
    assert!(
        app.errors[0].contains("no model to score with"),
        "{:?}",
        app.errors
    );
    // And without the samples (a binary far from its checkout) it says so.
    let mut app = SfamApp::new(Settings::default(), None);
    app.datasets.samples = None;
    app.inspect.samples = None;
    app.score_samples();
    app.open_samples();
    assert_eq!(app.errors.len(), 2);
    assert!(
        app.errors
            .iter()
            .all(|e| e.contains("sample faces were not found"))
    );
}

#[test]
fn cancelling_a_scoring_run_keeps_the_app_usable() {
    let tree = dataset_tree();
    let cache = tempfile::tempdir().unwrap();
    let mut h = scoring_app(tiny_model(), tree.path(), cache.path());
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    // Cancelled at once (the button does the same: `Job::cancel`); the
    // progress row with its button shows while the job runs.
    h.state().datasets.score_job.as_ref().unwrap().cancel();
    h.step();
    if h.state().datasets.score_job.is_some() {
        h.get_by_label("Cancel scoring");
    }
    scored(&mut h);
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    // The worker may have finished before the click; otherwise nothing
    // partial is shown as an evaluation.
    let d = &h.state().datasets;
    if d.scored.is_none() {
        assert!(d.loaded.is_none());
        h.get_by_label_contains("Scoring cancelled after");
    }
    // The button works again and the rerun completes.
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    scored(&mut h);
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let p = h.state().datasets.scored.as_ref().unwrap().progress;
    assert_eq!(p.cached + p.computed, 8);
}

#[test]
fn a_model_folder_that_fails_to_load_for_scoring_is_reported_once() {
    let tree = dataset_tree();
    let cache = tempfile::tempdir().unwrap();
    let mut h = scoring_app(fixture("tests/fixtures/cli"), tree.path(), cache.path());
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    scored(&mut h);
    h.run_steps(5);
    assert_eq!(h.state().errors.len(), 1, "{:?}", h.state().errors);
    let e = &h.state().errors[0];
    assert!(
        e.contains("cannot load the model") && e.contains("fixtures/cli"),
        "{e}"
    );
    assert!(h.state().datasets.loaded.is_none());
    h.get_by_label_contains("Scoring failed");
}

#[test]
fn without_a_model_scoring_is_unavailable_and_says_why() {
    let tree = dataset_tree();
    let cache = tempfile::tempdir().unwrap();
    let settings = Settings::default();
    let mut app = SfamApp::new(settings, None);
    app.inspect.bundled = None;
    app.datasets.cache_root = cache.path().to_path_buf();
    app.add_root(tree.path().to_path_buf());
    let mut h = harness(app);
    step_until(&mut h, |a| a.datasets.discovery.is_some());
    h.get_by_label_contains("No model: choose a model folder");
    assert!(
        h.get_by_label("Score with model")
            .accesskit_node()
            .is_disabled()
    );
}

#[test]
#[ignore = "measurement (needs ../shared/data): run with --ignored --nocapture"]
fn frame_time_while_a_dataset_scores() {
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/dfdc");
    let tree = tempfile::tempdir().unwrap();
    for label in ["real", "fake"] {
        let to = tree.path().join("dfdc").join(label);
        std::fs::create_dir_all(&to).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(shared.join(label))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names.iter().take(150) {
            std::fs::copy(p, to.join(p.file_name().unwrap())).unwrap();
        }
    }
    let cache = tempfile::tempdir().unwrap();
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let mut h = scoring_app(model, tree.path(), cache.path());
    h.get_by_label("Score with model").click();
    h.run_steps(1);
    let mut frames = Vec::new();
    let start = Instant::now();
    while h.state().datasets.score_job.is_some() {
        assert!(
            start.elapsed() < Duration::from_mins(2),
            "scoring never ended"
        );
        let t = Instant::now();
        h.step();
        frames.push(t.elapsed());
        // About 60 frames a second, as eframe would ask for them.
        std::thread::sleep(Duration::from_millis(16).saturating_sub(t.elapsed()));
    }
    frames.sort();
    let n = frames.len();
    assert!(n > 10, "too few frames: {n}");
    let mean = frames.iter().sum::<Duration>() / u32::try_from(n).unwrap();
    eprintln!(
        "{n} UI frames while 300 DFDC faces scored in {:?}: mean {:?}, median {:?}, 95th percentile {:?}, worst {:?}",
        start.elapsed(),
        mean,
        frames[n / 2],
        frames[n * 95 / 100],
        frames[n - 1]
    );
}

/// Steps the UI until `done` holds, for up to `limit`.
fn step_until_within(
    h: &mut Harness<'_, SfamApp>,
    limit: Duration,
    done: impl Fn(&SfamApp) -> bool,
) {
    let start = Instant::now();
    while !done(h.state()) {
        assert!(start.elapsed() < limit, "the worker never finished");
        std::thread::sleep(Duration::from_millis(20));
        h.step();
    }
    h.run_steps(3);
}

/// `<tmp>/<domain>/{real,fake}/` from the bundled sample faces
/// (`assets/samples/<domain>_<label>_<name>`).
fn sample_datasets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("assets/samples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("jpg") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
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

/// The whole of a researcher's training in the Train view: start, watch
/// epochs arrive, stop (the checkpoint stays), start again (it resumes),
/// finish, and use the best model in Inspect.
#[test]
#[allow(clippy::too_many_lines)] // one researcher's flow, start to end
fn train_view_trains_stops_resumes_and_hands_over_its_model() {
    use sfam_studio::train::best_epoch;
    let data = sample_datasets();
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let mut settings = Settings {
        view: View::Train,
        ..Settings::default()
    };
    settings.train = super::TrainForm {
        roots: vec![data.path().to_path_buf()],
        out: Some(run.clone()),
        train_blocks: 1,
        probe_epochs: 1,
        epochs: 4,
        batch: 8,
        samples_per_epoch: 16,
        dim: 16,
        val_fraction: 0.4,
        average_last: 2,
        ..super::TrainForm::recipe()
    };
    let mut h = harness(SfamApp::new(settings, None));
    h.run_steps(2);
    // The terminal command of the same run is shown.
    h.get_by_label_contains("sfam train --data");
    h.get_by_label("Start training").click();
    h.run_steps(2);
    assert!(h.state().training.training(), "{:?}", h.state().errors);
    h.get_by_label("Train (running)");
    let limit = Duration::from_mins(5);
    step_until_within(&mut h, limit, |a| {
        a.training.shown.as_ref().is_some_and(|s| !s.log.is_empty()) || !a.training.training()
    });
    h.get_by_label("Stop").click();
    step_until_within(&mut h, limit, |a| !a.training.training());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let stopped = h.state().training.shown.as_ref().unwrap();
    let done = stopped.log.len();
    assert_eq!(stopped.outcome, Some(super::training::Outcome::Stopped));
    assert!((1..5).contains(&done), "{done} epochs before the stop");
    assert!(run.join("checkpoint/state.json").is_file());
    h.get_by_label_contains(&format!("Stopped after epoch {done}"));

    // Closing the window while it trains asks first; "Keep training"
    // keeps it going.
    h.get_by_label("Start training").click();
    h.run_steps(2);
    assert!(h.state().training.training());
    h.state_mut().quit_asked = true;
    h.run_steps(2);
    h.get_by_label_contains("Quitting stops it");
    h.get_by_label("Keep training").click();
    h.run_steps(2);
    assert!(!h.state().quit_asked && h.state().training.training());
    // "Stop and quit" stops it (the window would close).
    h.state_mut().quit_asked = true;
    h.run_steps(2);
    h.get_by_label("Stop and quit").click();
    step_until_within(&mut h, limit, |a| !a.training.training());
    assert!(!h.state().quit_asked);
    assert!(matches!(
        h.state().training.shown.as_ref().unwrap().outcome,
        Some(super::training::Outcome::Stopped | super::training::Outcome::Finished { .. })
    ));

    // Again: it resumes after the last finished epoch and runs to the end.
    h.get_by_label("Start training").click();
    h.run_steps(2);
    assert!(h.state().training.training(), "{:?}", h.state().errors);
    step_until_within(&mut h, limit, |a| !a.training.training());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let s = h.state().training.shown.as_ref().unwrap();
    assert!(
        s.messages
            .iter()
            .any(|m| m.starts_with(&format!("resumed after epoch {done}"))),
        "{:?}",
        s.messages
    );
    assert_eq!(
        s.log.iter().map(|l| l.epoch).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(s.log[0].stage, "probe");
    // What the view shows is what the run wrote.
    let written = sfam_studio::train::read_log(&run.join("train_log.csv")).unwrap();
    assert_eq!(written.len(), 5);
    for (a, b) in s.log.iter().zip(&written) {
        assert_eq!((a.epoch, &a.stage), (b.epoch, &b.stage));
        assert!((a.loss - b.loss).abs() < 1e-4, "{} {}", a.loss, b.loss);
    }
    let best = best_epoch(&written).unwrap();
    let Some(super::training::Outcome::Finished {
        best_epoch: finished_best,
        best_dir,
    }) = s.outcome.clone()
    else {
        panic!("not finished: {:?}", s.outcome);
    };
    assert_eq!(
        (finished_best, best_dir.as_path()),
        (best, run.join("best").as_path())
    );
    h.get_by_label_contains(&format!("best/ holds epoch {best}"));
    // --average-last 2: the last two epochs' weights averaged, offered too.
    assert!(run.join("average/sfam_head.json").is_file());
    h.get_by_label("Use its averaged model");

    // Its validation scores open in Datasets: the matrix of best/.
    h.get_by_label("Its validation scores in Datasets").click();
    step_until_within(&mut h, limit, |a| {
        a.datasets.loaded.is_some() || !a.errors.is_empty()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().settings.view, View::Datasets);
    h.state_mut().settings.view = View::Train;
    h.run_steps(2);

    // Its best model goes to Inspect.
    h.get_by_label(&format!("Use its best model (epoch {best})"))
        .click();
    h.run_steps(2);
    assert_eq!(h.state().settings.model_dir, Some(run.join("best")));
    assert_eq!(h.state().settings.view, View::Inspect);

    // Other settings into the same folder: refused, in the app's words,
    // and the run there is left as it was.
    let before = std::fs::read(run.join("train_log.csv")).unwrap();
    h.state_mut().settings.view = View::Train;
    h.state_mut().settings.train.seed = 2;
    h.run_steps(2);
    h.get_by_label("Start training").click();
    h.run_steps(2);
    step_until_within(&mut h, limit, |a| !a.training.training());
    let e = &h.state().errors;
    assert!(
        e.len() == 1 && e[0].contains("written with other options; choose another output folder"),
        "{e:?}"
    );
    assert_eq!(std::fs::read(run.join("train_log.csv")).unwrap(), before);
}

#[test]
fn train_view_follows_a_run_folder_as_it_grows() {
    let run = tempfile::tempdir().unwrap();
    let log = std::fs::read_to_string(fixture("models/default/train_log.csv")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    // The run so far: the probe stage and two fine-tuning epochs.
    std::fs::write(run.path().join("train_log.csv"), lines[..15].join("\n")).unwrap();
    // Another process trains it: it holds the run's lock.
    let lock = std::fs::File::create(run.path().join(sfam_studio::train::LOCK_FILE)).unwrap();
    lock.try_lock().unwrap();
    let mut app = SfamApp::new(Settings::default(), None);
    app.training.reread_every = Duration::ZERO;
    // Opened from the Datasets view (or `sfam --open RUN`): a run folder
    // goes to Train.
    assert_eq!(app.settings.view, View::Datasets);
    app.open_paths(vec![run.path().to_path_buf()]);
    let mut h = harness(app);
    step_until(&mut h, |a| {
        a.training.shown.as_ref().is_some_and(|s| s.log.len() == 14) || !a.errors.is_empty()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().settings.view, View::Train);
    h.get_by_label_contains("a run is training it now");
    h.get_by_label_contains("best/ holds epoch");
    // No best/ folder here: nothing to hand to Inspect.
    assert!(h.query_by_label_contains("Use its best model").is_none());
    // The other process finishes its run. It writes its log as the trainer
    // does, atomically: a plain write could be read half-written by the
    // view's reader, whose parse error rightly stops the following.
    sfam_studio::data::atomic::write_atomic(&run.path().join("train_log.csv"), |w| {
        w.write_all(log.as_bytes())
    })
    .unwrap();
    step_until(&mut h, |a| {
        a.training.shown.as_ref().is_some_and(|s| s.log.len() == 52) || !a.errors.is_empty()
    });
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    h.get_by_label_contains("best/ holds epoch 48");
    h.get_by_label("AUC ffhq_stylegan2");
    // Its process ends.
    drop(lock);
    step_until(&mut h, |a| {
        a.training
            .shown
            .as_ref()
            .is_some_and(|s| s.running == Some(false))
    });
    h.get_by_label_contains("no run is training it now");

    // A folder that is no run is said so, once.
    let mut app = SfamApp::new(Settings::default(), None);
    app.follow_run(fixture("tests/fixtures/cli"));
    let mut h = harness(app);
    step_until(&mut h, |a| !a.errors.is_empty());
    h.run_steps(5);
    assert_eq!(h.state().errors.len(), 1, "{:?}", h.state().errors);
    assert!(h.state().errors[0].contains("not a training run folder"));
}

#[test]
fn train_view_says_what_is_missing_before_a_run_can_start() {
    let settings = Settings {
        view: View::Train,
        ..Settings::default()
    };
    let mut h = harness(SfamApp::new(settings, None));
    h.run_steps(2);
    assert!(
        h.get_by_label("Start training")
            .accesskit_node()
            .is_disabled()
    );
    h.state_mut().start_training();
    h.run_steps(2);
    let e = &h.state().errors;
    assert!(
        e.len() == 1 && e[0].contains("add at least one data folder"),
        "{e:?}"
    );
    assert!(!h.state().training.training());
    // A data folder dropped on the Train view is added to the run.
    let data = sample_datasets();
    h.state_mut().open_paths(vec![data.path().to_path_buf()]);
    assert_eq!(h.state().settings.train.roots, [data.path().to_path_buf()]);
    assert_eq!(h.state().settings.view, View::Train);
}

#[test]
#[ignore = "measurement: run with --ignored --nocapture"]
fn frame_time_while_training() {
    let data = sample_datasets();
    let out = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        view: View::Train,
        ..Settings::default()
    };
    settings.train = super::TrainForm {
        roots: vec![data.path().to_path_buf()],
        out: Some(out.path().join("run")),
        train_blocks: 9,
        probe_epochs: 1,
        epochs: 3,
        samples_per_epoch: 128,
        val_fraction: 0.4,
        ..super::TrainForm::recipe()
    };
    let mut h = harness(SfamApp::new(settings, None));
    h.run_steps(2);
    h.get_by_label("Start training").click();
    h.run_steps(2);
    let mut frames = Vec::new();
    let start = Instant::now();
    while h.state().training.training() && start.elapsed() < Duration::from_mins(1) {
        let t = Instant::now();
        h.step();
        frames.push(t.elapsed());
        // About 60 frames a second, as eframe would ask for them.
        std::thread::sleep(Duration::from_millis(16).saturating_sub(t.elapsed()));
    }
    let epochs = h.state().training.shown.as_ref().map_or(0, |s| s.log.len());
    if let Some(job) = &h.state().training.job {
        job.cancel();
    }
    frames.sort();
    let n = frames.len();
    assert!(n > 10, "too few frames: {n}");
    let mean = frames.iter().sum::<Duration>() / u32::try_from(n).unwrap();
    eprintln!(
        "{n} UI frames in {:?} of training ({epochs} epochs, 9 faceres blocks trained): mean {:?}, median {:?}, 95th percentile {:?}, worst {:?}",
        start.elapsed(),
        mean,
        frames[n / 2],
        frames[n * 95 / 100],
        frames[n - 1]
    );
}

#[test]
fn train_view_compares_runs_in_its_table_and_curves() {
    use sfam_studio::train::RunSummary;
    let log = std::fs::read_to_string(fixture("models/default/train_log.csv")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let runs = tempfile::tempdir().unwrap();
    let (a, b) = (runs.path().join("card"), runs.path().join("shorter"));
    for (dir, text) in [(&a, log.clone()), (&b, lines[..31].join("\n"))] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("train_log.csv"), text).unwrap();
    }
    // `sfam --open A B` (or both dropped): A followed, B beside it.
    let mut app = SfamApp::new(Settings::default(), None);
    app.open_paths(vec![a.clone(), b.clone()]);
    let mut h = harness(app);
    step_until(&mut h, |x| {
        x.training.shown.as_ref().is_some_and(|s| s.log.len() == 52)
            && x.training.compared.len() == 1
    });
    h.get_by_label("Compare with a run...");
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    // Each run's line: the summary of its own log.
    let names: Vec<String> = ["ciplab", "dfdc", "ffhq_stylegan2"]
        .map(String::from)
        .to_vec();
    let full = RunSummary::new(
        &sfam_studio::train::read_log(&a.join("train_log.csv")).unwrap(),
        &names,
    );
    let short = RunSummary::new(
        &sfam_studio::train::read_log(&b.join("train_log.csv")).unwrap(),
        &names,
    );
    assert_eq!((full.best_epoch, short.epochs), (Some(48), 30));
    for s in [&full, &short] {
        let mean = format!("{:.3}", s.last[3].unwrap());
        assert!(h.query_all_by_label(&mean).count() >= 1, "no {mean}");
    }
    h.get_by_label("card");
    h.get_by_label("shorter");
    // One legend entry for the compared run (it toggles all its lines).
    assert_eq!(h.query_all_by_label_contains("shorter (dashed)").count(), 1);
    // The same run twice, and a folder that is no run, are refused.
    let e = h
        .state_mut()
        .training
        .compare_with(b.clone(), None)
        .unwrap_err();
    assert!(e.contains("shown already"), "{e}");
    h.state_mut()
        .training
        .compare_with(fixture("tests/fixtures/cli"), None)
        .unwrap();
    step_until(&mut h, |x| !x.errors.is_empty());
    assert!(h.state().errors[0].contains("not a training run folder"));
    assert_eq!(h.state().training.compared.len(), 1);
    // Removed from the table.
    h.get_by_label("remove").click();
    h.run_steps(2);
    assert!(h.state().training.compared.is_empty());
    assert!(h.query_by_label("shorter").is_none());
}

/// Inspect says what the model was trained on (its `sfam_head.json`),
/// with the caveat about other kinds of faces, or that it does not say.
#[test]
fn inspect_says_what_the_model_was_trained_on() {
    let caveat = "a low score is no proof that a face is real";
    let mut app = inspect_app(Some(tiny_model()));
    app.open_images(vec![fixture("assets/samples/dfdc_real_kbodjivgqu.jpg")]);
    let mut h = harness(app);
    inspected(&mut h);
    h.get_by_label_contains("The model: what it was trained on is not recorded");
    h.get_by_label_contains(caveat);
    let v = h.state().inspect.face_json(0.5).unwrap();
    assert!(v["model_training"].is_null(), "{}", v["model_training"]);

    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(tiny_model()).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let head = dir.path().join("sfam_head.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&head).unwrap()).unwrap();
    cfg["training"] = serde_json::json!({
        "datasets": [{"name": "lab", "train_real": 40, "train_fake": 30,
                      "val_real": 9, "val_fake": 8, "val_auc": 0.75}],
        "synthetic_fakes": "self-blended real training faces (15 % of each epoch)",
        "validated": "epoch 5"
    });
    std::fs::write(&head, cfg.to_string()).unwrap();
    let mut app = inspect_app(Some(dir.path().to_path_buf()));
    app.open_images(vec![fixture("assets/samples/dfdc_real_kbodjivgqu.jpg")]);
    let mut h = harness(app);
    inspected(&mut h);
    h.get_by_label_contains(
        "The model: trained on lab (40 real, 30 fake), self-blended real training faces \
         (15 % of each epoch); validation AUC (epoch 5): lab 0.750.",
    );
    h.get_by_label_contains(caveat);
    // The face's exported result records it.
    let v = h.state().inspect.face_json(0.5).unwrap();
    assert_eq!(v["model_training"], cfg["training"]);
}
