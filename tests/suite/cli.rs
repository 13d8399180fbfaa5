//! The `portico` binary: configuration errors exit 2 naming the variable; `serve` prints the
//! edge URL, serves, and exits 0 on SIGTERM; `migrate` applies and reports migrations.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_portico");

fn temp_sqlite() -> String {
    let path =
        std::env::temp_dir().join(format!("portico-cli-{}.db", uuid::Uuid::new_v4().simple()));
    format!("sqlite://{}?mode=rwc", path.display())
}

/// Waits for the first stdout line starting with `prefix` and returns the rest of it, while a
/// thread keeps draining stdout so the child never writes into a closed pipe.
async fn line_after(child: &mut std::process::Child, prefix: &'static str) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (found_tx, found_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut found_tx = Some(found_tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix(prefix) {
                if let Some(tx) = found_tx.take() {
                    let _ = tx.send(rest.trim().to_owned());
                }
            }
        }
    });
    found_rx
        .await
        .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"))
}

/// Sends SIGTERM and asserts the process drains and exits 0.
async fn terminate_and_expect_clean_exit(mut child: std::process::Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("waiter")
        .expect("exit status");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn invalid_configuration_exits_2_naming_every_bad_variable() {
    let output = Command::new(BIN)
        .env_clear()
        .env("RATE_LIMIT_GLOBAL_MAX", "lots")
        .env("METRICS_GUARD", "password")
        .env("EDGE_ADDR", "localhost")
        .env("LLM_TIMEOUT", "3 weeks")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "RATE_LIMIT_GLOBAL_MAX: `lots` is not a number from 1 to 10000000",
        "METRICS_GUARD: `password` is not one of: none, secret, cidr",
        "EDGE_ADDR: `localhost` is not a socket address",
        "LLM_TIMEOUT: `3 weeks` is not a positive duration",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn production_without_cors_origins_refuses_to_start() {
    let output = Command::new(BIN)
        .env_clear()
        .env("APP_ENV", "production")
        .output()
        .expect("binary runs");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("CORS_ORIGINS: required when APP_ENV=production"));
}

#[tokio::test]
async fn serve_prints_the_edge_url_and_exits_cleanly_on_sigterm() {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("EDGE_ADDR", "127.0.0.1:0")
        .env("AUTH_ADDR", "127.0.0.1:0")
        .env("CONTENT_ADDR", "127.0.0.1:0")
        .env("CHAT_ADDR", "127.0.0.1:0")
        .env("RATELIMIT_ADDR", "127.0.0.1:0")
        .env("DATABASE_URL", temp_sqlite())
        .env("LOG_LEVEL", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let url = line_after(&mut child, "Portico is up: edge ").await;

    let live = reqwest::get(format!("{url}/healthz"))
        .await
        .expect("edge answers");
    assert_eq!(live.status(), 200);
    let ready = reqwest::get(format!("{url}/readyz"))
        .await
        .expect("edge answers");
    assert_eq!(ready.status(), 200);

    terminate_and_expect_clean_exit(child).await;
}

#[test]
fn migrate_up_then_status_lists_every_service_as_applied() {
    let database = temp_sqlite();
    let up = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", &database)
        .env("LOG_LEVEL", "warn")
        .args(["migrate", "up"])
        .output()
        .expect("binary runs");
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let status = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", &database)
        .env("LOG_LEVEL", "warn")
        .args(["migrate", "status"])
        .output()
        .expect("binary runs");
    let text = String::from_utf8_lossy(&status.stdout);
    for service in ["auth", "content", "chat-gateway"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(service) && l.contains("applied")),
            "{service} not applied:\n{text}"
        );
    }
    assert!(!text.contains("pending"), "{text}");
}

#[test]
fn keys_generate_writes_a_private_key_once_and_prints_its_kid() {
    let path =
        std::env::temp_dir().join(format!("portico-key-{}.pem", uuid::Uuid::new_v4().simple()));
    let path = path.display().to_string();
    let output = Command::new(BIN)
        .args(["keys", "generate", "--out", &path])
        .output()
        .expect("runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with(&format!("wrote {path} (EdDSA, kid ")),
        "{stdout}"
    );
    let pem = std::fs::read_to_string(&path).expect("written");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }
    let again = Command::new(BIN)
        .args(["keys", "generate", "--out", &path])
        .output()
        .expect("runs");
    assert!(!again.status.success(), "never overwrites a key");
}

#[tokio::test]
async fn a_standalone_service_serves_guarded_metrics_on_metrics_addr() {
    let mut child = Command::new(BIN)
        .arg("ratelimit")
        .env_clear()
        .env("RATELIMIT_ADDR", "127.0.0.1:0")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("METRICS_GUARD", "secret")
        .env("METRICS_GUARD_SECRET", "scrape-me")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("binary starts");
    let url = line_after(&mut child, "portico ratelimit metrics on ").await;
    let client = reqwest::Client::new();
    let refused = client.get(&url).send().await.expect("answers");
    assert_eq!(refused.status(), 403);
    let scraped = client
        .get(&url)
        .header("x-metrics-secret", "scrape-me")
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .expect("answers");
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.expect("text").ends_with("# EOF\n"));

    terminate_and_expect_clean_exit(child).await;
}
