//! `POST /wsapi/interaction_data/smash`: the destructive read, behind
//! `ADMIN_TOKEN`.
//!
//! A smash is a hand-over ([`crate::store::Smash`]): the answer streams page
//! by page, each page taken out of the store just before it is written, and
//! the taken blobs are removed for good only after the connection accepted
//! the whole answer and a short linger passed without the client leaving.
//! A client that goes away before that (a timeout, a crash, a dropped
//! connection) drops the answer, and every blob it took is stored again: a
//! smash hands over what it removes, or removes nothing.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::Response;
use bytes::Bytes;

use super::answer::{chunk, json_response};
use super::params::range_query;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::Smash;

/// How long a smash holds back the end of a complete answer before it
/// removes the blobs for good: time for the client to read what network
/// buffers still hold (a few MB, at most a fraction of a second for a
/// client that reads at all), during which its going away gives the blobs
/// back. Every smash answer ends this much later; shorter than the
/// shutdown grace, so a stop does not cut it.
const SMASH_LINGER: Duration = Duration::from_secs(1);

/// Removes and returns the blobs in range.
pub async fn smash(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Err(ApiError::SmashDisabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        return Err(ApiError::Unauthorized);
    }
    let query = range_query(&params)?;
    let mut smash = state.store.begin_smash(&query).await?;
    // The first page is taken before answering, so that a store that fails
    // at once is a proper status; dropping `smash` gives back what it took.
    let first = smash.take().await?;
    let handover = Handover {
        smash: Some(smash),
        step: Step::First(first),
        sent: 0,
    };
    let body = futures::stream::unfold(handover, Handover::next);
    Ok(json_response(Body::from_stream(body)))
}

/// The answer of one smash, as a stream of chunks of one JSON array.
struct Handover {
    /// `None` once finished.
    smash: Option<Box<dyn Smash>>,
    step: Step,
    /// Blobs written so far.
    sent: usize,
}

enum Step {
    /// The page taken before answering.
    First(Vec<crate::blob::Doc>),
    /// Taking and writing the next page.
    More,
    /// The closing `]` was accepted: remove what was handed over.
    Finish,
}

impl Handover {
    /// The next chunk. The stream is polled for it only once the connection
    /// accepted the previous one, so reaching [`Step::Finish`] means the
    /// whole answer was accepted; a stream dropped before that drops the
    /// smash, which gives its blobs back.
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Handover)> {
        let smash = self.smash.as_mut()?;
        match std::mem::replace(&mut self.step, Step::More) {
            Step::First(docs) => {
                self.sent += docs.len();
                Some((Ok(chunk(b"[", &docs).freeze()), self))
            }
            Step::More => {
                let docs = match smash.take().await {
                    Ok(docs) => docs,
                    // What was sent stays handed over and the rest stored: a
                    // shorter answer, not a broken one that would give back
                    // pages the client may have read.
                    Err(e) => {
                        tracing::warn!(
                            "smash stops after {} blobs, the rest stays stored: {e}",
                            self.sent
                        );
                        Vec::new()
                    }
                };
                if docs.is_empty() {
                    self.step = Step::Finish;
                    return Some((Ok(Bytes::from_static(b"]")), self));
                }
                let lead: &[u8] = if self.sent == 0 { b"" } else { b"," };
                self.sent += docs.len();
                Some((Ok(chunk(lead, &docs).freeze()), self))
            }
            Step::Finish => {
                // The connection accepted the answer, but its last bytes may
                // still sit unread in network buffers. Holding the end back
                // a moment lets a client that gives up now be noticed (the
                // connection closes, this stream is dropped, the blobs go
                // back) instead of losing a smash it never read.
                tokio::time::sleep(SMASH_LINGER).await;
                let smash = self.smash.take()?;
                match smash.finish().await {
                    Ok(()) => tracing::info!(blobs = self.sent, "smashed"),
                    // They stay held: a durable store puts them back when it
                    // next opens, so they come twice rather than never.
                    Err(e) => tracing::error!(
                        "smash answered {} blobs but could not remove them: {e}",
                        self.sent
                    ),
                }
                None
            }
        }
    }
}

/// Compares secrets without leaking, through timing, how much of them matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
