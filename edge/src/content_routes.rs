//! The content routes (DESIGN §4): public reads with `ETag` / `If-None-Match` → 304 and
//! `Cache-Control`; admin CRUD with `If-Match` carrying the expected version. Admin
//! credentials travel as metadata and are checked by the content service itself.

use std::sync::Arc;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use portico_proto::content::{self as pb, content_service_client::ContentServiceClient};
use portico_telemetry::RequestContext;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::{
    backends::Forwarded,
    finish, parse_json, read_body,
    response::{self, Response},
    routes::Handler,
    ApiError, Edge,
};

/// How long browsers and CDNs may reuse a public read without asking.
const PUBLIC_MAX_AGE: &str = "public, max-age=30";
/// A read made with credentials (an admin sees drafts): nobody else may be served it.
const PRIVATE: &str = "private, no-store";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    slug: String,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    tags: Vec<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    tags: Vec<String>,
    status: Option<String>,
    /// The expected version, when the client does not send `If-Match`.
    version: Option<i64>,
}

fn status_of(name: Option<&str>) -> Result<i32, ApiError> {
    match name {
        None => Ok(pb::Status::Unspecified as i32),
        Some("draft") => Ok(pb::Status::Draft as i32),
        Some("published") => Ok(pb::Status::Published as i32),
        Some(other) => Err(ApiError::new(
            Code::InvalidArgument,
            format!("status `{other}` is not draft or published"),
        )),
    }
}

fn to_json(c: &pb::Content) -> Value {
    json!({
        "slug": c.slug,
        "title": c.title,
        "body": c.body,
        "tags": c.tags,
        "status": if c.status == pb::Status::Published as i32 { "published" } else { "draft" },
        "publishedAt": (!c.published_at.is_empty()).then_some(&c.published_at),
        "version": c.version,
        "createdAt": c.created_at,
        "updatedAt": c.updated_at,
    })
}

/// A strong validator of a representation: its bytes, hashed.
fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    format!("\"{}\"", B64.encode(&digest[..16]))
}

/// `If-Match` as the expected version: `"3"`, `3` or `W/"3"`.
fn if_match(headers: &HeaderMap) -> Option<i64> {
    let raw = headers.get(header::IF_MATCH)?.to_str().ok()?;
    raw.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// 200 with `ETag` and `Cache-Control`, or 304 when the client already has it.
fn cacheable(
    request_headers: &HeaderMap,
    body: Bytes,
    cache_control: &'static str,
    etag: &str,
) -> Response {
    let matches = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| {
            given
                .split(',')
                .any(|tag| tag.trim() == etag || tag.trim() == "*")
        });
    let mut response = if matches {
        let mut response = http::Response::new(response::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = http::Response::new(response::full(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    };
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(cache_control),
    );
    response
}

/// `Cache-Control` of a public read: public without credentials, private with them (what an
/// admin key or token sees may include drafts).
fn read_cache_control(headers: &HeaderMap) -> &'static str {
    if headers.contains_key(header::AUTHORIZATION) || headers.contains_key("x-admin-key") {
        PRIVATE
    } else {
        PUBLIC_MAX_AGE
    }
}

/// A public item as the edge keeps it: the revision of the content service it was read under,
/// the bytes and their validator.
pub(crate) struct CachedItem {
    revision: Vec<u8>,
    body: Bytes,
    etag: String,
}

/// `cursor`, `limit` and `tag` from a query string (values are URL-safe by construction).
fn list_query(query: Option<&str>) -> Result<pb::ListContentRequest, ApiError> {
    let mut request = pb::ListContentRequest::default();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if value.contains('%') || value.contains('+') {
            return Err(ApiError::new(
                Code::InvalidArgument,
                format!("query parameter `{name}` is not valid"),
            ));
        }
        match name {
            "cursor" => request.cursor = value.to_owned(),
            "tag" => request.tag = value.to_owned(),
            "limit" => {
                request.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| {
                        ApiError::new(
                            Code::InvalidArgument,
                            "limit must be an integer from 1 to 100",
                        )
                    })?;
            }
            _ => {}
        }
    }
    Ok(request)
}

fn page_json(page: &pb::ListContentResponse) -> Value {
    json!({
        "items": page.items.iter().map(to_json).collect::<Vec<_>>(),
        "nextCursor": (!page.next_cursor.is_empty()).then_some(&page.next_cursor),
    })
}

impl Edge {
    /// The content revision an anonymous read can be validated against: `content:rev` in Redis
    /// (a new random value set by the content service before each write returns), or, without
    /// Redis, the write counter of the content service running in this process. `None`: no
    /// edge copy.
    async fn content_revision(&self) -> Option<Vec<u8>> {
        use portico_redis::fred::prelude::KeysInterface as _;
        match &self.inner.redis {
            Some(redis) if redis.is_up() => redis
                .client()
                .get::<Option<Vec<u8>>, _>(redis.key("content:rev"))
                .await
                .ok()
                // Unset (a fresh Redis, or `content:*` deleted by hand): no edge copy until
                // the next write sets it, so no copy from before the deletion can match.
                .flatten(),
            Some(_) => None,
            None => self
                .inner
                .content_addr
                .and_then(portico_revision::lookup)
                .map(|revision| revision.current().to_be_bytes().to_vec()),
        }
    }

    /// Answers one content route.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn content<B>(
        &self,
        handler: Handler,
        slug: Option<String>,
        query: Option<String>,
        headers: HeaderMap,
        body: B,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Response, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let backend = &self.inner.backends.content;
        let mut client = ContentServiceClient::new(backend.channel.clone());
        let slug = slug.unwrap_or_default();
        match handler {
            Handler::ContentList | Handler::AdminContentList => {
                let mut request = list_query(query.as_deref())?;
                request.include_drafts = handler == Handler::AdminContentList;
                let page = finish(
                    backend,
                    "ListContent",
                    client
                        .list_content(self.call(request, context, forwarded))
                        .await,
                )?;
                let body = page_json(&page);
                if handler == Handler::AdminContentList {
                    let mut response = response::json_response(StatusCode::OK, &body);
                    response
                        .headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    return Ok(response);
                }
                let body = Bytes::from(body.to_string());
                let etag = etag_of(&body);
                Ok(cacheable(
                    &headers,
                    body,
                    read_cache_control(&headers),
                    &etag,
                ))
            }
            Handler::ContentGet => {
                // An anonymous read may be served from the edge's copy when no write happened
                // since it was read. The revision is read before the fetch, so a fetch that
                // raced a write is never served.
                let anonymous = read_cache_control(&headers) == PUBLIC_MAX_AGE;
                let revision = if anonymous {
                    self.content_revision().await
                } else {
                    None
                };
                if let Some(current) = &revision {
                    let hit = self
                        .inner
                        .content_cache
                        .get(&slug)
                        .filter(|hit| &hit.revision == current);
                    portico_telemetry::metrics::cache_lookup("edge", hit.is_some());
                    if let Some(hit) = hit {
                        return Ok(cacheable(
                            &headers,
                            hit.body.clone(),
                            PUBLIC_MAX_AGE,
                            &hit.etag,
                        ));
                    }
                }
                let request_slug = slug.clone();
                let request = pb::GetContentRequest { slug };
                let item = finish(
                    backend,
                    "GetContent",
                    client
                        .get_content(self.call(request, context, forwarded))
                        .await,
                )?;
                let body = Bytes::from(to_json(&item).to_string());
                let etag = etag_of(&body);
                // Only an anonymous read has a revision: a credentialed one is never kept.
                if let Some(revision) = revision {
                    self.inner.content_cache.insert(
                        request_slug,
                        Arc::new(CachedItem {
                            revision,
                            body: body.clone(),
                            etag: etag.clone(),
                        }),
                    );
                }
                Ok(cacheable(
                    &headers,
                    body,
                    read_cache_control(&headers),
                    &etag,
                ))
            }
            Handler::AdminContentCreate => {
                let b: CreateBody = parse_json(&read_body(body).await?)?;
                let request = pb::CreateContentRequest {
                    slug: b.slug,
                    title: b.title,
                    body: b.body,
                    tags: b.tags,
                    status: status_of(b.status.as_deref())?,
                };
                let item = finish(
                    backend,
                    "CreateContent",
                    client
                        .create_content(self.call(request, context, forwarded))
                        .await,
                )?;
                Ok(response::json_response(
                    StatusCode::CREATED,
                    &to_json(&item),
                ))
            }
            Handler::AdminContentUpdate => {
                let b: UpdateBody = parse_json(&read_body(body).await?)?;
                let expected = if_match(&headers).or(b.version).ok_or_else(|| {
                    ApiError::new(
                        Code::FailedPrecondition,
                        "send If-Match with the version you edited (or `version` in the body)",
                    )
                })?;
                let request = pb::UpdateContentRequest {
                    slug,
                    expected_version: expected,
                    title: b.title,
                    body: b.body,
                    tags: b.tags,
                    status: status_of(b.status.as_deref())?,
                };
                let item = finish(
                    backend,
                    "UpdateContent",
                    client
                        .update_content(self.call(request, context, forwarded))
                        .await,
                )?;
                Ok(response::json_response(StatusCode::OK, &to_json(&item)))
            }
            Handler::AdminContentDelete => {
                let request = pb::DeleteContentRequest { slug };
                finish(
                    backend,
                    "DeleteContent",
                    client
                        .delete_content(self.call(request, context, forwarded))
                        .await,
                )?;
                let mut response = http::Response::new(response::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            _ => Err(ApiError::new(Code::Internal, "not a content route")),
        }
    }
}
