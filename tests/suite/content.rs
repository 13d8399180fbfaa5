//! The content service: CRUD over REST and gRPC, validation, drafts, keyset pagination under
//! concurrent inserts, optimistic concurrency, ETag/304, admin by key and by JWT, two replicas
//! sharing Redis, and Redis outages.

use portico::Component;
use portico_proto::content::{self as pb, content_service_client::ContentServiceClient};
use reqwest::StatusCode;
use serde_json::{json, Value};
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
    let not_modified = suite
        .http
        .get(suite.url("/api/v1/content/hello-world"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("edge");
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

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
    content
        .delete_content(admin(pb::DeleteContentRequest {
            slug: "grpc-item".into(),
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
async fn a_stale_version_is_a_409() {
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
    let bob = edit("Bob's edit", "\"1\"").await.expect("edge");
    assert_eq!(bob.status(), StatusCode::CONFLICT);
    let error: Value = bob.json().await.expect("json");
    assert_eq!(error["error"]["code"], "ABORTED");
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
    assert_eq!(no_version.status(), StatusCode::BAD_REQUEST);
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
    let through_edge = || async {
        let item: Value = http
            .get(&edge_url)
            .send()
            .await
            .expect("edge")
            .json()
            .await
            .expect("json");
        item["version"].as_i64().expect("version")
    };
    a.create_content(admin(pb::CreateContentRequest {
        slug: "live".into(),
        title: "v1".into(),
        status: pb::Status::Published as i32,
        ..Default::default()
    }))
    .await
    .expect("create");
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
        assert_eq!(
            through_edge().await,
            version + 1,
            "the edge in front of B served a replaced version"
        );
        assert_eq!(next.title, format!("v{}", version + 1));
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
    // Public reads may be answered from the edge's own copy (without Redis, the content service
    // runs in this process) and from the service's L1; neither may outlive a write.
    let suite = admin_suite().await;
    assert_eq!(
        create(&suite, article("fresh", "published")).await.status(),
        StatusCode::CREATED
    );
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
