//! The wire format: the change frame shared by the WebSocket and the
//! `/stream` route, the WebSocket's JSON text frames in both directions, and
//! the one reader of `since`, `last` and `epoch`, wherever they come from.
//!
//! Client to server:
//! - `{"type":"push","ref":R,"data":<blob or list>}`, or a bare blob or list
//!   (a frame without `type`), so a line typed into websocat is a push;
//! - `{"type":"subscribe","ref":R,"since":SEQ,"epoch":E,"last":N}` (all optional);
//! - `{"type":"unsubscribe","ref":R}`.
//!
//! Server to client: `ack` (`ids` of the stored blobs, once durable),
//! `error` (`code`, `error`), `subscribed` (`epoch`, `seq`), `change`
//! (`seq`, `id`, `doc`) and `unsubscribed`. `ref` is echoed verbatim.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::blob::{self, Blob, BlobError};
use crate::feed::{Change, Seq, Start};
use crate::sampler::MAX_SAMPLE;

/// Most blobs a `last` replay may ask for.
pub const MAX_REPLAY: u64 = 10_000;

/// What is wrong with a frame or with `since`, `last` or `epoch`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FrameError {
    /// The frame is not a command this server knows.
    #[error("{0}")]
    BadFrame(String),
    /// The pushed blobs are malformed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A `since` that cannot be a seq.
    #[error(
        "`since` must be a seq: a whole number or a string, as a change or `subscribed` gave it, got {0}"
    )]
    BadSeq(String),
    /// A `last` or `epoch` that cannot be used.
    #[error("`{name}` must be {expected}, got {value}")]
    BadParam {
        /// `last` or `epoch`.
        name: &'static str,
        /// What was sent.
        value: String,
        /// What it accepts.
        expected: &'static str,
    },
}

/// `{"type":"change","seq":…,"id":…,"doc":{…}}`: a WebSocket text frame and,
/// with `\r\n` after it, a `/stream` line. Always UTF-8.
pub fn change_frame(change: &Change) -> Bytes {
    let seq = serde_json::to_string(&change.seq.0).expect("JSON value serializes");
    let id = serde_json::to_string(&*change.id).expect("string serializes");
    let doc = change.doc.as_str();
    let mut frame = String::with_capacity(40 + seq.len() + id.len() + doc.len());
    frame.push_str("{\"type\":\"change\",\"seq\":");
    frame.push_str(&seq);
    frame.push_str(",\"id\":");
    frame.push_str(&id);
    frame.push_str(",\"doc\":");
    frame.push_str(doc);
    frame.push('}');
    Bytes::from(frame)
}

/// What a client asked to follow, from a frame or a query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Follow {
    /// Where to start.
    pub start: Start,
    /// The epoch `since` belongs to, when given.
    pub epoch: Option<String>,
    /// At most this many change frames a second (a sample), when given.
    pub sample: Option<u32>,
}

/// How `since`, `last` and `epoch` arrived: a query string gives text, a
/// frame gives JSON.
#[derive(Debug, Clone, Copy)]
pub enum Given<'a> {
    /// A query parameter's text (`since=42`, `since=2-g1AAAA`).
    Param(&'a str),
    /// A frame field's JSON (`"since":42`, `"since":"2-g1AAAA"`).
    Json(&'a RawValue),
}

impl Given<'_> {
    /// The value as JSON: a parameter that is not JSON is a bare string.
    fn json_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Given::Json(raw) => raw.get().into(),
            Given::Param(text) => text.trim().into(),
        }
    }

    fn shown(&self) -> String {
        match self {
            Given::Json(raw) => raw.get().to_string(),
            Given::Param(text) => format!("{text:?}"),
        }
    }
}

/// The one reader of `since`, `last` and `epoch`, for the WebSocket's
/// frames and query string and for `/stream`: `since` and `last` exclude
/// each other; with neither, follow from now.
pub fn follow(
    since: Option<Given<'_>>,
    last: Option<Given<'_>>,
    epoch: Option<Given<'_>>,
    sample: Option<Given<'_>>,
) -> Result<Follow, FrameError> {
    let epoch = epoch.map(read_epoch).transpose()?;
    let sample = sample.map(read_sample).transpose()?;
    let start = match (since, last) {
        (Some(_), Some(_)) => {
            return Err(FrameError::BadFrame(
                "subscribe takes `since` or `last`, not both".into(),
            ));
        }
        (Some(since), None) => Start::Since(read_seq(since)?),
        (None, Some(last)) => Start::Last(read_last(last)?),
        (None, None) => Start::Now,
    };
    Ok(Follow {
        start,
        epoch,
        sample,
    })
}

fn read_sample(given: Given<'_>) -> Result<u32, FrameError> {
    given
        .json_text()
        .parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_SAMPLE).contains(n))
        .ok_or_else(|| FrameError::BadParam {
            name: "sample",
            value: given.shown(),
            expected: "a number of changes a second, 1 to 10000",
        })
}

/// A seq is a whole number or a string; anything else (lists nested past
/// any parser's depth included) was never handed out.
fn read_seq(given: Given<'_>) -> Result<Seq, FrameError> {
    let text = given.json_text();
    let bad = || FrameError::BadSeq(given.shown());
    // Only scalars are seqs: never parse a list or an object, however deep.
    if text.starts_with(['[', '{']) {
        return Err(bad());
    }
    let value = match (given, serde_json::from_str::<Value>(&text)) {
        (_, Ok(value)) => value,
        // A query parameter that is not JSON is a bare token: `2-g1AAAA`.
        (Given::Param(_), Err(_)) => Value::String(text.into_owned()),
        (Given::Json(_), Err(_)) => return Err(bad()),
    };
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Seq(Value::Number(n))),
        Value::String(s) if !s.is_empty() => Ok(Seq(Value::String(s))),
        _ => Err(bad()),
    }
}

fn read_last(given: Given<'_>) -> Result<usize, FrameError> {
    given
        .json_text()
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= MAX_REPLAY)
        .map(|n| n as usize)
        .ok_or_else(|| FrameError::BadParam {
            name: "last",
            value: given.shown(),
            expected: "a number of blobs, at most 10000",
        })
}

fn read_epoch(given: Given<'_>) -> Result<String, FrameError> {
    match given {
        Given::Param(text) => Ok(text.to_string()),
        Given::Json(raw) => {
            serde_json::from_str::<String>(raw.get()).map_err(|_| FrameError::BadParam {
                name: "epoch",
                value: raw.get().to_string(),
                expected: "a string",
            })
        }
    }
}

/// A parsed client frame; `'a` borrows from the frame's text.
#[derive(Debug)]
pub enum ClientFrame<'a> {
    /// Store these blobs and answer with an ack.
    Push {
        /// Echoed in the answer.
        reference: Option<&'a RawValue>,
        /// The checked blobs, or what is wrong with them.
        blobs: Result<Vec<Blob>, BlobError>,
    },
    /// Follow the change feed.
    Subscribe {
        /// Echoed in the answer.
        reference: Option<&'a RawValue>,
        /// Where to start, and in which epoch.
        follow: Follow,
    },
    /// Stop following the change feed.
    Unsubscribe {
        /// Echoed in the answer.
        reference: Option<&'a RawValue>,
    },
    /// Follow the node's live KPIs: a `stats` frame a second.
    SubscribeStats {
        /// Echoed in the answer.
        reference: Option<&'a RawValue>,
    },
    /// Stop following the live KPIs.
    UnsubscribeStats {
        /// Echoed in the answer.
        reference: Option<&'a RawValue>,
    },
}

/// Whether a frame's `stats` field asks for the live KPIs (`true`); any
/// other value is a mistake worth naming.
fn wants_stats(stats: Option<&RawValue>) -> Result<bool, FrameError> {
    match stats.map(RawValue::get) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(FrameError::BadParam {
            name: "stats",
            value: other.to_string(),
            expected: "true",
        }),
    }
}

/// The command fields of a frame, kept raw: a bare blob may have fields of
/// the same names and any types, and must still be a push.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    epoch: Option<&'a RawValue>,
    #[serde(borrow)]
    last: Option<&'a RawValue>,
    #[serde(borrow)]
    sample: Option<&'a RawValue>,
    #[serde(borrow)]
    stats: Option<&'a RawValue>,
}

fn bad(reference: Option<&RawValue>, message: String) -> (Option<&RawValue>, FrameError) {
    (reference, FrameError::BadFrame(message))
}

/// Parses one client text frame. An `Err` carries the `ref` when it was readable.
pub fn parse(text: &str) -> Result<ClientFrame<'_>, (Option<&RawValue>, FrameError)> {
    match text.trim_start().chars().next() {
        Some('[') => {
            return Ok(ClientFrame::Push {
                reference: None,
                blobs: blob::parse_submission(text),
            });
        }
        Some('{') => {}
        _ => {
            return Err(match serde_json::from_str::<&RawValue>(text) {
                Err(e) => (None, BlobError::Syntax(e.to_string()).into()),
                Ok(_) => (
                    None,
                    FrameError::BadFrame(
                        "a frame must be a JSON object (a command or a blob) or a list of blobs"
                            .into(),
                    ),
                ),
            });
        }
    }
    // Duplicate keys or odd types are the blob's business, not the frame's:
    // only a frame that parses as a command envelope can be a command.
    let Ok(envelope) = serde_json::from_str::<Envelope>(text) else {
        return Ok(ClientFrame::Push {
            reference: None,
            blobs: blob::parse_submission(text),
        });
    };
    let kind = match envelope
        .kind
        .map(|k| serde_json::from_str::<String>(k.get()))
    {
        None => None,
        Some(Ok(kind)) => Some(kind),
        // A `type` that is not a string cannot name a command: a blob's field.
        Some(Err(_)) => {
            return Ok(ClientFrame::Push {
                reference: None,
                blobs: blob::parse_submission(text),
            });
        }
    };
    let reference = envelope.reference;
    match kind.as_deref() {
        None => Ok(ClientFrame::Push {
            reference: None,
            blobs: blob::parse_submission(text),
        }),
        Some("push") => Ok(ClientFrame::Push {
            reference,
            blobs: match envelope.data {
                Some(data) => blob::parse_data_value(data.get()),
                None => Err(BlobError::MissingData),
            },
        }),
        Some("subscribe") => {
            if wants_stats(envelope.stats).map_err(|e| (reference, e))? {
                if envelope.since.is_some() || envelope.last.is_some() || envelope.sample.is_some()
                {
                    return Err(bad(
                        reference,
                        "stats and changes are separate subscriptions: send one subscribe for each"
                            .into(),
                    ));
                }
                return Ok(ClientFrame::SubscribeStats { reference });
            }
            let follow = follow(
                envelope.since.map(Given::Json),
                envelope.last.map(Given::Json),
                envelope.epoch.map(Given::Json),
                envelope.sample.map(Given::Json),
            )
            .map_err(|e| (reference, e))?;
            Ok(ClientFrame::Subscribe { reference, follow })
        }
        Some("unsubscribe") => {
            if wants_stats(envelope.stats).map_err(|e| (reference, e))? {
                Ok(ClientFrame::UnsubscribeStats { reference })
            } else {
                Ok(ClientFrame::Unsubscribe { reference })
            }
        }
        Some(other) => Err(bad(
            reference,
            format!(
                "unknown frame type {other:?}: expected push, subscribe or unsubscribe \
                 (to push a blob that has a `type` field, wrap it: {{\"type\":\"push\",\"data\":…}})"
            ),
        )),
    }
}

/// `{"type":"ack","ref":R,"ids":[…]}`.
pub fn ack(reference: Option<&RawValue>, ids: &[std::sync::Arc<str>]) -> String {
    let ids: Vec<&str> = ids.iter().map(|id| &**id).collect();
    serde_json::json!({ "type": "ack", "ref": reference, "ids": ids }).to_string()
}

/// `{"type":"subscribed","ref":R,"epoch":E,"seq":S}`: `seq` is where to resume
/// if no change arrives (null for an empty store, or when a replay follows).
pub fn subscribed(reference: Option<&RawValue>, epoch: &str, seq: Option<&Seq>) -> String {
    serde_json::json!({
        "type": "subscribed",
        "ref": reference,
        "epoch": epoch,
        "seq": seq.map(|s| &s.0),
    })
    .to_string()
}

/// `{"type":"subscribed","ref":R,"stats":true}`: live KPI frames follow.
pub fn subscribed_stats(reference: Option<&RawValue>) -> String {
    serde_json::json!({ "type": "subscribed", "ref": reference, "stats": true }).to_string()
}

/// `{"type":"unsubscribed","ref":R,"stats":true}`.
pub fn unsubscribed_stats(reference: Option<&RawValue>) -> String {
    serde_json::json!({ "type": "unsubscribed", "ref": reference, "stats": true }).to_string()
}

/// `{"type":"unsubscribed","ref":R}`.
pub fn unsubscribed(reference: Option<&RawValue>) -> String {
    serde_json::json!({ "type": "unsubscribed", "ref": reference }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_blobs_and_lists_are_pushes() {
        match parse(r#"{"timestamp":1,"ref":"kept"}"#).unwrap() {
            ClientFrame::Push { reference, blobs } => {
                assert!(reference.is_none());
                assert!(blobs.unwrap()[0].doc.as_str().contains(r#""ref":"kept""#));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"[{"timestamp":1}]"#).unwrap(),
            ClientFrame::Push { blobs: Ok(b), .. } if b.len() == 1
        ));
    }

    #[test]
    fn blob_fields_named_like_command_fields_stay_a_push() {
        for text in [
            r#"{"timestamp":1,"epoch":1333046104}"#,
            r#"{"timestamp":1,"last":"2012-03-29"}"#,
            r#"{"timestamp":1,"ref":1,"ref":2}"#,
            r#"{"timestamp":1,"type":7}"#,
        ] {
            match parse(text) {
                Ok(ClientFrame::Push { blobs: Ok(b), .. }) => assert_eq!(b.len(), 1, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let (_, err) = parse(r#"{"type":"subscribe","last":-1}"#).unwrap_err();
        assert!(err.to_string().contains("`last`"), "{err}");
    }

    #[test]
    fn commands_and_their_errors() {
        match parse(r#"{"type":"subscribe","since":"3-abc","epoch":"e"}"#).unwrap() {
            ClientFrame::Subscribe { follow, .. } => {
                assert_eq!(follow.start, Start::Since(Seq(serde_json::json!("3-abc"))));
                assert_eq!(follow.epoch.as_deref(), Some("e"));
            }
            other => panic!("{other:?}"),
        }
        let (reference, err) = parse(r#"{"type":"dance","ref":7}"#).unwrap_err();
        assert_eq!(reference.unwrap().get(), "7");
        assert!(err.to_string().contains("unknown frame type \"dance\""));
        match parse("{nope") {
            Ok(ClientFrame::Push {
                blobs: Err(err), ..
            }) => {
                assert!(err.to_string().contains("JSON syntax error"), "{err}")
            }
            other => panic!("{other:?}"),
        }
        let (_, err) = parse("42").unwrap_err();
        assert!(matches!(err, FrameError::BadFrame(_)), "{err}");
    }

    #[test]
    fn a_since_nested_past_any_depth_is_a_bad_seq_not_a_panic() {
        let deep = format!(
            r#"{{"type":"subscribe","ref":3,"since":{}1{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let (reference, err) = parse(&deep).unwrap_err();
        assert_eq!(reference.unwrap().get(), "3");
        assert!(matches!(err, FrameError::BadSeq(_)), "{err}");
    }

    #[test]
    fn one_reader_for_frames_and_query_strings() {
        let raw = |t: &str| serde_json::from_str::<Box<RawValue>>(t).unwrap();
        let (n, s) = (raw("42"), raw(r#""2-g1AAAA""#));
        for (given, seq) in [
            (Given::Json(&n), serde_json::json!(42)),
            (Given::Param("42"), serde_json::json!(42)),
            (Given::Json(&s), serde_json::json!("2-g1AAAA")),
            (Given::Param("2-g1AAAA"), serde_json::json!("2-g1AAAA")),
            (Given::Param("\"2-g1AAAA\""), serde_json::json!("2-g1AAAA")),
        ] {
            let f = follow(Some(given), None, None, None).unwrap();
            assert_eq!(f.start, Start::Since(Seq(seq)), "{given:?}");
        }
        for bad in ["1.5", "[]", "{}", "null", "true", "\"\""] {
            assert!(
                matches!(
                    follow(Some(Given::Json(&raw(bad))), None, None, None),
                    Err(FrameError::BadSeq(_))
                ),
                "{bad}"
            );
        }
        let seven = raw("7");
        assert_eq!(
            follow(None, Some(Given::Json(&seven)), None, None)
                .unwrap()
                .start,
            Start::Last(7)
        );
        assert_eq!(
            follow(None, Some(Given::Param("7")), None, None)
                .unwrap()
                .start,
            Start::Last(7)
        );
        assert!(follow(None, Some(Given::Param("10001")), None, None).is_err());
        assert!(follow(Some(Given::Param("1")), Some(Given::Param("7")), None, None).is_err());
        assert!(
            follow(None, None, Some(Given::Json(&seven)), None).is_err(),
            "an epoch is a string"
        );
    }
}
