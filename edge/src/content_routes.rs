//! The content routes (README, Content; content.proto): public reads with `ETag`,
//! `Last-Modified`, `If-None-Match` → 304 and `Cache-Control`; admin CRUD with RFC 9110
//! conditional writes: `If-Match` takes the ETag the reads send (or `*`, or the bare version
//! older clients send), a stale one is 412, a PUT without one 428. Admin credentials travel
//! as metadata and are checked by the content service; the edge checks them too before it
//! reads an item for an admin (GetContent answers anyone, published items only).

use std::sync::Arc;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use portico_proto::{
    content::{self as pb, content_service_client::ContentServiceClient},
    limits::content::{MAX_BODY_BYTES, MAX_SLUG, MAX_TAG, MAX_TAGS},
};
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
    transcoder::rules,
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
    /// The expected version, when the client does not send `If-Match` (older clients).
    #[serde(default, deserialize_with = "crate::whole::option")]
    version: Option<i64>,
}

// The request schemas below state the content service's limits (`portico_proto::limits`).

/// `schema` with the `portico.api.v1.schema` of `CreateContentRequest.{field}` over it: what the
/// content service takes, as the transcoded routes state it too (a title is counted after
/// trimming, a body in bytes, which `maxLength` cannot say).
fn like_proto(field: &str, mut schema: Value) -> Value {
    let option =
        rules::portico_schema_of(&format!("portico.content.v1.CreateContentRequest.{field}"));
    if let Some(Value::Object(option)) = option {
        for (keyword, value) in option.into_iter().filter(|(k, _)| k != "required") {
            schema[keyword] = value;
        }
    }
    schema
}

fn editable_properties() -> serde_json::Map<String, Value> {
    let tag = json!({"type": "string", "pattern": format!("^[a-z0-9-]{{1,{MAX_TAG}}}$")});
    let properties = json!({
        "title": like_proto("title", json!({"type": "string"})),
        "body": like_proto("body", json!({"type": "string",
            "description": format!("Markdown, at most {MAX_BODY_BYTES} bytes of UTF-8")})),
        "tags": {"type": "array", "maxItems": MAX_TAGS, "items": tag},
        "status": {"type": ["string", "null"], "enum": ["draft", "published", null]},
    });
    match properties {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// `POST /api/v1/admin/content`.
pub(crate) fn create_schema() -> Value {
    let mut properties = editable_properties();
    properties.insert(
        "slug".into(),
        json!({"type": "string", "pattern": format!("^[a-z0-9-]{{1,{MAX_SLUG}}}$")}),
    );
    json!({"type": "object", "required": ["slug", "title"], "additionalProperties": false,
           "properties": properties})
}

/// `PUT /api/v1/admin/content/{slug}` (the version is `If-Match`'s, or `version` for older
/// clients).
pub(crate) fn update_schema() -> Value {
    let mut properties = editable_properties();
    properties.insert(
        "version".into(),
        json!({"type": ["integer", "null"], "format": "int64", "minimum": 1}),
    );
    json!({"type": "object", "required": ["title"], "additionalProperties": false,
           "properties": properties})
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

/// The digest a strong validator is made of: the representation's bytes, hashed.
fn digest(body: &[u8]) -> String {
    B64.encode(&Sha256::digest(body)[..16])
}

/// A strong validator of a list page: its bytes, hashed.
fn etag_of(body: &[u8]) -> String {
    format!("\"{}\"", digest(body))
}

/// One item as the edge answers it: the JSON bytes and their validators.
struct Item {
    version: i64,
    body: Bytes,
    /// `"<version>-<digest of the bytes>"`: strong (the bytes decide), and it names the
    /// version a conditional write replaces.
    etag: String,
    /// `updated_at` as an IMF-fixdate.
    last_modified: Option<String>,
}

impl Item {
    fn new(content: &pb::Content) -> Self {
        let body = Bytes::from(to_json(content).to_string());
        Self {
            version: content.version,
            etag: format!("\"{}-{}\"", content.version, digest(&body)),
            last_modified: http_date(&content.updated_at),
            body,
        }
    }

    /// `ETag` and `Last-Modified` on `response`.
    fn validators(&self, response: &mut Response) {
        validators(response, &self.etag, self.last_modified.as_deref());
    }
}

fn validators(response: &mut Response, etag: &str, last_modified: Option<&str>) {
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    if let Some(value) = last_modified.and_then(|v| HeaderValue::from_str(v).ok()) {
        response.headers_mut().insert(header::LAST_MODIFIED, value);
    }
}

/// An RFC 3339 UTC time (`2026-11-22T12:20:54.973Z`, as the services write them) as an
/// IMF-fixdate (`Sun, 22 Nov 2026 12:20:54 GMT`, RFC 9110 §5.6.7); `None` when it is not one.
fn http_date(rfc3339: &str) -> Option<String> {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let b = rfc3339.as_bytes();
    let shape = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && rfc3339.ends_with('Z');
    if !shape {
        return None;
    }
    let number = |range: std::ops::Range<usize>| rfc3339.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm); that day was a Thursday.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let weekday = DAYS[usize::try_from((days + 4).rem_euclid(7)).ok()?];
    let month_name = MONTHS[usize::try_from(month - 1).ok()?];
    Some(format!(
        "{weekday}, {day:02} {month_name} {year:04} {hour:02}:{minute:02}:{second:02} GMT"
    ))
}

/// One element of `If-Match`.
#[derive(Debug, PartialEq, Eq)]
struct EntityTag {
    weak: bool,
    /// Between the quotes.
    opaque: String,
}

impl EntityTag {
    /// The version an older client sends instead of the ETag (`3`, `"3"`, `W/"3"`).
    fn bare_version(&self) -> Option<i64> {
        if self.opaque.is_empty() || !self.opaque.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        self.opaque.parse().ok()
    }

    /// RFC 9110's strong comparison with the item's ETag (a weak tag never matches), or, for a
    /// bare version, the version.
    fn matches(&self, item: &Item) -> bool {
        match self.bare_version() {
            Some(version) => version == item.version,
            None => !self.weak && item.etag.get(1..item.etag.len() - 1) == Some(&self.opaque),
        }
    }
}

/// `If-Match` (every such header, RFC 9110 §13.1.1).
#[derive(Debug, PartialEq, Eq)]
enum IfMatch {
    /// `*`: any current item.
    Any,
    /// Entity tags, at least one.
    Tags(Vec<EntityTag>),
}

/// Parses `If-Match`; `None` when the request has none. A value that is not `*` or a list of
/// entity tags (or bare versions) is a 400.
fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let invalid = || {
        ApiError::new(
            Code::InvalidArgument,
            "If-Match must be * or the ETag of the item (GET /api/v1/admin/content/{slug} sends it)",
        )
    };
    let mut any = false;
    let mut tags = Vec::new();
    for value in headers.get_all(header::IF_MATCH) {
        let mut rest = value.to_str().map_err(|_| invalid())?;
        loop {
            rest = rest.trim_start_matches([' ', '\t', ',']);
            if rest.is_empty() {
                break;
            }
            if let Some(after) = rest.strip_prefix('*') {
                any = true;
                rest = after;
                continue;
            }
            let (weak, tail) = match rest.strip_prefix("W/") {
                Some(tail) => (true, tail),
                None => (false, rest),
            };
            if let Some(quoted) = tail.strip_prefix('"') {
                let end = quoted.find('"').ok_or_else(invalid)?;
                tags.push(EntityTag {
                    weak,
                    opaque: quoted[..end].to_owned(),
                });
                rest = &quoted[end + 1..];
            } else {
                // An older client's unquoted version: `If-Match: 3`.
                let end = tail.find([' ', '\t', ',']).unwrap_or(tail.len());
                let tag = EntityTag {
                    weak,
                    opaque: tail[..end].to_owned(),
                };
                tag.bare_version().ok_or_else(invalid)?;
                tags.push(tag);
                rest = &tail[end..];
            }
        }
    }
    Ok(match (any, tags.is_empty()) {
        (true, _) => Some(IfMatch::Any),
        (false, false) => Some(IfMatch::Tags(tags)),
        (false, true) if headers.contains_key(header::IF_MATCH) => return Err(invalid()),
        (false, true) => None,
    })
}

/// 412: what the client's precondition was evaluated against changed.
fn precondition_failed(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::FailedPrecondition, message).with_status(StatusCode::PRECONDITION_FAILED)
}

/// A conditional write the service refused as ABORTED (the version moved): 412, with the
/// service's message (it names the current version).
fn stale(error: ApiError) -> ApiError {
    if error.code == Code::Aborted {
        precondition_failed(error.message)
    } else {
        error
    }
}

/// 200 with `ETag`, `Last-Modified` and `Cache-Control`, or 304 when the client already has it.
fn cacheable(
    request_headers: &HeaderMap,
    body: Bytes,
    cache_control: &'static str,
    etag: &str,
    last_modified: Option<&str>,
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
    validators(&mut response, etag, last_modified);
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

/// A public item as the edge keeps it: the epoch it was read under (see `content_revision`),
/// the bytes and their validators.
pub(crate) struct CachedItem {
    epoch: u64,
    body: Bytes,
    etag: String,
    last_modified: Option<String>,
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
    /// Admin credentials for content (`X-Admin-Key`, an admin's token, or an API key with
    /// `content:write`), checked with the routine the content service uses.
    async fn content_admin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let metadata = tonic::metadata::MetadataMap::from_headers(headers.clone());
        portico_tokens::authorize_scope(
            &metadata,
            self.inner.admin_key.as_ref(),
            &self.inner.verifier,
            portico_tokens::Scope::ContentWrite,
        )
        .await
        .map_err(|refusal| ApiError::from_status(&refusal.into(), "content"))?;
        Ok(())
    }

    /// The item as an admin sees it (drafts included); the caller's credentials are forwarded.
    async fn admin_item(
        &self,
        slug: &str,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<Item, ApiError> {
        let backend = &self.inner.backends.content;
        let request = pb::GetContentRequest {
            slug: slug.to_owned(),
        };
        let content = finish(
            backend,
            "GetContent",
            ContentServiceClient::new(backend.channel.clone())
                .get_content(self.call(request, context, forwarded))
                .await,
        )?;
        Ok(Item::new(&content))
    }

    /// The version a conditional write may replace: the current one when `If-Match` is `*` or
    /// matches the item's ETag (412 otherwise), or the bare version an older client sent (the
    /// service compares it when it writes).
    async fn expected_version(
        &self,
        slug: &str,
        precondition: IfMatch,
        context: &RequestContext,
        forwarded: &Forwarded,
    ) -> Result<i64, ApiError> {
        if let IfMatch::Tags(tags) = &precondition {
            if let [tag] = tags.as_slice() {
                if let Some(version) = tag.bare_version() {
                    return Ok(version);
                }
            }
        }
        let current = self.admin_item(slug, context, forwarded).await?;
        match precondition {
            IfMatch::Any => Ok(current.version),
            IfMatch::Tags(tags) if tags.iter().any(|tag| tag.matches(&current)) => {
                Ok(current.version)
            }
            IfMatch::Tags(_) => Err(precondition_failed(format!(
                "If-Match does not match `{slug}`: it is now {} (version {}); someone changed it since you read it — reload and apply your change again",
                current.etag, current.version
            ))),
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
                    None,
                ))
            }
            Handler::ContentGet => {
                // An anonymous read may be served from the edge's copy while the epoch it was
                // read under is current. The epoch is taken before the fetch, so a fetch that
                // raced a write is never served after the write is known here.
                let anonymous = read_cache_control(&headers) == PUBLIC_MAX_AGE;
                let epoch = if anonymous {
                    self.inner.content_revision.current()
                } else {
                    None
                };
                if let Some(epoch) = epoch {
                    let hit = self
                        .inner
                        .content_cache
                        .get(&slug)
                        .filter(|hit| hit.epoch == epoch);
                    portico_telemetry::metrics::cache_lookup("edge", hit.is_some());
                    if let Some(hit) = hit {
                        return Ok(cacheable(
                            &headers,
                            hit.body.clone(),
                            PUBLIC_MAX_AGE,
                            &hit.etag,
                            hit.last_modified.as_deref(),
                        ));
                    }
                }
                let request_slug = slug.clone();
                let request = pb::GetContentRequest { slug };
                let content = finish(
                    backend,
                    "GetContent",
                    client
                        .get_content(self.call(request, context, forwarded))
                        .await,
                )?;
                let item = Item::new(&content);
                // Only an anonymous read has an epoch: a credentialed one is never kept.
                if let Some(epoch) = epoch {
                    self.inner.content_cache.insert(
                        request_slug,
                        Arc::new(CachedItem {
                            epoch,
                            body: item.body.clone(),
                            etag: item.etag.clone(),
                            last_modified: item.last_modified.clone(),
                        }),
                    );
                }
                Ok(cacheable(
                    &headers,
                    item.body,
                    read_cache_control(&headers),
                    &item.etag,
                    item.last_modified.as_deref(),
                ))
            }
            Handler::AdminContentGet => {
                self.content_admin(&headers).await?;
                let item = self.admin_item(&slug, context, forwarded).await?;
                Ok(cacheable(
                    &headers,
                    item.body,
                    PRIVATE,
                    &item.etag,
                    item.last_modified.as_deref(),
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
                let answer = client
                    .create_content(self.call(request, context, forwarded))
                    .await;
                // Whatever the outcome (a timeout may still have written): no copy from before.
                self.inner.content_revision.invalidate();
                let content = finish(backend, "CreateContent", answer)?;
                let item = Item::new(&content);
                let mut response = response::json_response(StatusCode::CREATED, &to_json(&content));
                item.validators(&mut response);
                Ok(response)
            }
            Handler::AdminContentUpdate => {
                self.content_admin(&headers).await?;
                let b: UpdateBody = parse_json(&read_body(body).await?)?;
                let precondition = match (if_match(&headers)?, b.version) {
                    (Some(precondition), _) => precondition,
                    (None, Some(version)) => IfMatch::Tags(vec![EntityTag {
                        weak: false,
                        opaque: version.to_string(),
                    }]),
                    (None, None) => {
                        return Err(ApiError::new(
                            Code::FailedPrecondition,
                            "PUT needs If-Match: the ETag of the item you edited (GET /api/v1/admin/content/{slug} sends it), or * to replace whatever is current",
                        )
                        .with_status(StatusCode::PRECONDITION_REQUIRED))
                    }
                };
                let status = status_of(b.status.as_deref())?;
                let expected = self
                    .expected_version(&slug, precondition, context, forwarded)
                    .await?;
                let request = pb::UpdateContentRequest {
                    slug,
                    expected_version: expected,
                    title: b.title,
                    body: b.body,
                    tags: b.tags,
                    status,
                };
                let answer = client
                    .update_content(self.call(request, context, forwarded))
                    .await;
                self.inner.content_revision.invalidate();
                let content = finish(backend, "UpdateContent", answer).map_err(stale)?;
                let item = Item::new(&content);
                let mut response = response::json_response(StatusCode::OK, &to_json(&content));
                item.validators(&mut response);
                Ok(response)
            }
            Handler::AdminContentDelete => {
                self.content_admin(&headers).await?;
                // If-Match is optional here (older clients send none); when sent, it must match.
                let expected = match if_match(&headers)? {
                    Some(precondition) => {
                        self.expected_version(&slug, precondition, context, forwarded)
                            .await?
                    }
                    None => 0,
                };
                let request = pb::DeleteContentRequest {
                    slug,
                    expected_version: expected,
                };
                let answer = client
                    .delete_content(self.call(request, context, forwarded))
                    .await;
                self.inner.content_revision.invalidate();
                finish(backend, "DeleteContent", answer).map_err(stale)?;
                let mut response = http::Response::new(response::empty());
                *response.status_mut() = StatusCode::NO_CONTENT;
                Ok(response)
            }
            _ => Err(ApiError::new(Code::Internal, "not a content route")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(if_match: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in if_match {
            headers.append(
                header::IF_MATCH,
                HeaderValue::from_str(value).expect("value"),
            );
        }
        headers
    }

    fn tag(weak: bool, opaque: &str) -> EntityTag {
        EntityTag {
            weak,
            opaque: opaque.to_owned(),
        }
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        // RFC 9110 §5.6.7's example instant, and a leap day.
        assert_eq!(
            http_date("1994-11-06T08:49:37.000Z").as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        assert_eq!(
            http_date("2024-02-29T23:59:59.999Z").as_deref(),
            Some("Thu, 29 Feb 2024 23:59:59 GMT")
        );
        assert_eq!(
            http_date("1970-01-01T00:00:00.000Z").as_deref(),
            Some("Thu, 01 Jan 1970 00:00:00 GMT")
        );
        assert_eq!(http_date("yesterday"), None);
        assert_eq!(http_date(""), None);
    }

    #[test]
    fn if_match_takes_etags_star_and_bare_versions() {
        assert_eq!(if_match(&headers(&[])).ok(), Some(None));
        assert_eq!(if_match(&headers(&["*"])).ok(), Some(Some(IfMatch::Any)));
        assert_eq!(
            if_match(&headers(&["\"3-abc\", W/\"x\"", "7"])).ok(),
            Some(Some(IfMatch::Tags(vec![
                tag(false, "3-abc"),
                tag(true, "x"),
                tag(false, "7")
            ])))
        );
        for bad in ["", "abc", "\"open", "W/x"] {
            assert!(if_match(&headers(&[bad])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_etag_matches_strongly_and_a_bare_version_by_version() {
        let item = Item::new(&pb::Content {
            slug: "a".into(),
            title: "A".into(),
            version: 3,
            updated_at: "2026-01-02T03:04:05.006Z".into(),
            ..Default::default()
        });
        assert!(item.etag.starts_with("\"3-"), "{}", item.etag);
        let opaque = item.etag.trim_matches('"');
        assert!(tag(false, opaque).matches(&item));
        assert!(!tag(true, opaque).matches(&item), "weak never matches");
        assert!(!tag(false, "3-other").matches(&item));
        assert!(tag(false, "3").matches(&item) && tag(true, "3").matches(&item));
        assert!(!tag(false, "2").matches(&item));
        assert_eq!(
            item.last_modified.as_deref(),
            Some("Fri, 02 Jan 2026 03:04:05 GMT")
        );
    }
}
