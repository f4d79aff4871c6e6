//! The dashboard's static files, compiled into the binary so that one
//! executable is the whole service (no build step, nothing to deploy beside
//! it): the dashboard at `GET /`, the files it loads, and `kpiggybank.js`
//! for other pages and Node.js.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::AppState;

/// One embedded file: its URL path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

const HTML: &str = "text/html; charset=utf-8";

/// The dashboard page.
const INDEX: &str = include_str!("../static/index.html");

/// Every file under `static/` (a unit test below keeps this list complete),
/// and the dashboard again at `/`.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: INDEX,
    },
    Asset {
        path: "/index.html",
        content_type: HTML,
        body: INDEX,
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../static/style.css"),
    },
    Asset {
        path: "/kpiggybank.js",
        content_type: JS,
        body: include_str!("../static/kpiggybank.js"),
    },
    Asset {
        path: "/app.js",
        content_type: JS,
        body: include_str!("../static/app.js"),
    },
    Asset {
        path: "/charts.js",
        content_type: JS,
        body: include_str!("../static/charts.js"),
    },
    Asset {
        path: "/stats.js",
        content_type: JS,
        body: include_str!("../static/stats.js"),
    },
    Asset {
        path: "/favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../static/favicon.svg"),
    },
];

/// A route per embedded file.
pub fn routes() -> Router<AppState> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        let (content_type, body) = (asset.content_type, asset.body);
        router.route(
            asset.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        // The files change with the binary, not by URL: make
                        // browsers revalidate so an upgrade is seen at once.
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
                    .into_response()
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::ASSETS;

    #[test]
    fn every_static_file_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/static");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("/{name}");
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "static/{name} is not listed in src/assets.rs"
            );
        }
    }
}
