//! The WebSocket protocol: JSON text frames in both directions.
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

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::blob::{self, Blob, BlobError};
use crate::error::ApiError;
use crate::hub::Start;
use crate::store::Seq;

/// Most blobs a `last` replay may ask for.
pub const MAX_REPLAY: u64 = 10_000;

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
        /// Where to start.
        start: Start,
        /// The epoch `since` belongs to, when given.
        epoch: Option<String>,
    },
    /// Stop following the change feed.
    Unsubscribe {
        /// Echoed in the answer.
        reference: Option<&'a RawValue>,
    },
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
}

fn bad(reference: Option<&RawValue>, message: String) -> (Option<&RawValue>, ApiError) {
    (reference, ApiError::BadFrame(message))
}

/// Parses one client text frame. An `Err` carries the `ref` when it was readable.
pub fn parse(text: &str) -> Result<ClientFrame<'_>, (Option<&RawValue>, ApiError)> {
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
                    ApiError::BadFrame(
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
            let last = match envelope.last {
                None => None,
                Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
                    Ok(n) if n <= MAX_REPLAY => Some(n),
                    _ => {
                        return Err(bad(
                            reference,
                            format!(
                                "`last` must be a number of blobs up to {MAX_REPLAY}, got {}",
                                raw.get()
                            ),
                        ));
                    }
                },
            };
            let epoch = match envelope.epoch {
                None => None,
                Some(raw) => match serde_json::from_str::<String>(raw.get()) {
                    Ok(epoch) => Some(epoch),
                    Err(_) => {
                        return Err(bad(
                            reference,
                            format!("`epoch` must be a string, got {}", raw.get()),
                        ));
                    }
                },
            };
            let start = match (envelope.since, last) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        reference,
                        "subscribe takes `since` or `last`, not both".into(),
                    ));
                }
                (Some(since), None) => Start::Since(Seq(
                    serde_json::from_str(since.get()).expect("RawValue re-parses")
                )),
                (None, Some(n)) => Start::Last(n as usize),
                (None, None) => Start::Now,
            };
            Ok(ClientFrame::Subscribe {
                reference,
                start,
                epoch,
            })
        }
        Some("unsubscribe") => Ok(ClientFrame::Unsubscribe { reference }),
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
            ClientFrame::Subscribe { start, epoch, .. } => {
                assert_eq!(start, Start::Since(Seq(serde_json::json!("3-abc"))));
                assert_eq!(epoch.as_deref(), Some("e"));
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
        assert_eq!(err.code(), "bad_frame");
    }
}
