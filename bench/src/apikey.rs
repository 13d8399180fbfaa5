//! `scenario apikey`: what an API key costs at the edge over a JWT, in the same run. The same
//! requests go through one suite with `Authorization: Bearer <JWT>` and with
//! `Authorization: Bearer pk_…`: `GET /v1/models` (the edge verifies the credential and asks
//! the chat gateway for its list; nothing else looks at the credential), and a chat completion
//! to a fake provider (the key's path adds the gateway's verification, budget reservation and
//! settlement, and usage record). Without Redis a JWT's denylist check is a call to auth on
//! every request, while a key's verification is cached for 500 ms; with `--redis-url` the
//! denylist is one Redis `EXISTS` and the budget a Redis script.

use std::net::SocketAddr;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::{fixed_server, print, run, suite_vars, Load, Target};

/// One request for the setup (register, login, create the key): its JSON answer.
async fn call(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&str>,
    body: &Value,
) -> anyhow::Result<Value> {
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(bearer) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {bearer}"));
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(body.to_string())))?)
        .await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    anyhow::ensure!(status.is_success(), "{path}: {status}");
    Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Runs the scenario and prints each row and a summary line.
pub async fn scenario(redis_url: Option<String>, load: &Load) -> anyhow::Result<()> {
    let provider = fixed_server(Bytes::from_static(
        br#"{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"A short answer of a few words."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#,
    ))
    .await?;
    let data = std::env::temp_dir().join(format!("portico-bench-apikey-{}.db", std::process::id()));
    let extra = [
        (
            "DATABASE_URL",
            format!("sqlite://{}?mode=rwc", data.display()),
        ),
        ("LLM_BASE_URL", format!("http://{provider}/v1")),
        ("LLM_MODEL", "bench".to_owned()),
        ("RATE_LIMIT_GLOBAL_MAX", "10000000".into()),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1s".into()),
        ("RATE_LIMIT_CAPACITY", "10000000".into()),
        ("RATE_LIMIT_REFILL_RATE", "1000000".into()),
    ];
    let mut extra = extra.to_vec();
    if let Some(url) = &redis_url {
        extra.push(("REDIS_URL", url.clone()));
        extra.push((
            "REDIS_KEY_PREFIX",
            format!("bench-apikey-{}:", std::process::id()),
        ));
    }
    let suite =
        portico::Suite::start(portico_config::Settings::from_source(&suite_vars(&extra))?).await?;
    let edge = suite.edge_addr;
    let account = json!({"email": "bench-keys@example.com", "password": "correct horse battery"});
    call(edge, "/api/v1/auth/register", None, &account).await?;
    let tokens = call(edge, "/api/v1/auth/login", None, &account).await?;
    let jwt = tokens["accessToken"]
        .as_str()
        .context("no access token")?
        .to_owned();
    // A budget far beyond the run, so every request reserves and settles.
    let created = call(
        edge,
        "/api/v1/api-keys",
        Some(&jwt),
        &json!({"name": "bench", "scopes": ["chat"], "tokenBudget": 1_000_000_000_000u64}),
    )
    .await?;
    let key = created["secret"].as_str().context("no secret")?.to_owned();

    let chat_body = Bytes::from_static(
        br#"{"model":"bench","messages":[{"role":"user","content":"Say something short."}],"max_tokens":32}"#,
    );
    let target = |path: &str, credential: &str, body: Option<Bytes>| -> anyhow::Result<Target> {
        Ok(Target::Authed {
            addr: edge,
            path: path.to_owned(),
            host: edge.to_string(),
            authorization: http::HeaderValue::from_str(&format!("Bearer {credential}"))?,
            body,
        })
    };
    let mut rows = Vec::new();
    for (route, body) in [
        ("GET /v1/models", None),
        ("POST /v1/chat/completions", Some(chat_body.clone())),
    ] {
        let path = route.split_once(' ').map_or(route, |(_, p)| p);
        let jwt_row = run(
            &format!("edge {route}, JWT"),
            target(path, &jwt, body.clone())?,
            load,
        )
        .await?;
        let key_row = run(
            &format!("edge {route}, API key"),
            target(path, &key, body.clone())?,
            load,
        )
        .await?;
        print(&jwt_row)?;
        print(&key_row)?;
        rows.push((route, jwt_row, key_row));
    }
    for (route, jwt_row, key_row) in &rows {
        println!(
            "{}",
            json!({
                "scenario": "apikey",
                "route": route,
                "rate": load.rate,
                "redis": redis_url.is_some(),
                "jwt_p50_ms": jwt_row.p50_ms,
                "key_p50_ms": key_row.p50_ms,
                "added_p50_ms": key_row.p50_ms - jwt_row.p50_ms,
                "added_p99_ms": key_row.p99_ms - jwt_row.p99_ms,
                "throughput_ratio": key_row.throughput_rps / jwt_row.throughput_rps.max(0.001),
                "errors": jwt_row.errors + key_row.errors,
            })
        );
    }
    suite.shutdown().await;
    let _ = std::fs::remove_file(&data);
    Ok(())
}
