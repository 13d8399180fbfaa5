//! Liveness, startup and readiness (README, REST contract; docs/RUNBOOK.md §1). Readiness asks
//! every service over the gRPC health protocol with a short deadline, pings the cache, and
//! aggregates: a critical dependency down → 503 `unhealthy`; a non-critical one → 200
//! `degraded`. The edge has no database of its own: a service whose database is down answers
//! NOT_SERVING (shared/grpc's `watch_database`), which is that service's check failing.

use std::time::{Duration, Instant, SystemTime};

use futures_util::future::join_all;
use http::StatusCode;
use portico_telemetry::RequestContext;
use serde_json::{json, Map, Value};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::{backends::Backend, Edge};

/// How often the edge asks its backends' health in the background (`dependency_up`).
const BACKEND_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Check {
    /// `auth`, `cache`, …
    pub name: &'static str,
    /// Whether readiness is unhealthy when this fails.
    pub critical: bool,
    /// Whether it passed.
    pub ok: bool,
    /// The JSON shown under `checks`.
    pub detail: Value,
}

/// The liveness document, written straight from a struct (no `Value` map per probe).
#[derive(serde::Serialize)]
struct Liveness {
    status: &'static str,
    timestamp: String,
    uptime: f64,
    version: &'static str,
}

/// `GET /healthz`: 200 with the liveness document.
pub fn live_response(edge: &Edge) -> crate::Response {
    let document = Liveness {
        status: "ok",
        timestamp: portico_telemetry::rfc3339(SystemTime::now()),
        uptime: edge.inner.started_at.elapsed().as_secs_f64(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let body = serde_json::to_vec(&document).unwrap_or_default();
    crate::response::text_response(http::StatusCode::OK, "application/json", body)
}

/// Asks one backend whether its service is SERVING, and whether its optional dependency (its
/// health component) is; a down component makes the backend `degraded`.
pub async fn check_backend(
    backend: &Backend,
    context: &RequestContext,
    timeout: Duration,
) -> Check {
    let started = Instant::now();
    let mut client = HealthClient::new(backend.channel.clone());
    let (serving, reason) = ask(&mut client, backend, backend.service, context, timeout).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let mut detail = json!({"latencyMs": latency_ms});
    let ok = match (serving, backend.component) {
        (true, Some(component)) => {
            let (component_ok, _) = ask(&mut client, backend, component, context, timeout).await;
            if !component_ok {
                detail["error"] = json!(format!("{component} is NOT_SERVING"));
            }
            component_ok
        }
        (serving, _) => {
            if let Some(reason) = reason {
                detail["error"] = json!(reason);
            }
            serving
        }
    };
    detail["status"] = json!(if ok { "ok" } else { "unhealthy" });
    Check {
        name: backend.name,
        critical: backend.critical,
        ok,
        detail,
    }
}

/// One Health/Check of `service`; `(serving, why not)`. An unknown name (a component the
/// backend does not have, such as Redis when none is configured) counts as serving.
async fn ask(
    client: &mut HealthClient<crate::backends::TimedChannel>,
    backend: &Backend,
    service: &str,
    context: &RequestContext,
    timeout: Duration,
) -> (bool, Option<&'static str>) {
    let request = crate::backends::request(
        HealthCheckRequest {
            service: service.to_owned(),
        },
        context,
        &crate::backends::Forwarded::none(),
        timeout,
    );
    let outcome = tokio::time::timeout(timeout, client.check(request)).await;
    let (result, code) = match outcome {
        Ok(Ok(response)) => {
            let serving = response.get_ref().status == ServingStatus::Serving as i32;
            (
                (serving, (!serving).then_some("NOT_SERVING")),
                tonic::Code::Ok,
            )
        }
        Ok(Err(status)) if status.code() == tonic::Code::NotFound && service != backend.service => {
            ((true, None), tonic::Code::NotFound)
        }
        Ok(Err(status)) => ((false, Some("unreachable")), status.code()),
        Err(_) => ((false, Some("timeout")), tonic::Code::DeadlineExceeded),
    };
    crate::backends::record(backend.name, "Health/Check", code);
    result
}

/// The chat gateway's check, with its circuits: `circuitBreaker` is the worst state among the
/// enabled providers (the seed runbooks' single-provider reading), `providers` each one's. An
/// open circuit makes chat `degraded`.
async fn check_chat(edge: &Edge, context: &RequestContext, timeout: Duration) -> Check {
    use portico_proto::chat::{chat_service_client::ChatServiceClient, ListProvidersRequest};
    let backend = &edge.inner.backends.chat;
    let mut check = check_backend(backend, context, timeout).await;
    if !check.ok {
        return check;
    }
    let request = crate::backends::request(
        ListProvidersRequest {},
        context,
        &crate::backends::Forwarded::none(),
        timeout,
    );
    let mut client = ChatServiceClient::new(backend.channel.clone());
    let answer = tokio::time::timeout(timeout, client.list_providers(request)).await;
    let Ok(Ok(answer)) = answer else {
        check.detail["circuitBreaker"] = json!("unknown");
        return check;
    };
    let rank = |state: &str| match state {
        "open" => 2,
        "half_open" => 1,
        _ => 0,
    };
    let mut worst = "closed";
    let mut providers = Map::new();
    for provider in answer.into_inner().providers {
        if provider.enabled && rank(&provider.circuit_state) > rank(worst) {
            worst = if provider.circuit_state == "open" {
                "open"
            } else {
                "half_open"
            };
        }
        let state = if provider.enabled {
            provider.circuit_state
        } else {
            "disabled".into()
        };
        providers.insert(provider.name, json!(state));
    }
    check.detail["circuitBreaker"] = json!(worst);
    check.detail["providers"] = Value::Object(providers);
    if worst == "open" {
        check.ok = false;
        check.detail["status"] = json!("degraded");
        check.detail["error"] = json!("an LLM provider's circuit is open");
    }
    check
}

/// Asks every backend's health (its full service name) each probe interval and keeps
/// `dependency_up{component="edge",dependency=<backend>}`, so an alert sees a service go down
/// without anyone calling `/readyz`. A backend's own optional dependency (ratelimit's Redis) is
/// that backend's `dependency_up`, not this one.
pub(crate) fn watch_backends(edge: Edge, shutdown: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(BACKEND_PROBE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let context = RequestContext::attach(tracing::Span::none(), &http::HeaderMap::new());
        let timeout = edge.inner.settings.health_check_timeout;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            join_all(edge.inner.backends.all().into_iter().map(|backend| {
                let context = &context;
                async move {
                    let mut client = HealthClient::new(backend.channel.clone());
                    let (up, _) =
                        ask(&mut client, backend, backend.service, context, timeout).await;
                    portico_telemetry::metrics::dependency_up("edge", backend.name, up);
                }
            }))
            .await;
        }
    });
}

async fn check_cache(edge: &Edge, timeout: Duration) -> Check {
    let Some(redis) = &edge.inner.redis else {
        return Check {
            name: "cache",
            critical: false,
            ok: true,
            detail: json!({"status": "ok", "type": "memory"}),
        };
    };
    let started = Instant::now();
    // Known down: answer at once; the Redis handle's own probe notices its return.
    let ok = redis.is_up() && matches!(tokio::time::timeout(timeout, redis.ping()).await, Ok(true));
    Check {
        name: "cache",
        critical: false,
        ok,
        detail: json!({
            "status": if ok { "ok" } else { "unhealthy" },
            "type": "redis",
            "latencyMs": started.elapsed().as_millis() as u64,
        }),
    }
}

/// How long one readiness aggregate answers every `/readyz`: a flood of probes costs the
/// backends one round of checks per second, not one per request.
const READINESS_TTL: Duration = Duration::from_secs(1);

/// The last readiness aggregate and when it was taken. Callers arriving while it is being
/// taken wait for it (the lock is held meanwhile) instead of starting their own.
pub(crate) type ReadinessCache = tokio::sync::Mutex<Option<(Instant, StatusCode, Value)>>;

/// Readiness, from the aggregate of the last second when there is one.
pub async fn readiness(edge: &Edge, context: &RequestContext) -> (StatusCode, Value) {
    let mut cached = edge.inner.readiness.lock().await;
    if let Some((taken, status, body)) = cached.as_ref() {
        if taken.elapsed() < READINESS_TTL {
            return (*status, body.clone());
        }
    }
    let (status, body) = check_everything(edge, context).await;
    *cached = Some((Instant::now(), status, body.clone()));
    (status, body)
}

/// Runs every readiness check at once and aggregates them.
async fn check_everything(edge: &Edge, context: &RequestContext) -> (StatusCode, Value) {
    let timeout = edge.inner.settings.health_check_timeout;
    let backends = edge.inner.backends.all();
    let backend_checks = join_all(backends.iter().map(|b| async move {
        match b.name {
            "chat" => check_chat(edge, context, timeout).await,
            "content" => {
                let mut check = check_backend(b, context, timeout).await;
                // Whether this edge answers public reads from its own copies now: only while
                // it follows ContentService.WatchRevision (README, Content).
                let following = edge.inner.content_revision.current().is_some();
                check.detail["edgeCache"] = json!(if following { "on" } else { "off" });
                check
            }
            _ => check_backend(b, context, timeout).await,
        }
    }));
    let (mut checks, cache) = tokio::join!(backend_checks, check_cache(edge, timeout));
    checks.push(cache);
    aggregate(&checks)
}

/// The readiness status and body for a set of checks.
pub fn aggregate(checks: &[Check]) -> (StatusCode, Value) {
    let critical_down = checks.iter().any(|c| c.critical && !c.ok);
    let degraded = checks.iter().any(|c| !c.critical && !c.ok);
    let (status, label) = if critical_down {
        (StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    } else if degraded {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    let mut map = Map::new();
    for check in checks {
        let mut detail = check.detail.clone();
        if !check.ok && !check.critical {
            detail["status"] = json!("degraded");
        }
        map.insert(check.name.to_owned(), detail);
    }
    (status, json!({"status": label, "checks": map}))
}

/// Startup: true once every service has answered SERVING (sticky).
pub async fn startup(edge: &Edge, context: &RequestContext) -> bool {
    use std::sync::atomic::Ordering;
    if edge.inner.started.load(Ordering::Relaxed) {
        return true;
    }
    let timeout = edge.inner.settings.health_check_timeout;
    let checks = join_all(
        edge.inner
            .backends
            .all()
            .iter()
            .map(|b| check_backend(b, context, timeout)),
    )
    .await;
    let started = checks.iter().all(|c| c.ok);
    if started {
        edge.inner.started.store(true, Ordering::Relaxed);
    }
    started
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &'static str, critical: bool, ok: bool) -> Check {
        Check {
            name,
            critical,
            ok,
            detail: json!({"status": if ok { "ok" } else { "unhealthy" }}),
        }
    }

    #[test]
    fn critical_failure_is_unhealthy_and_non_critical_is_degraded() {
        let (status, body) = aggregate(&[check("auth", true, false), check("chat", false, true)]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "unhealthy");

        let (status, body) = aggregate(&[check("auth", true, true), check("chat", false, false)]);
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["checks"]["chat"]["status"], "degraded");

        let (status, body) = aggregate(&[check("auth", true, true)]);
        assert_eq!(
            (status, body["status"].clone()),
            (StatusCode::OK, json!("ok"))
        );
    }
}
