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
    /// The body is not UTF-8.
    #[error("the body is not UTF-8 text")]
    NotUtf8,
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
}

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
        let data = form_urlencoded::parse(body)
            .find(|(k, _)| k == "data")
            .map(|(_, v)| v)
            .ok_or(BlobError::MissingData)?;
        parse_submission(&data)
    } else {
        let text = std::str::from_utf8(body).map_err(|_| BlobError::NotUtf8)?;
        parse_json_body(text)
    }
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
    match serde_json::from_str::<String>(raw) {
        Ok(inner) => parse_submission(&inner),
        Err(_) => parse_submission(raw),
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
        if key.0.starts_with('_') {
            return Err(invalid(Problem::ReservedField(key.0.to_string())));
        }
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
            let s: String = serde_json::from_str(raw).expect("RawValue string re-parses");
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
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for KeyVisitor<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(KeyVisitor(PhantomData))
    }
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

    #[test]
    fn ids_are_unique_and_increasing() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
