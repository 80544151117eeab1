//! `sfam runs`: training runs in brief, side by side — each run's best
//! epoch and its validation AUC, and the average over its last epochs
//! (one epoch swings by a few hundredths; ten compare runs better).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use serde_json::json;
use sfam_studio::train::{EpochLog, LAST_EPOCHS, LOG_FILE, RunSummary, read_log};

use super::{Format, align_numbers, emit, new_table};

/// Arguments of `sfam runs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folders (`sfam train --out DIR`, or a model folder with its
    /// `train_log.csv`) or `train_log.csv` files.
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Epochs averaged at the end of each run.
    #[arg(long, value_name = "K", default_value_t = LAST_EPOCHS)]
    pub last: usize,
    /// Output format: `table`, `csv` (one row per run) or `json`.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Write the output to this file (atomically) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// The log file of a run folder, or the file itself.
fn log_path(run: &Path) -> PathBuf {
    if run.is_dir() {
        run.join(LOG_FILE)
    } else {
        run.to_path_buf()
    }
}

/// Runs `sfam runs`.
///
/// # Errors
/// No run could be read, or the output cannot be written.
pub fn run(args: &Args) -> Result<ExitCode> {
    if args.last == 0 {
        bail!("--last must be at least 1");
    }
    let mut runs: Vec<(String, Vec<EpochLog>)> = Vec::new();
    let mut failed = 0;
    for r in &args.runs {
        match read_log(&log_path(r)) {
            Ok(log) => runs.push((r.display().to_string(), log)),
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    if runs.is_empty() {
        bail!("no training run could be read");
    }
    // Every dataset of any run, in the order first met.
    let mut names: Vec<String> = Vec::new();
    for (_, log) in &runs {
        for l in log {
            for (n, _) in &l.val_auc {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
        }
    }
    let summaries: Vec<(&str, RunSummary)> = runs
        .iter()
        .map(|(r, log)| (r.as_str(), RunSummary::over_last(log, &names, args.last)))
        .collect();
    let text = match args.format {
        Format::Table => table(&summaries, &names, args.last),
        Format::Csv => csv_text(&summaries, &names)?,
        Format::Json => {
            let mut t = serde_json::to_string_pretty(&json_value(&summaries, &names))?;
            t.push('\n');
            t
        }
    };
    emit(&text, args.out.as_deref())?;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn cell(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |x| format!("{x:.4}"))
}

fn table(runs: &[(&str, RunSummary)], names: &[String], last: usize) -> String {
    let mut header = vec!["run".to_owned(), "epochs".into(), "best epoch".into()];
    header.extend(names.iter().map(|n| format!("best {n}")));
    header.push("best mean".into());
    header.extend(names.iter().map(|n| format!("last {n}")));
    header.push("last mean".into());
    let mut t = new_table(header);
    for (run, s) in runs {
        let mut row = vec![
            (*run).to_owned(),
            s.epochs.to_string(),
            s.best_epoch.map_or_else(|| "-".into(), |e| e.to_string()),
        ];
        row.extend(s.best.iter().map(|v| cell(*v)));
        row.extend(s.last.iter().map(|v| cell(*v)));
        t.add_row(row);
    }
    align_numbers(&mut t, 1);
    format!(
        "Validation AUC of each run at its best epoch (the model in best/) and averaged over its last {last} epochs (\"last\")\n{t}\n"
    )
}

fn csv_text(runs: &[(&str, RunSummary)], names: &[String]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["run".to_owned(), "epochs".into(), "best_epoch".into()];
    header.extend(names.iter().map(|n| format!("best_{n}")));
    header.push("best_mean".into());
    header.push("last_epochs".into());
    header.extend(names.iter().map(|n| format!("last_{n}")));
    header.push("last_mean".into());
    w.write_record(&header)?;
    let f = |v: &Option<f64>| v.map_or_else(String::new, |x| format!("{x:.4}"));
    for (run, s) in runs {
        let mut row = vec![
            (*run).to_owned(),
            s.epochs.to_string(),
            s.best_epoch.map_or_else(String::new, |e| e.to_string()),
        ];
        row.extend(s.best.iter().map(f));
        row.push(s.last_n.to_string());
        row.extend(s.last.iter().map(f));
        w.write_record(&row)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

fn json_value(runs: &[(&str, RunSummary)], names: &[String]) -> serde_json::Value {
    let by_name = |v: &[Option<f64>]| {
        let mut m = serde_json::Map::new();
        for (n, x) in names.iter().zip(v) {
            m.insert(n.clone(), json!(x));
        }
        m.insert("mean".into(), json!(v.last().copied().flatten()));
        serde_json::Value::Object(m)
    };
    serde_json::Value::Array(
        runs.iter()
            .map(|(run, s)| {
                json!({
                    "run": run,
                    "epochs": s.epochs,
                    "best_epoch": s.best_epoch,
                    "best": by_name(&s.best),
                    "last_epochs": s.last_n,
                    "last": by_name(&s.last),
                })
            })
            .collect(),
    )
}
