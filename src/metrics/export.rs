//! Exports of an evaluation that the CLI and the app share: the matrix as
//! CSV and the whole evaluation as one JSON object (the shape documented in
//! README.md).

use serde_json::{Value, json};

use super::{CrossAuc, Evaluation};

/// The matrix as CSV: header `real\fake,<names>`, one row per dataset of
/// real faces, empty cells where undefined.
///
/// # Errors
/// Only if the CSV writer fails, which writing to memory does not.
pub fn matrix_csv(c: &CrossAuc) -> std::io::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["real\\fake".to_owned()];
    header.extend(c.datasets.iter().cloned());
    w.write_record(&header)?;
    for (name, row) in c.datasets.iter().zip(&c.matrix) {
        let mut rec = vec![name.clone()];
        rec.extend(
            row.iter()
                .map(|cell| cell.value().map_or(String::new(), |v| v.to_string())),
        );
        w.write_record(&rec)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    String::from_utf8(bytes).map_err(std::io::Error::other)
}

/// The evaluation as one JSON object: `datasets`, `matrix` (`null` where
/// undefined), `summary`, `undefined_cells`, `per_dataset`, `matrix_ci`
/// (each cell's bootstrap interval, `{low, high}` or `null`; level,
/// resamples and seed are each dataset's `auc_ci`'s) when the evaluation
/// has intervals, and `transfer` when it has one. `source` names the score
/// table.
#[must_use]
pub fn evaluation_json(eval: &Evaluation, source: &str) -> Value {
    let c = &eval.cross_auc;
    let name = |i: usize| c.datasets[i].clone();
    let s = &c.summary;
    let mut per = serde_json::Map::new();
    for d in &eval.per_dataset {
        per.insert(
            d.name.clone(),
            json!({
                "auc": d.auc,
                "eer": d.eer.map(|e| e.eer),
                "eer_threshold": d.eer.map(|e| e.threshold),
                "ap": d.ap,
                "n_real": d.n_real,
                "n_fake": d.n_fake,
                "auc_ci": d.auc_ci.map(|ci| json!({"low": ci.low, "high": ci.high, "level": ci.level, "resamples": ci.resamples, "seed": ci.seed})),
                "ece": d.calibration.as_ref().map(|k| k.ece),
                "undefined": d.undefined,
            }),
        );
    }
    let mut undefined = Vec::new();
    for i in 0..c.datasets.len() {
        for j in 0..c.datasets.len() {
            if let Some(reason) = c.undefined_reason(i, j) {
                undefined.push(json!({"real": name(i), "fake": name(j), "reason": reason}));
            }
        }
    }
    let mut out = json!({
        "scores": source,
        "video_agg": eval.video_agg,
        "n_records": eval.n_records,
        "datasets": c.datasets,
        "matrix": c.matrix,
        "summary": {
            "mean_off_diagonal": s.mean_off_diagonal,
            "mean_diagonal": s.mean_diagonal,
            "gap": s.gap,
            "worst": s.worst.as_ref().map(|w| json!({"real": name(w.real), "fake": name(w.fake), "auc": w.auc})),
            "pair_means": s.pair_means.iter().map(|p| json!({"a": name(p.a), "b": name(p.b), "mean": p.mean})).collect::<Vec<_>>(),
            "defined_cells": s.defined_cells,
            "undefined_cells": s.undefined_cells,
        },
        "undefined_cells": undefined,
        "per_dataset": per,
    });
    if !eval.cross_auc_ci.is_empty() {
        out["matrix_ci"] = json!(
            eval.cross_auc_ci
                .iter()
                .map(|row| row
                    .iter()
                    .map(|c| c.map(|c| json!({"low": c.low, "high": c.high})))
                    .collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
    }
    if let Some(rule) = eval.transfer_rule {
        out["transfer"] = json!({
            "rule": rule,
            "cells": eval.transfer.iter().map(|t| json!({
                "source": name(t.source),
                "target": name(t.target),
                "threshold": t.transfer.map(|x| x.source.threshold),
                "source_rates": t.transfer.map(|x| x.source),
                "target_rates": t.transfer.map(|x| x.target),
                "undefined": t.undefined,
            })).collect::<Vec<_>>(),
        });
    }
    out
}
