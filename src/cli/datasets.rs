//! `sfam datasets`: the datasets found under folders, manifests and
//! DeepfakeBench JSON files, with their counts.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use comfy_table::{CellAlignment, Table, presets};
use sfam_studio::data::Label;
use sfam_studio::data::datasets::{DiscoverOptions, Discovery, discover};

use super::{Format, emit};

/// Arguments of `sfam datasets`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Folders, CSV manifests (`path,label[,dataset][,video]`) or
    /// DeepfakeBench dataset JSON files.
    #[arg(value_name = "ROOT", required = true)]
    pub roots: Vec<PathBuf>,
    /// Only this split of DeepfakeBench JSON files (train, val, test).
    #[arg(long)]
    pub split: Option<String>,
    /// Output format: `table` or `json` (`csv` is treated as `table`).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// List every skipped (non-image) file instead of the first 20.
    #[arg(long)]
    pub all_skipped: bool,
    /// Write the output to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// How many skipped files the table lists without `--all-skipped`.
const SKIPPED_SHOWN: usize = 20;

/// Runs `sfam datasets`. Exit status 1 when no dataset was found at all;
/// per-path problems are listed but do not fail a run that found datasets.
pub fn run(args: &Args) -> Result<ExitCode> {
    let found = discover(
        &args.roots,
        &DiscoverOptions {
            split: args.split.clone(),
        },
    );
    let text = match args.format {
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&summary_json(&found))?;
            s.push('\n');
            s
        }
        Format::Table | Format::Csv => table(&found, args.all_skipped),
    };
    emit(&text, args.out.as_deref())?;
    for e in &found.errors {
        eprintln!("error: {e}");
    }
    Ok(if found.datasets.is_empty() {
        eprintln!("error: no datasets found");
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn summary_json(found: &Discovery) -> serde_json::Value {
    let datasets: Vec<_> = found
        .datasets
        .iter()
        .map(|d| {
            serde_json::json!({
                "name": d.name,
                "source": d.source.display().to_string(),
                "n_real": d.count(Label::Real),
                "n_fake": d.count(Label::Fake),
                "videos_real": d.videos(Label::Real),
                "videos_fake": d.videos(Label::Fake),
            })
        })
        .collect();
    serde_json::json!({
        "datasets": datasets,
        "skipped": found.skipped.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "errors": found.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "label_mapping": found.label_mapping.iter().map(|(k, v)| serde_json::json!({"name": k, "label": v})).collect::<Vec<_>>(),
    })
}

fn table(found: &Discovery, all_skipped: bool) -> String {
    let mut out = String::new();
    let mut t = Table::new();
    t.load_preset(presets::ASCII_MARKDOWN).set_header(vec![
        "dataset",
        "real",
        "fake",
        "real videos",
        "fake videos",
        "source",
    ]);
    for d in &found.datasets {
        t.add_row(vec![
            d.name.clone(),
            d.count(Label::Real).to_string(),
            d.count(Label::Fake).to_string(),
            d.videos(Label::Real).to_string(),
            d.videos(Label::Fake).to_string(),
            d.source.display().to_string(),
        ]);
    }
    for i in 1..5 {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    let _ = writeln!(out, "{t}");
    for d in &found.datasets {
        for (label, n) in [
            (Label::Real, d.count(Label::Real)),
            (Label::Fake, d.count(Label::Fake)),
        ] {
            if n == 0 {
                let _ = writeln!(
                    out,
                    "note: {} has no {label} faces: its Cross-AUC cells that need them are undefined",
                    d.name
                );
            }
        }
    }
    for (name, label) in &found.label_mapping {
        let _ = writeln!(out, "label {name:?} read as {label}");
    }
    if !found.skipped.is_empty() {
        let _ = writeln!(out, "\nskipped {} non-image files:", found.skipped.len());
        let shown = if all_skipped {
            found.skipped.len()
        } else {
            SKIPPED_SHOWN
        };
        for p in found.skipped.iter().take(shown) {
            let _ = writeln!(out, "  {}", p.display());
        }
        if found.skipped.len() > shown {
            let _ = writeln!(
                out,
                "  … and {} more (--all-skipped lists them)",
                found.skipped.len() - shown
            );
        }
    }
    if !found.errors.is_empty() {
        let _ = writeln!(
            out,
            "\n{} problems, listed on standard error",
            found.errors.len()
        );
    }
    out
}
