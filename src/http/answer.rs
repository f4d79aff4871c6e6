//! How the HTTP routes write their answers: JSON bodies, and blobs joined
//! into arrays without re-serializing them.

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};

use crate::blob::Doc;

/// A JSON answer from text that is JSON already.
pub fn json_response(body: impl Into<Body>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.into()).into_response()
}

/// `lead` then the docs joined by commas.
pub fn chunk(lead: &[u8], docs: &[Doc]) -> BytesMut {
    let size = docs.iter().map(|d| d.as_str().len() + 1).sum::<usize>() + 2;
    let mut buf = BytesMut::with_capacity(size);
    buf.extend_from_slice(lead);
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            buf.extend_from_slice(b",");
        }
        buf.extend_from_slice(doc.as_str().as_bytes());
    }
    buf
}

/// The docs as one JSON array.
pub fn json_array(docs: &[Doc]) -> Bytes {
    let mut buf = chunk(b"[", docs);
    buf.extend_from_slice(b"]");
    buf.freeze()
}
