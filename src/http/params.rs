//! The query parameters the routes take: which names each route knows, and
//! a range by timestamp.

use std::collections::HashMap;

use crate::error::ApiError;
use crate::store::RangeQuery;

/// What `GET /wsapi/interaction_data` takes: a range, or one blob by `id`.
pub const GET_PARAMS: &[&str] = &["start", "end", "limit", "descending", "id"];

/// What a range takes: [`range_query`] refuses any other name, so every
/// route that reads a range (the GET, smash) refuses them.
pub const RANGE_PARAMS: &[&str] = &["start", "end", "limit", "descending"];

/// What `GET …/stats` takes.
pub const STATS_PARAMS: &[&str] = &["start", "end", "bucket"];

/// What `GET …/stream` takes.
pub const STREAM_PARAMS: &[&str] = &["since", "last", "epoch", "heartbeat", "sample"];

/// Refuses names the route does not take. Ignoring them would answer a
/// misspelling (`strat=`) as if nothing had been asked: everything, 200.
pub fn only(
    params: &HashMap<String, String>,
    accepted: &'static [&'static str],
) -> Result<(), ApiError> {
    let mut names: Vec<String> = params
        .keys()
        .filter(|name| !accepted.contains(&name.as_str()))
        .cloned()
        .collect();
    if names.is_empty() {
        return Ok(());
    }
    // The map has no order; the message should not change from run to run.
    names.sort();
    Err(ApiError::UnknownParam { names, accepted })
}

/// A whole number parameter, absent when empty.
pub fn param_i64(
    params: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<i64>, ApiError> {
    params
        .get(name)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| ApiError::BadParam {
                name,
                value: v.clone(),
                expected: "a whole number",
            })
        })
        .transpose()
}

/// Reads `start`, `end`, `limit` and `descending`, and nothing else.
pub fn range_query(params: &HashMap<String, String>) -> Result<RangeQuery, ApiError> {
    only(params, RANGE_PARAMS)?;
    let limit = params
        .get("limit")
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| ApiError::BadParam {
                name: "limit",
                value: v.clone(),
                expected: "a whole number, 0 or more",
            })
        })
        .transpose()?;
    let descending = match params.get("descending").map(|v| v.as_str()) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(ApiError::BadParam {
                name: "descending",
                value: other.to_string(),
                expected: "true or false",
            });
        }
    };
    let (start, end) = (param_i64(params, "start")?, param_i64(params, "end")?);
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        // Always empty: more likely swapped bounds than a question.
        return Err(ApiError::BackwardRange { start, end });
    }
    Ok(RangeQuery {
        start,
        end,
        limit,
        descending,
    })
}
