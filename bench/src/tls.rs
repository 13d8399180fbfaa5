//! `scenario tls`: what transport security costs on the README's defaults. Certificates are
//! made at start (rcgen, one CA). Two rows, each against a baseline in the same run:
//! - the edge's `/healthz` over HTTPS with keep-alive, against the same edge's plaintext
//!   listener (`EDGE_PLAINTEXT_ADDR`);
//! - a cached `GET /api/v1/content/{slug}` through an edge whose hops to the services are
//!   mTLS, against a suite with plaintext hops.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use crate::{http_target, print, reqwest_free_post, run, suite_vars, Load, Target};

const ARTICLE: &str = r#"{"slug":"benchmark-article","title":"Benchmark","body":"A published article of a realistic size for a landing page.","tags":["bench"],"status":"published"}"#;

/// CA, and one certificate for every component (server names and the edge's identity).
fn certificates(dir: &Path) -> anyhow::Result<()> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let params = CertificateParams::new(vec![
        "portico-edge".to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ])?;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(())
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

/// An HTTPS target for `url`, trusting the CA in `dir`, speaking HTTP/1.1.
fn https_target(url: &str, dir: &Path) -> anyhow::Result<Target> {
    let material = portico_tls::client(&dir.join("ca.pem"), None)?.current();
    let mut config = (*material.config).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let Target::Http {
        addr,
        path,
        host,
        bodies,
        ..
    } = http_target(&url.replacen("https://", "http://", 1))?
    else {
        anyhow::bail!("not an HTTP target");
    };
    Ok(Target::Http {
        addr,
        path,
        host,
        bodies,
        tls: Some(Arc::new(config)),
    })
}

async fn suite(extra: Vec<(&str, String)>) -> anyhow::Result<portico::Suite> {
    let mut extra = extra;
    extra.extend([
        ("RATE_LIMIT_GLOBAL_MAX", "10000000".to_owned()),
        ("RATE_LIMIT_GLOBAL_WINDOW", "1s".to_owned()),
        ("ADMIN_API_KEY", crate::BENCH_ADMIN_KEY.to_owned()),
    ]);
    portico::Suite::start(portico_config::Settings::from_source(&suite_vars(&extra))?).await
}

/// Runs the scenario and prints its rows and ratios.
pub async fn scenario(load: &Load) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("portico-bench-tls-{}", std::process::id()));
    certificates(&dir)?;
    let database = |name: &str| {
        let path = dir.join(format!("{name}.db"));
        format!("sqlite://{}?mode=rwc", path.display())
    };

    // Row 1: one edge, HTTPS and plaintext listeners.
    let edge = suite(vec![
        ("DATABASE_URL", database("edge")),
        ("EDGE_TLS_CERT_FILE", file(&dir, "tls.crt")),
        ("EDGE_TLS_KEY_FILE", file(&dir, "tls.key")),
        ("EDGE_PLAINTEXT_ADDR", "127.0.0.1:0".to_owned()),
    ])
    .await?;
    let plain = edge
        .edge_plaintext_addr
        .context("the edge opened no plaintext listener")?;
    let plaintext_healthz = run(
        "edge /healthz (plaintext listener)",
        http_target(&format!("http://{plain}/healthz"))?,
        load,
    )
    .await?;
    let https_healthz = run(
        "edge /healthz (HTTPS, keep-alive)",
        https_target(
            &format!("https://localhost:{}/healthz", edge.edge_addr.port()),
            &dir,
        )?,
        load,
    )
    .await?;
    edge.shutdown().await;

    // Row 2: cached content through edges whose hops are plaintext, then mTLS.
    let plaintext_hops = suite(vec![("DATABASE_URL", database("plain"))]).await?;
    let mtls_hops = suite(vec![
        ("DATABASE_URL", database("mtls")),
        ("GRPC_TLS_CA_FILE", file(&dir, "ca.pem")),
        ("GRPC_TLS_CERT_FILE", file(&dir, "tls.crt")),
        ("GRPC_TLS_KEY_FILE", file(&dir, "tls.key")),
    ])
    .await?;
    for suite in [&plaintext_hops, &mtls_hops] {
        let created = reqwest_free_post(suite.edge_addr, "/api/v1/admin/content", ARTICLE).await?;
        anyhow::ensure!(created == 201, "creating the article answered {created}");
    }
    let path = "/api/v1/content/benchmark-article";
    let plaintext_content = run(
        "edge GET content (cached), plaintext hops",
        http_target(&format!("http://{}{path}", plaintext_hops.edge_addr))?,
        load,
    )
    .await?;
    let mtls_content = run(
        "edge GET content (cached), mTLS hops",
        http_target(&format!("http://{}{path}", mtls_hops.edge_addr))?,
        load,
    )
    .await?;
    plaintext_hops.shutdown().await;
    mtls_hops.shutdown().await;

    for report in [
        &plaintext_healthz,
        &https_healthz,
        &plaintext_content,
        &mtls_content,
    ] {
        print(report)?;
    }
    println!(
        "{}",
        serde_json::json!({
            "scenario": "tls",
            "configuration": "README defaults (cargo run: SQLite, in-memory limits and cache, default LOG_LEVEL) plus the TLS variables named in each row",
            "healthz_https_over_plaintext": https_healthz.throughput_rps / plaintext_healthz.throughput_rps,
            "content_mtls_over_plaintext_hops": mtls_content.throughput_rps / plaintext_content.throughput_rps,
            "errors": plaintext_healthz.errors + https_healthz.errors + plaintext_content.errors + mtls_content.errors,
        })
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
