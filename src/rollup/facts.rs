//! What a rollup reads from one sign-in blob: its time, its duration and
//! the five dimensions the dashboard breaks sign-ins down by.
//!
//! Read leniently: a blob that lacks a field, or holds it with another type,
//! counts under "unknown" for that field; it is never refused here (the
//! blob was accepted and stored already).

use serde::Deserialize;
use serde_json::value::RawValue;

/// Timestamps below this are seconds since the epoch, not milliseconds:
/// 1e11 ms is March 1973, 1e11 s is the year 5138.
pub const SECONDS_BELOW: i64 = 100_000_000_000;

/// The label of a missing or unreadable value.
pub const UNKNOWN: &str = "unknown";

/// The dimensions, in the order [`Facts::dims`] gives them.
pub const DIMENSIONS: [&str; 5] = ["browser", "os", "language", "email_type", "account"];

/// One blob, as a rollup counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// `timestamp` in milliseconds (seconds are scaled up).
    pub ts_ms: i64,
    /// The sign-in's duration in ms: the time of the last `event_stream` entry.
    pub duration: Option<u64>,
    /// Browser, OS, language, email type and new/returning, as in [`DIMENSIONS`].
    pub dims: [String; 5],
}

#[derive(Deserialize)]
struct Blob<'a> {
    #[serde(borrow, default)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    user_agent: Option<&'a RawValue>,
    #[serde(borrow, default)]
    language: Option<&'a RawValue>,
    #[serde(borrow, default)]
    email_type: Option<&'a RawValue>,
    #[serde(borrow, default)]
    new_account: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Agent<'a> {
    #[serde(borrow, default)]
    browser: Option<&'a RawValue>,
    #[serde(borrow, default)]
    os: Option<&'a RawValue>,
}

/// A scalar as a label: strings as they are, numbers and booleans as JSON.
fn label(raw: Option<&RawValue>) -> String {
    let Some(raw) = raw else {
        return UNKNOWN.into();
    };
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::String(s)) if !s.is_empty() => s,
        Ok(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
        _ => UNKNOWN.into(),
    }
}

/// The last entry's time of `[[step, ms], …]`.
fn duration(raw: Option<&RawValue>) -> Option<u64> {
    let events: Vec<&RawValue> = serde_json::from_str(raw?.get()).ok()?;
    let (_, ms): (&RawValue, f64) = serde_json::from_str(events.last()?.get()).ok()?;
    (ms.is_finite() && ms >= 0.0).then_some(ms as u64)
}

/// Milliseconds since the epoch, from seconds or milliseconds.
pub fn timestamp_ms(ts: i64) -> i64 {
    if ts < SECONDS_BELOW {
        ts.saturating_mul(1000)
    } else {
        ts
    }
}

impl Facts {
    /// Reads a stored blob's JSON text; `None` when it has no usable timestamp.
    pub fn of(doc: &str) -> Option<Facts> {
        let blob: Blob = serde_json::from_str(doc).ok()?;
        let ts: i64 = serde_json::from_str(blob.timestamp?.get()).ok()?;
        let agent: Option<Agent> = blob
            .user_agent
            .and_then(|raw| serde_json::from_str(raw.get()).ok());
        let account = match blob.new_account.map(RawValue::get) {
            Some("true") => "new",
            Some("false") => "returning",
            _ => UNKNOWN,
        };
        Some(Facts {
            ts_ms: timestamp_ms(ts),
            duration: duration(blob.event_stream),
            dims: [
                label(agent.as_ref().and_then(|a| a.browser)),
                label(agent.as_ref().and_then(|a| a.os)),
                label(blob.language),
                label(blob.email_type),
                account.into(),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_as_the_dashboard_does() {
        let doc = include_str!("../../tests/fixtures/login-sequence.json");
        let facts = Facts::of(doc).unwrap();
        assert_eq!(facts.ts_ms, 1_333_046_104_322);
        assert_eq!(facts.duration, Some(4712));
        assert_eq!(
            facts.dims,
            ["Foo", "TestOS", "en_US", "secondary", "returning"].map(String::from)
        );
    }

    #[test]
    fn missing_or_odd_fields_count_as_unknown_and_seconds_become_milliseconds() {
        let facts = Facts::of(r#"{"timestamp":1333046104,"user_agent":"x","language":7,"new_account":1,"event_stream":[["a","b"]]}"#)
            .unwrap();
        assert_eq!(facts.ts_ms, 1_333_046_104_000);
        assert_eq!(facts.duration, None);
        assert_eq!(
            facts.dims,
            ["unknown", "unknown", "7", "unknown", "unknown"].map(String::from)
        );
        assert_eq!(Facts::of(r#"{"timestamp":"soon"}"#), None);
        assert_eq!(Facts::of(r#"{"event_stream":[]}"#), None);
    }
}
