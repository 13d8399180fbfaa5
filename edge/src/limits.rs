//! Rate limit enforcement at the edge (README, Rate limiting; docs/CONTRACT.md §5, §8): every
//! non-operational route through the `global` policy keyed by client IP. The decision is the
//! ratelimit service's, asked with a tight deadline; when the service cannot answer in time the
//! fail mode applies here too — `open` decides with this edge's own in-memory buckets (a ceiling,
//! not a free pass), `closed` refuses with 503. The decisions become the `RateLimit-Policy` and
//! `RateLimit` fields, or the legacy three (`RATE_LIMIT_LEGACY_HEADERS`).

use std::{
    fmt::Write as _,
    net::IpAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use portico_config::RateLimitSettings;
use portico_limiter::{bucket_key, Decision, Limit, MemoryStore, Policies, SystemClock};
use portico_proto::ratelimit::{
    rate_limit_service_client::RateLimitServiceClient, CheckRequest, CheckResponse,
};
use portico_telemetry::{metrics, RequestContext};
use portico_ttlmap::TtlMap;
use tonic::Code;

use crate::backends::TimedChannel as Channel;

use crate::{backends, ApiError};

/// Most buckets whose last decision this edge remembers.
const VIEW_MAX_KEYS: usize = 100_000;
/// How long tokens admitted ahead wait to be spent together in the service.
const FLUSH_DELAY: Duration = Duration::from_millis(5);
/// How long a remembered decision may steer admission without a newer one.
const VIEW_TTL: Duration = Duration::from_secs(2);
/// Most buckets the edge's fallback keeps.
const FALLBACK_MAX_KEYS: u64 = 100_000;

/// The edge's view of rate limiting.
#[derive(Clone)]
pub struct EdgeLimiter {
    channel: Channel,
    /// Proves the edge to the ratelimit service on plaintext hops.
    signer: Option<portico_tls::PeerKey>,
    policies: Policies,
    whitelist: Arc<[IpNet]>,
    fallback: MemoryStore,
    fail_open: bool,
    timeout: std::time::Duration,
    /// Buckets with room, as last seen (see [`EdgeLimiter::ahead`]).
    views: TtlMap<Arc<View>>,
    /// `RATE_LIMIT_LEGACY_HEADERS`: the three draft-06 fields instead of the current two.
    legacy_headers: bool,
}

/// One policy's decision, as the response headers describe it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    /// The policy whose bucket decided: `global`, `auth`, `chat` or `apikey`.
    pub policy: &'static str,
    /// The policy's window in whole seconds (its capacity over its refill rate, at least 1),
    /// `RateLimit-Policy`'s `w`; `None` when the edge does not know the policy's shape.
    pub window_seconds: Option<u64>,
    /// The bucket's decision.
    pub decision: Decision,
}

/// A refusal: the error to answer with and the decision whose headers it carries.
#[derive(Debug)]
pub struct Refusal {
    /// 429 or 503.
    pub error: ApiError,
    /// The decision, for the rate limit headers (absent when no decision could be made).
    pub decision: Option<Verdict>,
    /// The policy that refused (a 429), counted in `rate_limit_exceeded_total` once per
    /// response by [`Refusal::count`].
    pub policy: Option<String>,
}

impl Refusal {
    /// Counts the refusal that the response reports (requests checked against two policies
    /// that both refuse still get one 429).
    pub fn count(&self) {
        if let Some(policy) = &self.policy {
            metrics::http()
                .rate_limited
                .get_or_create(&metrics::PolicyLabels {
                    policy: policy.clone(),
                })
                .inc();
        }
    }
}

impl EdgeLimiter {
    /// Enforcement through the ratelimit service on `channel`.
    pub fn new(
        channel: Channel,
        settings: &RateLimitSettings,
        signer: Option<portico_tls::PeerKey>,
    ) -> Self {
        Self {
            channel,
            signer,
            policies: Policies::from_settings(settings),
            whitelist: settings.whitelist.clone().into(),
            fallback: MemoryStore::new(FALLBACK_MAX_KEYS, Arc::new(SystemClock)),
            fail_open: settings.fail_open,
            timeout: settings.check_timeout,
            views: TtlMap::new(VIEW_TTL, VIEW_MAX_KEYS),
            legacy_headers: settings.legacy_headers,
        }
    }

    /// Takes one token from `policy`'s bucket for `key`. `Ok(None)`: not limited (whitelisted).
    pub async fn check(
        &self,
        policy: &'static str,
        key: &str,
        client_ip: IpAddr,
        context: &RequestContext,
    ) -> Result<Option<Verdict>, Refusal> {
        self.check_shaped(policy, key, None, client_ip, context)
            .await
    }

    /// [`EdgeLimiter::check`] of a bucket whose shape the request brings (policy `apikey`: the
    /// key's own rate, from its record).
    pub async fn check_shaped(
        &self,
        policy: &'static str,
        key: &str,
        shape: Option<Limit>,
        client_ip: IpAddr,
        context: &RequestContext,
    ) -> Result<Option<Verdict>, Refusal> {
        if self.whitelist.iter().any(|net| net.contains(&client_ip)) {
            return Ok(None);
        }
        let window = shape
            .or_else(|| self.policies.get(policy))
            .map(window_seconds);
        let verdict = |decision| Verdict {
            policy,
            window_seconds: window,
            decision,
        };
        let (capacity, window_ms) = shape.map_or((0, 0), |limit| {
            (
                limit.capacity,
                (f64::from(limit.capacity) / limit.refill_per_second * 1000.0).round() as u64,
            )
        });
        let message = CheckRequest {
            key: key.to_owned(),
            policy: policy.to_owned(),
            cost: 1,
            client_ip: client_ip.to_string(),
            capacity,
            window_ms,
        };
        let bucket = bucket_key(policy, key);
        if let Some(decision) = self.ahead(&bucket, &message, context, client_ip) {
            return Ok(Some(verdict(decision)));
        }
        let answer = ask(
            self.channel.clone(),
            message,
            context,
            backends::Forwarded::client(client_ip, self.signer.clone()),
            self.timeout,
        )
        .await;
        let decision = match answer {
            Ok(r) => Decision {
                allowed: r.allowed,
                limit: r.limit,
                remaining: r.remaining,
                reset_after_ms: r.reset_after_ms,
                retry_after_ms: r.retry_after_ms,
            },
            Err(code) => {
                tracing::warn!(
                    ?code,
                    policy,
                    fail_open = self.fail_open,
                    "ratelimit service did not decide"
                );
                if !self.fail_open {
                    return Err(Refusal {
                        error: ApiError::new(
                            Code::Unavailable,
                            "the rate limiter is unavailable; retry shortly",
                        )
                        .with_retry_after(1),
                        decision: None,
                        policy: None,
                    });
                }
                let Some(limit) = self.policies.get(policy).or(shape) else {
                    return Ok(None);
                };
                self.fallback.check(&bucket, limit, 1)
            }
        };
        if decision.allowed {
            match self.views.get(&bucket) {
                // Tokens this edge admitted ahead may still be on their way to the service: the
                // decision does not count them yet, so neither may the estimate.
                Some(view) => {
                    view.remaining.store(decision.remaining, Ordering::SeqCst);
                    view.reset_after_ms
                        .store(decision.reset_after_ms, Ordering::SeqCst);
                    let pending = view.pending.load(Ordering::SeqCst);
                    return Ok(Some(verdict(Decision {
                        remaining: decision.remaining.saturating_sub(pending),
                        ..decision
                    })));
                }
                None => self.views.insert(
                    bucket,
                    Arc::new(View {
                        remaining: AtomicU32::new(decision.remaining),
                        limit: decision.limit,
                        reset_after_ms: AtomicU64::new(decision.reset_after_ms),
                        pending: AtomicU32::new(0),
                        unsent: AtomicU32::new(0),
                    }),
                ),
            }
            return Ok(Some(verdict(decision)));
        }
        self.views.remove(&bucket);
        Err(Refusal {
            error: ApiError::new(
                Code::ResourceExhausted,
                format!("rate limit `{policy}` exceeded; retry after the time in Retry-After"),
            )
            .with_retry_after(retry_after_seconds(&decision)),
            decision: Some(verdict(decision)),
            policy: Some(policy.to_owned()),
        })
    }
}

impl EdgeLimiter {
    /// Admits at once when this edge last saw the bucket with more than [`headroom`] tokens
    /// left beyond the ones it admitted ahead since. Every admitted request still spends its
    /// token in the service: the tokens admitted ahead within [`FLUSH_DELAY`] are spent
    /// together in one decision (`cost = n`); only the wait is skipped. A bucket near empty,
    /// one never seen, or a background decision that fails or refuses sends the next request
    /// down the synchronous path, so at most the tokens admitted ahead while a bucket crosses
    /// the headroom get through beyond the limit (only when other edges drained it meanwhile).
    fn ahead(
        &self,
        bucket: &str,
        message: &CheckRequest,
        context: &RequestContext,
        client_ip: IpAddr,
    ) -> Option<Decision> {
        let view = self.views.get(bucket)?;
        let pending = view.pending.load(Ordering::Relaxed);
        let left = view
            .remaining
            .load(Ordering::Relaxed)
            .checked_sub(pending + 1)?;
        if left < headroom(view.limit) {
            return None;
        }
        view.pending.fetch_add(1, Ordering::SeqCst);
        // The first token admitted ahead schedules the flush that spends every token admitted
        // until then in one decision (`cost`): one call per bucket per FLUSH_DELAY under load.
        if view.unsent.fetch_add(1, Ordering::SeqCst) == 0 {
            let channel = self.channel.clone();
            let forwarded = backends::Forwarded::client(client_ip, self.signer.clone());
            let timeout = self.timeout;
            let views = self.views.clone();
            let bucket = bucket.to_owned();
            let background = Arc::clone(&view);
            let context = context.clone();
            let message = message.clone();
            tokio::spawn(async move {
                tokio::time::sleep(FLUSH_DELAY).await;
                let cost = background.unsent.swap(0, Ordering::SeqCst);
                let message = CheckRequest { cost, ..message };
                match ask(channel, message, &context, forwarded, timeout).await {
                    Ok(r) if r.allowed => {
                        // A reply can overtake a later decision's: never raise the estimate
                        // (refill within a view's 2 s is the only thing this forgoes).
                        background
                            .remaining
                            .fetch_min(r.remaining, Ordering::SeqCst);
                        background
                            .reset_after_ms
                            .store(r.reset_after_ms, Ordering::SeqCst);
                    }
                    _ => views.remove(&bucket),
                }
                // After the new remaining is stored, so no estimate counts a token twice.
                background.pending.fetch_sub(cost, Ordering::SeqCst);
            });
        }
        Some(Decision {
            allowed: true,
            limit: view.limit,
            remaining: left,
            reset_after_ms: view.reset_after_ms.load(Ordering::Relaxed),
            retry_after_ms: 0,
        })
    }
}

/// One decision from the ratelimit service within `timeout`, counted in
/// `grpc_client_requests_total`; the code of the failure otherwise.
async fn ask(
    channel: Channel,
    message: CheckRequest,
    context: &RequestContext,
    forwarded: backends::Forwarded,
    timeout: Duration,
) -> Result<CheckResponse, Code> {
    let request = backends::request(message, context, &forwarded, timeout);
    let mut client = RateLimitServiceClient::new(channel);
    let outcome = match tokio::time::timeout(timeout, client.check(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => Err(Code::DeadlineExceeded),
    };
    backends::record(
        "ratelimit",
        "Check",
        outcome.as_ref().err().copied().unwrap_or(Code::Ok),
    );
    outcome
}

/// Tokens a bucket must keep, beyond the decisions in flight, for this edge to admit without
/// waiting: a quarter of its capacity, and never fewer than 8.
fn headroom(limit: u32) -> u32 {
    (limit / 4).max(8)
}

/// A bucket as this edge last saw it.
struct View {
    remaining: AtomicU32,
    limit: u32,
    reset_after_ms: AtomicU64,
    /// Tokens admitted ahead and not yet confirmed by the service.
    pending: AtomicU32,
    /// Of those, the ones not yet sent (the next flush sends them as one decision).
    unsent: AtomicU32,
}

/// `RateLimit-Policy`: each policy's quota and window.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: what is left of each policy's quota.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `RateLimit-Limit` (`RATE_LIMIT_LEGACY_HEADERS=true` only).
pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining` (`RATE_LIMIT_LEGACY_HEADERS=true` only).
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset` (`RATE_LIMIT_LEGACY_HEADERS=true` only).
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

impl EdgeLimiter {
    /// Adds the rate limit fields that describe `verdicts` (the request's decisions, in the
    /// order they were asked; the refusing one included on a 429): the current two fields by
    /// default ([`current_headers`]), the draft-06 three with `RATE_LIMIT_LEGACY_HEADERS=true`
    /// ([`legacy_headers`]).
    pub fn apply_headers(&self, headers: &mut HeaderMap, verdicts: &[Verdict]) {
        if self.legacy_headers {
            legacy_headers(headers, verdicts);
        } else {
            current_headers(headers, verdicts);
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` as draft-ietf-httpapi-ratelimit-headers-11 (§3, §4)
/// defines them: RFC 8941 lists with one member per policy that decided, named by the policy,
/// e.g. `RateLimit-Policy: "global";q=100;w=60` and `RateLimit: "global";r=42;t=18`.
/// `q` is the bucket's capacity, `w` its window, `r` the tokens left. `t` is the seconds until
/// the bucket is full again, except on a refusal: there it is the seconds until the next token,
/// the same as `Retry-After`, which §6 says should not point before the effective window ends.
pub fn current_headers(headers: &mut HeaderMap, verdicts: &[Verdict]) {
    if verdicts.is_empty() {
        return;
    }
    let mut policy = String::new();
    let mut limit = String::new();
    for verdict in verdicts {
        let separator = if policy.is_empty() { "" } else { ", " };
        let decision = &verdict.decision;
        // Policy names are Portico's own lower-case identifiers: nothing in them needs escaping
        // inside an sf-string.
        let _ = write!(
            policy,
            "{separator}\"{}\";q={}",
            verdict.policy, decision.limit
        );
        if let Some(window) = verdict.window_seconds {
            let _ = write!(policy, ";w={window}");
        }
        let effective = if decision.allowed {
            decision.reset_after_ms.div_ceil(1000)
        } else {
            retry_after_seconds(decision)
        };
        let _ = write!(
            limit,
            "{separator}\"{}\";r={};t={effective}",
            verdict.policy, decision.remaining
        );
    }
    for (name, value) in [(RATELIMIT_POLICY, policy), (RATELIMIT, limit)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds until the bucket is
/// full again), draft-ietf-httpapi-ratelimit-headers-06's fields, which carry one policy: the
/// refusing one, else the one with the fewest tokens left (the first of those).
pub fn legacy_headers(headers: &mut HeaderMap, verdicts: &[Verdict]) {
    let described = verdicts
        .iter()
        .find(|verdict| !verdict.decision.allowed)
        .or_else(|| {
            verdicts.iter().reduce(|tightest, verdict| {
                if verdict.decision.remaining < tightest.decision.remaining {
                    verdict
                } else {
                    tightest
                }
            })
        });
    let Some(Verdict { decision, .. }) = described else {
        return;
    };
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(
        RATELIMIT_RESET,
        HeaderValue::from(decision.reset_after_ms.div_ceil(1000)),
    );
}

/// Whole seconds until a refused request could be admitted (at least 1): `Retry-After`.
fn retry_after_seconds(decision: &Decision) -> u64 {
    decision.retry_after_ms.div_ceil(1000).max(1)
}

/// A bucket's window in whole seconds: the time it takes to refill from empty (at least 1).
fn window_seconds(limit: Limit) -> u64 {
    (f64::from(limit.capacity) / limit.refill_per_second)
        .round()
        .max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use portico_proto::ratelimit::{
        rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
        GetBucketRequest, GetBucketResponse, ResetRequest, ResetResponse,
    };
    use tokio::sync::{mpsc, Mutex};

    use super::*;

    /// A ratelimit service that reports each call, then answers with what the test sends.
    struct Scripted {
        calls: mpsc::UnboundedSender<CheckRequest>,
        answers: Mutex<mpsc::UnboundedReceiver<CheckResponse>>,
    }

    #[tonic::async_trait]
    impl RateLimitService for Scripted {
        async fn check(
            &self,
            request: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            let _ = self.calls.send(request.into_inner());
            let answer = self.answers.lock().await.recv().await;
            answer
                .map(tonic::Response::new)
                .ok_or_else(|| tonic::Status::unavailable("script over"))
        }

        async fn reset(
            &self,
            _: tonic::Request<ResetRequest>,
        ) -> Result<tonic::Response<ResetResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not scripted"))
        }

        async fn get_bucket(
            &self,
            _: tonic::Request<GetBucketRequest>,
        ) -> Result<tonic::Response<GetBucketResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not scripted"))
        }
    }

    fn allowed(remaining: u32) -> CheckResponse {
        CheckResponse {
            allowed: true,
            limit: 100,
            remaining,
            reset_after_ms: 1000,
            retry_after_ms: 0,
            degraded: false,
        }
    }

    #[tokio::test]
    async fn with_room_the_edge_admits_at_once_and_still_spends_the_token_in_the_service() {
        let (calls_tx, mut calls) = mpsc::unbounded_channel();
        let (answers, answers_rx) = mpsc::unbounded_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RateLimitServiceServer::new(Scripted {
                    calls: calls_tx,
                    answers: Mutex::new(answers_rx),
                }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect_lazy();
        let settings = portico_config::Settings::from_source(&std::collections::HashMap::<
            String,
            String,
        >::from([(
            "RATE_LIMIT_CHECK_TIMEOUT".to_owned(),
            "30s".to_owned(),
        )]))
        .expect("settings")
        .ratelimit;
        let limiter = Arc::new(EdgeLimiter::new(channel.into(), &settings, None));
        let ip: IpAddr = "203.0.113.9".parse().expect("ip");
        let context = RequestContext::attach(tracing::Span::none(), &http::HeaderMap::new());
        let check = |limiter: Arc<EdgeLimiter>, context: RequestContext| {
            tokio::spawn(async move { limiter.check("global", "203.0.113.9", ip, &context).await })
        };

        // Never seen: the edge waits for the service.
        let first = check(Arc::clone(&limiter), context.clone());
        calls.recv().await.expect("the service is asked");
        assert!(!first.is_finished(), "no answer yet, so no admission yet");
        answers.send(allowed(99)).expect("answer");
        let first = first
            .await
            .expect("task")
            .expect("admitted")
            .expect("limited route");
        assert_eq!(first.decision.remaining, 99);

        // 99 left: admitted before the service answers, and the service is still asked.
        let second = limiter
            .check("global", "203.0.113.9", ip, &context)
            .await
            .expect("admitted")
            .expect("limited route");
        assert_eq!(second.decision.remaining, 98);
        let spent = calls
            .recv()
            .await
            .expect("the token is still spent in the service");
        assert_eq!(
            (spent.policy.as_str(), spent.key.as_str(), spent.cost),
            ("global", "203.0.113.9", 1)
        );
        // The service says the bucket is nearly empty (other edges spent it): from here on the
        // edge waits for each decision again.
        answers.send(allowed(20)).expect("answer");
        let view = limiter
            .views
            .get("ratelimit:global:203.0.113.9")
            .expect("a view");
        while view.pending.load(Ordering::SeqCst) > 0 {
            // The background reply lands on another task; wait for it to be applied.
            tokio::task::yield_now().await;
        }
        assert_eq!(view.remaining.load(Ordering::SeqCst), 20);
        let third = check(Arc::clone(&limiter), context.clone());
        calls.recv().await.expect("asked");
        assert!(
            !third.is_finished(),
            "20 left is within the headroom: the edge waits"
        );
        answers
            .send(CheckResponse {
                allowed: false,
                retry_after_ms: 500,
                ..allowed(0)
            })
            .expect("answer");
        let refusal = third.await.expect("task").expect_err("refused");
        assert_eq!(refusal.error.code, Code::ResourceExhausted);
    }
}
