//! Video-level aggregation: one score per video before any metric.

use std::collections::HashMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::data::scores::ScoreRecord;

/// How frame scores of one video are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoAgg {
    /// Mean of the frame scores.
    Mean,
    /// Maximum of the frame scores (a video is as fake as its most
    /// suspicious frame).
    Max,
}

impl FromStr for VideoAgg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "mean" => Ok(Self::Mean),
            "max" => Ok(Self::Max),
            other => Err(format!(
                "unknown video aggregation {other:?} (expected mean or max)"
            )),
        }
    }
}

impl std::fmt::Display for VideoAgg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mean => "mean",
            Self::Max => "max",
        })
    }
}

/// Replaces the frames of each video by one record per
/// `(dataset, label, video)`: its score is the mean or max of the frames',
/// its `path` the video id. Records without a video stay as they are (each
/// is its own video). Order: first appearance.
#[must_use]
pub fn aggregate_videos(records: &[ScoreRecord], agg: VideoAgg) -> Vec<ScoreRecord> {
    // (index into out, frame count) per video key.
    let mut index: HashMap<(&str, crate::data::Label, &str), (usize, usize)> = HashMap::new();
    let mut out: Vec<ScoreRecord> = Vec::new();
    for r in records {
        let Some(video) = r.video.as_deref() else {
            out.push(r.clone());
            continue;
        };
        let key = (r.dataset.as_str(), r.label, video);
        if let Some((i, n)) = index.get_mut(&key) {
            let acc = &mut out[*i].score;
            match agg {
                VideoAgg::Mean => *acc += r.score,
                VideoAgg::Max => *acc = acc.max(r.score),
            }
            *n += 1;
        } else {
            index.insert(key, (out.len(), 1));
            out.push(ScoreRecord {
                path: video.to_owned(),
                dataset: r.dataset.clone(),
                label: r.label,
                score: r.score,
                video: Some(video.to_owned()),
            });
        }
    }
    if agg == VideoAgg::Mean {
        for (i, n) in index.into_values() {
            #[allow(clippy::cast_precision_loss)] // frame counts are small
            {
                out[i].score /= n as f64;
            }
        }
    }
    out
}

#[cfg(test)]
// Tests compare exact values on purpose (the metrics are exact).
#[allow(clippy::float_cmp, clippy::many_single_char_names)]
mod tests {
    use super::*;
    use crate::data::Label;

    fn rec(dataset: &str, label: Label, video: Option<&str>, score: f64) -> ScoreRecord {
        ScoreRecord {
            path: format!("{dataset}/{score}.png"),
            dataset: dataset.into(),
            label,
            score,
            video: video.map(Into::into),
        }
    }

    #[test]
    fn frames_collapse_to_one_score_per_video() {
        let recs = vec![
            rec("a", Label::Fake, Some("v1"), 0.2),
            rec("a", Label::Real, Some("v1"), 0.1),
            rec("a", Label::Fake, Some("v1"), 0.6),
            rec("a", Label::Fake, None, 0.9),
            rec("b", Label::Fake, Some("v1"), 0.3),
        ];
        let mean = aggregate_videos(&recs, VideoAgg::Mean);
        assert_eq!(mean.len(), 4);
        assert_eq!(mean[0].path, "v1");
        assert!((mean[0].score - 0.4).abs() < 1e-15);
        assert_eq!((mean[1].label, mean[1].score), (Label::Real, 0.1));
        assert_eq!(mean[2].score, 0.9);
        assert_eq!((mean[3].dataset.as_str(), mean[3].score), ("b", 0.3));
        let max = aggregate_videos(&recs, VideoAgg::Max);
        assert_eq!(max[0].score, 0.6);
    }

    #[test]
    fn parses_names() {
        assert_eq!("MAX".parse::<VideoAgg>(), Ok(VideoAgg::Max));
        assert!("median".parse::<VideoAgg>().is_err());
    }
}
