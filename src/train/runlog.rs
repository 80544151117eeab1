//! A run's `train_log.csv` read back, and what is said of a run from it:
//! its best epoch, the average of its last epochs, the smoothed loss of a
//! progress display. Written by [`super::train`]; read by the app's Train
//! view and `sfam runs`.

use std::path::Path;

use super::{EpochLog, TrainError};

/// The loss a progress display shows: a moving average of the steps'
/// losses (the newest weighs 0.05), so that one batch's noise does not
/// hide the trend.
#[derive(Debug, Clone, Copy, Default)]
pub struct SmoothedLoss(Option<f64>);

impl SmoothedLoss {
    /// Adds a step's loss; the average so far.
    pub fn add(&mut self, loss: f64) -> f64 {
        let s = self.0.map_or(loss, |s| 0.95 * s + 0.05 * loss);
        self.0 = Some(s);
        s
    }
}

/// The file name of a run's per-epoch log, in its output folder.
pub const LOG_FILE: &str = "train_log.csv";

/// Reads a run's `train_log.csv` (what [`train`] writes after every epoch):
/// one [`EpochLog`] per row, the datasets' AUC columns in file order, an
/// empty cell as undefined.
///
/// # Errors
/// [`TrainError::Data`]: the file cannot be read, or is not such a log
/// (the line or column named).
pub fn read_log(path: &Path) -> Result<Vec<EpochLog>, TrainError> {
    let data = |message: String| TrainError::Data {
        path: path.to_path_buf(),
        message,
    };
    let text =
        std::fs::read(path).map_err(|e| data(format!("cannot read the training log ({e})")))?;
    let mut reader = csv::Reader::from_reader(text.as_slice());
    let headers = reader
        .headers()
        .map_err(|e| data(format!("not a training log: {e}")))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| data(format!("not a training log: no column {name}")))
    };
    let [
        epoch,
        stage,
        seconds,
        loss,
        bce,
        align,
        balance,
        region,
        mean,
        cross,
    ] = [
        "epoch",
        "stage",
        "seconds",
        "loss",
        "bce",
        "align",
        "balance",
        "region",
        "val_auc_mean",
        "val_cross_auc",
    ]
    .map(column);
    // In that order: the first column missing is the one named.
    let (epoch, stage, seconds, loss, bce, align, balance, region, mean, cross) = (
        epoch?, stage?, seconds?, loss?, bce?, align?, balance?, region?, mean?, cross?,
    );
    let datasets: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| Some((i, h.strip_prefix("val_auc_")?.to_owned())))
        .filter(|(_, n)| n != "mean")
        .collect();
    let mut log = Vec::new();
    for (k, row) in reader.records().enumerate() {
        let line = k + 2;
        let row = row.map_err(|e| data(format!("line {line}: {e}")))?;
        let cell = |i: usize| row.get(i).unwrap_or("").trim();
        let number = |i: usize| -> Result<f64, TrainError> {
            cell(i).parse::<f64>().map_err(|_| {
                data(format!(
                    "line {line}, column {}: not a number: {:?}",
                    &headers[i],
                    cell(i)
                ))
            })
        };
        let optional = |i: usize| -> Result<Option<f64>, TrainError> {
            if cell(i).is_empty() {
                Ok(None)
            } else {
                number(i).map(Some)
            }
        };
        log.push(EpochLog {
            epoch: cell(epoch).parse().map_err(|_| {
                data(format!(
                    "line {line}: not an epoch number: {:?}",
                    cell(epoch)
                ))
            })?,
            stage: cell(stage).to_owned(),
            seconds: number(seconds)?,
            loss: number(loss)?,
            bce: number(bce)?,
            align: number(align)?,
            balance: number(balance)?,
            region: number(region)?,
            val_auc: datasets
                .iter()
                .map(|(i, n)| Ok((n.clone(), optional(*i)?)))
                .collect::<Result<_, TrainError>>()?,
            val_auc_mean: optional(mean)?,
            val_cross_auc: optional(cross)?,
        });
    }
    Ok(log)
}

/// The epoch whose model `best/` holds: the first with the highest mean
/// validation AUC (an undefined mean counts lowest), as [`train`] picks it.
#[must_use]
pub fn best_epoch(log: &[EpochLog]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for row in log {
        let m = row.val_auc_mean.unwrap_or(f64::NEG_INFINITY);
        if best.is_none_or(|(_, b)| m > b) {
            best = Some((row.epoch, m));
        }
    }
    best.map(|(e, _)| e)
}

/// Epochs averaged in a run's summary ("last 10 epochs"): one epoch's
/// validation AUC swings by a few hundredths, an average of the last ten
/// compares runs better than their best epochs do.
pub const LAST_EPOCHS: usize = 10;

/// A run in brief: its best epoch and the average of its last epochs
/// (the app's runs table, `sfam runs`).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Epochs done.
    pub epochs: usize,
    /// The epoch `best/` holds.
    pub best_epoch: Option<usize>,
    /// That epoch's AUC per dataset (in the order asked), then the mean.
    pub best: Vec<Option<f64>>,
    /// Epochs averaged for `last`.
    pub last_n: usize,
    /// The AUC per dataset, then the mean, averaged over the last epochs
    /// (over those where it is defined).
    pub last: Vec<Option<f64>>,
}

impl RunSummary {
    /// The summary of `log` for the datasets `names`, over the last
    /// [`LAST_EPOCHS`] epochs.
    #[must_use]
    pub fn new(log: &[EpochLog], names: &[String]) -> Self {
        Self::over_last(log, names, LAST_EPOCHS)
    }

    /// The summary of `log` for the datasets `names`, averaging its last
    /// `k` epochs (all of them if fewer).
    #[must_use]
    pub fn over_last(log: &[EpochLog], names: &[String], k: usize) -> Self {
        let value = |l: &EpochLog, k: usize| match names.get(k) {
            Some(n) => l.val_auc.iter().find(|(m, _)| m == n).and_then(|(_, a)| *a),
            None => l.val_auc_mean,
        };
        let best_epoch = best_epoch(log);
        let row = log.iter().find(|l| Some(l.epoch) == best_epoch);
        let best = (0..=names.len())
            .map(|k| row.and_then(|r| value(r, k)))
            .collect();
        let tail = &log[log.len().saturating_sub(k)..];
        let last = (0..=names.len())
            .map(|k| {
                let v: Vec<f64> = tail.iter().filter_map(|l| value(l, k)).collect();
                #[allow(clippy::cast_precision_loss)]
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            })
            .collect();
        Self {
            epochs: log.len(),
            best_epoch,
            best,
            last_n: tail.len(),
            last,
        }
    }
}

#[cfg(test)]
mod tests {

    use super::super::write_log;
    use super::*;

    fn row(epoch: usize, mean: Option<f64>, a: Option<f64>) -> EpochLog {
        EpochLog {
            epoch,
            stage: if epoch == 1 { "probe" } else { "finetune" }.into(),
            seconds: 12.5,
            loss: 1.25,
            bce: 0.5,
            align: 0.25,
            balance: 1.0,
            region: 0.125,
            val_auc: vec![("a".into(), a), ("b_c".into(), Some(0.75))],
            val_auc_mean: mean,
            val_cross_auc: Some(0.625),
        }
    }

    #[test]
    fn smoothed_loss_starts_at_the_first_step_and_moves_a_twentieth() {
        let mut s = SmoothedLoss::default();
        assert!((s.add(2.0) - 2.0).abs() < 1e-12);
        assert!((s.add(1.0) - 1.95).abs() < 1e-12);
        assert!((s.add(1.95) - 1.95).abs() < 1e-12);
    }

    #[test]
    fn training_log_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let log = vec![
            row(1, None, None),
            row(2, Some(0.8125), Some(0.875)),
            row(3, Some(0.875), Some(1.0)),
            row(4, Some(0.875), Some(1.0)),
        ];
        write_log(&path, &log).unwrap();
        assert_eq!(read_log(&path).unwrap(), log);
        // The first of equal means, after an undefined one.
        assert_eq!(best_epoch(&log), Some(3));
        assert_eq!(best_epoch(&log[..1]), Some(1));
        assert_eq!(best_epoch(&[]), None);
    }

    #[test]
    fn bundled_models_log_reads_and_names_its_best_epoch() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/train_log.csv");
        let log = read_log(&path).unwrap();
        assert_eq!(log.len(), 52);
        let names: Vec<&str> = log[0].val_auc.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["ciplab", "dfdc", "ffhq_stylegan2"]);
        assert_eq!(log[11].stage, "probe");
        assert_eq!(log[12].stage, "finetune");
        // The card's model is epoch 48.
        assert_eq!(best_epoch(&log), Some(48));
    }

    #[test]
    fn training_log_errors_name_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.csv");
        let missing = read_log(&path).unwrap_err().to_string();
        assert!(
            missing.contains("cannot read the training log") && missing.contains("log.csv"),
            "{missing}"
        );
        std::fs::write(&path, "path,dataset,label,score\na.jpg,x,real,0.5\n").unwrap();
        let e = read_log(&path).unwrap_err().to_string();
        assert!(
            e.contains("no column epoch") && e.contains("log.csv"),
            "{e}"
        );
        std::fs::write(
            &path,
            "epoch,stage,seconds,loss,bce,align,balance,region,val_auc_a,val_auc_mean,val_cross_auc\n\
             1,probe,1.0,1.0,0.5,0.2,1.0,0.1,0.7,0.7,0.6\n\
             2,finetune,1.0,oops,0.5,0.2,1.0,0.1,0.7,0.7,0.6\n",
        )
        .unwrap();
        let e = read_log(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("loss"), "{e}");
    }

    #[test]
    fn run_summary_takes_the_best_epoch_and_the_last_ten() {
        let mut log: Vec<EpochLog> = (1..=12).map(|e| row(e, None, None)).collect();
        for (k, l) in log.iter_mut().enumerate() {
            #[allow(clippy::cast_precision_loss)]
            let a = 0.5 + 0.01 * k as f64;
            l.val_auc = vec![
                ("a".into(), Some(a)),
                ("b".into(), (k != 11).then_some(0.9)),
            ];
            l.val_auc_mean = Some(a);
        }
        log[1].val_auc_mean = Some(0.99);
        let names = vec!["a".to_owned(), "b".to_owned()];
        let s = RunSummary::new(&log, &names);
        assert_eq!((s.epochs, s.best_epoch, s.last_n), (12, Some(2), 10));
        assert_eq!(s.best, [Some(0.51), Some(0.9), Some(0.99)]);
        // Epochs 3..=12: a = 0.52..0.61; b undefined in epoch 12.
        let near = |x: Option<f64>, y: f64| x.is_some_and(|x| (x - y).abs() < 1e-9);
        assert!(near(s.last[0], 0.565), "{:?}", s.last);
        assert!(near(s.last[1], 0.9), "{:?}", s.last);
        // The mean column: 0.99 in epoch 2 is not among the last ten.
        assert!(near(s.last[2], 0.565), "{:?}", s.last);
        let short = RunSummary::new(&log[..3], &names);
        assert_eq!((short.last_n, short.best_epoch), (3, Some(2)));
        let two = RunSummary::over_last(&log, &names, 2);
        assert_eq!(two.last_n, 2);
        assert!(near(two.last[0], 0.605), "{:?}", two.last);
        let none = RunSummary::new(&[], &names);
        assert_eq!((none.epochs, none.best_epoch), (0, None));
        assert_eq!(none.last, [None, None, None]);
    }
}
