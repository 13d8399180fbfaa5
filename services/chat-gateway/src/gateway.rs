//! Choosing a provider: by priority, skipping disabled ones and open circuits, retrying a
//! provider's transient failures (jittered exponential backoff from tokio-retry, at most two
//! retries, `Retry-After` honoured when it fits the budget) and then failing over — but only
//! before the first byte of an answer has gone to the caller. `LLM_TIMEOUT` bounds the whole
//! call; each attempt is bounded by its provider's timeout (for a stream: the first token).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI32, Ordering},
        Arc, OnceLock, RwLock,
    },
    time::Duration,
};

use futures_util::StreamExt as _;
use portico_limiter::Clock;
use portico_proto::chat as pb;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
};
use tokio::{sync::mpsc, time::Instant};
use tokio_retry::strategy::{jitter, ExponentialBackoff};
use tonic::Status;

use crate::{
    circuit::{Breaker, Permit, State, Thresholds, Verdict},
    error,
    providers::Spec,
    upstream::{self, Event, Events, Failure, Usage},
};

/// Retries of one provider after its first attempt.
const MAX_RETRIES: usize = 2;
/// Chunks buffered between the provider and a slow caller.
const STREAM_BUFFER: usize = 32;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    provider: String,
    kind: &'static str,
}

struct Metrics {
    duration: Family<ProviderLabels, Histogram>,
    requests: Family<OutcomeLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    circuit: Family<NameLabels, Gauge>,
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let metrics = Metrics {
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            requests: Family::default(),
            tokens: Family::default(),
            circuit: Family::default(),
        };
        use portico_telemetry::metrics::register;
        register(
            "llm_request_duration_seconds",
            "Duration of one upstream LLM attempt (whole answer, or whole stream)",
            metrics.duration.clone(),
        );
        register(
            "llm_requests",
            "Upstream LLM attempts by provider and outcome (ok, refused, failed, timeout, circuit_open, cancelled)",
            metrics.requests.clone(),
        );
        register(
            "llm_tokens",
            "Tokens reported by providers, by kind (prompt, completion)",
            metrics.tokens.clone(),
        );
        register(
            "circuit_breaker_state",
            "LLM provider circuit: 0 closed, 1 half-open, 2 open",
            metrics.circuit.clone(),
        );
        metrics
    })
}

fn count(provider: &str, outcome: &'static str) {
    metrics()
        .requests
        .get_or_create(&OutcomeLabels {
            provider: provider.to_owned(),
            outcome,
        })
        .inc();
}

fn count_tokens(provider: &str, usage: Usage) {
    for (kind, n) in [("prompt", usage.prompt), ("completion", usage.completion)] {
        metrics()
            .tokens
            .get_or_create(&TokenLabels {
                provider: provider.to_owned(),
                kind,
            })
            .inc_by(u64::from(n));
    }
}

/// One provider at runtime: its fixed configuration, the priority and enabled flag the admin
/// routes change, and its breaker.
#[derive(Debug)]
pub struct Provider {
    pub spec: Spec,
    priority: AtomicI32,
    enabled: AtomicBool,
    breaker: Arc<Breaker>,
}

impl Provider {
    pub fn priority(&self) -> i32 {
        self.priority.load(Ordering::Relaxed)
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set(&self, priority: i32, enabled: bool) {
        self.priority.store(priority, Ordering::Relaxed);
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    pub fn circuit(&self) -> State {
        self.breaker.state()
    }

    fn observe(&self, started: Instant) {
        metrics()
            .duration
            .get_or_create(&ProviderLabels {
                provider: self.spec.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The gateway's timing settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// `LLM_TIMEOUT`: the whole call.
    pub total: Duration,
    /// `LLM_FIRST_TOKEN_TIMEOUT`: a stream's first token, per attempt.
    pub first_token: Duration,
    /// The first retry's delay before jitter (then doubled).
    pub retry_base: Duration,
}

/// The providers and how to call them.
#[derive(Debug)]
pub struct Gateway {
    providers: RwLock<Vec<Arc<Provider>>>,
    http: reqwest::Client,
    timing: Timing,
}

/// Why no provider answered, collected across attempts.
#[derive(Default)]
struct Failures {
    reasons: Vec<String>,
    /// The soonest an open circuit lets a call through.
    open_for: Option<Duration>,
    /// Whether every real failure was a timeout.
    only_timeouts: bool,
    attempts: usize,
}

impl Failures {
    fn circuit_open(&mut self, provider: &str, wait: Duration) {
        count(provider, "circuit_open");
        self.reasons.push(format!("{provider}: circuit open"));
        self.open_for = Some(self.open_for.map_or(wait, |w| w.min(wait)));
    }

    fn failed(&mut self, provider: &str, failure: &Failure) {
        let timed_out = matches!(failure, Failure::Timeout);
        count(provider, if timed_out { "timeout" } else { "failed" });
        self.only_timeouts = timed_out && (self.attempts == 0 || self.only_timeouts);
        self.attempts += 1;
        self.reasons.push(format!("{provider}: {failure}"));
    }

    /// UNAVAILABLE (→ 502, with `Retry-After` when a circuit is open) or, when time ran out or
    /// every failure was a timeout, DEADLINE_EXCEEDED (→ 504). The reasons (provider URLs,
    /// connection errors, provider messages) go to the log and the span, never to the caller.
    fn into_status(self, out_of_time: bool) -> Status {
        let reasons = if self.reasons.is_empty() {
            "no LLM provider is enabled".to_owned()
        } else {
            self.reasons.join("; ")
        };
        if out_of_time || (self.attempts > 0 && self.only_timeouts) {
            tracing::warn!(%reasons, "LLM call timed out");
            error::llm_timeout(error::LLM_TIMEOUT_MESSAGE.into())
        } else {
            tracing::warn!(%reasons, "no LLM provider could answer");
            // Stable texts only: whether circuits refused is Portico's state, not a provider's.
            let message = if self.attempts == 0 && self.open_for.is_some() {
                error::LLM_CIRCUIT_OPEN_MESSAGE
            } else {
                error::LLM_UNAVAILABLE_MESSAGE
            };
            error::llm_unavailable(message.into(), self.open_for)
        }
    }
}

/// How one provider's attempts ended.
enum Attempts<T> {
    /// The answer, its permit and when its attempt started.
    Answered(T, Permit, Instant),
    Refused(Status),
    Gave,
}

impl Gateway {
    pub fn new(
        specs: Vec<Spec>,
        thresholds: Thresholds,
        timing: Timing,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let providers = specs
            .into_iter()
            .map(|spec| {
                let gauge = metrics()
                    .circuit
                    .get_or_create(&NameLabels {
                        name: spec.name.clone(),
                    })
                    .clone();
                Arc::new(Provider {
                    priority: AtomicI32::new(spec.priority),
                    enabled: AtomicBool::new(spec.enabled),
                    breaker: Arc::new(Breaker::new(thresholds, Arc::clone(&clock), gauge)),
                    spec,
                })
            })
            .collect();
        Self {
            providers: RwLock::new(providers),
            http: reqwest::Client::builder()
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .unwrap_or_default(),
            timing,
        }
    }

    /// Every provider, ordered by priority then name.
    pub fn providers(&self) -> Vec<Arc<Provider>> {
        let mut all = self
            .providers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        all.sort_by(|a, b| (a.priority(), &a.spec.name).cmp(&(b.priority(), &b.spec.name)));
        all
    }

    /// The enabled providers that offer `model`, by priority; INVALID_ARGUMENT when no
    /// provider (enabled or not) lists it.
    fn offering(&self, model: &str) -> Result<Vec<Arc<Provider>>, Status> {
        let all = self.providers();
        if !all.iter().any(|p| p.spec.offers(model)) {
            let mut offered: Vec<&str> = all
                .iter()
                .flat_map(|p| std::iter::once(&p.spec.model).chain(&p.spec.models))
                .map(String::as_str)
                .filter(|m| !m.is_empty())
                .collect();
            offered.sort_unstable();
            offered.dedup();
            return Err(Status::invalid_argument(format!(
                "model `{model}` is not offered here; offered: {}",
                offered.join(", ")
            )));
        }
        Ok(all
            .into_iter()
            .filter(|p| p.enabled() && p.spec.offers(model))
            .collect())
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .find(|p| p.spec.name == name)
            .cloned()
    }

    /// Runs `attempt` against one provider with retries, each bounded by `per_attempt` and
    /// by the overall `deadline`.
    async fn attempts<T, F, Fut>(
        &self,
        provider: &Provider,
        deadline: Instant,
        per_attempt: Duration,
        failures: &mut Failures,
        attempt: F,
    ) -> Attempts<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let name = provider.spec.name.as_str();
        let base = self.timing.retry_base.as_millis().max(1) as u64;
        let mut delays = ExponentialBackoff::from_millis(2)
            .factor(base / 2)
            .map(jitter)
            .take(MAX_RETRIES);
        loop {
            let permit = match provider.breaker.acquire() {
                Ok(permit) => permit,
                Err(wait) => {
                    failures.circuit_open(name, wait);
                    return Attempts::Gave;
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Attempts::Gave;
            }
            let bound = per_attempt.min(deadline - now);
            let started = Instant::now();
            let outcome = tokio::time::timeout(bound, attempt())
                .await
                .unwrap_or(Err(Failure::Timeout));
            let failure = match outcome {
                Ok(answer) => return Attempts::Answered(answer, permit, started),
                Err(Failure::Refused { status, message }) => {
                    // The provider is healthy; the request is not. Its message may quote
                    // anything (its configuration included): logged, not relayed.
                    permit.record(Verdict::Healthy);
                    count(name, "refused");
                    tracing::warn!(provider = name, status, %message, "LLM provider refused the request");
                    return Attempts::Refused(Status::invalid_argument(format!(
                        "the LLM provider refused the request (HTTP {status}); \
                         check the model, the messages and the parameters"
                    )));
                }
                Err(failure) => failure,
            };
            provider.observe(started);
            permit.record(Verdict::Failed);
            failures.failed(name, &failure);
            tracing::warn!(provider = name, %failure, "LLM attempt failed");
            if !failure.is_retryable() {
                return Attempts::Gave;
            }
            let Some(delay) = delays.next() else {
                return Attempts::Gave;
            };
            let delay = failure
                .retry_after()
                .map_or(delay, |asked| asked.max(delay));
            if Instant::now() + delay >= deadline {
                // The provider asked for longer than the budget allows: try the next one.
                return Attempts::Gave;
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One whole answer.
    pub async fn complete(
        &self,
        request: &pb::CompleteRequest,
    ) -> Result<pb::CompleteResponse, Status> {
        let deadline = Instant::now() + self.timing.total;
        let mut failures = Failures::default();
        for provider in self.offering(&request.model)? {
            let spec = &provider.spec;
            let outcome = self
                .attempts(&provider, deadline, spec.timeout, &mut failures, || {
                    upstream::complete(&self.http, spec, request)
                })
                .await;
            match outcome {
                Attempts::Answered(answer, permit, started) => {
                    provider.observe(started);
                    permit.record(Verdict::Healthy);
                    count(&spec.name, "ok");
                    count_tokens(&spec.name, answer.usage);
                    return Ok(pb::CompleteResponse {
                        id: answer.id,
                        model: answer.model,
                        provider: spec.name.clone(),
                        message: Some(pb::ChatMessage {
                            role: "assistant".into(),
                            content: answer.content,
                        }),
                        finish_reason: answer.finish_reason,
                        usage: Some(usage(answer.usage)),
                        created: unix_now(),
                    });
                }
                Attempts::Refused(status) => return Err(status),
                Attempts::Gave => {}
            }
        }
        Err(failures.into_status(Instant::now() >= deadline))
    }

    /// A streamed answer. Failover happens only until a provider's first event arrives;
    /// after that a failure ends the stream with an error, never as a clean end.
    pub async fn stream(
        self: &Arc<Self>,
        request: pb::CompleteRequest,
    ) -> Result<mpsc::Receiver<Result<pb::CompletionChunk, Status>>, Status> {
        let deadline = Instant::now() + self.timing.total;
        let mut failures = Failures::default();
        for provider in self.offering(&request.model)? {
            let spec = &provider.spec;
            let per_attempt = spec.timeout.min(self.timing.first_token);
            let request = &request;
            let outcome = self
                .attempts(&provider, deadline, per_attempt, &mut failures, || async {
                    let mut events = upstream::stream(&self.http, spec, request).await?;
                    match events.next().await {
                        Some(Ok(first)) => Ok((first, events)),
                        Some(Err(failure)) => Err(failure),
                        None => Err(Failure::Protocol("the stream was empty".into())),
                    }
                })
                .await;
            match outcome {
                Attempts::Answered((first, events), permit, started) => {
                    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                    let relay = Relay {
                        provider: Arc::clone(&provider),
                        include_usage: request.include_usage,
                        created: unix_now(),
                        sent_role: false,
                        tx,
                    };
                    tokio::spawn(relay.run(first, events, permit, started, deadline));
                    return Ok(rx);
                }
                Attempts::Refused(status) => return Err(status),
                Attempts::Gave => {}
            }
        }
        Err(failures.into_status(Instant::now() >= deadline))
    }
}

/// Forwards one committed stream to the caller.
struct Relay {
    provider: Arc<Provider>,
    include_usage: bool,
    created: i64,
    sent_role: bool,
    tx: mpsc::Sender<Result<pb::CompletionChunk, Status>>,
}

impl Relay {
    fn chunk(
        &mut self,
        id: String,
        model: String,
        delta: String,
        finish: Option<String>,
    ) -> pb::CompletionChunk {
        let role = if self.sent_role {
            String::new()
        } else {
            self.sent_role = true;
            "assistant".into()
        };
        pb::CompletionChunk {
            id,
            model,
            provider: self.provider.spec.name.clone(),
            delta,
            finish_reason: finish.unwrap_or_default(),
            usage: None,
            created: self.created,
            role,
        }
    }

    async fn run(
        mut self,
        first: Event,
        mut events: Events,
        permit: Permit,
        started: Instant,
        deadline: Instant,
    ) {
        let name = self.provider.spec.name.clone();
        let mut last_id = (String::new(), String::new());
        let mut next = Some(Ok(first));
        let out_of_time = tokio::time::sleep_until(deadline);
        tokio::pin!(out_of_time);
        let verdict = loop {
            let item = match next.take() {
                Some(item) => Some(item),
                None => tokio::select! {
                    () = self.tx.closed() => {
                        // The caller went away: dropping `events` cancels the upstream request.
                        count(&name, "cancelled");
                        tracing::info!(provider = %name, "caller cancelled the stream");
                        return;
                    }
                    () = &mut out_of_time => Some(Err(Failure::Timeout)),
                    item = events.next() => item,
                },
            };
            let chunk = match item {
                Some(Ok(Event::Delta {
                    id,
                    model,
                    content,
                    finish_reason,
                })) => {
                    last_id = (id.clone(), model.clone());
                    self.chunk(id, model, content, finish_reason)
                }
                Some(Ok(Event::Usage(usage))) => {
                    count_tokens(&name, usage);
                    if !self.include_usage {
                        continue;
                    }
                    let (id, model) = last_id.clone();
                    let mut chunk = self.chunk(id, model, String::new(), None);
                    chunk.usage = Some(self::usage(usage));
                    chunk
                }
                Some(Ok(Event::Done)) | None => break Ok(()),
                Some(Err(failure)) => break Err(failure),
            };
            if self.tx.send(Ok(chunk)).await.is_err() {
                count(&name, "cancelled");
                return;
            }
        };
        self.provider.observe(started);
        match verdict {
            Ok(()) => {
                permit.record(Verdict::Healthy);
                count(&name, "ok");
            }
            Err(failure) => {
                permit.record(Verdict::Failed);
                count(
                    &name,
                    if matches!(failure, Failure::Timeout) {
                        "timeout"
                    } else {
                        "failed"
                    },
                );
                tracing::warn!(provider = %name, %failure, "LLM stream failed after it started");
                let status = if matches!(failure, Failure::Timeout) {
                    error::llm_timeout(error::LLM_TIMEOUT_MESSAGE.into())
                } else {
                    error::llm_unavailable("the LLM provider failed mid-answer".into(), None)
                };
                // If the caller is gone there is nobody to tell.
                let _ = self.tx.send(Err(status)).await;
            }
        }
    }
}

fn usage(usage: Usage) -> pb::Usage {
    pb::Usage {
        prompt_tokens: usage.prompt,
        completion_tokens: usage.completion,
        total_tokens: usage.prompt + usage.completion,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
