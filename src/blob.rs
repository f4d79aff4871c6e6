//! The one place that parses and checks submissions, and the [`Blob`] type.
//!
//! A blob is kept as the exact JSON text it was posted with (same keys in the
//! same order, same number spelling, any Unicode), with `"_id"` put in front.
//! Values are never re-serialized: they are copied from the input as
//! [`RawValue`] slices, so `1.0` stays `1.0` and `9007199254740993` stays exact.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A blob's stored JSON text, `_id` included; cheap to clone and share.
#[derive(Clone, PartialEq, Eq)]
pub struct Doc(Arc<str>);

impl Doc {
    /// Wraps JSON text that is already known to be a stored blob.
    pub fn from_stored(text: impl Into<Arc<str>>) -> Doc {
        Doc(text.into())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Doc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One checked blob, ready to store.
#[derive(Clone, Debug)]
pub struct Blob {
    /// The id kpiggybank chose: time-ordered, unique across nodes.
    pub id: Arc<str>,
    /// The `timestamp` as an integer, for range queries.
    pub timestamp: i64,
    /// The JSON text to store and to hand back.
    pub doc: Doc,
}

/// What is wrong with a submission; each message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// A form post without its `data` field.
    #[error("missing `data`: post the blob as form field `data=<JSON>` or as a JSON body")]
    MissingData,
    /// A JSON body sent with a form content type (curl's `-d` default).
    #[error(
        "missing `data`: the body looks like JSON but was sent as {content_type}; send it with the header `Content-Type: application/json`, or as the form field `data=<JSON>`"
    )]
    JsonSentAsForm {
        /// The content type it was sent with.
        content_type: String,
    },
    /// The body is not UTF-8.
    #[error("the body is not UTF-8 text")]
    NotUtf8,
    /// The form field `data` is not UTF-8 once percent-decoded.
    #[error(
        "form field `data` is not UTF-8 text once percent-decoded (byte {at} is 0x{byte:02X}): encode the JSON as UTF-8, then percent-encode it"
    )]
    FormNotUtf8 {
        /// Where the first bad byte is in the decoded value, from 0.
        at: usize,
        /// That byte.
        byte: u8,
    },
    /// The JSON does not parse.
    #[error("JSON syntax error: {0}")]
    Syntax(String),
    /// A list with nothing in it.
    #[error("the list holds no blobs")]
    Empty,
    /// A problem with one blob; `index` is its place in a list.
    #[error("{}{problem}", index.map(|i| format!("blob {i} of the list (counting from 0): ")).unwrap_or_default())]
    Invalid {
        /// Position in the submitted list, `None` for a single blob.
        index: Option<usize>,
        /// What is wrong with it.
        problem: Problem,
    },
}

/// What is wrong with one blob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The blob is not a JSON object.
    #[error("a blob must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// No `timestamp` field.
    #[error("missing `timestamp` (a number: seconds or milliseconds since the epoch)")]
    MissingTimestamp,
    /// `timestamp` appears twice.
    #[error("`timestamp` appears more than once")]
    DuplicateTimestamp,
    /// `timestamp` is a string that is not all digits (an ISO date, say).
    #[error(
        "`timestamp` must be a number (seconds or milliseconds since the epoch), got the string {0:?}"
    )]
    TimestampString(String),
    /// `timestamp` is not a number at all.
    #[error("`timestamp` must be a number (seconds or milliseconds since the epoch), got {0}")]
    TimestampNotNumber(&'static str),
    /// `timestamp` is below zero.
    #[error("`timestamp` must not be negative, got {0}")]
    TimestampNegative(String),
    /// `timestamp` has a fraction.
    #[error("`timestamp` must be a whole number, got {0}")]
    TimestampNotInteger(String),
    /// `timestamp` does not fit in 63 bits.
    #[error("`timestamp` is too large, got {0}")]
    TimestampTooLarge(String),
    /// A top-level field starting with `_`, which the store reserves.
    #[error("field {0:?} is reserved: top-level names starting with `_` belong to the store")]
    ReservedField(String),
    /// A number longer than [`MAX_NUMBER_CHARS`].
    #[error(
        "{place}: the number {start}… ({len} characters) is too long: numbers may have at most {MAX_NUMBER_CHARS} characters"
    )]
    NumberTooLong {
        /// Where it is.
        place: Place,
        /// Its first characters.
        start: String,
        /// Its length in characters.
        len: usize,
    },
    /// A number beyond what a 64-bit float holds, which CouchDB and JavaScript need.
    #[error(
        "{place}: the number {number} is out of range: numbers must fit a 64-bit float (magnitude at most about 1.8e308), as CouchDB and JavaScript read them"
    )]
    NumberOutOfRange {
        /// Where it is.
        place: Place,
        /// The number as posted.
        number: String,
    },
    /// A `\uD800`-`\uDFFF` escape without the other half of its pair.
    #[error(
        "{place}: the escape {escape} is half of a UTF-16 surrogate pair without its other half: strings and names must be valid Unicode"
    )]
    LoneSurrogate {
        /// Where it is.
        place: Place,
        /// The escape as posted (`\ud800`).
        escape: String,
    },
    /// Objects and lists nested deeper than [`MAX_DEPTH`].
    #[error(
        "{place}: objects and lists are nested deeper than {MAX_DEPTH} levels (the blob itself is level 1)"
    )]
    TooDeep {
        /// Where it is.
        place: Place,
    },
}

/// Where in a blob a problem is: cheap to know, enough to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// Somewhere in the value of this top-level field (its nested names included).
    Field(String),
    /// In the name of a top-level field (an unpaired surrogate shown as its escape).
    FieldName(String),
    /// In the JSON string given as `data`, which should hold the blob's text.
    DataString,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Field(name) => write!(f, "field `{name}`"),
            Place::FieldName(name) => write!(f, "the field name `{name}`"),
            Place::DataString => f.write_str("the `data` string"),
        }
    }
}

/// Longest number accepted, in characters. An i64 or u64 has at most 20, the
/// longest shortest-round-trip f64 (`-2.2250738585072014e-308`) 24 and an
/// i128 40: 64 is well above any real value, yet refuses the thousands of
/// digits that CouchDB refuses (and that no client reads back exactly).
pub const MAX_NUMBER_CHARS: usize = 64;

/// Deepest nesting of objects and lists, the blob itself being level 1. Real
/// blobs are a few levels deep; CouchDB's view server crashes on very deep
/// documents, and 64 keeps a stored blob inside any envelope (`{"results":
/// [{"doc": …}]}`) under the 128 levels that serde_json and others allow.
pub const MAX_DEPTH: usize = 64;

/// Parses a submission from an HTTP body, form-encoded or JSON.
///
/// Form bodies (`data=<JSON>`, the original client's way) and JSON bodies
/// (a blob, a list, or `{"data": ...}`) are both accepted; without a telling
/// `Content-Type` the body's first character decides.
pub fn parse_http_body(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Blob>, BlobError> {
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    let looks_like_json = body
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{' || *b == b'[');
    let is_form = match mime.as_deref() {
        Some("application/x-www-form-urlencoded") => true,
        Some(m) if m == "application/json" || m.ends_with("+json") => false,
        _ => !looks_like_json,
    };
    if is_form {
        let data = form_field(body, b"data").ok_or_else(|| match &mime {
            // A form body never starts with `{` or `[`: a JSON body was sent
            // with the wrong header, and "missing `data`" would not say so.
            Some(m) if looks_like_json => BlobError::JsonSentAsForm {
                content_type: m.clone(),
            },
            _ => BlobError::MissingData,
        })?;
        // Refused, as the JSON path refuses the same bytes, rather than
        // stored altered with U+FFFD in their place.
        let text = std::str::from_utf8(&data).map_err(|e| BlobError::FormNotUtf8 {
            at: e.valid_up_to(),
            byte: data[e.valid_up_to()],
        })?;
        parse_submission(text)
    } else {
        let text = std::str::from_utf8(body).map_err(|_| BlobError::NotUtf8)?;
        parse_json_body(text)
    }
}

/// The first value of form field `name`, percent-decoded as
/// `application/x-www-form-urlencoded` says, but left as bytes:
/// `form_urlencoded::parse` would replace bytes that are not UTF-8 with U+FFFD.
fn form_field<'a>(body: &'a [u8], name: &[u8]) -> Option<Cow<'a, [u8]>> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &[][..]),
        };
        (*form_decode(key) == *name).then(|| form_decode(value))
    })
}

/// Decodes `+` and `%XX`; a `%` without two hex digits stays as it is, as
/// browsers and form_urlencoded leave it.
fn form_decode(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.iter().any(|&b| b == b'+' || b == b'%') {
        return Cow::Borrowed(input);
    }
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16)).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(high), Some(low)) = (hex(input.get(i + 1)), hex(input.get(i + 2))) {
                    out.push(high << 4 | low);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Parses a JSON body: a blob, a list of blobs, or `{"data": <blob, list or JSON string>}`.
pub fn parse_json_body(text: &str) -> Result<Vec<Blob>, BlobError> {
    if first_char(text) == Some('{') {
        let fields: Fields = serde_json::from_str(text).map_err(syntax)?;
        let has = |name: &str| fields.0.iter().any(|(k, _)| k.0 == name);
        if has("data") && !has("timestamp") {
            let data = fields.0.iter().find(|(k, _)| k.0 == "data").unwrap().1;
            return parse_data_value(data.get());
        }
        return Ok(vec![blob_from_fields(fields, None)?]);
    }
    parse_submission(text)
}

/// Parses a `data` value: a blob, a list, or a JSON string holding either
/// (as the original client's form field does).
pub fn parse_data_value(raw: &str) -> Result<Vec<Blob>, BlobError> {
    if first_char(raw) != Some('"') {
        return parse_submission(raw);
    }
    match serde_json::from_str::<String>(raw) {
        Ok(inner) => parse_submission(&inner),
        // A valid JSON string that is no `String` holds a lone surrogate.
        Err(e) => Err(match check_value(raw, 0) {
            Err(flaw) => BlobError::Invalid {
                index: None,
                problem: flaw.at(Place::DataString),
            },
            Ok(()) => syntax(e),
        }),
    }
}

/// Parses the JSON text of one blob or a list of blobs (the `data` field's value).
pub fn parse_submission(text: &str) -> Result<Vec<Blob>, BlobError> {
    match first_char(text) {
        Some('{') => {
            let fields: Fields = serde_json::from_str(text).map_err(syntax)?;
            Ok(vec![blob_from_fields(fields, None)?])
        }
        Some('[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(syntax)?;
            if items.is_empty() {
                return Err(BlobError::Empty);
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, raw)| parse_list_item(raw, i))
                .collect()
        }
        _ => {
            let raw: &RawValue = serde_json::from_str(text).map_err(syntax)?;
            Err(BlobError::Invalid {
                index: None,
                problem: Problem::NotAnObject(kind_of(raw.get())),
            })
        }
    }
}

fn parse_list_item(raw: &RawValue, index: usize) -> Result<Blob, BlobError> {
    if first_char(raw.get()) != Some('{') {
        return Err(BlobError::Invalid {
            index: Some(index),
            problem: Problem::NotAnObject(kind_of(raw.get())),
        });
    }
    let fields: Fields = serde_json::from_str(raw.get()).map_err(syntax)?;
    blob_from_fields(fields, Some(index))
}

fn blob_from_fields(fields: Fields<'_>, index: Option<usize>) -> Result<Blob, BlobError> {
    let invalid = |problem| BlobError::Invalid { index, problem };
    let mut timestamp: Option<(usize, i64, Option<String>)> = None;
    for (i, (key, value)) in fields.0.iter().enumerate() {
        if let Some(LoneSurrogate(unit)) = key.1 {
            return Err(invalid(Problem::LoneSurrogate {
                place: Place::FieldName(key.0.to_string()),
                escape: format!("\\u{unit:04x}"),
            }));
        }
        if key.0.starts_with('_') {
            return Err(invalid(Problem::ReservedField(key.0.to_string())));
        }
        // Before the timestamp's checks, which may re-parse its string.
        check_value(value.get(), 1)
            .map_err(|flaw| invalid(flaw.at(Place::Field(key.0.to_string()))))?;
        if key.0 == "timestamp" {
            if timestamp.is_some() {
                return Err(invalid(Problem::DuplicateTimestamp));
            }
            let (ts, respelled) = check_timestamp(value.get()).map_err(invalid)?;
            timestamp = Some((i, ts, respelled));
        }
    }
    let (ts_index, ts, respelled) = timestamp.ok_or_else(|| invalid(Problem::MissingTimestamp))?;

    let id = new_id();
    let mut out = String::with_capacity(
        fields
            .0
            .iter()
            .map(|(k, v)| k.0.len() + v.get().len() + 4)
            .sum::<usize>()
            + id.len()
            + 12,
    );
    out.push_str("{\"_id\":\"");
    out.push_str(&id);
    out.push('"');
    for (i, (key, value)) in fields.0.iter().enumerate() {
        out.push(',');
        match &key.0 {
            // A borrowed key had no escapes in the input, so it is valid JSON as is.
            Cow::Borrowed(k) => {
                out.push('"');
                out.push_str(k);
                out.push('"');
            }
            Cow::Owned(k) => out.push_str(&serde_json::to_string(k).expect("string serializes")),
        }
        out.push(':');
        match (&respelled, i == ts_index) {
            (Some(number), true) => out.push_str(number),
            _ => out.push_str(value.get()),
        }
    }
    out.push('}');
    Ok(Blob {
        id: id.into(),
        timestamp: ts,
        doc: Doc(out.into()),
    })
}

/// Checks a raw `timestamp`; returns its integer value, and new text when a
/// string of digits must be stored as a number.
fn check_timestamp(raw: &str) -> Result<(i64, Option<String>), Problem> {
    match first_char(raw) {
        Some('"') => {
            // `check_value` has refused lone surrogates, the one way a valid
            // JSON string fails to become a `String`.
            let s: String = serde_json::from_str(raw).expect("checked JSON string re-parses");
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                let ts: i64 = s
                    .parse()
                    .map_err(|_| Problem::TimestampTooLarge(raw.to_string()))?;
                Ok((ts, Some(ts.to_string())))
            } else {
                Err(Problem::TimestampString(s))
            }
        }
        Some('-') => Err(Problem::TimestampNegative(raw.to_string())),
        Some(c) if c.is_ascii_digit() => {
            if raw.bytes().all(|b| b.is_ascii_digit()) {
                let ts = raw
                    .parse::<i64>()
                    .map_err(|_| Problem::TimestampTooLarge(raw.to_string()))?;
                return Ok((ts, None));
            }
            let f: f64 = raw
                .parse()
                .map_err(|_| Problem::TimestampNotInteger(raw.to_string()))?;
            if f.fract() != 0.0 {
                Err(Problem::TimestampNotInteger(raw.to_string()))
            } else if f >= i64::MAX as f64 {
                Err(Problem::TimestampTooLarge(raw.to_string()))
            } else {
                Ok((f as i64, None))
            }
        }
        _ => Err(Problem::TimestampNotNumber(kind_of(raw))),
    }
}

/// What [`check_value`] found wrong, before it is told which field it was in.
#[derive(Debug, PartialEq, Eq)]
enum Flaw<'a> {
    NumberTooLong(&'a str),
    NumberOutOfRange(&'a str),
    LoneSurrogate(&'a str),
    TooDeep,
}

impl Flaw<'_> {
    fn at(self, place: Place) -> Problem {
        match self {
            Flaw::NumberTooLong(n) => Problem::NumberTooLong {
                place,
                // Numbers are ASCII, so any byte index is a char boundary.
                start: n[..20.min(n.len())].to_string(),
                len: n.len(),
            },
            Flaw::NumberOutOfRange(n) => Problem::NumberOutOfRange {
                place,
                number: n.to_string(),
            },
            Flaw::LoneSurrogate(e) => Problem::LoneSurrogate {
                place,
                escape: e.to_string(),
            },
            Flaw::TooDeep => Problem::TooDeep { place },
        }
    }
}

/// Checks the raw text of a value found at nesting level `level` (1 for a
/// top-level field's value, inside the blob) for what a store cannot keep:
/// numbers too long or out of range, unpaired surrogate escapes (in strings
/// and names alike), nesting beyond [`MAX_DEPTH`].
///
/// One pass over bytes that serde_json has already found to be valid JSON,
/// without allocating: this runs on every field of every blob. It never
/// panics on invalid JSON either (it then just finds less).
fn check_value(raw: &str, level: usize) -> Result<(), Flaw<'_>> {
    let b = raw.as_bytes();
    let mut depth = level;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = check_string(raw, i + 1)?,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Flaw::TooDeep);
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = b[i..]
                    .iter()
                    .position(|c| !matches!(c, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(b.len(), |n| i + n);
                check_number(&raw[i..end])?;
                i = end;
            }
            // Whitespace, `,`, `:` and the letters of true, false and null.
            _ => i += 1,
        }
    }
    Ok(())
}

/// Checks one number's text; its spelling is kept, so this only refuses.
fn check_number(n: &str) -> Result<(), Flaw<'_>> {
    if n.len() > MAX_NUMBER_CHARS {
        return Err(Flaw::NumberTooLong(n));
    }
    // Without an exponent, MAX_NUMBER_CHARS digits stay far below f64::MAX
    // (about 1.8e308): only a number with one needs parsing. An underflow
    // (1e-400) reads as 0, a loss of precision like 9007199254740993's, not
    // a value a store chokes on, so it is kept.
    if n.bytes().any(|c| c == b'e' || c == b'E') && !n.parse::<f64>().is_ok_and(f64::is_finite) {
        return Err(Flaw::NumberOutOfRange(n));
    }
    Ok(())
}

/// Checks a string's escapes from just after its opening quote; returns the
/// index just after its closing quote (or the end of `raw`).
fn check_string(raw: &str, start: usize) -> Result<usize, Flaw<'_>> {
    let b = raw.as_bytes();
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'"' => return Ok(i + 1),
            b'\\' if b.get(i + 1) == Some(&b'u') => {
                let unit = hex4(b, i + 2);
                match unit {
                    Some(0xD800..=0xDBFF) => {
                        // A high surrogate must be followed by a low one.
                        let low = (b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u'))
                            .then(|| hex4(b, i + 8))
                            .flatten();
                        if !matches!(low, Some(0xDC00..=0xDFFF)) {
                            return Err(Flaw::LoneSurrogate(&raw[i..i + 6]));
                        }
                        i += 12;
                    }
                    Some(0xDC00..=0xDFFF) => return Err(Flaw::LoneSurrogate(&raw[i..i + 6])),
                    _ => i += 6,
                }
            }
            // Any other escape is two bytes; skipping the second keeps `\"` inside.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    Ok(b.len())
}

/// The four hex digits at `at`, as a UTF-16 code unit.
fn hex4(b: &[u8], at: usize) -> Option<u16> {
    let digits = b.get(at..at + 4)?;
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

fn first_char(text: &str) -> Option<char> {
    text.trim_start().chars().next()
}

fn kind_of(raw: &str) -> &'static str {
    match first_char(raw) {
        Some('{') => "an object",
        Some('[') => "a list",
        Some('"') => "a string",
        Some('t') | Some('f') => "a boolean",
        Some('n') => "null",
        _ => "a number",
    }
}

fn syntax(e: serde_json::Error) -> BlobError {
    BlobError::Syntax(e.to_string())
}

/// A fresh time-ordered id: microseconds since the epoch (strictly increasing
/// within this process) then a per-process random node tag, in hex. Sorting
/// ids sorts by arrival, which keeps CouchDB's B-tree appends cheap.
pub fn new_id() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static NODE: OnceLock<u32> = OnceLock::new();
    let node = *NODE.get_or_init(rand::random::<u32>);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last + 1))
        })
        .expect("closure always returns Some");
    let micros = now.max(prev + 1);
    format!("{micros:014x}{node:08x}")
}

/// An object's fields in input order, values as raw JSON slices.
struct Fields<'a>(Vec<(Key<'a>, &'a RawValue)>);

/// An object key, borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>, Option<LoneSurrogate>);

/// The escape of an unpaired surrogate found in a key, as a code unit.
struct LoneSurrogate(u16);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Key<'a>, E> {
                match std::str::from_utf8(v) {
                    Ok(k) => Ok(Key(Cow::Borrowed(k), None)),
                    Err(_) => Ok(key_with_surrogate(v)),
                }
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Key<'a>, E> {
                match std::str::from_utf8(v) {
                    Ok(k) => Ok(Key(Cow::Owned(k.to_string()), None)),
                    Err(_) => Ok(key_with_surrogate(v)),
                }
            }
        }
        // As bytes, serde_json decodes escapes without refusing a lone
        // surrogate (it gives it as WTF-8), so that a key holding one gets the
        // same named problem as a value, not an obscure syntax error.
        d.deserialize_bytes(KeyVisitor(PhantomData))
    }
}

/// A key whose escapes spelled an unpaired surrogate, which serde_json gives
/// as its 3-byte WTF-8 form (`ED A0..BF 80..BF`): the only invalid UTF-8 that
/// can come out of text that was a `&str`. The name shows it as its escape.
fn key_with_surrogate<'a>(mut v: &[u8]) -> Key<'a> {
    let mut name = String::with_capacity(v.len() + 3);
    let mut first = None;
    loop {
        match std::str::from_utf8(v) {
            Ok(rest) => {
                name.push_str(rest);
                break;
            }
            Err(e) => {
                let (valid, rest) = v.split_at(e.valid_up_to());
                name.push_str(std::str::from_utf8(valid).unwrap_or_default());
                let unit = match rest {
                    [b0, b1, b2, ..] => {
                        (u16::from(b0 & 0x0F) << 12)
                            | (u16::from(b1 & 0x3F) << 6)
                            | u16::from(b2 & 0x3F)
                    }
                    _ => 0xFFFD,
                };
                name.push_str(&format!("\\u{unit:04x}"));
                first.get_or_insert(unit);
                v = rest.get(3..).unwrap_or_default();
            }
        }
    }
    Key(Cow::Owned(name), first.map(LoneSurrogate))
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for FieldsVisitor<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'a>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(entry) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(FieldsVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Blob {
        let mut v = parse_submission(text).unwrap();
        assert_eq!(v.len(), 1);
        v.pop().unwrap()
    }

    fn problem(text: &str) -> Problem {
        match parse_submission(text).unwrap_err() {
            BlobError::Invalid { problem, .. } => problem,
            other => panic!("expected a blob problem, got {other:?}"),
        }
    }

    #[test]
    fn keeps_keys_order_and_number_spelling() {
        let b = one(r#"{"z":1.0,"timestamp":5,"a":9007199254740993,"é":"ü\u00e9"}"#);
        let expected = format!(
            r#"{{"_id":"{}","z":1.0,"timestamp":5,"a":9007199254740993,"é":"ü\u00e9"}}"#,
            b.id
        );
        assert_eq!(b.doc.as_str(), expected);
        assert_eq!(b.timestamp, 5);
    }

    #[test]
    fn escaped_keys_stay_valid_json() {
        let b = one(r#"{"a\"b":1,"timestamp":1}"#);
        let v: serde_json::Value = serde_json::from_str(b.doc.as_str()).unwrap();
        assert_eq!(v["a\"b"], 1);
    }

    #[test]
    fn digit_strings_become_numbers() {
        let b = one(r#"{"timestamp":"1333046104322"}"#);
        assert_eq!(b.timestamp, 1333046104322);
        assert!(b.doc.as_str().ends_with(r#""timestamp":1333046104322}"#));
    }

    #[test]
    fn timestamp_problems_are_named() {
        assert_eq!(
            problem(r#"{"timestamp":"2012-03-29T18:35:04Z"}"#),
            Problem::TimestampString("2012-03-29T18:35:04Z".into())
        );
        assert_eq!(problem(r#"{"a":1}"#), Problem::MissingTimestamp);
        assert_eq!(
            problem(r#"{"timestamp":-5}"#),
            Problem::TimestampNegative("-5".into())
        );
        assert_eq!(
            problem(r#"{"timestamp":1.5}"#),
            Problem::TimestampNotInteger("1.5".into())
        );
        assert_eq!(
            problem(r#"{"timestamp":null}"#),
            Problem::TimestampNotNumber("null")
        );
        assert_eq!(
            problem(r#"{"timestamp":99999999999999999999}"#),
            Problem::TimestampTooLarge("99999999999999999999".into())
        );
        assert_eq!(
            problem(r#"{"timestamp":1,"_id":"x"}"#),
            Problem::ReservedField("_id".into())
        );
        assert_eq!(one(r#"{"timestamp":1e3}"#).timestamp, 1000);
    }

    #[test]
    fn a_list_is_all_or_nothing_and_names_the_bad_item() {
        let e = parse_submission(r#"[{"timestamp":1},{"timestamp":"x"}]"#).unwrap_err();
        assert!(e.to_string().starts_with("blob 1 of the list"), "{e}");
        assert_eq!(parse_submission("[]").unwrap_err(), BlobError::Empty);
        assert_eq!(
            parse_submission(r#"[{"timestamp":1},{"timestamp":2}]"#)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn syntax_errors_say_where() {
        let e = parse_submission("{\"timestamp\": 1,}").unwrap_err();
        assert!(e.to_string().contains("line 1 column"), "{e}");
    }

    #[test]
    fn http_bodies_in_every_form() {
        let form = b"data=%7B%22timestamp%22%3A7%7D";
        assert_eq!(
            parse_http_body(Some("application/x-www-form-urlencoded"), form).unwrap()[0].timestamp,
            7
        );
        assert_eq!(
            parse_http_body(None, b"foo=bar").unwrap_err(),
            BlobError::MissingData
        );
        let wrapped = br#"{"data":[{"timestamp":1},{"timestamp":2}]}"#;
        assert_eq!(
            parse_http_body(Some("application/json"), wrapped)
                .unwrap()
                .len(),
            2
        );
        let wrapped_string = br#"{"data":"{\"timestamp\":3}"}"#;
        assert_eq!(
            parse_http_body(None, wrapped_string).unwrap()[0].timestamp,
            3
        );
        assert_eq!(
            parse_http_body(None, br#"{"timestamp":4}"#).unwrap()[0].timestamp,
            4
        );
    }

    /// Submits one blob's text by every path there is: alone, in a list (as
    /// its second blob), as a form field, as a JSON body, wrapped in
    /// `{"data": …}` as a blob, a list and a string, and as WebSocket frames.
    fn every_path(blob: &str) -> Vec<(&'static str, Result<Vec<Blob>, BlobError>)> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", blob)
            .finish();
        let list = format!(r#"[{{"timestamp":1}},{blob}]"#);
        let as_string = serde_json::to_string(blob).unwrap();
        let ws = |frame: String| match crate::protocol::parse(&frame) {
            Ok(crate::protocol::ClientFrame::Push { blobs, .. }) => blobs,
            other => panic!("not a push: {other:?}"),
        };
        let json = Some("application/json");
        vec![
            ("single", parse_submission(blob)),
            ("list", parse_submission(&list)),
            (
                "form",
                parse_http_body(Some("application/x-www-form-urlencoded"), form.as_bytes()),
            ),
            ("json body", parse_http_body(json, blob.as_bytes())),
            ("json list", parse_http_body(json, list.as_bytes())),
            (
                "data blob",
                parse_http_body(json, format!(r#"{{"data":{blob}}}"#).as_bytes()),
            ),
            (
                "data list",
                parse_http_body(json, format!(r#"{{"data":{list}}}"#).as_bytes()),
            ),
            (
                "data string",
                parse_http_body(json, format!(r#"{{"data":{as_string}}}"#).as_bytes()),
            ),
            ("ws bare", ws(blob.to_string())),
            ("ws list", ws(list.clone())),
            (
                "ws push",
                ws(format!(r#"{{"type":"push","ref":1,"data":{blob}}}"#)),
            ),
            (
                "ws push string",
                ws(format!(r#"{{"type":"push","ref":1,"data":{as_string}}}"#)),
            ),
        ]
    }

    /// Asserts that every path refuses `blob`, naming the same problem (in a
    /// list, as its blob 1), and returns that problem.
    fn refused_everywhere(blob: &str) -> Problem {
        let mut seen = None;
        for (path, result) in every_path(blob) {
            let (index, problem) = match result {
                Err(BlobError::Invalid { index, problem }) => (index, problem),
                other => panic!("{path}: {blob:.80} gave {other:?}"),
            };
            let in_list = path.contains("list");
            assert_eq!(index, in_list.then_some(1), "{path}");
            let message = BlobError::Invalid {
                index,
                problem: problem.clone(),
            }
            .to_string();
            assert_eq!(
                message.starts_with("blob 1 of the list"),
                in_list,
                "{path}: {message}"
            );
            if let Some(first) = &seen {
                assert_eq!(first, &problem, "{path}");
            }
            seen = Some(problem);
        }
        seen.unwrap()
    }

    /// Asserts that every path accepts `blob` and stores its text unchanged.
    fn kept_everywhere(blob: &str) {
        for (path, result) in every_path(blob) {
            let blobs = result.unwrap_or_else(|e| panic!("{path}: {blob:.80} refused: {e}"));
            let b = blobs.last().unwrap();
            let expected = format!(r#"{{"_id":"{}",{}"#, b.id, &blob[1..]);
            assert_eq!(b.doc.as_str(), expected, "{path}");
        }
    }

    fn field(name: &str) -> Place {
        Place::Field(name.into())
    }

    #[test]
    fn numbers_a_store_cannot_keep_are_refused_with_their_field() {
        for number in ["1e999999", "-1e400", "1E309", "2e308", "-1.8e308", "1e+400"] {
            let p = refused_everywhere(&format!(r#"{{"timestamp":1,"x":{number}}}"#));
            assert_eq!(
                p,
                Problem::NumberOutOfRange {
                    place: field("x"),
                    number: number.into()
                }
            );
            let message = p.to_string();
            assert!(message.starts_with("field `x`: the number "), "{message}");
            assert!(message.contains("out of range"), "{message}");
        }
        let long = "9".repeat(5000);
        let p = refused_everywhere(&format!(r#"{{"timestamp":1,"big":{long}}}"#));
        assert_eq!(
            p,
            Problem::NumberTooLong {
                place: field("big"),
                start: "9".repeat(20),
                len: 5000
            }
        );
        assert!(
            p.to_string().contains("(5000 characters) is too long"),
            "{p}"
        );
        // Nested, and in the timestamp itself.
        assert_eq!(
            refused_everywhere(r#"{"timestamp":1,"o":{"a":[1,{"b":1e400}]}}"#),
            Problem::NumberOutOfRange {
                place: field("o"),
                number: "1e400".into()
            }
        );
        assert!(matches!(
            problem(r#"{"timestamp":1e400}"#),
            Problem::NumberOutOfRange { .. }
        ));
        let just_over = format!("0.{}", "1".repeat(MAX_NUMBER_CHARS - 1));
        assert!(matches!(
            problem(&format!(r#"{{"timestamp":1,"x":{just_over}}}"#)),
            Problem::NumberTooLong { len: 65, .. }
        ));
    }

    #[test]
    fn numbers_in_range_keep_their_spelling() {
        let at_limit = format!("0.{}", "1".repeat(MAX_NUMBER_CHARS - 2));
        kept_everywhere(&format!(
            r#"{{"timestamp":1,"a":9007199254740993,"b":1.0,"c":-0.5e-7,"d":1e308,"e":-1.7976931348623157e308,"f":-0,"g":1e-400,"h":{at_limit},"i":[1E2,3e-2]}}"#
        ));
        kept_everywhere(r#"{"timestamp":1,"u":18446744073709551615,"i":-9223372036854775808}"#);
    }

    #[test]
    fn unpaired_surrogates_are_refused_paired_ones_kept() {
        for (string, escape) in [
            (r#""\ud800""#, r"\ud800"),
            (r#""\udc00""#, r"\udc00"),
            (r#""a\uDBFFb""#, r"\uDBFF"),
            (r#""\ud800\u0041""#, r"\ud800"),
            (r#""\ud800\ud800\udc00""#, r"\ud800"),
            (r#""\ud800\n""#, r"\ud800"),
            (r#""\ude00\ud83d""#, r"\ude00"),
            (r#""\\\ud800""#, r"\ud800"),
        ] {
            let expected = Problem::LoneSurrogate {
                place: field("s"),
                escape: escape.into(),
            };
            let blob = format!(r#"{{"timestamp":1,"s":{string}}}"#);
            assert_eq!(refused_everywhere(&blob), expected, "{blob}");
            let nested = format!(r#"{{"timestamp":1,"s":[{{"k":{string}}}]}}"#);
            assert_eq!(refused_everywhere(&nested), expected, "{nested}");
            let nested_name = format!(r#"{{"timestamp":1,"s":{{{string}:1}}}}"#);
            assert_eq!(refused_everywhere(&nested_name), expected, "{nested_name}");
        }
        let p = refused_everywhere(r#"{"timestamp":1,"a\ud800b":1}"#);
        assert_eq!(
            p,
            Problem::LoneSurrogate {
                place: Place::FieldName(r"a\ud800b".into()),
                escape: r"\ud800".into()
            }
        );
        assert!(
            p.to_string().starts_with(
                "the field name `a\\ud800b`: the escape \\ud800 is half of a UTF-16 surrogate pair"
            ),
            "{p}"
        );
        // It was a panic: the timestamp's string is re-parsed.
        assert_eq!(
            refused_everywhere(r#"{"timestamp":"\udfff"}"#),
            Problem::LoneSurrogate {
                place: field("timestamp"),
                escape: r"\udfff".into()
            }
        );
        // A pair, an escaped backslash before `ud800`, and a raw emoji are text.
        kept_everywhere(
            r#"{"timestamp":1,"s":"\ud83d\ude00","t":"\\ud800","o":{"\uD83D\uDE00":"😀"}}"#,
        );
        // A top-level name with escapes is stored re-escaped, as before.
        assert!(
            one(r#"{"timestamp":1,"\ud83d\ude00":1}"#)
                .doc
                .as_str()
                .ends_with(r#","😀":1}"#)
        );
    }

    #[test]
    fn a_data_string_with_a_lone_surrogate_is_named_as_such() {
        let e = parse_data_value(r#""{\"timestamp\":1}\ud800""#).unwrap_err();
        assert_eq!(
            e,
            BlobError::Invalid {
                index: None,
                problem: Problem::LoneSurrogate {
                    place: Place::DataString,
                    escape: r"\ud800".into()
                }
            }
        );
        assert!(
            e.to_string()
                .starts_with("the `data` string: the escape \\ud800"),
            "{e}"
        );
    }

    /// A blob whose field `x` holds `levels - 1` nested lists, mixed with
    /// objects, so that the blob has `levels` levels.
    fn nested(levels: usize) -> String {
        let inner = levels - 1;
        let open: String = (0..inner)
            .map(|i| if i % 2 == 0 { "[" } else { r#"{"k":"# })
            .collect();
        let close: String = (0..inner)
            .rev()
            .map(|i| if i % 2 == 0 { "]" } else { "}" })
            .collect();
        format!(r#"{{"timestamp":1,"x":{open}1{close}}}"#)
    }

    #[test]
    fn nesting_is_limited_on_every_path() {
        kept_everywhere(&nested(MAX_DEPTH));
        let p = refused_everywhere(&nested(MAX_DEPTH + 1));
        assert_eq!(p, Problem::TooDeep { place: field("x") });
        assert!(
            p.to_string().contains("nested deeper than 64 levels"),
            "{p}"
        );
        // What issue 11 saw acknowledged: 100,000 levels.
        let deep = format!(
            r#"{{"timestamp":1,"x":{}{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            refused_everywhere(&deep),
            Problem::TooDeep { place: field("x") }
        );
        // Brackets inside strings are text, not nesting; siblings do not add up.
        let brackets = "[{".repeat(MAX_DEPTH);
        let wide = "[[1],".repeat(40) + "1" + &"]".repeat(40);
        kept_everywhere(&format!(
            r#"{{"timestamp":1,"s":"{brackets}","w":{wide},"v":{{"a":[[]],"b":{{}}}}}}"#
        ));
    }

    #[test]
    fn the_checker_counts_levels_and_survives_bad_input() {
        assert_eq!(check_value("[1]", MAX_DEPTH - 1), Ok(()));
        assert_eq!(check_value("[[1]]", MAX_DEPTH - 1), Err(Flaw::TooDeep));
        // Brackets and escaped quotes in strings are text.
        assert_eq!(check_value(r#"["\"[[[",[1]]"#, MAX_DEPTH - 2), Ok(()));
        assert_eq!(
            check_value(r#"["\"[[[",[[1]]]"#, MAX_DEPTH - 2),
            Err(Flaw::TooDeep)
        );
        // Truncated or odd text (never produced by serde_json) does not panic.
        for text in [
            r#""\ud8"#,
            r#""\"#,
            r#""\u"#,
            r#""\ud800\u"#,
            "-",
            "[",
            "}}}",
            r#""\u+123""#,
        ] {
            let _ = check_value(text, 1);
        }
    }

    #[test]
    fn form_data_must_be_utf8_once_decoded() {
        let form = Some("application/x-www-form-urlencoded");
        // Was stored with U+FFFD in place of the byte, and answered 201.
        for body in [
            &b"data=%7B%22timestamp%22%3A1%2C%22x%22%3A%22%F8%22%7D"[..],
            b"data={\"timestamp\":1,\"x\":\"\xF8\"}",
        ] {
            let e = parse_http_body(form, body).unwrap_err();
            assert_eq!(e, BlobError::FormNotUtf8 { at: 20, byte: 0xF8 });
            assert!(e.to_string().contains("not UTF-8"), "{e}");
        }
        // A truncated sequence (the first byte of é) is refused too.
        assert_eq!(
            parse_http_body(
                form,
                b"data=%7B%22timestamp%22%3A1%2C%22x%22%3A%22%C3%22%7D"
            )
            .unwrap_err(),
            BlobError::FormNotUtf8 { at: 20, byte: 0xC3 }
        );
        // Decoding as form_urlencoded does: `+`, `%XX` in any case, a stray `%`,
        // the first `data`, other fields ignored even when not UTF-8.
        let body =
            b"x=%FF&&dat%61=%7B%22timestamp%22%3a1%2C%22s%22%3A%22a+b%25%zz%C3%A9%22%7D&data=no";
        let b = parse_http_body(form, body).unwrap().pop().unwrap();
        assert!(
            b.doc.as_str().ends_with(r#""timestamp":1,"s":"a b%%zzé"}"#),
            "{:?}",
            b.doc
        );
        assert_eq!(
            parse_http_body(form, b"datax=1&=data&data").unwrap_err(),
            BlobError::Syntax("EOF while parsing a value at line 1 column 0".into())
        );
    }

    #[test]
    fn a_json_body_sent_as_a_form_is_told_which_header_to_send() {
        for content_type in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        ] {
            for body in [&br#"{"timestamp":1}"#[..], b"  [{\"timestamp\":1}]"] {
                let e = parse_http_body(Some(content_type), body).unwrap_err();
                assert_eq!(
                    e,
                    BlobError::JsonSentAsForm {
                        content_type: "application/x-www-form-urlencoded".into()
                    }
                );
                let message = e.to_string();
                assert!(message.contains("looks like JSON"), "{message}");
                assert!(
                    message.contains("`Content-Type: application/json`"),
                    "{message}"
                );
            }
        }
        // A form without `data` is still told what is missing.
        assert_eq!(
            parse_http_body(Some("application/x-www-form-urlencoded"), b"foo=bar").unwrap_err(),
            BlobError::MissingData
        );
        // Without a telling type, a JSON-looking body is read as JSON.
        for content_type in [None, Some("text/plain")] {
            assert_eq!(
                parse_http_body(content_type, br#"{"timestamp":9}"#).unwrap()[0].timestamp,
                9
            );
        }
    }

    #[test]
    fn ids_are_unique_and_increasing() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
