//! The query parameters the read routes share: a range by timestamp.

use std::collections::HashMap;

use crate::error::ApiError;
use crate::store::RangeQuery;

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

/// Reads `start`, `end`, `limit` and `descending`.
pub fn range_query(params: &HashMap<String, String>) -> Result<RangeQuery, ApiError> {
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
    Ok(RangeQuery {
        start: param_i64(params, "start")?,
        end: param_i64(params, "end")?,
        limit,
        descending,
    })
}
