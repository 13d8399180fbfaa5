//! `portico.chat.v1.ChatService` over gRPC: validation, then the gateway.

use std::{pin::Pin, sync::Arc};

use portico_config::SecretString;
use portico_proto::chat::{self as pb, chat_service_server::ChatService};
use tokio_stream::{wrappers::ReceiverStream, Stream};
use tonic::{Request, Response, Status};

use crate::{
    gateway::{Deployment, Gateway, Provider},
    request,
    store::{Runtime, Store},
};

/// The gRPC face of the chat gateway.
#[derive(Debug, Clone)]
pub struct ChatGrpc {
    pub(crate) gateway: Arc<Gateway>,
    pub(crate) store: Store,
    pub(crate) admin_key: Option<SecretString>,
    pub(crate) verifier: portico_tokens::Verifier,
    /// `CHAT_ALLOW_UNTRUSTED`: callers other than a trusted peer need no credentials.
    pub(crate) allow_untrusted: bool,
    /// `LLM_MAX_TOKENS`.
    pub(crate) max_tokens: u32,
    /// API keys' budgets and usage.
    pub(crate) metering: crate::metering::Metering,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::CompletionChunk, Status>> + Send>>;

fn provider(p: &Provider) -> pb::Provider {
    pb::Provider {
        name: p.spec.name.clone(),
        base_url: p.spec.base_url.clone(),
        model: p.spec.model.clone(),
        priority: p.priority(),
        enabled: p.enabled(),
        circuit_state: p.circuit().name().into(),
    }
}

/// A named deployment as the admin route shows it (its provider's URL and circuit).
fn deployment_as_provider(name: &str, d: &Deployment) -> pb::Provider {
    pb::Provider {
        name: name.to_owned(),
        base_url: d.provider.spec.base_url.clone(),
        model: d.spec.model.clone(),
        priority: d.priority(),
        enabled: d.own_enabled(),
        circuit_state: d.provider.circuit().name().into(),
    }
}

fn deployment(d: &Deployment) -> pb::Deployment {
    pb::Deployment {
        name: d.spec.name.clone().unwrap_or_default(),
        provider: d.provider.spec.name.clone(),
        model: d.spec.model.clone(),
        priority: d.priority(),
        weight: d.spec.weight,
        enabled: d.enabled(),
        in_flight: d.in_flight(),
    }
}

impl ChatGrpc {
    /// Completions spend the provider's money: the edge (a trusted peer) has applied the
    /// public rules (anonymous chat or not); anyone else brings a bearer token or the admin
    /// key, unless `CHAT_ALLOW_UNTRUSTED`.
    async fn require_caller<T>(&self, request: &Request<T>) -> Result<(), Status> {
        portico_tokens::authorize_caller(
            request.metadata(),
            self.allow_untrusted || portico_grpc::Peer::of(request).trusted,
            self.admin_key.as_ref(),
            &self.verifier,
        )
        .await
        .map_err(Status::from)
    }
}

impl ChatGrpc {
    /// The caller's API key, when it brought one (see `metering`).
    async fn api_key<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<portico_tokens::Identity>, Status> {
        self.metering
            .api_key(request.metadata(), &self.verifier)
            .await
    }

    /// The alias a request is recorded under: the one it named, or the default. An alias the
    /// gateway does not serve is refused before anything is recorded, so callers cannot add
    /// usage labels.
    fn alias_name(&self, asked: &str) -> String {
        if asked.is_empty() {
            self.gateway.default_alias().to_owned()
        } else {
            asked.to_owned()
        }
    }

    /// Starts metering a chat request of an API key (reserving its worst case).
    async fn meter_chat(
        &self,
        key: portico_tokens::Identity,
        request: &request::Chat,
    ) -> Result<crate::metering::Meter, Status> {
        let alias = self.alias_name(&request.alias);
        if !self.gateway.aliases().iter().any(|a| a.name == alias) {
            return Err(crate::error::model_not_found(&alias));
        }
        let worst_case = crate::metering::chat_worst_case(&request.body, self.max_tokens);
        self.metering.start(key, alias, worst_case).await
    }
}

#[tonic::async_trait]
impl ChatService for ChatGrpc {
    type StreamCompleteStream = ChunkStream;

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let received = tokio::time::Instant::now();
        self.require_caller(&request).await?;
        let key = self.api_key(&request).await?;
        let request = request::chat(request.into_inner(), self.max_tokens)?;
        let meter = match key {
            Some(key) => Some(self.meter_chat(key, &request).await?),
            None => None,
        };
        let answer = self.gateway.complete(&request, received).await;
        if let Some(meter) = meter {
            match &answer {
                Ok(answer) => meter.completed(answer.usage.as_ref()).await,
                Err(_) => meter.failed().await,
            }
        }
        answer.map(Response::new)
    }

    async fn stream_complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let received = tokio::time::Instant::now();
        self.require_caller(&request).await?;
        let key = self.api_key(&request).await?;
        let mut request = request::chat(request.into_inner(), self.max_tokens)?;
        let Some(key) = key else {
            let chunks = self.gateway.stream(request, received).await?;
            return Ok(Response::new(Box::pin(ReceiverStream::new(chunks))));
        };
        let meter = self.meter_chat(key, &request).await?;
        // The usage chunk settles the budget; the caller sees it only if it asked.
        let caller_wants_usage = request.include_usage;
        request.include_usage = true;
        match self.gateway.stream(request, received).await {
            Ok(chunks) => Ok(Response::new(Box::pin(ReceiverStream::new(
                meter.relay(chunks, caller_wants_usage),
            )))),
            Err(status) => {
                meter.failed().await;
                Err(status)
            }
        }
    }

    async fn embed(
        &self,
        request: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let received = tokio::time::Instant::now();
        self.require_caller(&request).await?;
        let key = self.api_key(&request).await?;
        let request = request::embedding(request.into_inner())?;
        let meter = match key {
            Some(key) => {
                let alias = self.alias_name(&request.alias);
                if !self.gateway.aliases().iter().any(|a| a.name == alias) {
                    return Err(crate::error::model_not_found(&alias));
                }
                let worst_case = crate::metering::prompt_estimate(&[request.body.get("input")]);
                Some(self.metering.start(key, alias, worst_case).await?)
            }
            None => None,
        };
        let answer = self.gateway.embed(&request, received).await;
        if let Some(meter) = meter {
            match &answer {
                Ok(answer) => meter.completed(answer.usage.as_ref()).await,
                Err(_) => meter.failed().await,
            }
        }
        answer.map(Response::new)
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        if !portico_grpc::Peer::of(&request).trusted {
            portico_tokens::authorize_admin(
                request.metadata(),
                self.admin_key.as_ref(),
                &self.verifier,
            )
            .await
            .map_err(Status::from)?;
        }
        let r = request.into_inner();
        if r.api_key_id.is_empty() && r.user_id.is_empty() {
            return Err(Status::invalid_argument("give api_key_id, user_id or both"));
        }
        for (name, day) in [("from_day", &r.from_day), ("to_day", &r.to_day)] {
            let valid = day.is_empty()
                || (day.len() == 10
                    && day.bytes().enumerate().all(|(i, b)| {
                        if i == 4 || i == 7 {
                            b == b'-'
                        } else {
                            b.is_ascii_digit()
                        }
                    }));
            if !valid {
                return Err(Status::invalid_argument(format!(
                    "{name} must be a day as YYYY-MM-DD"
                )));
            }
        }
        let rows = self
            .metering
            .usage
            .rows(&r.api_key_id, &r.user_id, &r.from_day, &r.to_day)
            .await
            .map_err(crate::Error::from)?;
        let (window_used_tokens, window_ends_at) =
            if !r.api_key_id.is_empty() && r.budget_window_seconds > 0 {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let (used, end) = self
                    .metering
                    .budgets
                    .used(&r.api_key_id, r.budget_window_seconds, now)
                    .await;
                (used, i64::try_from(end).unwrap_or(i64::MAX))
            } else {
                (0, 0)
            };
        Ok(Response::new(pb::GetUsageResponse {
            rows: rows
                .into_iter()
                .map(|row| pb::UsageRow {
                    day: row.day,
                    api_key_id: row.api_key_id,
                    user_id: row.user_id,
                    model: row.model,
                    requests: row.requests,
                    prompt_tokens: row.prompt_tokens,
                    completion_tokens: row.completion_tokens,
                })
                .collect(),
            window_used_tokens,
            window_ends_at,
        }))
    }

    /// Open like ListProviders: names and model names only, no secret.
    async fn list_models(
        &self,
        _: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let default = self.gateway.default_alias();
        let models = self
            .gateway
            .aliases()
            .iter()
            .map(|alias| pb::Model {
                id: alias.name.clone(),
                created: self.gateway.loaded_at,
                owned_by: "portico".into(),
                balance: alias.balance.name().into(),
                deployments: alias.deployments.iter().map(|d| deployment(d)).collect(),
                default: alias.name == default,
            })
            .collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    /// Open to callers inside the mesh (the edge's readiness reads the circuits); it returns no
    /// secret. The REST route in front of it is admin-only.
    async fn list_providers(
        &self,
        _: Request<pb::ListProvidersRequest>,
    ) -> Result<Response<pb::ListProvidersResponse>, Status> {
        let providers = self
            .gateway
            .providers()
            .iter()
            .map(|p| provider(p))
            .collect();
        Ok(Response::new(pb::ListProvidersResponse { providers }))
    }

    async fn set_provider_priority(
        &self,
        request: Request<pb::SetProviderPriorityRequest>,
    ) -> Result<Response<pb::Provider>, Status> {
        let identity = portico_tokens::authorize_admin(
            request.metadata(),
            self.admin_key.as_ref(),
            &self.verifier,
        )
        .await
        .map_err(Status::from)?;
        let change = request.into_inner();
        if change.priority.is_none() && change.enabled.is_none() {
            return Err(Status::invalid_argument("set priority, enabled or both"));
        }
        if change
            .priority
            .is_some_and(|p| !(-1_000_000..=1_000_000).contains(&p))
        {
            return Err(Status::invalid_argument(
                "priority must be between -1000000 and 1000000",
            ));
        }
        enum Target {
            Provider(Arc<Provider>),
            Deployment(Arc<Deployment>),
        }
        let target = match self.gateway.provider(&change.name) {
            Some(p) => Target::Provider(p),
            None => match self.gateway.deployment(&change.name) {
                Some(d) => Target::Deployment(d),
                None => {
                    return Err(Status::not_found(format!(
                        "no LLM provider or deployment is called `{}`",
                        change.name
                    )))
                }
            },
        };
        let (priority, enabled) = match &target {
            Target::Provider(p) => (p.priority(), p.enabled()),
            Target::Deployment(d) => (d.priority(), d.own_enabled()),
        };
        let runtime = Runtime {
            name: change.name.clone(),
            priority: change.priority.unwrap_or(priority),
            enabled: change.enabled.unwrap_or(enabled),
        };
        // The table first: when it cannot be written nothing changes anywhere.
        if !self.store.set(&runtime).await.map_err(crate::Error::from)? {
            return Err(Status::not_found(format!(
                "no LLM provider or deployment is called `{}`",
                change.name
            )));
        }
        tracing::info!(
            name = %runtime.name,
            priority = runtime.priority,
            enabled = runtime.enabled,
            by = %identity.user_id,
            "LLM provider changed"
        );
        Ok(Response::new(match target {
            Target::Provider(p) => {
                p.set(runtime.priority, runtime.enabled);
                provider(&p)
            }
            Target::Deployment(d) => {
                d.set(runtime.priority, runtime.enabled);
                deployment_as_provider(&runtime.name, &d)
            }
        }))
    }
}
