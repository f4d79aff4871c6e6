//! Every error a client can see, and the one place where each becomes an
//! HTTP answer or a WebSocket `error` frame.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;

use crate::batcher::WriteError;
use crate::blob::BlobError;
use crate::feed::FeedError;
use crate::protocol::FrameError;
use crate::store::StoreError;

/// An error answered to a client; its message names the problem.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The submission is malformed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The write was refused or failed; nothing was stored.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// A read failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A subscription was refused or ended.
    #[error(transparent)]
    Feed(#[from] FeedError),
    /// A WebSocket frame, or `since`/`last`/`epoch`, that cannot be used.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// A query parameter that cannot be used.
    #[error("query parameter `{name}` must be {expected}, got {value:?}")]
    BadParam {
        /// The parameter.
        name: &'static str,
        /// What was sent.
        value: String,
        /// What it accepts.
        expected: &'static str,
    },
    /// Query parameters the route does not take: a misspelt name would
    /// otherwise be ignored, and the answer look right.
    #[error(
        "unknown query parameter{} {}: this route takes {}",
        if .names.len() > 1 { "s" } else { "" },
        quoted(.names),
        quoted(.accepted)
    )]
    UnknownParam {
        /// The names not taken, in order.
        names: Vec<String>,
        /// The names the route takes.
        accepted: &'static [&'static str],
    },
    /// A range that can hold nothing because its bounds are swapped.
    #[error(
        "`start` ({start}) is after `end` ({end}): they are the smallest and the greatest timestamp, both inclusive, whatever the order asked for"
    )]
    BackwardRange {
        /// The `start` sent.
        start: i64,
        /// The `end` sent.
        end: i64,
    },
    /// The body is over `MAX_BODY_BYTES`.
    #[error("the body is larger than the limit of {limit} bytes (MAX_BODY_BYTES)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read.
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    /// Nothing there.
    #[error("{0}")]
    NotFound(String),
    /// Smash without the right bearer token.
    #[error("smash needs the header `Authorization: Bearer <ADMIN_TOKEN>`")]
    Unauthorized,
    /// Smash while no `ADMIN_TOKEN` is configured.
    #[error("smash is disabled: start kpiggybank with ADMIN_TOKEN set to allow it")]
    SmashDisabled,
    /// A browser page from another site tried to open a WebSocket.
    #[error("origin {0:?} may not open a WebSocket here (see ALLOWED_ORIGINS)")]
    OriginNotAllowed(String),
    /// A request to the WebSocket route that is not a WebSocket handshake.
    #[error("not a WebSocket handshake: {0}")]
    NotWebSocket(&'static str),
    /// `MAX_CONNECTIONS` WebSockets are already open.
    #[error(
        "too many WebSocket connections: all {0} allowed (MAX_CONNECTIONS) are in use, try again later"
    )]
    TooManyConnections(usize),
}

impl ApiError {
    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Blob(_)
            | ApiError::BadParam { .. }
            | ApiError::UnknownParam { .. }
            | ApiError::BackwardRange { .. }
            | ApiError::BodyRead(_)
            | ApiError::NotWebSocket(_)
            | ApiError::Frame(_) => StatusCode::BAD_REQUEST,
            ApiError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyConnections(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Write(WriteError::QuotaFull { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Write(WriteError::ShuttingDown) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Write(WriteError::Store(e)) | ApiError::Store(e) => match e {
                StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                StoreError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
                StoreError::Window(_) => StatusCode::BAD_REQUEST,
            },
            ApiError::Feed(e) => match e {
                FeedError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                FeedError::BadSeq(_) => StatusCode::BAD_REQUEST,
                FeedError::EpochMismatch { .. } => StatusCode::CONFLICT,
            },
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::SmashDisabled => StatusCode::FORBIDDEN,
        }
    }

    /// A short machine-readable name for this kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Blob(_) | ApiError::Frame(FrameError::Blob(_)) => "bad_blob",
            ApiError::BadParam { .. }
            | ApiError::UnknownParam { .. }
            | ApiError::BackwardRange { .. } => "bad_param",
            ApiError::BodyRead(_) => "bad_body",
            ApiError::Write(WriteError::QuotaFull { .. }) => "quota_full",
            ApiError::Write(WriteError::ShuttingDown) => "shutting_down",
            ApiError::Write(WriteError::Store(e)) | ApiError::Store(e) => match e {
                StoreError::Unavailable(_) => "store_unavailable",
                StoreError::Refused(_) => "refused",
                StoreError::Window(_) => "bad_param",
            },
            ApiError::Feed(e) => match e {
                FeedError::Unavailable(_) => "store_unavailable",
                FeedError::BadSeq(_) => "bad_seq",
                FeedError::EpochMismatch { .. } => "epoch_mismatch",
            },
            ApiError::Frame(FrameError::BadSeq(_)) => "bad_seq",
            ApiError::Frame(FrameError::BadParam { .. }) => "bad_param",
            ApiError::Frame(FrameError::BadFrame(_)) => "bad_frame",
            ApiError::TooLarge { .. } => "too_large",
            ApiError::NotFound(_) => "not_found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::SmashDisabled => "smash_disabled",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::NotWebSocket(_) => "not_websocket",
            ApiError::TooManyConnections(_) => "too_many_connections",
        }
    }

    /// The JSON body: `{"error": message, "code": name}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string(), "code": self.code() })
    }

    /// The last line of a `/stream` that ends on an error, after its
    /// headers went out: `{"type":"error","code":…,"error":…}` and `\r\n`.
    pub fn stream_line(&self) -> String {
        let mut line = serde_json::json!({
            "type": "error",
            "code": self.code(),
            "error": self.to_string(),
        })
        .to_string();
        line.push_str("\r\n");
        line
    }

    /// The WebSocket answer: `{"type":"error","ref":…,"code":…,"error":…}`.
    pub fn ws_frame(&self, reference: Option<&RawValue>) -> String {
        serde_json::json!({
            "type": "error",
            "ref": reference,
            "code": self.code(),
            "error": self.to_string(),
        })
        .to_string()
    }
}

/// `a`, `b`, `c`: names as the messages show them.
fn quoted<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("`{}`", n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("answering {status}: {self}");
        } else {
            tracing::debug!("answering {status}: {self}");
        }
        (status, axum::Json(self.body())).into_response()
    }
}
