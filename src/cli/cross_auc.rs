//! `sfam cross-auc`: the Cross-AUC matrix and per-dataset metrics of a
//! score table.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use sfam_studio::data::scores::read_scores;
use sfam_studio::metrics::{
    Evaluation, EvaluationOptions, ThresholdRule, VideoAgg, evaluation_json, matrix_csv,
};

use super::{Format, align_numbers, emit, fmt_opt, matrix_table, new_table};

/// Arguments of `sfam cross-auc`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Score table: CSV (`path,dataset,label,score[,video]`) or JSON.
    #[arg(value_name = "SCORES")]
    pub scores: PathBuf,
    /// Aggregate frame scores per video (the `video` column) before any
    /// metric: `mean` or `max` of the frames. Rows without a video stay
    /// single faces.
    #[arg(long, value_name = "AGG", value_parser = parse_agg)]
    pub video_agg: Option<VideoAgg>,
    /// Output format: `table` (human), `csv` (the matrix only) or `json`
    /// (matrix, summaries and per-dataset metrics).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Threshold transfer: choose a threshold on each dataset and apply it
    /// to every other one. RULE is `eer` (each source's EER threshold),
    /// `fpr=X` (lowest threshold with false-positive rate <= X on the
    /// source's reals) or `fixed=T`.
    #[arg(long, value_name = "RULE", value_parser = parse_rule)]
    pub transfer: Option<ThresholdRule>,
    /// Bootstrap confidence intervals of each dataset's AUC with this many
    /// resamples (reals and fakes resampled separately). 0 = off.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bootstrap: usize,
    /// Confidence level of the bootstrap intervals.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    /// Seed of the bootstrap: the same seed gives the same intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bins of the expected calibration error (computed only when every
    /// score lies in [0, 1]). 0 = off.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub bins: usize,
    /// Write the output to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

fn parse_agg(s: &str) -> Result<VideoAgg, String> {
    s.parse()
}

fn parse_rule(s: &str) -> Result<ThresholdRule, String> {
    let lower = s.trim().to_ascii_lowercase();
    if lower == "eer" {
        return Ok(ThresholdRule::Eer);
    }
    let (name, value) = lower
        .split_once(['=', ':'])
        .ok_or_else(|| format!("unknown rule {s:?} (expected eer, fpr=X or fixed=T)"))?;
    let x: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    match name.trim() {
        "fpr" if (0.0..=1.0).contains(&x) => Ok(ThresholdRule::Fpr(x)),
        "fpr" => Err(format!("target false-positive rate {x} is outside [0, 1]")),
        "fixed" if x.is_finite() => Ok(ThresholdRule::Fixed(x)),
        _ => Err(format!(
            "unknown rule {s:?} (expected eer, fpr=X or fixed=T)"
        )),
    }
}

/// Runs `sfam cross-auc`.
pub fn run(args: &Args) -> Result<ExitCode> {
    let records = read_scores(&args.scores)?;
    let options = EvaluationOptions {
        video_agg: args.video_agg,
        transfer: args.transfer,
        bootstrap: (args.bootstrap > 0).then_some((args.bootstrap, args.level, args.seed)),
        calibration_bins: (args.bins > 0).then_some(args.bins),
    };
    let eval = Evaluation::from_records(&records, &options)
        .with_context(|| format!("cannot evaluate {}", args.scores.display()))?;
    let text = match args.format {
        Format::Table => table(&eval, args),
        Format::Csv => matrix_csv(&eval.cross_auc)?,
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&evaluation_json(
                &eval,
                &args.scores.display().to_string(),
            ))?;
            s.push('\n');
            s
        }
    };
    emit(&text, args.out.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_lines)] // one linear report
fn table(eval: &Evaluation, args: &Args) -> String {
    let c = &eval.cross_auc;
    let s = &c.summary;
    let mut out = String::new();
    let unit = if eval.video_agg.is_some() {
        "videos"
    } else {
        "faces"
    };
    let _ = writeln!(
        out,
        "{}: {} datasets, {} {unit}{}\n",
        args.scores.display(),
        c.datasets.len(),
        eval.n_records,
        eval.video_agg
            .map(|a| format!(" (frame scores aggregated per video: {a})"))
            .unwrap_or_default()
    );

    let _ = writeln!(
        out,
        "Cross-AUC matrix (rows: real faces of; columns: fake faces of)\n"
    );
    let t = matrix_table(&c.datasets, &c.matrix, |cell| fmt_opt(cell.value()));
    let _ = writeln!(out, "{t}\n");
    if !eval.cross_auc_ci.is_empty() {
        let _ = writeln!(
            out,
            "{:.0}% bootstrap intervals of the cells ({} resamples, seed {})\n",
            args.level * 100.0,
            args.bootstrap,
            args.seed
        );
        let t = matrix_table(&c.datasets, &eval.cross_auc_ci, |ci| {
            ci.map_or_else(
                || "-".to_owned(),
                |ci| format!("{:.4} - {:.4}", ci.low, ci.high),
            )
        });
        let _ = writeln!(out, "{t}\n");
    }

    let name = |i: usize| c.datasets[i].as_str();
    let _ = writeln!(out, "Summary");
    let _ = writeln!(
        out,
        "  mean off-diagonal (Cross-AUC)  {}",
        fmt_opt(s.mean_off_diagonal)
    );
    let _ = writeln!(
        out,
        "  mean diagonal                  {}",
        fmt_opt(s.mean_diagonal)
    );
    let _ = writeln!(out, "  gap (diagonal - off-diagonal)  {}", fmt_opt(s.gap));
    match &s.worst {
        Some(w) => {
            let _ = writeln!(
                out,
                "  worst cell                     {:.4}  (real faces of {}, fake faces of {})",
                w.auc,
                name(w.real),
                name(w.fake)
            );
        }
        None => {
            let _ = writeln!(out, "  worst cell                     -");
        }
    }
    for p in &s.pair_means {
        let _ = writeln!(
            out,
            "  pair mean {} <-> {}: {}",
            name(p.a),
            name(p.b),
            fmt_opt(p.mean)
        );
    }
    let _ = writeln!(
        out,
        "  cells: {} defined, {} undefined",
        s.defined_cells, s.undefined_cells
    );
    // One line per distinct reason (a dataset without reals blanks a whole row).
    let mut reasons: Vec<(String, usize)> = Vec::new();
    for i in 0..c.datasets.len() {
        for j in 0..c.datasets.len() {
            if let Some(reason) = c.undefined_reason(i, j) {
                match reasons.iter_mut().find(|(r, _)| *r == reason) {
                    Some((_, n)) => *n += 1,
                    None => reasons.push((reason, 1)),
                }
            }
        }
    }
    for (reason, n) in reasons {
        let cells = if n == 1 { "cell" } else { "cells" };
        let _ = writeln!(out, "  undefined: {reason} ({n} {cells})");
    }

    let ci = eval.per_dataset.iter().any(|d| d.auc_ci.is_some());
    let ece = eval.per_dataset.iter().any(|d| d.calibration.is_some());
    let _ = writeln!(
        out,
        "\nPer dataset (its own real faces against its own fake faces)\n"
    );
    let mut header: Vec<String> = ["dataset", "real", "fake", "AUC"]
        .map(String::from)
        .to_vec();
    if ci {
        header.push(format!("AUC {:.0}% CI", args.level * 100.0));
    }
    header.extend(["EER", "EER threshold", "AP"].map(String::from));
    if ece {
        header.push("ECE".into());
    }
    let mut t = new_table(header);
    for d in &eval.per_dataset {
        let mut row = vec![
            d.name.clone(),
            d.n_real.to_string(),
            d.n_fake.to_string(),
            fmt_opt(d.auc),
        ];
        if ci {
            row.push(
                d.auc_ci
                    .map_or_else(|| "-".into(), |c| format!("{:.4} - {:.4}", c.low, c.high)),
            );
        }
        row.push(fmt_opt(d.eer.map(|e| e.eer)));
        row.push(
            d.eer
                .map_or_else(|| "-".into(), |e| format!("{:.6}", e.threshold)),
        );
        row.push(fmt_opt(d.ap));
        if ece {
            row.push(fmt_opt(d.calibration.as_ref().map(|k| k.ece)));
        }
        t.add_row(row);
    }
    align_numbers(&mut t, 1);
    let _ = writeln!(out, "{t}");

    if let Some(rule) = args.transfer {
        let _ = writeln!(
            out,
            "\nThreshold transfer (threshold chosen on the source at {rule}, applied to the target)\n"
        );
        let header = [
            "source",
            "target",
            "threshold",
            "TPR",
            "FPR",
            "accuracy",
            "balanced acc.",
        ]
        .map(String::from)
        .to_vec();
        let mut t = new_table(header);
        for cell in &eval.transfer {
            let (src, dst) = (name(cell.source), name(cell.target));
            match cell.transfer {
                Some(x) => t.add_row(vec![
                    src.to_owned(),
                    dst.to_owned(),
                    format!("{:.6}", x.target.threshold),
                    fmt_opt(x.target.tpr),
                    fmt_opt(x.target.fpr),
                    fmt_opt(x.target.accuracy),
                    fmt_opt(x.target.balanced_accuracy),
                ]),
                None => t.add_row(vec![
                    src.to_owned(),
                    dst.to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]),
            };
        }
        align_numbers(&mut t, 2);
        let _ = writeln!(out, "{t}");
    }
    out
}
