//! Writing new blobs with `_bulk_docs` so that one document CouchDB refuses
//! never stops the others: shared by direct writes and the forwarder.
//!
//! CouchDB answers most refusals per document (`forbidden`, `conflict`),
//! but some refuse the whole request for one document in it: CouchDB 3's
//! JSON parser answers `400 bad_request: invalid UTF-8 JSON` for a number
//! or a string it cannot read, and `413` for a request over its size
//! limits. Retried as it is, such a batch fails forever, and everything
//! queued behind it with it.

use super::client::{Couch, CouchError, DocOutcome};

/// True when CouchDB refused a whole `_bulk_docs` for what a document in
/// it holds: a smaller request without that document can succeed.
fn refuses_a_document(e: &CouchError) -> bool {
    matches!(e, CouchError::Status { status, .. } if matches!(status.as_u16(), 400 | 413))
}

/// Writes `docs` (id, JSON text) with their own ids; one outcome per
/// document, in order.
///
/// A request refused whole ([`refuses_a_document`]) is split in halves,
/// and halves again, until each document CouchDB refuses is alone: it is
/// answered [`DocOutcome::Refused`] with CouchDB's reason, and the rest is
/// written. Splitting costs about two requests per level for each refused
/// document (log₂ of the batch), and nothing when none is.
///
/// `Err` only when the first request fails for another reason (CouchDB
/// away): then nothing is known to be stored. A later part that fails so
/// is answered [`DocOutcome::Retry`]; ids are kpiggybank's, so writing it
/// again cannot store a copy.
pub async fn write(
    couch: &Couch,
    docs: &[(String, String)],
) -> Result<Vec<DocOutcome>, CouchError> {
    if docs.is_empty() {
        return Ok(Vec::new());
    }
    let mut outcomes: Vec<Option<DocOutcome>> = vec![None; docs.len()];
    // Parts still to send, as (start, length); the first half on top, so
    // documents go out in order.
    let mut parts = vec![(0, docs.len())];
    let mut first = true;
    while let Some((start, len)) = parts.pop() {
        let part = &docs[start..start + len];
        match couch.bulk_docs(part).await {
            Ok(answers) => {
                for ((slot, (id, _)), answer) in
                    outcomes[start..].iter_mut().zip(part).zip(&answers)
                {
                    // Answers come in request order; one that names another
                    // id says nothing sure about this document (one that
                    // names none is taken at its place).
                    *slot = Some(if answer.id.is_empty() || answer.id == *id {
                        answer.outcome()
                    } else {
                        DocOutcome::Retry(format!("CouchDB answered for {:?} instead", answer.id))
                    });
                }
            }
            Err(e) if refuses_a_document(&e) => {
                if len == 1 {
                    let reason = match &e {
                        CouchError::Status { status, body, .. } => format!("{status}: {body}"),
                        other => other.to_string(),
                    };
                    outcomes[start] = Some(DocOutcome::Refused(reason));
                } else {
                    tracing::debug!(
                        "CouchDB refused {len} documents at once ({e}); splitting them"
                    );
                    let half = len / 2;
                    parts.push((start + half, len - half));
                    parts.push((start, half));
                }
            }
            Err(e) if first => return Err(e),
            Err(e) => {
                for slot in &mut outcomes[start..start + len] {
                    *slot = Some(DocOutcome::Retry(e.to_string()));
                }
            }
        }
        first = false;
    }
    // Every document lies in exactly one part, and each part is answered.
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| DocOutcome::Retry("not sent".into())))
        .collect())
}
