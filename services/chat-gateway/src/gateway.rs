//! Choosing a deployment: the caller's alias names deployments (provider + that provider's
//! model name); they are tried by priority — equal priorities in weighted-random or least-busy
//! order — skipping disabled ones and open circuits, retrying a provider's transient failures
//! (jittered exponential backoff from tokio-retry, at most two retries, `Retry-After` honoured
//! when it fits the budget) and then failing over within the alias — but only before the first
//! byte of an answer has gone to the caller. `LLM_TIMEOUT` bounds the whole call; each attempt
//! is bounded by its provider's timeout (for a stream: the first token).
//!
//! Every attempt is a span following OpenTelemetry's GenAI conventions (`gen_ai.*`), and feeds
//! the `gen_ai_client_*` metrics; `llm_gateway_overhead_seconds` is the gateway's own share of
//! each call (its time minus the time it waited for providers).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering},
        Arc, OnceLock,
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
use tracing::{field::Empty, Instrument as _, Span};

use crate::{
    circuit::{Breaker, Permit, State, Thresholds, Verdict},
    error,
    providers::{Balance, Config, DeploymentSpec, Spec},
    request::{Chat, Embedding},
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

/// OpenTelemetry's GenAI metric attributes, in Prometheus spelling.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: String,
    gen_ai_request_model: String,
    /// Empty on success.
    error_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GenAiTokenLabels {
    gen_ai_operation_name: &'static str,
    gen_ai_provider_name: String,
    gen_ai_request_model: String,
    gen_ai_token_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

struct Metrics {
    duration: Family<ProviderLabels, Histogram>,
    requests: Family<OutcomeLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    circuit: Family<NameLabels, Gauge>,
    operation: Family<GenAiLabels, Histogram>,
    token_usage: Family<GenAiTokenLabels, Histogram>,
    overhead: Family<OperationLabels, Histogram>,
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
            // The buckets OpenTelemetry's GenAI conventions advise.
            operation: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 2.0, 14))
            }),
            token_usage: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(1.0, 4.0, 14))
            }),
            // 10 µs to 80 ms.
            overhead: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_01, 2.0, 14))
            }),
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
        register(
            "gen_ai_client_operation_duration_seconds",
            "GenAI operation duration per provider attempt (OpenTelemetry gen_ai.client.operation.duration)",
            metrics.operation.clone(),
        );
        register(
            "gen_ai_client_token_usage",
            "Tokens per provider answer by type, input or output (OpenTelemetry gen_ai.client.token.usage)",
            metrics.token_usage.clone(),
        );
        register(
            "llm_gateway_overhead_seconds",
            "The chat gateway's own time per call: its whole time less the time spent waiting for providers (to the first event, for streams)",
            metrics.overhead.clone(),
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

fn count_tokens(deployment: &Deployment, operation: &'static str, usage: Usage) {
    let provider = &deployment.provider.spec.name;
    for (kind, n) in [("prompt", usage.prompt), ("completion", usage.completion)] {
        metrics()
            .tokens
            .get_or_create(&TokenLabels {
                provider: provider.clone(),
                kind,
            })
            .inc_by(u64::from(n));
    }
    let types: &[(&'static str, u32)] = if operation == OP_EMBEDDINGS {
        &[("input", usage.prompt)]
    } else {
        &[("input", usage.prompt), ("output", usage.completion)]
    };
    for (kind, n) in types {
        metrics()
            .token_usage
            .get_or_create(&GenAiTokenLabels {
                gen_ai_operation_name: operation,
                gen_ai_provider_name: provider.clone(),
                gen_ai_request_model: deployment.spec.model.clone(),
                gen_ai_token_type: kind,
            })
            .observe(f64::from(*n));
    }
}

fn overhead(operation: &'static str, received: Instant, upstream: Duration) {
    metrics()
        .overhead
        .get_or_create(&OperationLabels { operation })
        .observe(received.elapsed().saturating_sub(upstream).as_secs_f64());
}

/// `gen_ai.operation.name` of chat completions.
const OP_CHAT: &str = "chat";
/// `gen_ai.operation.name` of embeddings.
const OP_EMBEDDINGS: &str = "embeddings";

/// What `error.type` says about a failure.
fn error_type(failure: &Failure) -> &'static str {
    match failure {
        Failure::Refused { .. } => "refused",
        Failure::Status { status, .. } => match status {
            401 | 403 => "unauthorized",
            404 => "not_found",
            408 => "timeout",
            429 => "rate_limited",
            _ => "upstream_error",
        },
        Failure::Timeout => "timeout",
        Failure::Transport(_) => "transport",
        Failure::Protocol(_) => "protocol",
    }
}

/// Records a provider's answer on its attempt's span (OpenTelemetry GenAI attributes).
fn record_answer(span: &Span, id: &str, model: &str, finish_reasons: &[String], usage: Usage) {
    span.record("gen_ai.response.id", id);
    span.record("gen_ai.response.model", model);
    if !finish_reasons.is_empty() {
        // OpenTelemetry's string[], as its JSON text.
        span.record(
            "gen_ai.response.finish_reasons",
            serde_json::to_string(finish_reasons)
                .unwrap_or_default()
                .as_str(),
        );
    }
    span.record("gen_ai.usage.input_tokens", usage.prompt);
    span.record("gen_ai.usage.output_tokens", usage.completion);
}

/// The host a base URL names (`server.address`).
fn host(base_url: &str) -> &str {
    let rest = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    if authority.starts_with('[') {
        authority
            .split_once(']')
            .map_or(authority, |(host, _)| &host[1..])
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

/// One provider at runtime: its fixed configuration, the priority and enabled flag the admin
/// routes change, and its breaker (shared by every deployment on it).
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
}

/// One deployment of an alias at runtime.
#[derive(Debug)]
pub struct Deployment {
    pub spec: DeploymentSpec,
    pub provider: Arc<Provider>,
    /// Used when `spec.priority` is set (else the provider's counts).
    priority: AtomicI32,
    enabled: AtomicBool,
    in_flight: AtomicU32,
}

impl Deployment {
    /// Its own priority, or its provider's for the deployments a provider's models make.
    pub fn priority(&self) -> i32 {
        match self.spec.priority {
            Some(_) => self.priority.load(Ordering::Relaxed),
            None => self.provider.priority(),
        }
    }

    /// Enabled, on an enabled provider.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed) && self.provider.enabled()
    }

    /// Its own flag (whatever the provider's).
    pub fn own_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn set(&self, priority: i32, enabled: bool) {
        self.priority.store(priority, Ordering::Relaxed);
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Calls in flight on this replica.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Observes one attempt's duration (`llm_request_duration_seconds`, and the GenAI
    /// operation duration labelled with its error type, empty on success).
    fn observe(&self, operation: &'static str, started: Instant, error_type: &'static str) {
        let seconds = started.elapsed().as_secs_f64();
        let provider = &self.provider.spec.name;
        metrics()
            .duration
            .get_or_create(&ProviderLabels {
                provider: provider.clone(),
            })
            .observe(seconds);
        metrics()
            .operation
            .get_or_create(&GenAiLabels {
                gen_ai_operation_name: operation,
                gen_ai_provider_name: provider.clone(),
                gen_ai_request_model: self.spec.model.clone(),
                error_type,
            })
            .observe(seconds);
    }
}

/// Counts a call in flight on a deployment while it lives.
struct InFlight(Arc<Deployment>);

impl InFlight {
    fn new(deployment: &Arc<Deployment>) -> Self {
        deployment.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(deployment))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A name callers may use.
#[derive(Debug)]
pub struct Alias {
    pub name: String,
    pub balance: Balance,
    pub deployments: Vec<Arc<Deployment>>,
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

/// The providers, the aliases, and how to call them.
#[derive(Debug)]
pub struct Gateway {
    providers: Vec<Arc<Provider>>,
    aliases: Vec<Alias>,
    default_alias: String,
    /// Unix seconds at load (`/v1/models`' `created`).
    pub loaded_at: i64,
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
    /// Time spent waiting for providers (attempts and back-off), not the gateway's own.
    upstream: Duration,
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
            "no deployment of the model is enabled".to_owned()
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

/// A successful attempt and what settles it.
struct Answer<T> {
    value: T,
    permit: Permit,
    started: Instant,
    span: Span,
    in_flight: InFlight,
}

/// How one deployment's attempts ended.
enum Attempts<T> {
    Answered(Answer<T>),
    Refused(Status),
    Gave,
}

impl Gateway {
    pub fn new(
        config: Config,
        thresholds: Thresholds,
        timing: Timing,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let providers: Vec<Arc<Provider>> = config
            .providers
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
                    breaker: Arc::new(Breaker::new(
                        thresholds,
                        Arc::clone(&clock),
                        gauge,
                        portico_telemetry::metrics::dependency_gauge(
                            "chat-gateway",
                            format!("llm:{}", spec.name),
                        ),
                    )),
                    spec,
                })
            })
            .collect();
        let aliases = config
            .aliases
            .into_iter()
            .map(|alias| Alias {
                deployments: alias
                    .deployments
                    .into_iter()
                    .filter_map(|spec| {
                        let provider = providers.iter().find(|p| p.spec.name == spec.provider)?;
                        Some(Arc::new(Deployment {
                            provider: Arc::clone(provider),
                            priority: AtomicI32::new(spec.priority.unwrap_or(0)),
                            enabled: AtomicBool::new(spec.enabled),
                            in_flight: AtomicU32::new(0),
                            spec,
                        }))
                    })
                    .collect(),
                name: alias.name,
                balance: alias.balance,
            })
            .collect();
        Self {
            providers,
            aliases,
            default_alias: config.default_alias,
            loaded_at: unix_now(),
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
        let mut all = self.providers.clone();
        all.sort_by(|a, b| (a.priority(), &a.spec.name).cmp(&(b.priority(), &b.spec.name)));
        all
    }

    /// The aliases, in configuration order.
    pub fn aliases(&self) -> &[Alias] {
        &self.aliases
    }

    /// The alias a request naming no model gets.
    pub fn default_alias(&self) -> &str {
        &self.default_alias
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<Arc<Provider>> {
        self.providers.iter().find(|p| p.spec.name == name).cloned()
    }

    /// The named deployment called `name`.
    pub fn deployment(&self, name: &str) -> Option<Arc<Deployment>> {
        self.aliases
            .iter()
            .flat_map(|a| &a.deployments)
            .find(|d| d.spec.name.as_deref() == Some(name))
            .cloned()
    }

    /// The alias `asked` names (empty: the default) and its enabled deployments in the order to
    /// try them: by priority; equal priorities by the alias's balance — weighted random (each
    /// draws `-ln(u)/weight`, the lowest first: Efraimidis–Spirakis), or fewest in flight with
    /// the weighted draw breaking ties. NOT_FOUND (`model_not_found`) for an unknown alias.
    fn plan(&self, asked: &str) -> Result<(&Alias, Vec<Arc<Deployment>>), Status> {
        let name = if asked.is_empty() {
            self.default_alias.as_str()
        } else {
            asked
        };
        let Some(alias) = self.aliases.iter().find(|a| a.name == name) else {
            return Err(error::model_not_found(name));
        };
        let mut ranked: Vec<(i32, u32, f64, &Arc<Deployment>)> = alias
            .deployments
            .iter()
            .filter(|d| d.enabled())
            .map(|d| {
                let busy = match alias.balance {
                    Balance::LeastBusy => d.in_flight(),
                    Balance::Weighted => 0,
                };
                let draw = -(1.0 - fastrand::f64()).ln() / f64::from(d.spec.weight.max(1));
                (d.priority(), busy, draw, d)
            })
            .collect();
        ranked.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.total_cmp(&b.2)));
        Ok((alias, ranked.into_iter().map(|r| Arc::clone(r.3)).collect()))
    }

    /// Runs `attempt` against one deployment with retries, each bounded by `per_attempt` and by
    /// the overall `deadline`, each in its own GenAI span.
    #[allow(clippy::too_many_arguments)]
    async fn attempts<T, F, Fut>(
        &self,
        deployment: &Arc<Deployment>,
        alias: &str,
        operation: &'static str,
        deadline: Instant,
        per_attempt: Duration,
        failures: &mut Failures,
        attempt: F,
    ) -> Attempts<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let provider = &deployment.provider;
        let name = provider.spec.name.as_str();
        let model = deployment.spec.model.as_str();
        let base = self.timing.retry_base.as_millis().max(1) as u64;
        let mut delays = ExponentialBackoff::from_millis(2)
            .factor(base / 2)
            .map(jitter)
            .take(MAX_RETRIES);
        let mut number = 0u32;
        loop {
            number += 1;
            let span = tracing::info_span!(
                "gen_ai.client",
                otel.name = %format!("{operation} {model}"),
                otel.kind = "client",
                gen_ai.operation.name = operation,
                gen_ai.provider.name = name,
                gen_ai.system = name,
                gen_ai.request.model = model,
                gen_ai.response.model = Empty,
                gen_ai.response.id = Empty,
                gen_ai.response.finish_reasons = Empty,
                gen_ai.usage.input_tokens = Empty,
                gen_ai.usage.output_tokens = Empty,
                server.address = host(&provider.spec.base_url),
                error.type = Empty,
                portico.alias = alias,
                portico.attempt = number,
            );
            let permit = match provider.breaker.acquire() {
                Ok(permit) => permit,
                Err(wait) => {
                    span.record("error.type", "circuit_open");
                    failures.circuit_open(name, wait);
                    return Attempts::Gave;
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Attempts::Gave;
            }
            let bound = per_attempt.min(deadline - now);
            let in_flight = InFlight::new(deployment);
            let started = Instant::now();
            let outcome = tokio::time::timeout(bound, attempt())
                .instrument(span.clone())
                .await
                .unwrap_or(Err(Failure::Timeout));
            failures.upstream += started.elapsed();
            let failure = match outcome {
                Ok(value) => {
                    return Attempts::Answered(Answer {
                        value,
                        permit,
                        started,
                        span,
                        in_flight,
                    })
                }
                Err(Failure::Refused { status, message }) => {
                    // The provider is healthy; the request is not. Its message may quote
                    // anything (its configuration included): logged, not relayed.
                    permit.record(Verdict::Healthy);
                    count(name, "refused");
                    span.record("error.type", "refused");
                    deployment.observe(operation, started, "refused");
                    tracing::warn!(parent: &span, provider = name, status, %message, "LLM provider refused the request");
                    return Attempts::Refused(Status::invalid_argument(format!(
                        "the LLM provider refused the request (HTTP {status}); \
                         check the model, the messages and the parameters"
                    )));
                }
                Err(failure) => failure,
            };
            drop(in_flight);
            let kind = error_type(&failure);
            deployment.observe(operation, started, kind);
            span.record("error.type", kind);
            permit.record(Verdict::Failed);
            failures.failed(name, &failure);
            tracing::warn!(parent: &span, provider = name, %failure, "LLM attempt failed");
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
            failures.upstream += delay;
        }
    }

    /// One whole answer. `received` is when the call reached the gateway.
    pub async fn complete(
        &self,
        request: &Chat,
        received: Instant,
    ) -> Result<pb::CompleteResponse, Status> {
        let deadline = Instant::now() + self.timing.total;
        let mut failures = Failures::default();
        let (alias, plan) = self.plan(&request.alias)?;
        for deployment in plan {
            let spec = &deployment.provider.spec;
            let model = deployment.spec.model.as_str();
            let outcome = self
                .attempts(
                    &deployment,
                    &alias.name,
                    OP_CHAT,
                    deadline,
                    spec.timeout,
                    &mut failures,
                    || upstream::complete(&self.http, spec, model, request),
                )
                .await;
            match outcome {
                Attempts::Answered(Answer {
                    value: answer,
                    permit,
                    started,
                    span,
                    in_flight,
                }) => {
                    drop(in_flight);
                    deployment.observe(OP_CHAT, started, "");
                    permit.record(Verdict::Healthy);
                    count(&spec.name, "ok");
                    count_tokens(&deployment, OP_CHAT, answer.usage);
                    record_answer(
                        &span,
                        &answer.id,
                        &answer.model,
                        &answer.finish_reasons,
                        answer.usage,
                    );
                    overhead(OP_CHAT, received, failures.upstream);
                    return Ok(pb::CompleteResponse {
                        id: answer.id,
                        model: answer.model,
                        provider: spec.name.clone(),
                        message: Some(pb::ChatMessage {
                            role: "assistant".into(),
                            content: answer.content,
                            tool_calls: answer.tool_calls,
                            refusal: answer.refusal,
                            ..Default::default()
                        }),
                        finish_reason: answer.finish_reasons.into_iter().next().unwrap_or_default(),
                        usage: Some(usage(answer.usage)),
                        created: unix_now(),
                        openai_json: answer.json,
                        alias: alias.name.clone(),
                    });
                }
                Attempts::Refused(status) => return Err(status),
                Attempts::Gave => {}
            }
        }
        Err(failures.into_status(Instant::now() >= deadline))
    }

    /// Embeddings, routed like a whole answer.
    pub async fn embed(
        &self,
        request: &Embedding,
        received: Instant,
    ) -> Result<pb::EmbedResponse, Status> {
        let deadline = Instant::now() + self.timing.total;
        let mut failures = Failures::default();
        let (alias, plan) = self.plan(&request.alias)?;
        for deployment in plan {
            let spec = &deployment.provider.spec;
            let model = deployment.spec.model.as_str();
            let outcome = self
                .attempts(
                    &deployment,
                    &alias.name,
                    OP_EMBEDDINGS,
                    deadline,
                    spec.timeout,
                    &mut failures,
                    || upstream::embed(&self.http, spec, model, request),
                )
                .await;
            match outcome {
                Attempts::Answered(Answer {
                    value: answer,
                    permit,
                    started,
                    span,
                    in_flight,
                }) => {
                    drop(in_flight);
                    deployment.observe(OP_EMBEDDINGS, started, "");
                    permit.record(Verdict::Healthy);
                    count(&spec.name, "ok");
                    count_tokens(&deployment, OP_EMBEDDINGS, answer.usage);
                    record_answer(&span, "", &answer.model, &[], answer.usage);
                    overhead(OP_EMBEDDINGS, received, failures.upstream);
                    return Ok(pb::EmbedResponse {
                        model: answer.model,
                        provider: spec.name.clone(),
                        usage: Some(usage(answer.usage)),
                        openai_json: answer.json,
                        alias: alias.name.clone(),
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
        request: Chat,
        received: Instant,
    ) -> Result<mpsc::Receiver<Result<pb::CompletionChunk, Status>>, Status> {
        let deadline = Instant::now() + self.timing.total;
        let mut failures = Failures::default();
        let (alias, plan) = self.plan(&request.alias)?;
        for deployment in plan {
            let spec = &deployment.provider.spec;
            let model = deployment.spec.model.as_str();
            let per_attempt = spec.timeout.min(self.timing.first_token);
            let request = &request;
            let outcome = self
                .attempts(
                    &deployment,
                    &alias.name,
                    OP_CHAT,
                    deadline,
                    per_attempt,
                    &mut failures,
                    || async {
                        let mut events = upstream::stream(&self.http, spec, model, request).await?;
                        match events.next().await {
                            Some(Ok(first)) => Ok((first, events)),
                            Some(Err(failure)) => Err(failure),
                            None => Err(Failure::Protocol("the stream was empty".into())),
                        }
                    },
                )
                .await;
            match outcome {
                Attempts::Answered(answer) => {
                    overhead(OP_CHAT, received, failures.upstream);
                    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                    let relay = Relay {
                        deployment: Arc::clone(&deployment),
                        include_usage: request.include_usage,
                        created: unix_now(),
                        tx,
                    };
                    tokio::spawn(relay.run(answer, deadline));
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
    deployment: Arc<Deployment>,
    include_usage: bool,
    created: i64,
    tx: mpsc::Sender<Result<pb::CompletionChunk, Status>>,
}

/// A chunk's JSON without its `usage` (the caller did not ask for it).
fn without_usage(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut chunk)) => {
            chunk.remove("usage");
            serde_json::Value::Object(chunk).to_string()
        }
        _ => json.to_owned(),
    }
}

impl Relay {
    async fn run(self, answer: Answer<(Event, Events)>, deadline: Instant) {
        let Answer {
            value: (first, mut events),
            permit,
            started,
            span,
            in_flight,
        } = answer;
        let name = self.deployment.provider.spec.name.clone();
        let mut next = Some(Ok(first));
        let mut finish_reasons: Vec<String> = Vec::new();
        let mut seen = (String::new(), String::new(), Usage::default());
        let out_of_time = tokio::time::sleep_until(deadline);
        tokio::pin!(out_of_time);
        let verdict = loop {
            let item = match next.take() {
                Some(item) => Some(item),
                None => tokio::select! {
                    () = self.tx.closed() => {
                        // The caller went away: dropping `events` cancels the upstream request.
                        count(&name, "cancelled");
                        span.record("error.type", "cancelled");
                        tracing::info!(parent: &span, provider = %name, "caller cancelled the stream");
                        return;
                    }
                    () = &mut out_of_time => Some(Err(Failure::Timeout)),
                    item = events.next() => item,
                },
            };
            let chunk = match item {
                Some(Ok(Event::Chunk {
                    json,
                    id,
                    model,
                    role,
                    content,
                    finish_reason,
                    has_choices,
                    usage: reported,
                })) => {
                    seen.0.clone_from(&id);
                    seen.1.clone_from(&model);
                    if let Some(reason) = &finish_reason {
                        finish_reasons.push(reason.clone());
                    }
                    let json = match reported {
                        Some(reported) => {
                            count_tokens(&self.deployment, OP_CHAT, reported);
                            seen.2 = reported;
                            if !self.include_usage && !has_choices {
                                continue;
                            }
                            if self.include_usage {
                                json
                            } else {
                                without_usage(&json)
                            }
                        }
                        None => json,
                    };
                    pb::CompletionChunk {
                        id,
                        model,
                        provider: name.clone(),
                        delta: content,
                        finish_reason: finish_reason.unwrap_or_default(),
                        usage: reported.filter(|_| self.include_usage).map(usage),
                        created: self.created,
                        role,
                        openai_json: json,
                    }
                }
                Some(Ok(Event::Done)) | None => break Ok(()),
                Some(Err(failure)) => break Err(failure),
            };
            if self.tx.send(Ok(chunk)).await.is_err() {
                count(&name, "cancelled");
                return;
            }
        };
        drop(in_flight);
        record_answer(&span, &seen.0, &seen.1, &finish_reasons, seen.2);
        match verdict {
            Ok(()) => {
                self.deployment.observe(OP_CHAT, started, "");
                permit.record(Verdict::Healthy);
                count(&name, "ok");
            }
            Err(failure) => {
                let kind = error_type(&failure);
                self.deployment.observe(OP_CHAT, started, kind);
                span.record("error.type", kind);
                permit.record(Verdict::Failed);
                count(
                    &name,
                    if matches!(failure, Failure::Timeout) {
                        "timeout"
                    } else {
                        "failed"
                    },
                );
                tracing::warn!(parent: &span, provider = %name, %failure, "LLM stream failed after it started");
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
        cached_tokens: usage.cached,
        reasoning_tokens: usage.reasoning,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Mutex};

    use tracing::{
        field::{Field, Visit},
        span::{Attributes, Id, Record},
        Subscriber,
    };
    use tracing_subscriber::{
        layer::{Context, SubscriberExt as _},
        registry::LookupSpan,
        Layer,
    };

    use super::*;

    type Fields = HashMap<String, String>;

    /// Keeps every closed span's fields.
    #[derive(Clone, Default)]
    struct Spans(Arc<Mutex<Vec<Fields>>>);

    struct Visitor<'a>(&'a mut Fields);

    impl Visit for Visitor<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().into(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().into(), value.into());
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = Fields::new();
            fields.insert("name".into(), attrs.metadata().name().into());
            attrs.record(&mut Visitor(&mut fields));
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(fields);
            }
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            if let Some(span) = ctx.span(id) {
                if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                    values.record(&mut Visitor(fields));
                }
            }
        }
        fn on_close(&self, id: Id, ctx: Context<'_, S>) {
            if let Some(span) = ctx.span(&id) {
                if let Some(fields) = span.extensions_mut().remove::<Fields>() {
                    self.0.lock().expect("lock").push(fields);
                }
            }
        }
    }

    #[tokio::test]
    async fn each_attempt_is_a_span_with_opentelemetry_genai_attributes() {
        let settings = portico_config::Settings::from_source(&HashMap::<String, String>::new())
            .expect("defaults")
            .chat;
        let config = crate::providers::load(&settings, &|_| None).expect("echo");
        let gateway = Gateway::new(
            config,
            Thresholds {
                failures: 5,
                reset: Duration::from_secs(30),
                successes: 1,
            },
            Timing {
                total: Duration::from_secs(5),
                first_token: Duration::from_secs(5),
                retry_base: Duration::from_millis(100),
            },
            Arc::new(portico_limiter::SystemClock),
        );
        let request = crate::request::chat(
            pb::CompleteRequest {
                openai_json: r#"{"messages":[{"role":"user","content":"hello there"}]}"#.into(),
                ..Default::default()
            },
            100,
        )
        .expect("valid");
        let spans = Spans::default();
        let subscriber = tracing_subscriber::registry().with(spans.clone());
        let _default = tracing::subscriber::set_default(subscriber);
        let answer = gateway
            .complete(&request, Instant::now())
            .await
            .expect("echo answers");
        assert_eq!(answer.alias, "echo");
        let closed = spans.0.lock().expect("lock").clone();
        let span = closed
            .iter()
            .find(|s| s.get("name").map(String::as_str) == Some("gen_ai.client"))
            .expect("an attempt span");
        for (key, value) in [
            ("otel.name", "chat echo"),
            ("otel.kind", "client"),
            ("gen_ai.operation.name", "chat"),
            ("gen_ai.provider.name", "echo"),
            ("gen_ai.system", "echo"),
            ("gen_ai.request.model", "echo"),
            ("gen_ai.response.model", "echo"),
            ("gen_ai.response.finish_reasons", r#"["stop"]"#),
            ("gen_ai.usage.input_tokens", "2"),
            ("gen_ai.usage.output_tokens", "2"),
            ("server.address", "builtin"),
            ("portico.alias", "echo"),
            ("portico.attempt", "1"),
        ] {
            assert_eq!(
                span.get(key).map(String::as_str),
                Some(value),
                "{key} in {span:?}"
            );
        }
        assert!(span
            .get("gen_ai.response.id")
            .is_some_and(|id| id.starts_with("chatcmpl-")));
        assert_eq!(host("https://api.openai.com:443/v1"), "api.openai.com");
        assert_eq!(host("http://[::1]:8080/v1"), "::1");
    }
}
