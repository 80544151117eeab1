//! The per-face table of unlabelled photos (`sfam scan`, and the app's
//! Inspect export): one row per scored face with its verdict at a
//! threshold, as CSV or as a JSON array whose objects also carry the
//! face's full [`FaceScore`].
//!
//! Written row by row ([`FaceTable`]), so a scan of any size keeps only
//! the row being written in memory.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use super::{FaceScore, ImageScore};
use crate::data::scores::ScoreFormat;

/// `fake` when `score >= threshold`, else `real`.
#[must_use]
pub fn verdict(score: f32, threshold: f64) -> &'static str {
    if f64::from(score) >= threshold {
        "fake"
    } else {
        "real"
    }
}

/// One scored face: a row of the CSV, an object of the JSON (which
/// flattens the face's full [`FaceScore`] into it).
#[derive(Debug, Clone, Serialize)]
pub struct FaceRow<'a> {
    /// The photo.
    pub path: String,
    /// Index of the face in its photo (0 = the largest).
    pub face: usize,
    /// Faces the detector found in the photo (0 when it was used whole).
    pub faces_found: usize,
    /// No face was detected: the photo was taken whole as a face crop.
    pub precropped: bool,
    /// The photo's width and height (upright).
    pub size: [u32; 2],
    /// [`verdict`] at the table's threshold.
    pub verdict: &'static str,
    /// The region whose part of the logit (attention × region logit) is
    /// largest in size; empty for a model without regions.
    pub top_region: &'a str,
    /// That part (positive: towards fake).
    pub top_region_part: f32,
    /// The photo is one of the model's training images (its bytes are in
    /// the model folder's `training_images.txt`): no test of the model.
    pub training_image: bool,
    /// Everything the model says about the face.
    #[serde(flatten)]
    pub detail: &'a FaceScore,
}

/// The CSV's columns, in order.
pub const CSV_HEADER: [&str; 16] = [
    "path",
    "face",
    "faces_found",
    "precropped",
    "verdict",
    "score",
    "logit",
    "global_logit",
    "top_region",
    "top_region_part",
    "x1",
    "y1",
    "x2",
    "y2",
    "detector_score",
    "training_image",
];

impl FaceRow<'_> {
    /// The CSV record, in [`CSV_HEADER`]'s order.
    #[must_use]
    pub fn csv_record(&self) -> Vec<String> {
        let d = self.detail;
        let mut r = vec![
            self.path.clone(),
            self.face.to_string(),
            self.faces_found.to_string(),
            self.precropped.to_string(),
            self.verdict.to_owned(),
            d.score.to_string(),
            d.logit.to_string(),
            d.global_logit.to_string(),
            self.top_region.to_owned(),
            self.top_region_part.to_string(),
        ];
        r.extend(d.bbox.iter().map(ToString::to_string));
        r.push(d.detector_score.to_string());
        r.push(self.training_image.to_string());
        r
    }
}

/// Every face of one scored photo, as rows, largest face first;
/// `training_image`: the photo is one of the model's training images.
#[must_use]
pub fn face_rows<'a>(
    path: &Path,
    image: &'a ImageScore,
    training_image: bool,
    threshold: f64,
) -> Vec<FaceRow<'a>> {
    image
        .faces
        .iter()
        .enumerate()
        .map(|(face, detail)| {
            let (top_region, top_region_part) = detail
                .regions
                .iter()
                .zip(&detail.region_contributions)
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .map_or(("", 0.0), |(name, part)| (name.as_str(), *part));
            FaceRow {
                path: path.display().to_string(),
                face,
                faces_found: image.faces_found,
                precropped: image.precropped,
                size: image.size,
                verdict: verdict(detail.score, threshold),
                top_region,
                top_region_part,
                training_image,
                detail,
            }
        })
        .collect()
}

/// A face table being written: [`FaceTable::start`], [`FaceTable::add`]
/// per row, [`FaceTable::finish`], each given the writer (so the caller
/// keeps it, e.g. a temporary file renamed at the end).
#[derive(Debug)]
pub struct FaceTable {
    format: ScoreFormat,
    rows: usize,
}

impl FaceTable {
    /// Writes the table's start (the CSV header, or `[`).
    ///
    /// # Errors
    /// The writer's.
    pub fn start(format: ScoreFormat, w: &mut (impl Write + ?Sized)) -> io::Result<Self> {
        match format {
            ScoreFormat::Csv => write_csv_record(w, CSV_HEADER)?,
            ScoreFormat::Json => w.write_all(b"[")?,
        }
        Ok(Self { format, rows: 0 })
    }

    /// Writes one row.
    ///
    /// # Errors
    /// The writer's.
    pub fn add(&mut self, w: &mut (impl Write + ?Sized), row: &FaceRow<'_>) -> io::Result<()> {
        match self.format {
            ScoreFormat::Csv => write_csv_record(w, row.csv_record())?,
            ScoreFormat::Json => {
                w.write_all(if self.rows == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *w, row)?;
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows written so far.
    #[must_use]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Writes the table's end (JSON's `]`).
    ///
    /// # Errors
    /// The writer's.
    pub fn finish(self, w: &mut (impl Write + ?Sized)) -> io::Result<()> {
        match self.format {
            ScoreFormat::Csv => Ok(()),
            ScoreFormat::Json if self.rows == 0 => w.write_all(b"]\n"),
            ScoreFormat::Json => w.write_all(b"\n]\n"),
        }
    }
}

/// Writes a whole table of these photos' faces (each photo with whether
/// it is one of the model's training images).
///
/// # Errors
/// The writer's.
pub fn write_face_table<'a>(
    w: &mut (impl Write + ?Sized),
    photos: impl IntoIterator<Item = (&'a Path, &'a ImageScore, bool)>,
    threshold: f64,
    format: ScoreFormat,
) -> io::Result<()> {
    let mut table = FaceTable::start(format, w)?;
    for (path, image, trained) in photos {
        for row in face_rows(path, image, trained, threshold) {
            table.add(w, &row)?;
        }
    }
    table.finish(w)
}

fn write_csv_record<I, T>(w: &mut (impl Write + ?Sized), record: I) -> io::Result<()>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut csv = csv::WriterBuilder::new().has_headers(false).from_writer(w);
    csv.write_record(record)?;
    csv.flush()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    fn face(score: f32, parts: [f32; 3]) -> FaceScore {
        FaceScore {
            bbox: [1.0, 2.0, 30.0, 40.0],
            detector_score: 0.99,
            landmarks: [[0.0; 2]; 5],
            score,
            logit: (score / (1.0 - score)).ln(),
            global_logit: 0.0,
            regions: vec!["left_eye".into(), "nose".into(), "mouth".into()],
            region_logits: vec![0.0; 3],
            region_attention: vec![1.0 / 3.0; 3],
            region_contributions: parts.to_vec(),
            routing: vec![vec![1.0]; 3],
        }
    }

    fn photo() -> ImageScore {
        ImageScore {
            score: 0.9,
            size: [64, 48],
            faces_found: 2,
            precropped: false,
            faces: vec![face(0.9, [0.1, -0.2, 1.5]), face(0.2, [0.1, -0.7, 0.3])],
        }
    }

    #[test]
    fn rows_carry_the_verdict_and_the_largest_part_in_size() {
        let p = photo();
        let rows = face_rows(Path::new("a/b.jpg"), &p, false, 0.5);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].face, rows[0].verdict), (0, "fake"));
        assert_eq!(
            (rows[0].top_region, rows[0].top_region_part),
            ("mouth", 1.5)
        );
        // A negative part can be the largest: it is what pushed to real.
        assert_eq!((rows[1].verdict, rows[1].top_region), ("real", "nose"));
        assert_eq!(rows[1].top_region_part, -0.7);
        // At the threshold itself: fake.
        let at = f64::from(p.faces[0].score);
        assert_eq!(face_rows(Path::new("x"), &p, false, at)[0].verdict, "fake");
    }

    #[test]
    fn csv_and_json_tables_hold_every_face() {
        let p = photo();
        let photos = [
            (Path::new("a,b.jpg"), &p, false),
            (Path::new("c.jpg"), &p, true),
        ];
        let mut csv = Vec::new();
        write_face_table(&mut csv, photos, 0.5, ScoreFormat::Csv).unwrap();
        let mut r = csv::Reader::from_reader(csv.as_slice());
        assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), CSV_HEADER);
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(&rows[0][0], "a,b.jpg", "a comma in a path is quoted");
        assert_eq!(&rows[1][1], "1");
        assert_eq!(&rows[1][4], "real");
        let bbox: Vec<&str> = (10..14).map(|i| &rows[0][i]).collect();
        assert_eq!(bbox, ["1", "2", "30", "40"]);
        // The training image: both faces of the second photo.
        let trained: Vec<&str> = rows.iter().map(|r| &r[15]).collect();
        assert_eq!(trained, ["false", "false", "true", "true"]);

        let mut json = Vec::new();
        write_face_table(&mut json, photos, 0.5, ScoreFormat::Json).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let a = v.as_array().unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(a[2]["path"], "c.jpg");
        assert_eq!(a[2]["verdict"], "fake");
        assert_eq!(a[0]["training_image"], false);
        assert_eq!(a[2]["training_image"], true);
        assert_eq!(a[2]["size"], serde_json::json!([64, 48]));
        assert_eq!(a[2]["region_contributions"].as_array().unwrap().len(), 3);

        let mut empty = Vec::new();
        write_face_table(&mut empty, [], 0.5, ScoreFormat::Json).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&empty).unwrap(),
            serde_json::json!([])
        );
    }
}
