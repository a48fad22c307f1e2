//! InfluxDB line protocol, parsed in one pass over the request's bytes into
//! a [`PointBatch`].
//!
//! The grammar and its corner cases are those of the `influxdb-line-protocol`
//! crate (InfluxDB IOx's port of the Go parser), which this replaced on the
//! ingest path because its combinators and owned strings were the largest
//! share of a node's ingest CPU (docs/benchmarks.md). A property test and a
//! fuzz target compare the two on every input they generate.
//!
//! What makes it fast: names and tags are borrowed from the request unless
//! they hold escapes; a line's tag section is looked up, as written, in a
//! table of the request's tag sets, so the labels of the many lines that
//! repeat one host's tags are built, sorted and validated once; metric names
//! are interned the same way. Nothing is allocated per line after the first
//! of its kind. Where every line's tags are new, hashing and keeping each
//! section costs more than it saves, so a window of 1,024 lines that hits
//! the table less than one time in eight leaves it for a while
//! ([`TagTable`]). Each name is scanned once,
//! one table lookup per byte.
//!
//! Naming, value conversion and limits are described in [`crate::parse`].

use std::borrow::Cow;
use std::sync::Arc;

use chronicle_storage::model::{validate_labels, validate_metric, Label, Limits, PointProblem};
use chronicle_storage::PointBatch;
use foldhash::HashMap;

use crate::parse::Precision;
use crate::{IngestError, RequestBudget};

/// Largest integer magnitude an f64 holds exactly.
const MAX_EXACT: u64 = 1 << 53;

/// A field's value as the line states it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum FieldValue {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str,
}

/// A tag set of the request: its labels (sorted, validated once) and their
/// bytes, or why they are not a valid label set.
type TagEntry = Result<(Arc<[Label]>, usize), PointProblem>;

/// Parses line protocol into points, all or nothing: the first bad line is an error
/// naming its number (1-based) and the reason.
pub fn parse_line_protocol(
    text: &str,
    precision: Precision,
    now_ns: i64,
    limits: &Limits,
) -> Result<PointBatch, IngestError> {
    let mut points = PointBatch::new();
    let mut budget = RequestBudget::new(limits);
    let mut tag_sets: HashMap<&str, TagEntry> = HashMap::default();
    let mut metrics: HashMap<(&str, &str), Result<Arc<str>, PointProblem>> = HashMap::default();
    let no_tags: TagEntry = Ok((Arc::from(Vec::new()), 0));
    let mut fields: Vec<(&str, Cow<'_, str>, FieldValue)> = Vec::new();
    let mut tags: Vec<(Cow<'_, str>, Cow<'_, str>)> = Vec::new();
    let mut tag_table = TagTable::default();
    let mut cursor = Cursor { text, pos: 0 };
    let mut line_no = 0usize;
    while cursor.pos < text.len() {
        line_no += 1;
        let bad = |reason: String| IngestError::Line {
            line: line_no,
            reason,
        };
        let line_start = cursor.pos;
        cursor.skip_leading_whitespace();
        match cursor.peek() {
            None => break,
            Some(b'\n') => {
                cursor.pos += 1;
                continue;
            }
            Some(b'#') => {
                cursor.pos = line_start;
                cursor.skip_raw_line();
                continue;
            }
            Some(_) => {}
        }
        fields.clear();
        tags.clear();
        let line = cursor
            .line(&mut tags, &mut fields)
            .map_err(|e| bad(e.into()))?;
        let timestamp = match line.timestamp {
            Some(t) => t
                .checked_mul(precision.factor())
                .ok_or_else(|| bad(format!("timestamp {t} overflows at this precision")))?,
            None => now_ns,
        };
        let unshared;
        let tags = match line.raw_tags {
            None => &no_tags,
            Some(raw) if tag_table.next_line() => {
                let entry = match tag_sets.entry(raw) {
                    std::collections::hash_map::Entry::Occupied(e) => {
                        tag_table.hits += 1;
                        e.into_mut()
                    }
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(tag_entry(&mut tags, limits))
                    }
                };
                &*entry
            }
            Some(_) => {
                unshared = tag_entry(&mut tags, limits);
                &unshared
            }
        };
        // Every field is a series with the line's tags: counted per field
        // before anything is built (the batch shares one copy between them,
        // storage keeps one per series).
        let tag_bytes = line.measurement.len() + tags.as_ref().map_or(0, |(_, n)| *n);
        budget.charge(fields.len(), tag_bytes.saturating_mul(fields.len()))?;
        for (raw_field, field, value) in &fields {
            let value = numeric(field, *value).map_err(bad)?;
            let metric = metrics
                .entry((line.raw_measurement, *raw_field))
                .or_insert_with(|| {
                    let metric = if field.as_ref() == "value" {
                        line.measurement.to_string()
                    } else {
                        format!("{}_{field}", line.measurement)
                    };
                    validate_metric(&metric, limits).map(|()| Arc::from(metric))
                })
                .as_ref()
                .map_err(|p| bad(format!("{}: {p}", p.field())))?;
            let (labels, _) = tags
                .as_ref()
                .map_err(|p| bad(format!("{}: {p}", p.field())))?;
            let series = points.add_series(metric.clone(), labels.clone());
            points.push(series, timestamp, value);
        }
    }
    Ok(points)
}

/// Whether looking tag sections up in the request's table still pays: where
/// (almost) every line's tags are new, hashing and keeping each section
/// costs more than building its labels again. Judged per window of lines: a
/// window that hits the table less than one time in eight turns it off, and
/// after eight windows off one window tries it again, keeping what it adds:
/// a request whose tags start repeating later gets the table back within
/// two tries (a relay whose rounds of hosts outlast a window included).
struct TagTable {
    on: bool,
    lines: u32,
    hits: u32,
    windows_off: u32,
}

impl Default for TagTable {
    fn default() -> Self {
        Self {
            on: true,
            lines: 0,
            hits: 0,
            windows_off: 0,
        }
    }
}

impl TagTable {
    const WINDOW: u32 = 1_024;
    const MIN_HITS: u32 = Self::WINDOW / 8;
    const RETRY_AFTER: u32 = 8;

    /// Counts a line with tags; whether it uses the table.
    fn next_line(&mut self) -> bool {
        if self.lines == Self::WINDOW {
            if self.on {
                self.on = self.hits >= Self::MIN_HITS;
                self.windows_off = 0;
            } else {
                self.windows_off += 1;
                self.on = self.windows_off == Self::RETRY_AFTER;
            }
            (self.lines, self.hits) = (0, 0);
        }
        self.lines += 1;
        self.on
    }
}

/// The labels of a line's tags (as the line parsed them), sorted and checked.
fn tag_entry(tags: &mut Vec<(Cow<'_, str>, Cow<'_, str>)>, limits: &Limits) -> TagEntry {
    let mut bytes = 0;
    let mut labels: Vec<Label> = tags
        .drain(..)
        .map(|(key, value)| {
            bytes += key.len() + value.len();
            Label::new(key, value)
        })
        .collect();
    labels.sort();
    validate_labels(&labels, limits)?;
    Ok((labels.into(), bytes))
}

/// A field's value as stored: floats as they are, integers when exact in an
/// f64, booleans as 1 and 0; strings are refused.
fn numeric(field: &str, value: FieldValue) -> Result<f64, String> {
    let inexact = |v: &dyn std::fmt::Display| {
        format!("field {field}: integer {v} is beyond 2^53 and would lose precision")
    };
    match value {
        FieldValue::Float(v) => Ok(v),
        FieldValue::Int(v) if v.unsigned_abs() <= MAX_EXACT => Ok(v as f64),
        FieldValue::UInt(v) if v <= MAX_EXACT => Ok(v as f64),
        FieldValue::Int(v) => Err(inexact(&v)),
        FieldValue::UInt(v) => Err(inexact(&v)),
        FieldValue::Bool(b) => Ok(f64::from(u8::from(b))),
        FieldValue::Str => Err(format!(
            "field {field}: string fields cannot be stored in a numeric series"
        )),
    }
}

/// One parsed line; names borrowed from the request unless escaped.
struct Line<'a> {
    raw_measurement: &'a str,
    measurement: Cow<'a, str>,
    /// The tag section as written, from its leading comma.
    raw_tags: Option<&'a str>,
    timestamp: Option<i64>,
}

/// Which name an escaped run is, for where it ends and what it unescapes.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    /// Ends at whitespace, a comma or NUL; `\,` `\ ` `\\` are escapes.
    Measurement,
    /// Tag keys and field keys: end at whitespace or `=`; `\,` `\=` `\ ` `\\`.
    Key,
    /// Ends at whitespace or a comma; escapes as keys.
    TagValue,
}

/// Per byte, the parts it ends (a bit each) and whether it is a backslash:
/// one lookup per byte in the scan every name takes.
const ENDS_MEASUREMENT: u8 = 1;
const ENDS_KEY: u8 = 2;
const ENDS_TAG_VALUE: u8 = 4;
const BACKSLASH: u8 = 8;
static BYTE_CLASS: [u8; 256] = {
    let mut class = [0u8; 256];
    let all = ENDS_MEASUREMENT | ENDS_KEY | ENDS_TAG_VALUE;
    class[b' ' as usize] = all;
    class[b'\t' as usize] = all;
    class[b'\n' as usize] = all;
    class[b',' as usize] = ENDS_MEASUREMENT | ENDS_TAG_VALUE;
    class[0] = ENDS_MEASUREMENT;
    class[b'=' as usize] = ENDS_KEY;
    class[b'\\' as usize] = BACKSLASH;
    class
};

impl Part {
    /// Whitespace ends every part; a measurement also ends at a comma or NUL,
    /// a key at `=`, a tag value at a comma.
    fn ends(self) -> u8 {
        match self {
            Part::Measurement => ENDS_MEASUREMENT,
            Part::Key => ENDS_KEY,
            Part::TagValue => ENDS_TAG_VALUE,
        }
    }

    fn escapes(self, b: u8) -> bool {
        match self {
            Part::Measurement => matches!(b, b',' | b' ' | b'\\'),
            Part::Key | Part::TagValue => matches!(b, b',' | b'=' | b' ' | b'\\'),
        }
    }
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// Whitespace before a line (not its newline: that ends an empty line).
    fn skip_leading_whitespace(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            if b.is_ascii() {
                if b == b'\n' || !(b as char).is_whitespace() {
                    return;
                }
                self.pos += 1;
            } else {
                match self.text[self.pos..].chars().next() {
                    Some(c) if c.is_whitespace() => self.pos += c.len_utf8(),
                    _ => return,
                }
            }
        }
    }

    /// Past the newline that ends the line starting at `pos`, by the rules
    /// InfluxDB splits lines with (its `scanLine`): an escaped newline, or
    /// one inside what looks like a quoted field value, does not end it. A
    /// comment is skipped so, to stay line for line with InfluxDB.
    fn skip_raw_line(&mut self) {
        let bytes = self.text.as_bytes();
        let (mut fields, mut quoted) = (false, false);
        let (mut equals, mut commas) = (0usize, 0usize);
        while let Some(&b) = bytes.get(self.pos) {
            self.pos += 1;
            match b {
                b'\\' => self.pos += self.char_len(),
                b' ' => fields = true,
                b'=' if fields && !quoted => equals += 1,
                b',' if fields && !quoted => commas += 1,
                b'"' if fields && equals > commas => quoted = !quoted,
                b'\n' if !quoted => return,
                _ => {}
            }
        }
    }

    /// The length in bytes of the character at `pos`.
    fn char_len(&self) -> usize {
        self.text[self.pos..]
            .chars()
            .next()
            .map_or(0, char::len_utf8)
    }

    /// A name up to where `part` ends, unescaped; `None` when empty. A
    /// backslash before a character it does not escape stays, with that
    /// character (whatever it is); a name ending in a backslash is an error.
    fn escaped(&mut self, part: Part) -> Result<Option<Cow<'a, str>>, &'static str> {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        let mut owned: Option<String> = None;
        let mut run = start;
        let stop = part.ends() | BACKSLASH;
        while let Some(&b) = bytes.get(self.pos) {
            let class = BYTE_CLASS[b as usize];
            if class & stop == 0 {
                self.pos += 1;
            } else if class == BACKSLASH {
                let out = owned.get_or_insert_with(String::new);
                out.push_str(&self.text[run..self.pos]);
                self.pos += 1;
                match bytes.get(self.pos) {
                    Some(&e) if part.escapes(e) => {
                        out.push(e as char);
                        self.pos += 1;
                    }
                    Some(_) => {
                        let n = self.char_len();
                        out.push('\\');
                        out.push_str(&self.text[self.pos..self.pos + n]);
                        self.pos += n;
                    }
                    None => out.push('\\'),
                }
                run = self.pos;
            } else {
                break;
            }
        }
        if self.pos == start {
            return Ok(None);
        }
        let name = match owned {
            None => Cow::Borrowed(&self.text[start..self.pos]),
            Some(mut out) => {
                out.push_str(&self.text[run..self.pos]);
                Cow::Owned(out)
            }
        };
        if name.ends_with('\\') {
            return Err("a name ends with a backslash");
        }
        Ok(Some(name))
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), &'static str> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(what)
        }
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }

    /// Parses a line from `pos` (past its leading whitespace) through its
    /// newline; its tags go to `tags`, its fields to `fields` as (raw key,
    /// key, value).
    fn line(
        &mut self,
        tags: &mut Vec<(Cow<'a, str>, Cow<'a, str>)>,
        fields: &mut Vec<(&'a str, Cow<'a, str>, FieldValue)>,
    ) -> Result<Line<'a>, &'static str> {
        let start = self.pos;
        let measurement = self
            .escaped(Part::Measurement)?
            .ok_or("the measurement is missing or invalid")?;
        let raw_measurement = &self.text[start..self.pos];
        let raw_tags = if self.peek() == Some(b',') {
            let tags_start = self.pos;
            loop {
                self.pos += 1;
                let key = self.escaped(Part::Key)?.ok_or("a tag key is missing")?;
                self.expect(b'=', "a tag has no '='")?;
                let value = self
                    .escaped(Part::TagValue)?
                    .ok_or("a tag value is missing")?;
                tags.push((key, value));
                if self.peek() != Some(b',') {
                    break;
                }
            }
            Some(&self.text[tags_start..self.pos])
        } else {
            None
        };
        if self.peek() != Some(b' ') {
            return Err("expected a space and fields after the measurement and tags");
        }
        self.skip_spaces();
        loop {
            let key_start = self.pos;
            let key = self.escaped(Part::Key)?.ok_or("a field key is missing")?;
            let raw_key = &self.text[key_start..self.pos];
            self.expect(b'=', "a field has no '='")?;
            let value = self.field_value()?;
            fields.push((raw_key, key, value));
            if self.peek() != Some(b',') {
                break;
            }
            self.pos += 1;
        }
        let mut timestamp = None;
        if self.peek() == Some(b' ') {
            self.skip_spaces();
            let token = self.token();
            if token.is_empty() {
                return Err("a space after the fields but no timestamp");
            }
            if !is_integer(token.as_bytes()) {
                return Err("the timestamp is not an integer");
            }
            timestamp = Some(token.parse().map_err(|_| "the timestamp is out of range")?);
            self.skip_spaces();
        }
        match self.peek() {
            None => {}
            Some(b'\n') => self.pos += 1,
            Some(_) => return Err("unexpected content after the fields and timestamp"),
        }
        Ok(Line {
            raw_measurement,
            measurement,
            raw_tags,
            timestamp,
        })
    }

    /// Up to the next comma, space or newline.
    fn token(&mut self) -> &'a str {
        let bytes = self.text.as_bytes();
        let start = self.pos;
        while let Some(&b) = bytes.get(self.pos) {
            if matches!(b, b',' | b' ' | b'\n') {
                break;
            }
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn field_value(&mut self) -> Result<FieldValue, &'static str> {
        if self.peek() == Some(b'"') {
            self.skip_string()?;
            return match self.peek() {
                None | Some(b',' | b' ' | b'\n') => Ok(FieldValue::Str),
                Some(_) => Err("unexpected content after a string field"),
            };
        }
        let token = self.token();
        let bytes = token.as_bytes();
        let (body, suffix) = match bytes.split_last() {
            Some((&s, body)) if s == b'i' || s == b'u' => (body, Some(s)),
            _ => (bytes, None),
        };
        match suffix {
            Some(b'i') if is_integer(body) => token[..body.len()]
                .parse()
                .map(FieldValue::Int)
                .map_err(|_| "an integer field is out of range"),
            Some(b'u') if !body.is_empty() && body.iter().all(u8::is_ascii_digit) => token
                [..body.len()]
                .parse()
                .map(FieldValue::UInt)
                .map_err(|_| "an unsigned field is out of range"),
            _ if is_float(bytes) => token
                .parse()
                .map(FieldValue::Float)
                .map_err(|_| "a float field is invalid"),
            _ => match token {
                "t" | "T" | "true" | "True" | "TRUE" => Ok(FieldValue::Bool(true)),
                "f" | "F" | "false" | "False" | "FALSE" => Ok(FieldValue::Bool(false)),
                "" => Err("a field value is missing"),
                _ => Err("a field value is not a number, boolean or string"),
            },
        }
    }

    /// Past a double-quoted string (`\"` and `\\` escaped; newlines allowed).
    fn skip_string(&mut self) -> Result<(), &'static str> {
        let bytes = self.text.as_bytes();
        self.pos += 1;
        while let Some(&b) = bytes.get(self.pos) {
            match b {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' if matches!(bytes.get(self.pos + 1), Some(b'"' | b'\\')) => self.pos += 2,
                _ => self.pos += 1,
            }
        }
        Err("a string field has no closing quote")
    }
}

/// `-?[0-9]+`
fn is_integer(b: &[u8]) -> bool {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
}

/// `-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?`
fn is_float(b: &[u8]) -> bool {
    fn digits(b: &[u8]) -> usize {
        b.iter().take_while(|c| c.is_ascii_digit()).count()
    }
    let mut rest = b.strip_prefix(b"-").unwrap_or(b);
    let n = digits(rest);
    if n == 0 {
        return false;
    }
    rest = &rest[n..];
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = digits(frac);
        if n == 0 {
            return false;
        }
        rest = &frac[n..];
    }
    if let Some(exp) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let exp = exp
            .strip_prefix(b"+")
            .or_else(|| exp.strip_prefix(b"-"))
            .unwrap_or(exp);
        let n = digits(exp);
        return n > 0 && n == exp.len();
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::parse_line_protocol_reference;
    use chronicle_storage::model::Point;
    use proptest::prelude::*;

    type Parsed = Result<Vec<(String, Vec<Label>, i64, u64)>, String>;

    fn points(batch: Result<PointBatch, IngestError>) -> Parsed {
        batch
            .map(|b| {
                b.to_points()
                    .into_iter()
                    .map(
                        |Point {
                             metric,
                             labels,
                             value,
                             timestamp,
                         }| {
                            (metric, labels, timestamp, value.to_bits())
                        },
                    )
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    /// The new parser and the crate-based reference agree: the same points,
    /// or both refuse.
    fn agree(text: &str) -> Result<(), TestCaseError> {
        let limits = Limits::default();
        let new = points(parse_line_protocol(
            text,
            Precision::Nanoseconds,
            42,
            &limits,
        ));
        let old = points(parse_line_protocol_reference(
            text,
            Precision::Nanoseconds,
            42,
            &limits,
        ));
        match (&new, &old) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{:?}", text),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{text:?}: new {new:?}, reference {old:?}"),
        }
        Ok(())
    }

    fn pick(options: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop::sample::select(options).prop_map(str::to_string)
    }

    /// Lines built from the grammar's pieces, escapes and near misses.
    fn line() -> impl Strategy<Value = String> {
        let measurement = pick(&[
            "cpu", "mem", "a\\,b", "a\\ b", "x\\\\", "m\\x", "", "1bad", "é", "m\\", "m\\=",
            "disk_io", "#c", "m\0", "m\\\tz",
        ]);
        let tag = (
            pick(&["host", "dc", "a\\=b", "", "k\\,", "é", "a,b", "k\\ k", "z"]),
            pick(&["a", "b=c", "x\\,y", "", "v\\ w", "\"q\"", "é", "x\\"]),
        )
            .prop_map(|(k, v)| format!(",{k}={v}"));
        let field = (
            pick(&["value", "v", "usage_user", "a\\=b", "", "a,b", "f\\ g"]),
            pick(&[
                "1",
                "-1",
                "1.5",
                "1e3",
                "1.5E-3",
                "-0",
                "1i",
                "-5i",
                "9223372036854775808i",
                "3u",
                "-3u",
                "t",
                "TRUE",
                "True",
                "tru",
                "false",
                "F",
                "\"s\"",
                "\"a\\\"b\"",
                "",
                ".5",
                "1.",
                "nan",
                "inf",
                "9007199254740993i",
                "1e400",
                "+1",
                "0x10",
                "1e",
                "1e+5",
                "18446744073709551616u",
                "007",
            ]),
        )
            .prop_map(|(k, v)| format!("{k}={v}"));
        let timestamp = pick(&[
            "",
            " 123",
            " -5",
            " 123 ",
            "  7",
            " 12a",
            " 99999999999999999999",
            " ",
            "\t9",
            " 1 2",
            " -",
            " 1,",
        ]);
        let gap = pick(&[" ", "  ", "\t", ""]);
        (
            measurement,
            prop::collection::vec(tag, 0..4),
            gap,
            prop::collection::vec(field, 1..4),
            timestamp,
        )
            .prop_map(|(m, tags, gap, fields, ts)| {
                format!("{m}{}{gap}{}{ts}", tags.concat(), fields.join(","))
            })
    }

    fn text() -> impl Strategy<Value = String> {
        let joiner = pick(&["\n", "\n\n", "\r\n", "\n# a comment\n", "\n   ", "\n\t"]);
        prop::collection::vec((line(), joiner), 1..5)
            .prop_map(|lines| lines.into_iter().map(|(l, j)| format!("{l}{j}")).collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn agrees_with_the_reference_on_grammar_pieces(text in text()) {
            agree(&text)?;
        }

        #[test]
        fn agrees_with_the_reference_on_special_characters(
            text in "[a-c0-2=, \\\\\"\\n\\t#.ie-]{0,60}"
        ) {
            agree(&text)?;
        }

        #[test]
        fn agrees_with_the_reference_on_any_text(text in "\\PC{0,100}") {
            agree(&text)?;
        }
    }

    #[test]
    fn lines_repeating_tags_share_one_label_set_and_one_metric_name() {
        let text =
            "cpu,host=a,dc=x value=1 1\nmem,host=a,dc=x value=2 1\ncpu,host=a,dc=x value=3 2\n";
        let batch =
            parse_line_protocol(text, Precision::Nanoseconds, 0, &Limits::default()).unwrap();
        let series: Vec<(&str, &[Label])> = batch.series_iter().map(|(_, m, l)| (m, l)).collect();
        assert_eq!(series.len(), 3);
        assert!(
            std::ptr::eq(series[0].1, series[1].1),
            "one copy of the tags"
        );
        assert!(
            std::ptr::eq(series[0].0, series[2].0),
            "one copy of the name"
        );
        assert_eq!(series[0].1[0], Label::new("dc", "x"), "sorted");
    }

    #[test]
    fn a_request_of_new_tag_sets_leaves_the_table_and_parses_the_same() {
        // 1,500 lines whose tags are all new (the table is left after its
        // sample), then lines that repeat, escape and break tags.
        let mut text = String::new();
        for i in 0..1_500 {
            text.push_str(&format!("cpu,host=h{i},dc=x usage={i} {i}\n"));
        }
        for i in 0..600 {
            text.push_str(&format!(
                "cpu,host=h{},zone=a\\,b\\ c,dc=x usage={i},idle=2i {i}\n",
                i % 7
            ));
        }
        agree(&text).unwrap();
        let batch =
            parse_line_protocol(&text, Precision::Nanoseconds, 0, &Limits::default()).unwrap();
        assert_eq!(batch.len(), 1_500 + 1_200);
        // Past the sample each line builds its own labels: two fields of a
        // line share them, two lines with the same tags do not.
        let labels: Vec<&[Label]> = batch.series_iter().map(|(_, _, l)| l).collect();
        let (a, b, c) = (labels[1_500], labels[1_501], labels[1_500 + 14]);
        assert!(std::ptr::eq(a, b) && !std::ptr::eq(a, c) && a == c);
        let mut bad = text.clone();
        bad.push_str("cpu,host=a,host=b usage=1 1\n");
        let e = parse_line_protocol(&bad, Precision::Nanoseconds, 0, &Limits::default());
        assert!(
            matches!(e, Err(IngestError::Line { line: 2101, .. })),
            "{e:?}"
        );
    }

    #[test]
    fn a_request_whose_tags_start_repeating_gets_the_table_back() {
        // A window of new tag sets turns the table off; then 30,000 lines of
        // 900 hosts, round after round. The first window that tries the
        // table again holds just over one round (124 hits: it stays off, but
        // keeps the 900 tag sets), the second hits almost every line and keeps
        // it, and from then on equal tags share one label set.
        let mut text = String::new();
        for i in 0..1_024 {
            text.push_str(&format!("cpu,seq=s{i} usage=1 {i}\n"));
        }
        for i in 0..30_000 {
            text.push_str(&format!("cpu,host=h{} usage={i} {i}\n", i % 900));
        }
        agree(&text).unwrap();
        let batch =
            parse_line_protocol(&text, Precision::Nanoseconds, 0, &Limits::default()).unwrap();
        let labels: Vec<&[Label]> = batch.series_iter().map(|(_, _, l)| l).collect();
        let off = 1_024 + 1_000;
        assert!(
            !std::ptr::eq(labels[off], labels[off + 900]),
            "off at first"
        );
        assert!(std::ptr::eq(labels[25_000], labels[25_900]), "on again");
        assert_eq!(labels[25_000], labels[1_024 + 576]);
    }

    #[test]
    fn an_invalid_tag_set_is_refused_on_every_line_that_uses_it() {
        let limits = Limits::default();
        for text in ["m,1a=x v=1 1", "m,a=x v=1 1\nm,1a=x v=2 1\nm,1a=x v=3 1"] {
            let err = parse_line_protocol(text, Precision::Nanoseconds, 0, &limits).unwrap_err();
            assert!(err.to_string().contains("label"), "{err}");
        }
    }
}
