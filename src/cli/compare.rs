//! `sfam compare`: two detectors' score tables on the same faces — each
//! Cross-AUC cell's AUC difference with a paired bootstrap interval.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::json;
use sfam_studio::data::scores::read_scores;
use sfam_studio::metrics::{
    PairedDifference, PairedTables, paired_cells, paired_cross_auc_difference,
};

use super::{align_numbers, emit, matrix_table, new_table};

/// Output formats of `sfam compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompareFormat {
    /// Human-readable tables.
    Table,
    /// One JSON object.
    Json,
}

/// Arguments of `sfam compare`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The first detector's score table (CSV or JSON, as `sfam cross-auc`
    /// reads).
    #[arg(value_name = "FIRST")]
    pub first: PathBuf,
    /// The second detector's score table; rows are paired with the first's
    /// by `path`.
    #[arg(value_name = "SECOND")]
    pub second: PathBuf,
    /// Bootstrap resamples of each interval.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub bootstrap: usize,
    /// Coverage of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    /// Seed of the bootstrap: the same seed gives the same intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CompareFormat::Table)]
    pub format: CompareFormat,
    /// Write the output to this file (atomically) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `sfam compare`.
pub fn run(args: &Args) -> Result<ExitCode> {
    if args.bootstrap == 0 {
        bail!("--bootstrap needs at least one resample");
    }
    if !(args.level > 0.0 && args.level < 1.0) {
        bail!("--level {} is not in (0, 1)", args.level);
    }
    let first = read_scores(&args.first)?;
    let second = read_scores(&args.second)?;
    let paired = PairedTables::pair(&first, &second).with_context(|| {
        format!(
            "cannot pair {} with {}",
            args.first.display(),
            args.second.display()
        )
    })?;
    let cells = paired_cells(&paired, args.bootstrap, args.level, args.seed);
    let cross = paired_cross_auc_difference(&paired, args.bootstrap, args.level, args.seed)
        .with_context(|| format!("cannot compare {}", args.first.display()))?;
    let text = match args.format {
        CompareFormat::Table => table(&paired, &cells, cross.as_ref(), args),
        CompareFormat::Json => {
            let mut s = serde_json::to_string_pretty(&json!({
                "first": args.first.display().to_string(),
                "second": args.second.display().to_string(),
                "paired_faces": paired.len(),
                "only_first": paired.only_first,
                "only_second": paired.only_second,
                "datasets": paired.datasets,
                "level": args.level,
                "resamples": args.bootstrap,
                "seed": args.seed,
                "cells": cells,
                "cross_auc": cross,
            }))?;
            s.push('\n');
            s
        }
    };
    emit(&text, args.out.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

fn signed(x: f64) -> String {
    format!("{x:+.4}")
}

fn table(
    t: &PairedTables,
    cells: &[Vec<Option<PairedDifference>>],
    cross: Option<&PairedDifference>,
    args: &Args,
) -> String {
    let mut out = String::new();
    let n = t.len();
    let _ = writeln!(
        out,
        "first: {}\nsecond: {}\n{n} faces in both tables ({} only in the first, {} only in the second)\n",
        args.first.display(),
        args.second.display(),
        t.only_first,
        t.only_second
    );
    let pct = args.level * 100.0;
    let _ = writeln!(
        out,
        "Per dataset (its real faces against its fake faces): AUC of each, second - first, its {pct:.0}% paired bootstrap interval ({} resamples, seed {}), and the share of resamples in which the second is not better\n",
        args.bootstrap, args.seed
    );
    let mut table = new_table(vec![
        "dataset".to_owned(),
        "real".to_owned(),
        "fake".to_owned(),
        "AUC first".to_owned(),
        "AUC second".to_owned(),
        "second - first".to_owned(),
        format!("{pct:.0}% interval"),
        "not better".to_owned(),
    ]);
    for (k, name) in t.datasets.iter().enumerate() {
        let mut row = vec![
            name.clone(),
            t.real[k].len().to_string(),
            t.fake[k].len().to_string(),
        ];
        match &cells[k][k] {
            Some(d) => row.extend([
                format!("{:.4}", d.auc_first),
                format!("{:.4}", d.auc_second),
                signed(d.difference),
                format!("{} .. {}", signed(d.low), signed(d.high)),
                format!("{:.3}", d.share_not_better),
            ]),
            None => row.extend([
                "-".to_owned(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
        table.add_row(row);
    }
    align_numbers(&mut table, 1);
    let _ = writeln!(out, "{table}\n");
    let _ = writeln!(
        out,
        "Cross-AUC cells, second - first [{pct:.0}% interval] (rows: real faces of; columns: fake faces of)\n"
    );
    let table = matrix_table(&t.datasets, cells, |c| {
        c.map_or_else(
            || "-".to_owned(),
            |d| {
                format!(
                    "{} [{} .. {}]",
                    signed(d.difference),
                    signed(d.low),
                    signed(d.high)
                )
            },
        )
    });
    let _ = writeln!(out, "{table}\n");
    match cross {
        Some(d) => {
            let _ = writeln!(
                out,
                "Cross-AUC (mean of the off-diagonal cells, every cell on the same resampled faces): first {:.4}, second {:.4}, second - first {} [{} .. {}], not better in {:.3} of resamples",
                d.auc_first,
                d.auc_second,
                signed(d.difference),
                signed(d.low),
                signed(d.high),
                d.share_not_better
            );
        }
        None => {
            let _ = writeln!(out, "Cross-AUC: no off-diagonal cell is defined");
        }
    }
    out
}
