//! The content service: CRUD over REST and gRPC, validation, drafts, keyset pagination under
//! concurrent inserts, optimistic concurrency, ETag/304, RFC 9110 conditional writes (412,
//! 428, `If-Match: *`, Last-Modified), admin by key and by JWT, two replicas sharing Redis,
//! Redis outages, and the edge's copies following ContentService.WatchRevision.

use std::time::Duration;

use portico::Component;
use portico_proto::content::{self as pb, content_service_client::ContentServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::harness::{self, PrivateRedis, TestSuite};

const KEY: &str = "admin-secret-for-tests-0123456789abcdef";

async fn admin_suite() -> TestSuite {
    TestSuite::builder()
        .env("ADMIN_API_KEY", KEY)
        .env("RATE_LIMIT_GLOBAL_MAX", "10000")
        .env("RATE_LIMIT_AUTH_MAX", "100")
        .spawn()
        .await
}

async fn create(suite: &TestSuite, body: Value) -> reqwest::Response {
    suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .header("x-admin-key", KEY)
        .json(&body)
        .send()
        .await
        .expect("edge")
}

fn article(slug: &str, status: &str) -> Value {
    json!({"slug": slug, "title": format!("Title of {slug}"), "body": "# Hello", "tags": ["news"], "status": status})
}

/// How long the edge may take to see a revision or lose its stream.
const NOTICE: Duration = Duration::from_secs(10);

/// Waits, bounded by [`NOTICE`], until the readiness at `readyz` reports the edge's content
/// copies `on` (it follows WatchRevision) or `off`.
async fn edge_cache(http: &reqwest::Client, readyz: &str, want: &str) {
    let deadline = Instant::now() + NOTICE;
    loop {
        let body: Value = http
            .get(readyz)
            .send()
            .await
            .expect("edge")
            .json()
            .await
            .expect("json");
        if body["checks"]["content"]["edgeCache"] == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the edge's content copies never turned {want}: {body}"
        );
        tokio::task::yield_now().await;
    }
}

/// The `version` a read of `url` answers.
async fn version_at(http: &reqwest::Client, url: &str) -> i64 {
    let item: Value = http
        .get(url)
        .send()
        .await
        .expect("edge")
        .json()
        .await
        .expect("json");
    item["version"].as_i64().expect("version")
}

/// Waits, bounded by [`NOTICE`], until a read of `url` answers `version`.
async fn until_version(http: &reqwest::Client, url: &str, version: i64) {
    let deadline = Instant::now() + NOTICE;
    loop {
        let seen = version_at(http, url).await;
        if seen == version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} still answers version {seen}, not {version}"
        );
        tokio::task::yield_now().await;
    }
}

/// An IMF-fixdate (`Sun, 22 Nov 2026 12:20:54 GMT`) as the RFC 3339 seconds it names
/// (`2026-11-22T12:20:54`), or `None`.
fn imf_fixdate_as_rfc3339(date: &str) -> Option<String> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = date.split(' ').collect();
    let [weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    if !weekday.ends_with(',') || day.len() != 2 || year.len() != 4 || time.len() != 8 {
        return None;
    }
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    Some(format!("{year}-{month:02}-{day}T{time}"))
}

#[tokio::test]
async fn crud_over_rest_with_etags() {
    let suite = admin_suite().await;
    let created = create(&suite, article("hello-world", "published")).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.expect("json");
    assert_eq!(created["version"], 1);
    assert!(created["publishedAt"].is_string());

    let first = suite.get("/api/v1/content/hello-world").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["cache-control"], "public, max-age=30");
    let etag = first.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(
        etag.starts_with("\"1-"),
        "the ETag names the version: {etag}"
    );
    let last_modified = first.headers()["last-modified"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let not_modified = suite
        .http
        .get(suite.url("/api/v1/content/hello-world"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("edge");
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert_eq!(
        not_modified.headers()["last-modified"],
        last_modified.as_str()
    );

    let updated = suite
        .http
        .put(suite.url("/api/v1/admin/content/hello-world"))
        .header("x-admin-key", KEY)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "Hello again", "body": "Updated", "tags": ["news", "update"]}))
        .send()
        .await
        .expect("edge");
    assert_eq!(updated.status(), StatusCode::OK);
    let updated: Value = updated.json().await.expect("json");
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["status"], "published", "status kept when not sent");

    let after = suite
        .http
        .get(suite.url("/api/v1/content/hello-world"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("edge");
    assert_eq!(
        after.status(),
        StatusCode::OK,
        "the old ETag no longer matches"
    );
    assert_ne!(after.headers()["etag"].to_str().expect("etag"), etag);
    let body: Value = after.json().await.expect("json");
    assert_eq!(body["title"], "Hello again");

    let deleted = suite
        .http
        .delete(suite.url("/api/v1/admin/content/hello-world"))
        .header("x-admin-key", KEY)
        .send()
        .await
        .expect("edge");
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        suite.get("/api/v1/content/hello-world").await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn crud_over_grpc() {
    let suite = admin_suite().await;
    let mut content = ContentServiceClient::new(suite.channel(Component::Content).await);
    let created = content
        .create_content(admin(pb::CreateContentRequest {
            slug: "grpc-item".into(),
            title: "From gRPC".into(),
            body: "body".into(),
            tags: vec!["a".into()],
            status: pb::Status::Published as i32,
        }))
        .await
        .expect("create")
        .into_inner();
    assert_eq!(created.version, 1);
    let got = content
        .get_content(pb::GetContentRequest {
            slug: "grpc-item".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.title, "From gRPC");
    let missing_key = content
        .create_content(pb::CreateContentRequest {
            slug: "x".into(),
            title: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("no admin");
    assert_eq!(missing_key.code(), tonic::Code::Unauthenticated);
    let stale = content
        .delete_content(admin(pb::DeleteContentRequest {
            slug: "grpc-item".into(),
            expected_version: 2,
        }))
        .await
        .expect_err("not version 2");
    assert_eq!(stale.code(), tonic::Code::Aborted);
    content
        .delete_content(admin(pb::DeleteContentRequest {
            slug: "grpc-item".into(),
            expected_version: 1,
        }))
        .await
        .expect("delete");
    let gone = content
        .get_content(pb::GetContentRequest {
            slug: "grpc-item".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(gone.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn every_validation_rule_is_a_400_with_a_message() {
    let suite = admin_suite().await;
    let long_body = "x".repeat(256 * 1024 + 1);
    let many_tags: Vec<String> = (0..17).map(|i| format!("t{i}")).collect();
    for (body, fragment) in [
        (json!({"slug": "Bad_Slug", "title": "t"}), "slug"),
        (json!({"slug": "s".repeat(101), "title": "t"}), "slug"),
        (json!({"slug": "ok", "title": "   "}), "title"),
        (json!({"slug": "ok", "title": "t".repeat(201)}), "title"),
        (
            json!({"slug": "ok", "title": "t", "body": long_body}),
            "body",
        ),
        (
            json!({"slug": "ok", "title": "t", "tags": many_tags}),
            "tags",
        ),
        (
            json!({"slug": "ok", "title": "t", "tags": ["No Spaces"]}),
            "tag",
        ),
        (
            json!({"slug": "ok", "title": "t", "status": "archived"}),
            "status",
        ),
        (
            json!({"slug": "ok", "title": "t", "author": "me"}),
            "unknown field",
        ),
    ] {
        let response = create(&suite, body.clone()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error: Value = response.json().await.expect("json");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(fragment)),
            "{fragment}: {error}"
        );
    }
    // A title is counted after trimming, as the schema's pattern counts it: 200 characters
    // between spaces are a title, stored without them.
    let padded = format!("  {}\u{3000}", "t".repeat(200));
    let response = create(&suite, json!({"slug": "padded", "title": padded})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let stored: Value = response.json().await.expect("json");
    assert_eq!(stored["title"], "t".repeat(200), "{stored}");
    assert_eq!(
        suite.get("/api/v1/content?limit=0").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        suite.get("/api/v1/content?limit=101").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        suite.get("/api/v1/content?cursor=bogus").await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        create(&suite, article("dup", "draft")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        create(&suite, article("dup", "draft")).await.status(),
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn drafts_are_invisible_to_the_public() {
    let suite = admin_suite().await;
    create(&suite, article("secret-plan", "draft")).await;
    create(&suite, article("announcement", "published")).await;
    assert_eq!(
        suite.get("/api/v1/content/secret-plan").await.status(),
        StatusCode::NOT_FOUND
    );
    let public: Value = suite
        .get("/api/v1/content")
        .await
        .json()
        .await
        .expect("json");
    let slugs: Vec<&str> = public["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["slug"].as_str())
        .collect();
    assert_eq!(slugs, ["announcement"]);
    let admin: Value = suite
        .http
        .get(suite.url("/api/v1/admin/content"))
        .header("x-admin-key", KEY)
        .send()
        .await
        .expect("edge")
        .json()
        .await
        .expect("json");
    assert_eq!(admin["items"].as_array().map(Vec::len), Some(2));
    let tagged: Value = suite
        .get("/api/v1/content?tag=nothing-here")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(tagged["items"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn pagination_is_stable_while_inserting() {
    let suite = admin_suite().await;
    for n in 0..5 {
        assert_eq!(
            create(&suite, article(&format!("item-{n}"), "published"))
                .await
                .status(),
            StatusCode::CREATED
        );
    }
    let first: Value = suite
        .get("/api/v1/content?limit=2")
        .await
        .json()
        .await
        .expect("json");
    let mut seen: Vec<String> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["slug"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut cursor = first["nextCursor"].as_str().expect("more pages").to_owned();
    // New items arrive between pages: they belong before the cursor, never inside the walk.
    create(&suite, article("late-1", "published")).await;
    loop {
        let page: Value = suite
            .get(&format!("/api/v1/content?limit=2&cursor={cursor}"))
            .await
            .json()
            .await
            .expect("json");
        seen.extend(
            page["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["slug"].as_str().unwrap_or_default().to_owned()),
        );
        create(
            &suite,
            article(&format!("late-{}", seen.len()), "published"),
        )
        .await;
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["item-4", "item-3", "item-2", "item-1", "item-0"],
        "no duplicates, no gaps, newest first"
    );
}

#[tokio::test]
async fn a_stale_bare_version_is_a_412_and_a_missing_one_a_428() {
    let suite = admin_suite().await;
    create(&suite, article("shared-doc", "published")).await;
    let edit = |title: &str, version: &str| {
        suite
            .http
            .put(suite.url("/api/v1/admin/content/shared-doc"))
            .header("x-admin-key", KEY)
            .header("if-match", version)
            .json(&json!({"title": title}))
            .send()
    };
    assert_eq!(
        edit("Alice's edit", "\"1\"").await.expect("edge").status(),
        StatusCode::OK
    );
    // Older clients' bare version (`"1"`) is still accepted; a stale one is 412 (was 409).
    let bob = edit("Bob's edit", "\"1\"").await.expect("edge");
    assert_eq!(bob.status(), StatusCode::PRECONDITION_FAILED);
    let error: Value = bob.json().await.expect("json");
    assert_eq!(error["error"]["code"], "FAILED_PRECONDITION");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not current")),
        "{error}"
    );
    assert!(error["error"]["correlationId"].is_string());
    let current: Value = suite
        .get("/api/v1/content/shared-doc")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        current["title"], "Alice's edit",
        "nothing was overwritten silently"
    );
    let no_version = suite
        .http
        .put(suite.url("/api/v1/admin/content/shared-doc"))
        .header("x-admin-key", KEY)
        .json(&json!({"title": "blind"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(no_version.status(), StatusCode::PRECONDITION_REQUIRED);
    let error: Value = no_version.json().await.expect("json");
    assert_eq!(error["error"]["code"], "FAILED_PRECONDITION");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("If-Match")),
        "{error}"
    );
    let legacy_body_version = suite
        .http
        .put(suite.url("/api/v1/admin/content/shared-doc"))
        .header("x-admin-key", KEY)
        .json(&json!({"title": "by body version", "version": 2}))
        .send()
        .await
        .expect("edge");
    assert_eq!(legacy_body_version.status(), StatusCode::OK);
}

#[tokio::test]
async fn conditional_writes_take_the_etag_the_reads_send() {
    let suite = admin_suite().await;
    assert_eq!(
        create(&suite, article("guide", "published")).await.status(),
        StatusCode::CREATED
    );
    let admin_get = |slug: &str| {
        suite
            .http
            .get(suite.url(&format!("/api/v1/admin/content/{slug}")))
            .header("x-admin-key", KEY)
            .send()
    };
    let put = |if_match: Option<&str>, title: &str| {
        let mut request = suite
            .http
            .put(suite.url("/api/v1/admin/content/guide"))
            .header("x-admin-key", KEY)
            .json(&json!({"title": title, "status": "published"}));
        if let Some(value) = if_match {
            request = request.header("if-match", value);
        }
        request.send()
    };

    // The admin GET: the item with ETag and Last-Modified (from updatedAt); the public GET
    // sends the same ETag and Last-Modified.
    let read = admin_get("guide").await.expect("edge");
    assert_eq!(read.status(), StatusCode::OK);
    let v1 = read.headers()["etag"].to_str().expect("etag").to_owned();
    let last_modified = read.headers()["last-modified"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(read.headers()["cache-control"], "private, no-store");
    let item: Value = read.json().await.expect("json");
    assert_eq!(
        imf_fixdate_as_rfc3339(&last_modified),
        item["updatedAt"].as_str().map(|t| t[..19].to_owned()),
        "Last-Modified {last_modified} is updatedAt {}",
        item["updatedAt"]
    );
    let public = suite.get("/api/v1/content/guide").await;
    assert_eq!(public.headers()["etag"], v1.as_str());
    assert_eq!(public.headers()["last-modified"], last_modified.as_str());

    // The ETag round trip: the admin GET's ETag is accepted, and the answer carries the new one.
    let updated = put(Some(&v1), "Second edition").await.expect("edge");
    assert_eq!(updated.status(), StatusCode::OK);
    let v2 = updated.headers()["etag"].to_str().expect("etag").to_owned();
    assert!(v2.starts_with("\"2-") && v2 != v1, "{v2}");
    assert!(updated.headers().contains_key("last-modified"));
    let reread = admin_get("guide").await.expect("edge");
    assert_eq!(reread.headers()["etag"], v2.as_str());
    let item: Value = reread.json().await.expect("json");
    assert_eq!(
        imf_fixdate_as_rfc3339(updated.headers()["last-modified"].to_str().expect("ascii")),
        item["updatedAt"].as_str().map(|t| t[..19].to_owned())
    );

    // The old ETag after the update: 412 in the usual error body, nothing written.
    let stale = put(Some(&v1), "Lost update").await.expect("edge");
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let error: Value = stale.json().await.expect("json");
    assert_eq!(error["error"]["code"], "FAILED_PRECONDITION");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("If-Match") && message.contains("version 2"),
        "{error}"
    );
    assert!(error["error"]["correlationId"].is_string());
    // A weak tag never matches (strong comparison), a list matches when one of it does.
    let weak = put(Some(&format!("W/{v2}")), "weak").await.expect("edge");
    assert_eq!(weak.status(), StatusCode::PRECONDITION_FAILED);
    let listed = put(Some(&format!("{v1}, {v2}")), "Third edition")
        .await
        .expect("edge");
    assert_eq!(listed.status(), StatusCode::OK);
    let current: Value = suite
        .get("/api/v1/content/guide")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        (current["version"].clone(), current["title"].clone()),
        (json!(3), json!("Third edition"))
    );

    // `*` replaces whatever is current; on a missing item it is a 404.
    let any = put(Some("*"), "Any edition").await.expect("edge");
    assert_eq!(any.status(), StatusCode::OK);
    let any: Value = any.json().await.expect("json");
    assert_eq!(any["version"], 4);
    let missing = suite
        .http
        .put(suite.url("/api/v1/admin/content/no-such-item"))
        .header("x-admin-key", KEY)
        .header("if-match", "*")
        .json(&json!({"title": "x"}))
        .send()
        .await
        .expect("edge");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let missing = put(None, "no precondition").await.expect("edge");
    assert_eq!(missing.status(), StatusCode::PRECONDITION_REQUIRED);
    let garbage = put(Some("not-an-etag"), "x").await.expect("edge");
    assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);

    // DELETE: If-Match optional; a stale one is 412 and deletes nothing, the current one works.
    let delete = |if_match: &str| {
        suite
            .http
            .delete(suite.url("/api/v1/admin/content/guide"))
            .header("x-admin-key", KEY)
            .header("if-match", if_match)
            .send()
    };
    assert_eq!(
        delete(&v2).await.expect("edge").status(),
        StatusCode::PRECONDITION_FAILED
    );
    let current = admin_get("guide").await.expect("edge");
    assert_eq!(current.status(), StatusCode::OK, "nothing deleted");
    let v4 = current.headers()["etag"].to_str().expect("etag").to_owned();
    assert_eq!(
        delete(&v4).await.expect("edge").status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        admin_get("guide").await.expect("edge").status(),
        StatusCode::NOT_FOUND
    );

    // Drafts: the admin GET sees them, the public one does not; credentials are required.
    create(&suite, article("unpublished", "draft")).await;
    assert_eq!(
        admin_get("unpublished").await.expect("edge").status(),
        StatusCode::OK
    );
    assert_eq!(
        suite.get("/api/v1/content/unpublished").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        suite
            .get("/api/v1/admin/content/unpublished")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let user = suite.login("reader@example.com").await;
    let by_user = suite
        .http
        .get(suite.url("/api/v1/admin/content/unpublished"))
        .bearer_auth(&user)
        .send()
        .await
        .expect("edge");
    assert_eq!(by_user.status(), StatusCode::FORBIDDEN);
    let root = suite.login_admin("editor@example.com").await;
    let by_jwt = suite
        .http
        .get(suite.url("/api/v1/admin/content/unpublished"))
        .bearer_auth(&root)
        .send()
        .await
        .expect("edge");
    assert_eq!(by_jwt.status(), StatusCode::OK);
}

#[tokio::test]
async fn admin_by_key_or_jwt_and_everyone_else_refused() {
    let suite = admin_suite().await;
    let root = suite.login_admin("root@example.com").await;
    let user = suite.login("user@example.com").await;
    let by_jwt = suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .bearer_auth(&root)
        .json(&article("by-jwt", "draft"))
        .send()
        .await
        .expect("edge");
    assert_eq!(by_jwt.status(), StatusCode::CREATED);
    let by_user = suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .bearer_auth(&user)
        .json(&article("by-user", "draft"))
        .send()
        .await
        .expect("edge");
    assert_eq!(by_user.status(), StatusCode::FORBIDDEN);
    let anonymous = suite
        .http
        .post(suite.url("/api/v1/admin/content"))
        .json(&article("anon", "draft"))
        .send()
        .await
        .expect("edge");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let wrong_key = suite
        .http
        .get(suite.url("/api/v1/admin/content"))
        .header("x-admin-key", "nope")
        .send()
        .await
        .expect("edge");
    assert_eq!(wrong_key.status(), StatusCode::FORBIDDEN);
}

async fn grpc(addr: std::net::SocketAddr) -> ContentServiceClient<Channel> {
    ContentServiceClient::new(
        Channel::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect"),
    )
}

fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-admin-key", KEY.parse().expect("ascii"));
    request
}

#[tokio::test]
async fn a_replica_never_serves_what_another_replica_replaced() {
    let redis = PrivateRedis::start().await;
    let database = harness::fresh_database().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let vars = [
        ("DATABASE_URL", database.as_str()),
        ("REDIS_URL", redis.url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("ADMIN_API_KEY", KEY),
    ];
    let (a, _stop_a) = harness::spawn_content(&vars).await;
    let (b_addr, _stop_b) = harness::spawn_content(&vars).await;
    let (mut a, mut b) = (grpc(a).await, grpc(b_addr).await);
    // An edge in front of B, with its own copy of public reads validated through Redis.
    let b_url = format!("http://{b_addr}");
    let edge_vars: std::collections::HashMap<String, String> = vars
        .iter()
        .chain(&[
            ("CONTENT_GRPC_URL", b_url.as_str()),
            ("RATE_LIMIT_WHITELIST", "127.0.0.1/32"),
        ])
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let edge_settings = portico_config::Settings::from_source(&edge_vars).expect("edge settings");
    let edge_shutdown = tokio_util::sync::CancellationToken::new();
    let edge = portico_edge::serve(
        &edge_settings,
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        edge_shutdown.clone(),
    )
    .await
    .expect("edge");
    let edge_url = format!("http://{}/api/v1/content/live", edge.local_addr);
    let http = reqwest::Client::new();
    let through_edge = || version_at(&http, &edge_url);
    a.create_content(admin(pb::CreateContentRequest {
        slug: "live".into(),
        title: "v1".into(),
        status: pb::Status::Published as i32,
        ..Default::default()
    }))
    .await
    .expect("create");
    // The edge answers from its copies only once it follows B's revision stream, and that has
    // a revision (a fresh Redis has no `content:rev` before the first write).
    edge_cache(&http, &format!("http://{}/readyz", edge.local_addr), "on").await;
    for version in 1..=20 {
        // B has the current version cached (L1 and Redis)…
        for _ in 0..2 {
            let seen = b
                .get_content(pb::GetContentRequest {
                    slug: "live".into(),
                })
                .await
                .expect("get")
                .into_inner();
            assert_eq!(seen.version, version);
            assert_eq!(through_edge().await, version);
        }
        // …A replaces it; the very next read through B must be the new one.
        a.update_content(admin(pb::UpdateContentRequest {
            slug: "live".into(),
            expected_version: version,
            title: format!("v{}", version + 1),
            ..Default::default()
        }))
        .await
        .expect("update");
        let next = b
            .get_content(pb::GetContentRequest {
                slug: "live".into(),
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(next.version, version + 1, "B served a replaced version");
        assert_eq!(next.title, format!("v{}", version + 1));
        // The edge in front of B learns of A's write from B's revision stream (A's
        // `content:invalidate`, or B's next look at `content:rev`): once it answers the new
        // version, it never answers the replaced one again.
        until_version(&http, &edge_url, version + 1).await;
        for _ in 0..3 {
            assert_eq!(
                through_edge().await,
                version + 1,
                "the edge in front of B served a replaced version after seeing the new one"
            );
        }
    }
    let listed = b
        .list_content(pb::ListContentRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.items[0].version, 21, "lists too");

    // The runbook's `KEYS "content:*" | xargs DEL` (rev included) only costs misses.
    {
        use fred::prelude::*;
        let client = Builder::from_config(Config::from_url(&redis.url).expect("url"))
            .build()
            .expect("client");
        client.init().await.expect("connect");
        let keys: Vec<String> = client
            .custom(fred::cmd!("KEYS"), vec![format!("{prefix}content:*")])
            .await
            .expect("keys");
        assert!(!keys.is_empty());
        let _: u64 = client.del(keys).await.expect("del");
    }
    assert_eq!(
        b.get_content(pb::GetContentRequest {
            slug: "live".into()
        })
        .await
        .expect("get")
        .into_inner()
        .version,
        21
    );
    a.update_content(admin(pb::UpdateContentRequest {
        slug: "live".into(),
        expected_version: 21,
        title: "after the purge".into(),
        ..Default::default()
    }))
    .await
    .expect("update");
    let after = b
        .get_content(pb::GetContentRequest {
            slug: "live".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(
        (after.version, after.title.as_str()),
        (22, "after the purge")
    );
}

#[tokio::test]
async fn redis_down_reads_come_from_the_database_and_writes_wait_for_it() {
    let mut redis = PrivateRedis::start().await;
    let database = harness::fresh_database().await;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let vars = [
        ("DATABASE_URL", database.as_str()),
        ("REDIS_URL", redis.url.as_str()),
        ("REDIS_KEY_PREFIX", prefix.as_str()),
        ("ADMIN_API_KEY", KEY),
    ];
    let (addr, _stop) = harness::spawn_content(&vars).await;
    let mut content = grpc(addr).await;
    content
        .create_content(admin(pb::CreateContentRequest {
            slug: "sturdy".into(),
            title: "before".into(),
            status: pb::Status::Published as i32,
            ..Default::default()
        }))
        .await
        .expect("create");
    assert_eq!(
        content
            .get_content(pb::GetContentRequest {
                slug: "sturdy".into()
            })
            .await
            .expect("get")
            .into_inner()
            .title,
        "before"
    );

    redis.stop();
    let during = content
        .get_content(pb::GetContentRequest {
            slug: "sturdy".into(),
        })
        .await
        .expect("read without Redis");
    assert_eq!(during.into_inner().title, "before");
    // A write must bump content:rev before it commits (see the fault tests): refused, and
    // nothing written.
    let refused = content
        .update_content(admin(pb::UpdateContentRequest {
            slug: "sturdy".into(),
            expected_version: 1,
            title: "during the outage".into(),
            ..Default::default()
        }))
        .await
        .expect_err("no write without Redis");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let after = content
        .get_content(pb::GetContentRequest {
            slug: "sturdy".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!((after.title.as_str(), after.version), ("before", 1));
}

#[tokio::test]
async fn every_read_through_the_edge_after_a_write_sees_the_write() {
    // Public reads may be answered from the edge's own copy and from the service's L1; neither
    // may outlive a write through this edge, whenever the revision stream delivers it.
    let suite = admin_suite().await;
    assert_eq!(
        create(&suite, article("fresh", "published")).await.status(),
        StatusCode::CREATED
    );
    // With Redis, a revision exists from the first write on.
    edge_cache(&suite.http, &suite.url("/readyz"), "on").await;
    for version in 1..=20 {
        let read: Value = suite
            .get("/api/v1/content/fresh")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(read["version"], version, "{read}");
        // Twice: the second read is the cached one.
        let again: Value = suite
            .get("/api/v1/content/fresh")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(again, read);
        let updated = suite
            .http
            .put(suite.url("/api/v1/admin/content/fresh"))
            .header("x-admin-key", KEY)
            .header("if-match", format!("\"{version}\""))
            .json(&json!({"title": format!("Edition {}", version + 1), "status": "published"}))
            .send()
            .await
            .expect("edge");
        assert_eq!(updated.status(), StatusCode::OK);
        let read: Value = suite
            .get("/api/v1/content/fresh")
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(
            (read["version"].clone(), read["title"].clone()),
            (
                json!(version + 1),
                json!(format!("Edition {}", version + 1))
            ),
            "a read after the write returned saw what it replaced"
        );
    }
}

#[tokio::test]
async fn a_write_made_on_the_content_service_reaches_the_edge_through_the_revision_stream() {
    // Another writer (another edge, a CMS over gRPC) does not pass this edge: its copies are
    // replaced when WatchRevision delivers the write, in every deployment.
    let suite = admin_suite().await;
    assert_eq!(
        create(&suite, article("elsewhere", "published"))
            .await
            .status(),
        StatusCode::CREATED
    );
    edge_cache(&suite.http, &suite.url("/readyz"), "on").await;
    let url = suite.url("/api/v1/content/elsewhere");
    let mut content = ContentServiceClient::new(suite.channel(Component::Content).await);
    for version in 1..=10 {
        // Twice: the second read is the edge's copy.
        assert_eq!(version_at(&suite.http, &url).await, version);
        assert_eq!(version_at(&suite.http, &url).await, version);
        content
            .update_content(admin(pb::UpdateContentRequest {
                slug: "elsewhere".into(),
                expected_version: version,
                title: format!("Edition {}", version + 1),
                ..Default::default()
            }))
            .await
            .expect("update on the service");
        until_version(&suite.http, &url, version + 1).await;
        for _ in 0..3 {
            assert_eq!(
                version_at(&suite.http, &url).await,
                version + 1,
                "the older copy came back"
            );
        }
    }
}

#[tokio::test]
async fn without_the_revision_stream_the_edge_serves_no_copy() {
    let mut suite = admin_suite().await;
    create(&suite, article("kept-nowhere", "published")).await;
    edge_cache(&suite.http, &suite.url("/readyz"), "on").await;
    for _ in 0..2 {
        assert_eq!(
            suite.get("/api/v1/content/kept-nowhere").await.status(),
            StatusCode::OK
        );
    }
    // The content service goes away, and its stream with it: the edge's copy is not answered
    // (it could be stale by the time the service is back), the service's absence is.
    suite.stop(Component::Content).await;
    edge_cache(&suite.http, &suite.url("/readyz"), "off").await;
    assert_eq!(
        suite.get("/api/v1/content/kept-nowhere").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}
