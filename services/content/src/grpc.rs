//! `portico.content.v1.ContentService` over gRPC, with validation, admin checks and the cache.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine as _};
use bytes::Bytes;
use portico_config::SecretString;
use portico_proto::{
    content::{self as pb, content_service_server::ContentService},
    limits::content as limits,
};
use prost::Message as _;
use sha2::{Digest as _, Sha256};
use tonic::{Request, Response, Status};

use crate::{
    cache::Cache,
    store::{Position, Store},
    Error,
};

// The contract's limits (`portico_proto::limits::content`, which the edge's OpenAPI states too).
const MAX_SLUG: usize = limits::MAX_SLUG as usize;
const MAX_TITLE: usize = limits::MAX_TITLE as usize;
const MAX_BODY: usize = limits::MAX_BODY_BYTES as usize;
const MAX_TAGS: usize = limits::MAX_TAGS as usize;
const MAX_TAG: usize = limits::MAX_TAG as usize;
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

/// The gRPC face of the content service.
#[derive(Debug, Clone)]
pub struct ContentGrpc {
    pub(crate) store: Store,
    pub(crate) cache: Cache,
    pub(crate) admin_key: Option<SecretString>,
    pub(crate) verifier: portico_tokens::Verifier,
    /// Ends the `WatchRevision` streams, so a drain does not wait for them.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

/// The stream `WatchRevision` answers.
type RevisionStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::Revision, Status>> + Send>>;

fn url_safe(value: &str) -> bool {
    value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check_slug(slug: &str) -> Result<(), Error> {
    if slug.is_empty() || slug.len() > MAX_SLUG || !url_safe(slug) {
        return Err(Error::InvalidArgument(format!(
            "slug must be 1 to {MAX_SLUG} characters of [a-z0-9-]"
        )));
    }
    Ok(())
}

/// Validates and normalises the editable fields.
fn check_fields(
    title: &str,
    body: &str,
    tags: &[String],
    status: i32,
) -> Result<(String, Vec<String>), Error> {
    // Every bad field is reported (a `google.rpc.BadRequest` violation each), not only the first.
    let mut violations: Vec<(String, String)> = Vec::new();
    let title = title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        violations.push((
            "title".into(),
            format!("title must be 1 to {MAX_TITLE} characters"),
        ));
    }
    if body.len() > MAX_BODY {
        violations.push((
            "body".into(),
            format!("body must be at most {MAX_BODY} bytes"),
        ));
    }
    if tags.len() > MAX_TAGS {
        violations.push(("tags".into(), format!("at most {MAX_TAGS} tags")));
    }
    let mut unique: Vec<String> = Vec::with_capacity(tags.len());
    for (index, tag) in tags.iter().enumerate() {
        if tag.is_empty() || tag.len() > MAX_TAG || !url_safe(tag) {
            violations.push((
                format!("tags[{index}]"),
                format!("tag `{tag}` must be 1 to {MAX_TAG} characters of [a-z0-9-]"),
            ));
        } else if !unique.contains(tag) {
            unique.push(tag.clone());
        }
    }
    if pb::Status::try_from(status).is_err() {
        violations.push((
            "status".into(),
            "status must be STATUS_DRAFT or STATUS_PUBLISHED".into(),
        ));
    }
    if !violations.is_empty() {
        return Err(Error::InvalidFields(violations));
    }
    Ok((title.to_owned(), unique))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn decode_cursor(cursor: &str) -> Result<Option<Position>, Error> {
    if cursor.is_empty() {
        return Ok(None);
    }
    let invalid = || Error::InvalidArgument("cursor is not one this service issued".into());
    let raw = B64.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(raw).map_err(|_| invalid())?;
    let (key, id) = text.split_once(':').ok_or_else(invalid)?;
    Ok(Some(Position {
        key: key.parse().map_err(|_| invalid())?,
        id: id.parse().map_err(|_| invalid())?,
    }))
}

fn encode_cursor(position: Position) -> String {
    B64.encode(format!("{}:{}", position.key, position.id))
}

impl ContentGrpc {
    /// Content management: `X-Admin-Key`, an admin's token, or an admin's API key with the
    /// `content:write` (or `admin`) scope.
    async fn admin<T>(&self, request: &Request<T>) -> Result<(), Error> {
        portico_tokens::authorize_scope(
            request.metadata(),
            self.admin_key.as_ref(),
            &self.verifier,
            portico_tokens::Scope::ContentWrite,
        )
        .await?;
        Ok(())
    }

    /// True when the caller presents valid admin credentials (public reads do not need any).
    async fn is_admin<T>(&self, request: &Request<T>) -> bool {
        let metadata = request.metadata();
        (metadata.contains_key("x-admin-key")
            || metadata.contains_key("authorization")
            || metadata.contains_key(portico_tokens::API_KEY_HEADER))
            && self.admin(request).await.is_ok()
    }

    async fn page(
        &self,
        request: &pb::ListContentRequest,
    ) -> Result<pb::ListContentResponse, Error> {
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n if n <= MAX_LIMIT => n,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "limit must be 1 to {MAX_LIMIT}"
                )))
            }
        };
        let tag = (!request.tag.is_empty()).then_some(request.tag.as_str());
        if let Some(tag) = tag {
            if tag.len() > MAX_TAG || !url_safe(tag) {
                return Err(Error::InvalidArgument(format!(
                    "tag must be 1 to {MAX_TAG} characters of [a-z0-9-]"
                )));
            }
        }
        let after = decode_cursor(&request.cursor)?;
        let mut rows = self
            .store
            .list(request.include_drafts, tag, after, limit)
            .await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = match rows.last() {
            Some(last) if more => encode_cursor(Position {
                key: if request.include_drafts {
                    last.id
                } else {
                    last.published_at_ms.unwrap_or(0)
                },
                id: last.id,
            }),
            _ => String::new(),
        };
        Ok(pb::ListContentResponse {
            items: rows.into_iter().map(|r| r.content).collect(),
            next_cursor,
        })
    }

    async fn current(&self, slug: &str) -> Result<pb::Content, Error> {
        self.store
            .get(slug)
            .await?
            .map(|r| r.content)
            .ok_or_else(|| Error::NotFound(format!("no content `{slug}`")))
    }
}

#[tonic::async_trait]
impl ContentService for ContentGrpc {
    type WatchRevisionStream = RevisionStream;

    async fn watch_revision(
        &self,
        _request: Request<pb::WatchRevisionRequest>,
    ) -> Result<Response<Self::WatchRevisionStream>, Status> {
        // The first revision sent is read now, not the last one a poll happened to see.
        self.cache.refresh_revision().await;
        let receiver = self.cache.watch_revision();
        let shutdown = self.shutdown.clone();
        let stream = futures_util::stream::unfold(
            (receiver, shutdown, true),
            |(mut receiver, shutdown, first)| async move {
                if shutdown.is_cancelled() {
                    return None;
                }
                if !first {
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        changed = receiver.changed() => changed.ok()?,
                    }
                }
                let revision = receiver.borrow_and_update().to_vec();
                Some((Ok(pb::Revision { revision }), (receiver, shutdown, false)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_content(
        &self,
        request: Request<pb::GetContentRequest>,
    ) -> Result<Response<pb::Content>, Status> {
        let slug = request.get_ref().slug.clone();
        check_slug(&slug)?;
        if self.is_admin(&request).await {
            return Ok(Response::new(self.current(&slug).await?));
        }
        let bytes = self
            .cache
            .get_or_load(&format!("content:{slug}"), || async {
                let content = self.current(&slug).await?;
                if content.status != pb::Status::Published as i32 {
                    return Err(Error::NotFound(format!("no content `{slug}`")));
                }
                Ok::<_, Error>(Bytes::from(content.encode_to_vec()))
            })
            .await?;
        let content = pb::Content::decode(bytes).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(content))
    }

    async fn list_content(
        &self,
        request: Request<pb::ListContentRequest>,
    ) -> Result<Response<pb::ListContentResponse>, Status> {
        if request.get_ref().include_drafts {
            self.admin(&request).await?;
            return Ok(Response::new(self.page(request.get_ref()).await?));
        }
        let r = request.get_ref();
        let key = format!(
            "content:list:{}",
            B64.encode(Sha256::digest(format!(
                "{}|{}|{}",
                r.cursor, r.limit, r.tag
            )))
        );
        let bytes = self
            .cache
            .get_or_load(&key, || async {
                Ok::<_, Error>(Bytes::from(self.page(r).await?.encode_to_vec()))
            })
            .await?;
        Ok(Response::new(
            pb::ListContentResponse::decode(bytes).map_err(|e| Status::internal(e.to_string()))?,
        ))
    }

    async fn create_content(
        &self,
        request: Request<pb::CreateContentRequest>,
    ) -> Result<Response<pb::Content>, Status> {
        self.admin(&request).await?;
        let r = request.into_inner();
        check_slug(&r.slug)?;
        let status = if r.status == pb::Status::Unspecified as i32 {
            pb::Status::Draft as i32
        } else {
            r.status
        };
        let (title, tags) = check_fields(&r.title, &r.body, &r.tags, status)?;
        let content = pb::Content {
            slug: r.slug.clone(),
            title,
            body: r.body,
            tags,
            status,
            ..Default::default()
        };
        self.cache.begin_write().await.map_err(Error::from)?;
        match self.store.insert(&content, now_ms()).await {
            Ok(()) => {}
            Err(error)
                if matches!(
                    error.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                return Err(Error::AlreadyExists(format!("slug `{}` is taken", r.slug)).into());
            }
            Err(error) => return Err(Error::from(error).into()),
        }
        self.cache.invalidate(&r.slug).await;
        Ok(Response::new(self.current(&r.slug).await?))
    }

    async fn update_content(
        &self,
        request: Request<pb::UpdateContentRequest>,
    ) -> Result<Response<pb::Content>, Status> {
        self.admin(&request).await?;
        let r = request.into_inner();
        check_slug(&r.slug)?;
        if r.expected_version < 1 {
            return Err(Status::invalid_argument(
                "expected_version (If-Match) is required",
            ));
        }
        let existing = self.current(&r.slug).await?;
        let status = if r.status == pb::Status::Unspecified as i32 {
            existing.status
        } else {
            r.status
        };
        let (title, tags) = check_fields(&r.title, &r.body, &r.tags, status)?;
        let content = pb::Content {
            slug: r.slug.clone(),
            title,
            body: r.body,
            tags,
            status,
            ..Default::default()
        };
        self.cache.begin_write().await.map_err(Error::from)?;
        if !self
            .store
            .update(&content, r.expected_version, now_ms())
            .await
            .map_err(Error::from)?
        {
            let now = self.current(&r.slug).await?;
            return Err(Error::Aborted(format!(
                "version {} is not current (it is {}): reload and apply your change again",
                r.expected_version, now.version
            ))
            .into());
        }
        self.cache.invalidate(&r.slug).await;
        Ok(Response::new(self.current(&r.slug).await?))
    }

    async fn delete_content(
        &self,
        request: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<pb::DeleteContentResponse>, Status> {
        self.admin(&request).await?;
        let r = request.into_inner();
        let slug = r.slug;
        check_slug(&slug)?;
        if r.expected_version < 0 {
            return Err(Status::invalid_argument(
                "expected_version must be 0 (any) or a version",
            ));
        }
        self.cache.begin_write().await.map_err(Error::from)?;
        let expected = (r.expected_version > 0).then_some(r.expected_version);
        if !self
            .store
            .delete(&slug, expected)
            .await
            .map_err(Error::from)?
        {
            let now = self.current(&slug).await?;
            return Err(Error::Aborted(format!(
                "version {} is not current (it is {}): reload before deleting",
                r.expected_version, now.version
            ))
            .into());
        }
        self.cache.invalidate(&slug).await;
        Ok(Response::new(pb::DeleteContentResponse {}))
    }
}
