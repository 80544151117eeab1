//! Score tables: any detector's output, as CSV or JSON.
//!
//! CSV: header `path,dataset,label,score` and an optional `video` column
//! (any column order). JSON: an array of objects with the same fields.
//! Labels are `real`/`fake` (any case) or `0`/`1`.
//!
//! Reading is strict: the first malformed row or record fails the whole
//! read with [`ScoreFileError::Parse`], naming the file, the 1-based line
//! and what is wrong. Nothing is skipped or guessed.
//!
//! # CSV details
//! - A header row is required. Column names are matched case-insensitively
//!   after trimming whitespace; `path`, `dataset`, `label` and `score` are
//!   required, `video` is optional, other columns are ignored. A column
//!   name that appears twice is an error.
//! - Every row must have as many fields as the header. Fields may be quoted.
//!   A UTF-8 byte-order mark at the start is tolerated.
//! - `path`, `dataset` and `video` are kept verbatim (not trimmed), so a
//!   written table reads back identically; a `path` or `dataset` that is
//!   empty or only whitespace is an error, and an empty or whitespace-only
//!   `video` cell means "no video". `label` and `score` may carry
//!   surrounding whitespace.
//!
//! # JSON details
//! - The top level must be an array of objects. `path` and `dataset` are
//!   non-empty strings, `label` is a string (`real`, `fake`, `0`, `1`, any
//!   case) or the integer `0`/`1`, `score` is a number, `video` is an
//!   optional string or `null` (an empty string means no video). Other
//!   fields are ignored; a field given twice is an error.
//! - Scores are parsed with correct rounding (`serde_json`'s
//!   `float_roundtrip` feature), so a table written by [`write_scores`]
//!   reads back with bit-identical scores.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Label, UnknownLabel, atomic::write_atomic};

/// One scored face.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreRecord {
    /// The image the score belongs to, as the detector wrote it.
    pub path: String,
    /// Name of the dataset (domain) the face comes from.
    pub dataset: String,
    /// Ground truth.
    pub label: Label,
    /// Detector score, higher = more likely fake. Always finite.
    pub score: f64,
    /// Source video, for frame-level datasets; `None` when absent or empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub video: Option<String>,
}

/// File format of a score table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoreFormat {
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array of records.
    Json,
}

impl ScoreFormat {
    /// The format named by the file extension: `.csv` or `.json`, any case.
    /// `None` for any other extension or none at all.
    #[must_use]
    pub fn from_path(path: &Path) -> Option<ScoreFormat> {
        let ext = path.extension()?.to_str()?;
        if ext.eq_ignore_ascii_case("csv") {
            Some(Self::Csv)
        } else if ext.eq_ignore_ascii_case("json") {
            Some(Self::Json)
        } else {
            None
        }
    }
}

/// Why a score table could not be read or written. Every variant names the
/// file; parse errors also name the line.
#[derive(Debug, thiserror::Error)]
pub enum ScoreFileError {
    /// The file could not be opened, read or written.
    #[error("{source}: {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A row or the header is malformed.
    #[error("line {line}: {message}: {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number in the file (the header is line 1 in CSV).
        line: u64,
        /// What is wrong, in words.
        message: String,
    },
    /// The file holds no records.
    #[error("no score records in the file: {}", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The format could not be told from the file name or its content.
    #[error("unknown score file format (expected .csv or .json): {}", path.display())]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// [`write_scores`] was given a record that could not be read back
    /// (empty path or dataset, blank video name, non-finite score). Nothing
    /// was written.
    #[error("record {index}: {message}: {}", path.display())]
    InvalidRecord {
        /// The file that was to be written.
        path: PathBuf,
        /// 0-based index of the record in the slice given to [`write_scores`].
        index: usize,
        /// What is wrong, in words.
        message: String,
    },
}

/// The UTF-8 byte-order mark some tools put at the start of text files.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Reads a score table. The format comes from the extension (see
/// [`ScoreFormat::from_path`]); for any other extension it is sniffed from
/// the content: a first non-whitespace character `[` means JSON, a first
/// line with a `score` column means CSV.
///
/// CSV is streamed from a buffered reader, so very large tables read fast
/// without holding the text in memory.
///
/// # Errors
/// [`ScoreFileError::Io`] when the file cannot be opened or read;
/// [`ScoreFileError::Parse`] for the first malformed header, row or record;
/// [`ScoreFileError::Empty`] when the file holds no records;
/// [`ScoreFileError::UnknownFormat`] when the format cannot be told.
pub fn read_scores(path: &Path) -> Result<Vec<ScoreRecord>, ScoreFileError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut reader = BufReader::with_capacity(SNIFF_BYTES, file);
    let format = if let Some(format) = ScoreFormat::from_path(path) {
        format
    } else {
        let head = reader.fill_buf().map_err(|e| io_error(path, e))?;
        match sniff(head) {
            Sniffed::Format(format) => format,
            Sniffed::Blank if head.len() < SNIFF_BYTES => {
                return Err(ScoreFileError::Empty {
                    path: path.to_path_buf(),
                });
            }
            Sniffed::Blank | Sniffed::Unknown => {
                return Err(ScoreFileError::UnknownFormat {
                    path: path.to_path_buf(),
                });
            }
        }
    };
    match format {
        ScoreFormat::Csv => read_csv(reader, path),
        ScoreFormat::Json => {
            let mut bytes = Vec::new();
            reader
                .read_to_end(&mut bytes)
                .map_err(|e| io_error(path, e))?;
            parse_json(&bytes, path)
        }
    }
}

/// Parses a score table held in memory. `path` is used only in errors.
///
/// # Errors
/// As [`read_scores`], except that there is no I/O and no sniffing.
pub fn parse_scores(
    text: &str,
    format: ScoreFormat,
    path: &Path,
) -> Result<Vec<ScoreRecord>, ScoreFileError> {
    match format {
        ScoreFormat::Csv => read_csv(text.as_bytes(), path),
        ScoreFormat::Json => parse_json(text.as_bytes(), path),
    }
}

/// Writes a score table atomically (the file appears whole or not at all).
///
/// CSV: header `path,dataset,label,score`, plus `,video` when any record
/// has a video; labels as `real`/`fake`; scores in Rust's shortest
/// round-trip notation, so they read back bit-identical. JSON: a pretty
/// array of objects, `video` omitted when `None`.
///
/// # Errors
/// [`ScoreFileError::InvalidRecord`] (before anything is written) for a
/// record with an empty path or dataset, a blank `Some` video or a
/// non-finite score; [`ScoreFileError::Io`] when writing fails.
pub fn write_scores(
    path: &Path,
    records: &[ScoreRecord],
    format: ScoreFormat,
) -> Result<(), ScoreFileError> {
    for (index, record) in records.iter().enumerate() {
        check_record(record).map_err(|message| ScoreFileError::InvalidRecord {
            path: path.to_path_buf(),
            index,
            message: message.to_owned(),
        })?;
    }
    let result = match format {
        ScoreFormat::Csv => write_atomic(path, |w| write_csv(w, records)),
        ScoreFormat::Json => write_atomic(path, |w| {
            serde_json::to_writer_pretty(&mut *w, records)?;
            w.write_all(b"\n")
        }),
    };
    result.map_err(|e| io_error(path, e))
}

// ---------------------------------------------------------------------------
// Shared checks

fn io_error(path: &Path, source: io::Error) -> ScoreFileError {
    ScoreFileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn parse_error(path: &Path, line: u64, message: impl Into<String>) -> ScoreFileError {
    ScoreFileError::Parse {
        path: path.to_path_buf(),
        line: line.max(1),
        message: message.into(),
    }
}

fn check_path(path: &str) -> Result<(), &'static str> {
    if path.trim().is_empty() {
        Err("empty path")
    } else {
        Ok(())
    }
}

fn check_dataset(dataset: &str) -> Result<(), &'static str> {
    if dataset.trim().is_empty() {
        Err("empty dataset name")
    } else {
        Ok(())
    }
}

fn check_score(score: f64) -> Result<f64, &'static str> {
    if score.is_nan() {
        Err("score is NaN")
    } else if score.is_infinite() {
        Err("score is infinite")
    } else {
        Ok(score)
    }
}

/// An empty or whitespace-only video name means "no video".
fn video_or_none(video: String) -> Option<String> {
    if video.trim().is_empty() {
        None
    } else {
        Some(video)
    }
}

/// Whether `record` would read back as itself.
fn check_record(record: &ScoreRecord) -> Result<(), &'static str> {
    check_path(&record.path)?;
    check_dataset(&record.dataset)?;
    check_score(record.score)?;
    if record.video.as_deref().is_some_and(|v| v.trim().is_empty()) {
        return Err("blank video name (use None for no video)");
    }
    Ok(())
}

fn unknown_label(text: &str) -> String {
    UnknownLabel(text.to_owned()).to_string()
}

// ---------------------------------------------------------------------------
// Sniffing

/// How many bytes are looked at to sniff the format (and the read buffer).
const SNIFF_BYTES: usize = 64 * 1024;

enum Sniffed {
    Format(ScoreFormat),
    /// Nothing but whitespace (or nothing at all).
    Blank,
    Unknown,
}

fn sniff(head: &[u8]) -> Sniffed {
    let head = head.strip_prefix(BOM).unwrap_or(head);
    let Some(start) = head.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Sniffed::Blank;
    };
    let rest = head.get(start..).unwrap_or_default();
    if rest.first() == Some(&b'[') {
        return Sniffed::Format(ScoreFormat::Json);
    }
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let has_score = line.split(',').any(|name| {
        name.trim()
            .trim_matches('"')
            .trim()
            .eq_ignore_ascii_case("score")
    });
    if has_score {
        Sniffed::Format(ScoreFormat::Csv)
    } else {
        Sniffed::Unknown
    }
}

// ---------------------------------------------------------------------------
// CSV

/// Where the known columns are in a CSV table.
struct Columns {
    path: usize,
    dataset: usize,
    label: usize,
    score: usize,
    video: Option<usize>,
    /// The header names as written (trimmed), for messages.
    names: Vec<String>,
}

impl Columns {
    /// Finds the columns in a header, or says what is wrong with it.
    fn find(header: &csv::StringRecord) -> Result<Self, String> {
        let names: Vec<String> = header
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let name = if i == 0 {
                    name.trim_start_matches('\u{feff}')
                } else {
                    name
                };
                name.trim().to_owned()
            })
            .collect();
        let find = |wanted: &str| -> Result<Option<usize>, String> {
            let mut found = None;
            for (i, name) in names.iter().enumerate() {
                if name.eq_ignore_ascii_case(wanted) {
                    if found.is_some() {
                        return Err(format!("duplicate column {wanted:?} in the header"));
                    }
                    found = Some(i);
                }
            }
            Ok(found)
        };
        let path = find("path")?;
        let dataset = find("dataset")?;
        let label = find("label")?;
        let score = find("score")?;
        let video = find("video")?;
        let (Some(path), Some(dataset), Some(label), Some(score)) = (path, dataset, label, score)
        else {
            let missing: Vec<String> = [
                ("path", path),
                ("dataset", dataset),
                ("label", label),
                ("score", score),
            ]
            .iter()
            .filter(|(_, index)| index.is_none())
            .map(|(name, _)| format!("{name:?}"))
            .collect();
            let noun = if missing.len() == 1 {
                "column"
            } else {
                "columns"
            };
            return Err(format!(
                "missing {noun} {} in the header",
                missing.join(", ")
            ));
        };
        Ok(Self {
            path,
            dataset,
            label,
            score,
            video,
            names,
        })
    }

    /// Names column `index` (0-based) for a message.
    fn describe(&self, index: usize) -> String {
        describe_column(self.names.get(index).map(String::as_str), index)
    }

    fn row(&self, row: &csv::StringRecord) -> Result<ScoreRecord, String> {
        let cell = |index: usize| row.get(index).unwrap_or_default();
        let path = cell(self.path);
        check_path(path)?;
        let dataset = cell(self.dataset);
        check_dataset(dataset)?;
        let label_text = cell(self.label);
        if label_text.trim().is_empty() {
            return Err("empty label".to_owned());
        }
        let label = Label::parse(label_text).ok_or_else(|| unknown_label(label_text))?;
        let score_text = cell(self.score).trim();
        if score_text.is_empty() {
            return Err("empty score".to_owned());
        }
        let score: f64 = score_text
            .parse()
            .map_err(|_| format!("score {score_text:?} is not a number"))?;
        let score = check_score(score)?;
        let video = self
            .video
            .and_then(|index| video_or_none(cell(index).to_owned()));
        Ok(ScoreRecord {
            path: path.to_owned(),
            dataset: dataset.to_owned(),
            label,
            score,
            video,
        })
    }
}

fn describe_column(name: Option<&str>, index: usize) -> String {
    match name {
        Some(name) if !name.is_empty() => format!("{name:?}"),
        _ => format!("{}", index + 1),
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Turns an error of the `csv` crate found on `line` into ours.
fn from_csv_error(
    err: csv::Error,
    path: &Path,
    columns: Option<&Columns>,
    line: u64,
) -> ScoreFileError {
    let text = err.to_string();
    match err.into_kind() {
        csv::ErrorKind::Io(source) => io_error(path, source),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => parse_error(
            path,
            line,
            format!("expected {}, found {len}", plural(expected_len, "field")),
        ),
        csv::ErrorKind::Utf8 { err, .. } => {
            let column = match columns {
                Some(columns) => columns.describe(err.field()),
                None => describe_column(None, err.field()),
            };
            let what = if columns.is_some() {
                "column"
            } else {
                "header column"
            };
            parse_error(path, line, format!("{what} {column} is not valid UTF-8"))
        }
        _ => parse_error(path, line, text),
    }
}

/// Passes bytes through to the CSV reader and remembers where the line
/// breaks are, so that the first line of a record can be told exactly.
///
/// The `csv` crate's record positions point at the end of the previous
/// record: for a record after blank lines, and for every record of a file
/// with `\r\n` line ends, that is not the line the record is on.
struct LineTracker<R> {
    inner: R,
    /// Bytes read so far.
    offset: u64,
    /// Offsets of the `\r` (`false`) and `\n` (`true`) bytes read but not
    /// yet passed by the record being looked at.
    breaks: VecDeque<(u64, bool)>,
}

impl<R: Read> Read for LineTracker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let read = buf.get(..n).unwrap_or_default();
        for (offset, &byte) in (self.offset..).zip(read) {
            if byte == b'\n' || byte == b'\r' {
                self.breaks.push_back((offset, byte == b'\n'));
            }
        }
        self.offset += read.len() as u64;
        Ok(n)
    }
}

impl<R> LineTracker<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            offset: 0,
            breaks: VecDeque::new(),
        }
    }

    /// The 1-based line of the record that `csv` says starts at `pos`:
    /// skips the line breaks that `csv` counts as part of the record (blank
    /// lines, the `\n` of a `\r\n`). Forgets the breaks before `pos`, so
    /// call it with positions that never go back.
    fn line_of(&mut self, pos: &csv::Position) -> u64 {
        let start = pos.byte();
        while self
            .breaks
            .front()
            .is_some_and(|&(offset, _)| offset < start)
        {
            self.breaks.pop_front();
        }
        let mut line = pos.line();
        for (expected, &(offset, is_lf)) in (start..).zip(&self.breaks) {
            if offset != expected {
                break;
            }
            line += u64::from(is_lf);
        }
        line
    }
}

fn read_csv<R: Read>(input: R, path: &Path) -> Result<Vec<ScoreRecord>, ScoreFileError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(LineTracker::new(input));
    let header = match reader.headers() {
        Ok(header) => header.clone(),
        Err(err) => return Err(csv_failure(&mut reader, err, path, None)),
    };
    let header_line = header
        .position()
        .map_or(1, |pos| reader.get_mut().line_of(pos));
    let mut row = csv::StringRecord::new();
    let columns = match Columns::find(&header) {
        Ok(columns) => columns,
        Err(message) => {
            // A blank "header" with nothing after it is an empty file.
            let blank = header.iter().all(|name| name.trim().is_empty());
            if header.is_empty() || (blank && !reader.read_record(&mut row).unwrap_or(true)) {
                return Err(ScoreFileError::Empty {
                    path: path.to_path_buf(),
                });
            }
            return Err(parse_error(path, header_line, message));
        }
    };
    let mut records = Vec::new();
    loop {
        match reader.read_record(&mut row) {
            Ok(true) => {}
            Ok(false) => break,
            Err(err) => return Err(csv_failure(&mut reader, err, path, Some(&columns))),
        }
        match columns.row(&row) {
            Ok(record) => records.push(record),
            Err(message) => {
                let line = match row.position() {
                    Some(pos) => reader.get_mut().line_of(pos),
                    None => reader.position().line(),
                };
                return Err(parse_error(path, line, message));
            }
        }
        // Keep the tracker small: forget the breaks of rows already read.
        if let (0, Some(pos)) = (records.len() % 1024, row.position()) {
            reader.get_mut().line_of(pos);
        }
    }
    if records.is_empty() {
        return Err(ScoreFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(records)
}

/// Turns an error of the `csv` crate into ours, with the exact line.
fn csv_failure<R: Read>(
    reader: &mut csv::Reader<LineTracker<R>>,
    err: csv::Error,
    path: &Path,
    columns: Option<&Columns>,
) -> ScoreFileError {
    let line = match err.position() {
        Some(pos) => reader.get_mut().line_of(pos),
        None => reader.position().line(),
    };
    from_csv_error(err, path, columns, line)
}

/// `csv` wraps I/O errors; unwrap them so the caller sees the real cause.
fn csv_to_io(err: csv::Error) -> io::Error {
    let text = err.to_string();
    match err.into_kind() {
        csv::ErrorKind::Io(source) => source,
        _ => io::Error::other(text),
    }
}

fn write_csv(out: &mut dyn Write, records: &[ScoreRecord]) -> io::Result<()> {
    let with_video = records.iter().any(|r| r.video.is_some());
    let mut writer = csv::WriterBuilder::new().from_writer(out);
    let mut header = vec!["path", "dataset", "label", "score"];
    if with_video {
        header.push("video");
    }
    writer.write_record(&header).map_err(csv_to_io)?;
    let mut score = String::new();
    for record in records {
        score.clear();
        write!(score, "{}", record.score).map_err(io::Error::other)?;
        let fields = [
            record.path.as_str(),
            record.dataset.as_str(),
            record.label.as_str(),
            score.as_str(),
            record.video.as_deref().unwrap_or_default(),
        ];
        let fields = if with_video {
            &fields[..]
        } else {
            &fields[..4]
        };
        writer.write_record(fields).map_err(csv_to_io)?;
    }
    writer.flush()
}

// ---------------------------------------------------------------------------
// JSON

fn parse_json(bytes: &[u8], path: &Path) -> Result<Vec<ScoreRecord>, ScoreFileError> {
    let bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ScoreFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    // Scores are correctly rounded because the crate enables serde_json's
    // `float_roundtrip` feature; `json_scores_are_correctly_rounded` checks it.
    let records = match serde_json::from_slice::<JsonRecords>(bytes) {
        Ok(JsonRecords(records)) => records,
        Err(err) => return Err(from_json_error(&err, path)),
    };
    if records.is_empty() {
        return Err(ScoreFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(records)
}

fn from_json_error(err: &serde_json::Error, path: &Path) -> ScoreFileError {
    let text = err.to_string();
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text);
    parse_error(path, err.line() as u64, message)
}

/// The top-level array of a JSON score table.
struct JsonRecords(Vec<ScoreRecord>);

impl<'de> de::Deserialize<'de> for JsonRecords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecordsVisitor;
        impl<'de> Visitor<'de> for RecordsVisitor {
            type Value = JsonRecords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of score records")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut records = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(JsonRecord(record)) = seq.next_element()? {
                    records.push(record);
                }
                Ok(JsonRecords(records))
            }
        }
        deserializer.deserialize_seq(RecordsVisitor)
    }
}

/// One JSON record. All checks run while deserializing, so `serde_json`
/// attaches the line of the offending value to every error.
struct JsonRecord(ScoreRecord);

/// The keys of a JSON record; anything else is ignored.
enum Key {
    Path,
    Dataset,
    Label,
    Score,
    Video,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "path" => Key::Path,
                    "dataset" => Key::Dataset,
                    "label" => Key::Label,
                    "score" => Key::Score,
                    "video" => Key::Video,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// A string field that must not be blank; `empty` is the message if it is.
struct NonBlank {
    field: &'static str,
    empty: &'static str,
}

impl<'de> DeserializeSeed<'de> for NonBlank {
    type Value = String;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_string(self)
    }
}

impl Visitor<'_> for NonBlank {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a string for {:?}", self.field)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        self.visit_string(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        if v.trim().is_empty() {
            Err(E::custom(self.empty))
        } else {
            Ok(v)
        }
    }
}

/// The optional `video` field: a string or `null`; blank means `None`.
struct VideoSeed;

impl<'de> DeserializeSeed<'de> for VideoSeed {
    type Value = Option<String>;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for VideoSeed {
    type Value = Option<String>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or null for \"video\"")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_string(self)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(video_or_none(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(video_or_none(v))
    }
}

/// The `label` field: a string label or the integer 0/1.
struct LabelSeed;

impl<'de> DeserializeSeed<'de> for LabelSeed {
    type Value = Label;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Label, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Visitor<'_> for LabelSeed {
    type Value = Label;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a label for \"label\" (real, fake, 0 or 1)")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
        if v.trim().is_empty() {
            return Err(E::custom("empty label"));
        }
        Label::parse(v).ok_or_else(|| E::custom(unknown_label(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Label, E> {
        match v {
            0 => Ok(Label::Real),
            1 => Ok(Label::Fake),
            _ => Err(E::custom(format!(
                "unknown label {v} (expected real, fake, 0 or 1)"
            ))),
        }
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Label, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(E::custom(format!(
                "unknown label {v} (expected real, fake, 0 or 1)"
            ))),
        }
    }
}

/// The `score` field: a finite number.
struct ScoreSeed;

impl<'de> DeserializeSeed<'de> for ScoreSeed {
    type Value = f64;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<f64, D::Error> {
        deserializer.deserialize_f64(self)
    }
}

impl Visitor<'_> for ScoreSeed {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number for \"score\"")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        check_score(v).map_err(E::custom)
    }
    #[allow(clippy::cast_precision_loss)] // rounds to nearest, as a JSON reader must
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    #[allow(clippy::cast_precision_loss)] // rounds to nearest, as a JSON reader must
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
}

impl<'de> de::Deserialize<'de> for JsonRecord {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(RecordVisitor)
    }
}

struct RecordVisitor;

fn duplicate<E: de::Error>(field: &str) -> E {
    E::custom(format!("duplicate field {field:?}"))
}

fn missing<E: de::Error>(field: &str) -> E {
    E::custom(format!("missing field {field:?}"))
}

impl<'de> Visitor<'de> for RecordVisitor {
    type Value = JsonRecord;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a score record object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonRecord, A::Error> {
        let mut path = None;
        let mut dataset = None;
        let mut label = None;
        let mut score = None;
        let mut video = None;
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Path => {
                    if path.is_some() {
                        return Err(duplicate("path"));
                    }
                    path = Some(map.next_value_seed(NonBlank {
                        field: "path",
                        empty: "empty path",
                    })?);
                }
                Key::Dataset => {
                    if dataset.is_some() {
                        return Err(duplicate("dataset"));
                    }
                    dataset = Some(map.next_value_seed(NonBlank {
                        field: "dataset",
                        empty: "empty dataset name",
                    })?);
                }
                Key::Label => {
                    if label.is_some() {
                        return Err(duplicate("label"));
                    }
                    label = Some(map.next_value_seed(LabelSeed)?);
                }
                Key::Score => {
                    if score.is_some() {
                        return Err(duplicate("score"));
                    }
                    score = Some(map.next_value_seed(ScoreSeed)?);
                }
                Key::Video => {
                    if video.is_some() {
                        return Err(duplicate("video"));
                    }
                    video = Some(map.next_value_seed(VideoSeed)?);
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(JsonRecord(ScoreRecord {
            path: path.ok_or_else(|| missing("path"))?,
            dataset: dataset.ok_or_else(|| missing("dataset"))?,
            label: label.ok_or_else(|| missing("label"))?,
            score: score.ok_or_else(|| missing("score"))?,
            video: video.flatten(),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const P: &str = "mem.csv";

    fn csv(text: &str) -> Result<Vec<ScoreRecord>, ScoreFileError> {
        parse_scores(text, ScoreFormat::Csv, Path::new(P))
    }

    fn json(text: &str) -> Result<Vec<ScoreRecord>, ScoreFileError> {
        parse_scores(text, ScoreFormat::Json, Path::new(P))
    }

    /// The line and message of a parse error, or a panic.
    fn failure(result: Result<Vec<ScoreRecord>, ScoreFileError>) -> (u64, String) {
        match result {
            Err(ScoreFileError::Parse {
                path,
                line,
                message,
            }) => {
                assert_eq!(path, Path::new(P));
                (line, message)
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    fn fail(line: u64, message: &str) -> (u64, String) {
        (line, message.to_owned())
    }

    fn rec(
        path: &str,
        dataset: &str,
        label: Label,
        score: f64,
        video: Option<&str>,
    ) -> ScoreRecord {
        ScoreRecord {
            path: path.to_owned(),
            dataset: dataset.to_owned(),
            label,
            score,
            video: video.map(str::to_owned),
        }
    }

    fn is_empty(result: Result<Vec<ScoreRecord>, ScoreFileError>) -> bool {
        matches!(result, Err(ScoreFileError::Empty { path }) if path == Path::new(P))
    }

    #[test]
    fn format_from_extension_in_any_case() {
        assert_eq!(
            ScoreFormat::from_path(Path::new("a/b.CSV")),
            Some(ScoreFormat::Csv)
        );
        assert_eq!(
            ScoreFormat::from_path(Path::new("b.Json")),
            Some(ScoreFormat::Json)
        );
        assert_eq!(ScoreFormat::from_path(Path::new("b.txt")), None);
        assert_eq!(ScoreFormat::from_path(Path::new("csv")), None);
    }

    #[test]
    fn sniffing_by_content() {
        assert!(matches!(
            sniff(b"\xEF\xBB\xBF \n [{}]"),
            Sniffed::Format(ScoreFormat::Json)
        ));
        assert!(matches!(
            sniff(b"path,dataset,label,\"Score\"\na,b,c,d"),
            Sniffed::Format(ScoreFormat::Csv)
        ));
        assert!(matches!(sniff(b"a,b\nscore\n"), Sniffed::Unknown));
        assert!(matches!(sniff(b"{\"score\": 1}"), Sniffed::Unknown));
        assert!(matches!(sniff(b" \n\t"), Sniffed::Blank));
        assert!(matches!(sniff(b""), Sniffed::Blank));
    }

    #[test]
    fn csv_labels_in_any_spelling() {
        let records = csv("path,dataset,label,score\n\
             a,d,REAL,0.1\nb,d,Fake,0.2\nc,d,0,0.3\nd,d, 1 ,0.4\n")
        .unwrap();
        let labels: Vec<Label> = records.iter().map(|r| r.label).collect();
        assert_eq!(labels, [Label::Real, Label::Fake, Label::Real, Label::Fake]);
    }

    #[test]
    fn csv_columns_in_any_order_with_extras_quotes_and_bom() {
        let text = "\u{feff} SCORE ,extra,Video,label,DATASET,Path\n\
                    \" 0.5 \",x,\"v, 1\",fake,\"FF++\",\"a \"\"b\"\".png\"\n\
                    -1e-3,y,,real,FF++,c.png\n\
                    2,z,   ,1,FF++,d.png\n";
        assert_eq!(
            csv(text).unwrap(),
            [
                rec("a \"b\".png", "FF++", Label::Fake, 0.5, Some("v, 1")),
                rec("c.png", "FF++", Label::Real, -0.001, None),
                rec("d.png", "FF++", Label::Fake, 2.0, None),
            ]
        );
    }

    #[test]
    fn csv_values_other_than_label_and_score_are_kept_verbatim() {
        let records = csv("path,dataset,label,score,video\n a.png ,FF++ ,fake,1, v \n").unwrap();
        assert_eq!(
            records,
            [rec(" a.png ", "FF++ ", Label::Fake, 1.0, Some(" v "))]
        );
    }

    #[test]
    fn csv_bad_values_name_the_line() {
        let head = "path,dataset,label,score\na,d,fake,0.5\n";
        let cases = [
            ("b,d,real,abc", "score \"abc\" is not a number"),
            ("b,d,real,0.5.1", "score \"0.5.1\" is not a number"),
            ("b,d,real,NaN", "score is NaN"),
            ("b,d,real,nan", "score is NaN"),
            ("b,d,real,inf", "score is infinite"),
            ("b,d,real,-Infinity", "score is infinite"),
            ("b,d,real,1e999", "score is infinite"),
            ("b,d,real,", "empty score"),
            (
                "b,d,maybe,0.5",
                "unknown label \"maybe\" (expected real, fake, 0 or 1)",
            ),
            (
                "b,d,2,0.5",
                "unknown label \"2\" (expected real, fake, 0 or 1)",
            ),
            ("b,d, ,0.5", "empty label"),
            (",d,real,0.5", "empty path"),
            ("\"  \",d,real,0.5", "empty path"),
            ("b,,real,0.5", "empty dataset name"),
            ("b,d,real", "expected 4 fields, found 3"),
            ("b,d,real,0.5,extra", "expected 4 fields, found 5"),
            ("b", "expected 4 fields, found 1"),
        ];
        for (row, message) in cases {
            let text = format!("{head}{row}\nc,d,fake,0.1\n");
            assert_eq!(failure(csv(&text)), fail(3, message), "row {row:?}");
        }
    }

    #[test]
    fn csv_line_numbers_count_blank_lines_crlf_and_multiline_fields() {
        let lf = "path,dataset,label,score\n\na,d,fake,0.5\n\n\nb,d,real,x\n";
        assert_eq!(failure(csv(lf)), fail(6, "score \"x\" is not a number"));
        let crlf = "path,dataset,label,score\r\na,d,fake,0.5\r\nb,d,real,x\r\n";
        assert_eq!(failure(csv(crlf)), fail(3, "score \"x\" is not a number"));
        let crlf_blank = "path,dataset,label,score\r\n\r\na,d,fake,0.5\r\n\r\nb,d\r\n";
        assert_eq!(
            failure(csv(crlf_blank)),
            fail(5, "expected 4 fields, found 2")
        );
        let multi = "path,dataset,label,score\n\"a\nb\nc\",d,fake,0.5\nb,d,real,x";
        assert_eq!(failure(csv(multi)), fail(5, "score \"x\" is not a number"));
        let starts_multi = "path,dataset,label,score\na,d,fake,0.5\n\"a\r\nb\",d,real,x\r\n";
        assert_eq!(
            failure(csv(starts_multi)),
            fail(3, "score \"x\" is not a number")
        );
        let leading = "\n\npath,dataset,label\na,d,fake\n";
        assert_eq!(
            failure(csv(leading)),
            fail(3, "missing column \"score\" in the header")
        );
    }

    #[test]
    fn csv_line_numbers_stay_exact_deep_into_a_file() {
        let mut text = String::from("path,dataset,label,score\r\n");
        for i in 0..5000 {
            write!(text, "{i}.png,d,fake,0.5\r\n").unwrap();
            if i % 7 == 0 {
                text.push_str("\r\n");
            }
        }
        // 1 header + 5000 rows + 715 blank lines; the bad row comes next.
        text.push_str("bad.png,d,fake,oops\r\n");
        assert_eq!(
            failure(csv(&text)),
            fail(1 + 5000 + 715 + 1, "score \"oops\" is not a number")
        );
    }

    #[test]
    fn csv_header_problems() {
        assert_eq!(
            failure(csv("path,dataset,label\na,d,fake\n")),
            fail(1, "missing column \"score\" in the header")
        );
        assert_eq!(
            failure(csv("path,label\na,fake\n")),
            fail(1, "missing columns \"dataset\", \"score\" in the header")
        );
        assert_eq!(
            failure(csv("path,dataset,label,score,Score\na,d,fake,1,2\n")),
            fail(1, "duplicate column \"score\" in the header")
        );
        assert_eq!(
            failure(csv("a,b,c\n")),
            fail(
                1,
                "missing columns \"path\", \"dataset\", \"label\", \"score\" in the header"
            )
        );
    }

    #[test]
    fn csv_invalid_utf8_is_a_parse_error_with_the_line() {
        let bytes = b"path,dataset,label,score\na,d,fake,0.5\na,d\xC3\x28,fake,0.5\n";
        let result = read_csv(&bytes[..], Path::new(P));
        assert_eq!(
            failure(result),
            fail(3, "column \"dataset\" is not valid UTF-8")
        );
        let bytes = b"path,data\xFFset,label,score\na,d,fake,0.5\n";
        let result = read_csv(&bytes[..], Path::new(P));
        assert_eq!(
            failure(result),
            fail(1, "header column 2 is not valid UTF-8")
        );
    }

    #[test]
    fn csv_empty_inputs() {
        assert!(is_empty(csv("")));
        assert!(is_empty(csv("\n\n")));
        assert!(is_empty(csv("   \n")));
        assert!(is_empty(csv("path,dataset,label,score\n")));
        assert!(is_empty(csv("path,dataset,label,score\n\n\n")));
        assert!(is_empty(csv("\u{feff}path,dataset,label,score")));
    }

    #[test]
    fn json_reads_labels_scores_and_videos() {
        let text = r#"[
            {"path": "a", "dataset": "d", "label": "REAL", "score": 1, "video": "v"},
            {"path": "b", "dataset": "d", "label": "Fake", "score": -2.5e-3, "video": null},
            {"path": "c", "dataset": "d", "label": 0, "score": 0.1, "video": " "},
            {"path": "d", "dataset": "d", "label": 1, "score": -0, "extra": [1, {"x": null}]},
            {"path": "e", "dataset": "d", "label": "1", "score": 0.30000000000000004},
            {"label": "0", "score": 7, "path": "f", "dataset": "d"}
        ]"#;
        let records = json(text).unwrap();
        assert_eq!(
            records,
            [
                rec("a", "d", Label::Real, 1.0, Some("v")),
                rec("b", "d", Label::Fake, -0.0025, None),
                rec("c", "d", Label::Real, 0.1, None),
                rec("d", "d", Label::Fake, 0.0, None),
                rec("e", "d", Label::Fake, 0.300_000_000_000_000_04, None),
                rec("f", "d", Label::Real, 7.0, None),
            ]
        );
    }

    #[test]
    fn json_scores_are_correctly_rounded() {
        // Without serde_json's `float_roundtrip` feature these are read one
        // ulp off; the exact value is what a researcher's file says.
        let text = r#"[
            {"meta": {"score": 5}, "path": "a", "dataset": "d", "label": 1,
             "score": 0.042893881708178316},
            {"path": "b", "dataset": "d", "label": 0, "score": 0.5632236860906696},
            {"path": "c", "dataset": "d", "label": 0, "score": -5.874154321573841e-199}
        ]"#;
        let scores: Vec<u64> = json(text)
            .unwrap()
            .iter()
            .map(|r| r.score.to_bits())
            .collect();
        let expected = [
            0.042_893_881_708_178_316_f64,
            0.563_223_686_090_669_6,
            -5.874_154_321_573_841e-199,
        ];
        assert_eq!(scores, expected.map(f64::to_bits));
    }

    /// Bad JSON inputs with the line and message they must fail with.
    const BAD_JSON: &[(&str, u64, &str)] = &[
        (
            r#"[
  {"path": "a", "dataset": "d", "label": 2, "score": 0.5}
]"#,
            2,
            "unknown label 2 (expected real, fake, 0 or 1)",
        ),
        (
            r#"[
  {"path": "a", "dataset": "d", "label": -1, "score": 0.5}
]"#,
            2,
            "unknown label -1 (expected real, fake, 0 or 1)",
        ),
        (
            r#"[
  {"path": "a", "dataset": "d",
   "label": "maybe", "score": 0.5}
]"#,
            3,
            "unknown label \"maybe\" (expected real, fake, 0 or 1)",
        ),
        (
            "[\n{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1.0, \"score\": 0.5}]",
            2,
            "invalid type: floating point `1.0`, expected a label for \"label\" (real, fake, 0 or 1)",
        ),
        (
            "[\n{\"path\": \"a\", \"dataset\": \"d\", \"label\": \"\", \"score\": 0.5}]",
            2,
            "empty label",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1,\n\"score\": \"0.5\"}]",
            2,
            "invalid type: string \"0.5\", expected a number for \"score\"",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1,\n\n\"score\": 1e999}]",
            3,
            "number out of range",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1,\n\"score\": null}]",
            2,
            "invalid type: null, expected a number for \"score\"",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\",\n \"label\": 1}\n]",
            2,
            "missing field \"score\"",
        ),
        (
            "[{\"path\": 5,\n \"dataset\": \"d\", \"label\": 1, \"score\": 1}]",
            1,
            "invalid type: integer `5`, expected a string for \"path\"",
        ),
        (
            "[{\"path\": \"a\",\n \"dataset\": \"\"\n, \"label\": 1, \"score\": 1}]",
            2,
            "empty dataset name",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1, \"score\": 1,\n \"score\": 2}]",
            2,
            "duplicate field \"score\"",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1, \"score\": 1,\n \"video\": 3}]",
            2,
            "invalid type: integer `3`, expected a string or null for \"video\"",
        ),
        (
            "[\n  \"a.png\"\n]",
            2,
            "invalid type: string \"a.png\", expected a score record object",
        ),
        (
            "[\n  [\"a\", \"d\", 1, 0.5]\n]",
            2,
            "invalid type: sequence, expected a score record object",
        ),
        (
            "{\"path\": \"a\"}",
            1,
            "invalid type: map, expected an array of score records",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1, \"score\": 1}]\n]",
            2,
            "trailing characters",
        ),
        (
            "[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1, \"score\": 1},\n",
            2,
            "EOF while parsing a value",
        ),
        (
            "[{\"path\": \"a\", \"dataset\":\n NaN}]",
            2,
            "expected value",
        ),
    ];

    #[test]
    fn json_errors_name_the_line() {
        for &(text, line, message) in BAD_JSON {
            assert_eq!(failure(json(text)), fail(line, message), "input {text}");
        }
    }

    #[test]
    fn json_invalid_utf8_is_a_parse_error_with_the_line() {
        let bytes = b"[\n{\"path\": \"a\xFF\", \"dataset\": \"d\", \"label\": 1, \"score\": 1}]";
        let (line, message) = failure(parse_json(bytes, Path::new(P)));
        assert_eq!(line, 2);
        assert!(message.contains("invalid unicode"), "{message}");
    }

    #[test]
    fn json_empty_inputs() {
        assert!(is_empty(json("[]")));
        assert!(is_empty(json(" [ ] \n")));
        assert!(is_empty(json("")));
        assert!(is_empty(json("\u{feff}\n ")));
        assert_eq!(
            json("\u{feff}[{\"path\": \"a\", \"dataset\": \"d\", \"label\": 1, \"score\": 1}]")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn csv_writer_uses_shortest_round_trip_scores() {
        let records = [
            rec("a", "d", Label::Fake, 0.1, None),
            rec("b", "d", Label::Real, -3.5, None),
            rec("c", "d", Label::Real, 0.300_000_000_000_000_04, None),
            rec("d", "d", Label::Real, 1e-7, None),
        ];
        let mut out = Vec::new();
        write_csv(&mut out, &records).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "path,dataset,label,score\na,d,fake,0.1\nb,d,real,-3.5\n\
             c,d,real,0.30000000000000004\nd,d,real,0.0000001\n"
        );
        let back = csv(std::str::from_utf8(&out).unwrap()).unwrap();
        assert_eq!(back, records);
    }

    #[test]
    fn round_trip_through_files_is_bit_identical() {
        let dir = tempfile::tempdir().unwrap();
        let records = [
            rec("a.png", "FF++", Label::Fake, 0.1, Some("v1")),
            rec("b,\"c\".png", "Celeb-DF", Label::Real, 1e-300, None),
            rec("c.png", "DFDC", Label::Fake, -3.5, Some("v2")),
            rec("d.png", "DFDC", Label::Real, 0.300_000_000_000_000_04, None),
        ];
        for (name, format) in [("s.csv", ScoreFormat::Csv), ("s.json", ScoreFormat::Json)] {
            let file = dir.path().join(name);
            write_scores(&file, &records, format).unwrap();
            let back = read_scores(&file).unwrap();
            assert_eq!(back, records);
            for (a, b) in back.iter().zip(&records) {
                assert_eq!(a.score.to_bits(), b.score.to_bits());
            }
        }
    }

    #[test]
    fn io_errors_name_the_file() {
        let err = read_scores(Path::new("/nonexistent/dir/scores.csv")).unwrap_err();
        assert!(
            matches!(&err, ScoreFileError::Io { path, .. } if path == Path::new("/nonexistent/dir/scores.csv"))
        );
        assert!(
            err.to_string().ends_with(": /nonexistent/dir/scores.csv"),
            "{err}"
        );
    }
}
