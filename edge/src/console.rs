//! The operator console at `/console`: a static page (HTML, one script, one stylesheet) embedded
//! in the binary, so `cargo build` needs no Node and the console works offline. It is a client
//! of the edge's own REST API on the same origin; everything it does is an existing route.

use std::sync::LazyLock;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::{response, ApiError, Response};

/// Only the console's own files may run or style it; nothing may frame it (clickjacking), and
/// no inline script or style is allowed, so injected markup cannot execute.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// The embedded files: validated on every use (`no-cache` + a strong `ETag` from their bytes),
/// so a new binary's console is picked up at once without fingerprinted names.
const CACHE_CONTROL: &str = "no-cache";

struct Asset {
    /// The segment after `/console/` (`""`: the page itself, at `/console`).
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const FILES: [Asset; 3] = [
    Asset {
        name: "",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../console/index.html"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../console/console.js"),
    },
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../console/console.css"),
    },
];

/// Each file's `ETag`, hashed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|file| {
            let digest = Sha256::digest(file.bytes);
            format!("\"{}\"", B64.encode(&digest[..16]))
        })
        .collect()
});

/// Answers `GET /console` (`asset` = `None`) and `GET /console/{asset}`.
pub fn serve(asset: Option<&str>, request_headers: &HeaderMap, correlation_id: &str) -> Response {
    let name = asset.unwrap_or("");
    let Some(index) = FILES.iter().position(|file| file.name == name) else {
        return ApiError::new(Code::NotFound, format!("the console has no file `{name}`"))
            .into_response(correlation_id);
    };
    let file = &FILES[index];
    let etag = ETAGS[index].as_str();
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| given.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        let mut response = http::Response::new(response::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = http::Response::new(response::full(file.bytes));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = std::str::from_utf8(FILES[0].bytes).expect("utf-8");
        for (at, _) in html.match_indices("<script") {
            let tag = &html[at..at + html[at..].find('>').expect("tag ends")];
            assert!(tag.contains("src="), "inline script: {tag}");
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "inline style attribute");
        // No inline event handlers (`onclick=…`): an attribute named on… anywhere in a tag.
        let handler = html.split('<').skip(1).any(|tag| {
            let tag = tag.split('>').next().unwrap_or_default();
            tag.split_whitespace()
                .any(|attribute| attribute.starts_with("on") && attribute.contains('='))
        });
        assert!(!handler, "inline event handler");
    }

    #[test]
    fn a_matching_etag_is_304_and_an_unknown_file_404() {
        let first = serve(Some("console.js"), &HeaderMap::new(), "c");
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()[header::ETAG].clone();
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            serve(Some("console.js"), &headers, "c").status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve(Some("../Cargo.toml"), &HeaderMap::new(), "c").status(),
            StatusCode::NOT_FOUND
        );
    }
}
