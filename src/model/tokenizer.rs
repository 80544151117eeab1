//! CLIP's byte-level BPE tokenizer, offline, with the token ids of
//! `open_clip`'s `SimpleTokenizer` (the reference the tests compare with).
//!
//! The vocabulary is bundled: `assets/clip/merges.txt` holds the 48 894
//! merges `open_clip` reads from `bpe_simple_vocab_16e6.txt.gz` (MIT, bundled
//! beside it with its licence); the vocabulary is derived from the merges
//! exactly as `open_clip` does (256 byte symbols, the same with `</w>`, one
//! entry per merge, then `<start_of_text>` = 49406 and `<end_of_text>` =
//! 49407). The BPE itself runs on the `tokenizers` crate.
//!
//! Text cleaning follows `open_clip` (`ftfy.fix_text`, HTML unescaping twice,
//! whitespace collapsing, lower case). Of ftfy, the parts that change
//! ordinary text are reproduced: HTML entities, Latin ligatures, full- and
//! half-width forms, curly quotes, C1 controls read as Windows-1252,
//! control characters, NFC. ftfy's mojibake
//! repair (`fix_encoding`, text that was decoded with the wrong codec) is
//! not: such text tokenizes as it is. Named HTML entities are limited to a
//! common set (numeric ones are all decoded).

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, NormalizedString, Normalizer, SplitDelimiterBehavior, Tokenizer};

use super::ModelError;
use super::tokenizer_tables::{C1, CONTROL, REPLACE};

/// The bundled merges (first 48 894 lines of `open_clip`'s BPE file after its header).
const MERGES: &str = include_str!("../../assets/clip/merges.txt");
/// CLIP's context length.
pub const CONTEXT_LENGTH: usize = 77;
/// Id of `<start_of_text>`.
pub const SOT_ID: u32 = 49406;
/// Id of `<end_of_text>`.
pub const EOT_ID: u32 = 49407;
/// Size of the vocabulary.
pub const VOCAB_SIZE: usize = 49408;

/// `open_clip`'s pre-tokenization pattern.
const PATTERN: &str =
    r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// CLIP's tokenizer. Building it parses the bundled merges (tens of
/// milliseconds); keep one and reuse it.
pub struct ClipTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").finish_non_exhaustive()
    }
}

/// GPT-2's reversible byte → printable character table, in its insertion
/// order (printable bytes first), which is the order of CLIP's vocabulary.
fn bytes_to_unicode() -> Vec<char> {
    let mut printable: Vec<u32> = (u32::from(b'!')..=u32::from(b'~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    chars.iter().filter_map(|&c| char::from_u32(c)).collect()
}

impl ClipTokenizer {
    /// Builds the tokenizer from the bundled vocabulary.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the bundled data is inconsistent (a bug).
    pub fn new() -> Result<Self, ModelError> {
        let err = |e: &dyn std::fmt::Display| ModelError::Tokenizer(e.to_string());
        let merges: Vec<(String, String)> = MERGES
            .lines()
            .filter_map(|l| {
                let mut it = l.split(' ');
                Some((it.next()?.to_owned(), it.next()?.to_owned()))
            })
            .collect();
        let bytes: Vec<String> = bytes_to_unicode().iter().map(char::to_string).collect();
        let mut words: Vec<String> = bytes.clone();
        words.extend(bytes.iter().map(|b| format!("{b}</w>")));
        words.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        words.push("<start_of_text>".to_owned());
        words.push("<end_of_text>".to_owned());
        if words.len() != VOCAB_SIZE {
            return Err(ModelError::Tokenizer(format!(
                "bundled vocabulary has {} entries, expected {VOCAB_SIZE}",
                words.len()
            )));
        }
        let vocab: Vocab = words.into_iter().zip(0u32..).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .end_of_word_suffix("</w>".to_owned())
            .build()
            .map_err(|e| err(&e))?;
        let split = Split::new(
            SplitPattern::Regex(PATTERN.to_owned()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| err(&e))?;
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, false, false).into(),
        ])));
        inner.add_special_tokens(&[
            AddedToken::from("<start_of_text>", true),
            AddedToken::from("<end_of_text>", true),
        ]);
        Ok(Self { inner })
    }

    /// The BPE ids of `text` after cleaning, without start/end tokens.
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the tokenizer fails.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let cleaned = clean(text);
        if cleaned.is_empty() {
            return Ok(Vec::new());
        }
        let enc = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The ids `open_clip` feeds the text tower: `<start_of_text>`, the BPE
    /// ids, `<end_of_text>`; longer than [`CONTEXT_LENGTH`] → cut, with the
    /// last id replaced by `<end_of_text>`. Not padded (see [`pad`]).
    ///
    /// # Errors
    /// [`ModelError::Tokenizer`] if the tokenizer fails.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = Vec::with_capacity(CONTEXT_LENGTH);
        ids.push(SOT_ID);
        ids.extend(self.encode(text)?);
        ids.push(EOT_ID);
        if ids.len() > CONTEXT_LENGTH {
            ids.truncate(CONTEXT_LENGTH);
            ids[CONTEXT_LENGTH - 1] = EOT_ID;
        }
        Ok(ids)
    }
}

/// `ids` padded with zeros to `len` (`open_clip` pads with 0).
#[must_use]
pub fn pad(ids: &[u32], len: usize) -> Vec<u32> {
    let mut out = ids.to_vec();
    out.resize(len.max(ids.len()), 0);
    out
}

/// Python's `str.split()` whitespace: Rust's plus the four information separators.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `open_clip`'s cleaning: `ftfy.fix_text` (the subset described in the
/// module docs), `html.unescape` twice, whitespace collapsed, lower case.
#[must_use]
pub fn clean(text: &str) -> String {
    // ftfy: HTML entities first (unless the text looks like HTML), then
    // character fixes, then NFC.
    let text = if text.contains('<') {
        text.to_owned()
    } else {
        html_unescape(text)
    };
    let mut fixed = String::with_capacity(text.len());
    let c1 = text
        .chars()
        .map(|c| match C1.binary_search_by_key(&c, |(k, _)| *k) {
            Ok(i) => C1[i].1,
            Err(_) => c,
        });
    for c in c1 {
        if CONTROL.binary_search(&c).is_ok() {
            continue;
        }
        if let Ok(i) = REPLACE.binary_search_by_key(&c, |(k, _)| *k) {
            fixed.push_str(REPLACE[i].1);
        } else if c == '\u{2bc}' || ('\u{2018}'..='\u{201b}').contains(&c) {
            fixed.push('\'');
        } else if ('\u{201c}'..='\u{201f}').contains(&c) {
            fixed.push('"');
        } else {
            fixed.push(c);
        }
    }
    let mut normalized = NormalizedString::from(fixed.as_str());
    let text = match NFC.normalize(&mut normalized) {
        Ok(()) => normalized.get().to_owned(),
        Err(_) => fixed,
    };
    let text = html_unescape(&html_unescape(&text));
    let words: Vec<&str> = text.split(is_py_space).filter(|w| !w.is_empty()).collect();
    words.join(" ").to_lowercase()
}

/// Common named entities (Python's `html.unescape` knows all of HTML5's).
const ENTITIES: &[(&str, &str)] = &[
    ("amp", "&"),
    ("lt", "<"),
    ("gt", ">"),
    ("quot", "\""),
    ("apos", "'"),
    ("nbsp", "\u{a0}"),
    ("hellip", "\u{2026}"),
    ("mdash", "\u{2014}"),
    ("ndash", "\u{2013}"),
    ("lsquo", "\u{2018}"),
    ("rsquo", "\u{2019}"),
    ("ldquo", "\u{201c}"),
    ("rdquo", "\u{201d}"),
    ("copy", "\u{a9}"),
    ("reg", "\u{ae}"),
    ("trade", "\u{2122}"),
    ("deg", "\u{b0}"),
    ("times", "\u{d7}"),
    ("eacute", "\u{e9}"),
];

/// Decodes `&#NNN;`, `&#xHH;` and the named entities of [`ENTITIES`].
fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let end = after
            .char_indices()
            .take(33)
            .find(|(_, c)| *c == ';')
            .map(|(i, _)| i);
        let decoded = end.and_then(|end| {
            let name = &after[..end];
            let value = if let Some(num) = name.strip_prefix('#') {
                let code = if let Some(hex) = num.strip_prefix(['x', 'X']) {
                    u32::from_str_radix(hex, 16).ok()
                } else {
                    num.parse::<u32>().ok()
                }?;
                let c = char::from_u32(code)
                    .filter(|c| *c != '\0')
                    .unwrap_or('\u{fffd}');
                c.to_string()
            } else {
                ENTITIES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())?
            };
            Some((value, end))
        });
        if let Some((value, end)) = decoded {
            out.push_str(&value);
            rest = &after[end + 1..];
        } else {
            out.push('&');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids() {
        let t = ClipTokenizer::new().unwrap();
        // "a photo of a cat" in CLIP's vocabulary.
        assert_eq!(
            t.tokenize("a photo of a cat").unwrap(),
            vec![SOT_ID, 320, 1125, 539, 320, 2368, EOT_ID]
        );
        let long = "word ".repeat(200);
        let ids = t.tokenize(&long).unwrap();
        assert_eq!(ids.len(), CONTEXT_LENGTH);
        assert_eq!(ids[76], EOT_ID);
        assert_eq!(t.tokenize("").unwrap(), vec![SOT_ID, EOT_ID]);
        assert_eq!(pad(&[1, 2], 4), vec![1, 2, 0, 0]);
    }

    #[test]
    fn cleaning_follows_open_clip() {
        assert_eq!(clean("  A\tB\n\nC  "), "a b c");
        assert_eq!(clean("‘quoted’ “double”"), "'quoted' \"double\"");
        assert_eq!(clean("ﬁne ＦＵＬＬ １２３"), "fine full 123");
        assert_eq!(clean("&amp;lt; &#x41;&#66;"), "< ab");
        assert_eq!(clean("ctrl\u{7}bell\u{feff}"), "ctrlbell");
        assert_eq!(clean("ΣΊΣΥΦΟΣ"), "σίσυφος");
    }
}
