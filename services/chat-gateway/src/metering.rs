//! What an API key's chat and embeddings requests cost: the key is verified here (through auth,
//! cached at most 500 ms, as everywhere), must carry the `chat` scope, reserves its worst case
//! from its token budget before the call goes upstream, and settles to the provider's real usage
//! when the call ends — for a stream, before its end reaches the caller. A failed call gives its
//! reservation back; a stream its caller abandons keeps it (the provider's usage never arrives,
//! and leaving must not be a way to spend for free). Every request is recorded in the usage
//! ledger.

use std::time::{SystemTime, UNIX_EPOCH};

use portico_proto::chat as pb;
use portico_tokens::{ApiKeyGrant, Identity, Scope};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tonic::Status;

use crate::{
    budget::{Budgets, Reservation},
    usage::{self, Tokens, Usage},
};

/// `google.rpc.ErrorInfo.reason` of a request refused because its key's budget is spent.
pub const REASON_BUDGET_EXCEEDED: &str = "TOKEN_BUDGET_EXCEEDED";
/// Bytes of prompt JSON per estimated token. Tokenizers take about 4 bytes of English and one
/// 3-byte character of CJK per token; 3 keeps the estimate above what providers report.
const PROMPT_BYTES_PER_TOKEN: u64 = 3;
/// Tokens added to every prompt estimate (role markers, message framing).
const PROMPT_OVERHEAD_TOKENS: u64 = 16;
/// Chunks buffered between the gateway's stream and the caller's.
const STREAM_BUFFER: usize = 16;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An upper bound of a request's prompt tokens, from its JSON size.
pub fn prompt_estimate(parts: &[Option<&Value>]) -> u64 {
    let bytes: usize = parts
        .iter()
        .flatten()
        .map(|v| serde_json::to_string(v).map_or(0, |s| s.len()))
        .sum();
    (bytes as u64).div_ceil(PROMPT_BYTES_PER_TOKEN) + PROMPT_OVERHEAD_TOKENS
}

/// Tokens reserved for each non-text content part (an image, audio or a file), whose cost its
/// JSON size does not tell: about what OpenAI charges for the largest high-detail image.
pub const MEDIA_PART_TOKENS: u64 = 1_500;

/// The most a chat request can cost: a prompt estimate from the size of the whole request (every
/// field reaches the provider: messages, tools, a response schema…) plus [`MEDIA_PART_TOKENS`] per
/// image, audio or file part, plus the larger of `max_tokens` and `max_completion_tokens` (a
/// provider may honour either) for each of its `n` choices.
pub fn chat_worst_case(body: &Map<String, Value>, default_max_tokens: u32) -> u64 {
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .filter_map(|field| body.get(*field).and_then(Value::as_u64))
        .max()
        .unwrap_or(u64::from(default_max_tokens));
    let choices = body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    let media = body
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|message| message.get("content").and_then(Value::as_array))
        .flatten()
        .filter(|part| part.get("type").and_then(Value::as_str) != Some("text"))
        .count() as u64;
    let whole = Value::Object(body.clone());
    prompt_estimate(&[Some(&whole)])
        .saturating_add(media.saturating_mul(MEDIA_PART_TOKENS))
        .saturating_add(completion.saturating_mul(choices))
}

/// Budgets and usage of API keys.
#[derive(Debug, Clone)]
pub struct Metering {
    pub budgets: Budgets,
    pub usage: Usage,
}

/// One metered request in flight.
#[derive(Debug)]
pub struct Meter {
    metering: Metering,
    key: ApiKeyGrant,
    user_id: String,
    model: String,
    reservation: Option<Reservation>,
}

impl Metering {
    /// The caller's API key, verified, when its credential is one (`None` for tokens and
    /// anonymous callers). A key without the `chat` scope is refused.
    pub async fn api_key(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        verifier: &portico_tokens::Verifier,
    ) -> Result<Option<Identity>, Status> {
        let Some(key) = portico_tokens::bearer(metadata).filter(|b| portico_tokens::is_api_key(b))
        else {
            return Ok(None);
        };
        let identity = verifier.verify(key).await.map_err(|refused| {
            tracing::info!(reason = %refused.0, "API key refused");
            Status::unauthenticated("the API key is invalid, expired or revoked")
        })?;
        if !identity.may(Scope::Chat) {
            return Err(Status::permission_denied(
                "this API key lacks the `chat` scope",
            ));
        }
        Ok(Some(identity))
    }

    /// Starts metering a request of `identity` for `model` that may cost `worst_case` tokens:
    /// reserves them when the key has a budget. RESOURCE_EXHAUSTED (retry after the window's
    /// end) when the budget is spent.
    pub async fn start(
        &self,
        identity: Identity,
        model: String,
        worst_case: u64,
    ) -> Result<Meter, Status> {
        let Some(key) = identity.api_key else {
            return Err(Status::internal("not an API key"));
        };
        let reservation = if key.token_budget > 0 {
            match self
                .budgets
                .reserve(
                    &key.id,
                    key.token_budget,
                    key.budget_window_seconds,
                    worst_case,
                    unix_now(),
                )
                .await
            {
                Ok(reservation) => Some(reservation),
                Err(exceeded) => {
                    usage::count("budget_exceeded");
                    let mut status = portico_grpc::retryable_status(
                        tonic::Code::ResourceExhausted,
                        format!(
                            "this API key's token budget of {} per {} s is spent; it renews when the window ends",
                            key.token_budget, key.budget_window_seconds
                        ),
                        REASON_BUDGET_EXCEEDED,
                        std::time::Duration::from_secs(exceeded.retry_after),
                    );
                    status.metadata_mut().insert(
                        portico_proto::ERROR_REASON_KEY,
                        tonic::metadata::MetadataValue::from_static(
                            portico_proto::REASON_TOKEN_BUDGET,
                        ),
                    );
                    return Err(status);
                }
            }
        } else {
            None
        };
        Ok(Meter {
            metering: self.clone(),
            key,
            user_id: identity.user_id,
            model,
            reservation,
        })
    }
}

impl Meter {
    /// The call ended with the provider's `usage`: the budget is charged exactly that.
    pub async fn completed(self, usage: Option<&pb::Usage>) {
        let tokens = usage.map_or_else(Tokens::default, |u| Tokens {
            prompt: u64::from(u.prompt_tokens),
            completion: u64::from(u.completion_tokens),
        });
        let charged = match (usage, &self.reservation) {
            (Some(_), _) => tokens.prompt + tokens.completion,
            // No usage reported: the worst case stays charged.
            (None, Some(reservation)) => reservation.amount,
            (None, None) => 0,
        };
        self.end("ok", tokens, charged).await;
    }

    /// The call failed before any answer reached the caller: everything is given back.
    pub async fn failed(self) {
        self.end("failed", Tokens::default(), 0).await;
    }

    /// The caller left a stream: the reservation stays charged.
    async fn cancelled(self) {
        let kept = self.reservation.as_ref().map_or(0, |r| r.amount);
        self.end("cancelled", Tokens::default(), kept).await;
    }

    async fn end(self, outcome: &'static str, tokens: Tokens, charged: u64) {
        if let Some(reservation) = &self.reservation {
            self.metering.budgets.settle(reservation, charged).await;
        }
        usage::count(outcome);
        self.metering
            .usage
            .record(&self.key.id, &self.user_id, &self.model, tokens);
    }

    /// Relays `chunks` to the caller, settling before the stream's end reaches it. The gateway
    /// was asked for the usage chunk; `caller_wants_usage` says whether the caller sees it.
    pub fn relay(
        self,
        mut chunks: mpsc::Receiver<Result<pb::CompletionChunk, Status>>,
        caller_wants_usage: bool,
    ) -> mpsc::Receiver<Result<pb::CompletionChunk, Status>> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut reported: Option<pb::Usage> = None;
            let mut relayed = false;
            loop {
                let item = tokio::select! {
                    () = tx.closed() => {
                        drop(chunks);
                        return self.cancelled().await;
                    }
                    item = chunks.recv() => item,
                };
                match item {
                    Some(Ok(mut chunk)) => {
                        if let Some(usage) = chunk.usage {
                            reported = Some(usage);
                            if !caller_wants_usage {
                                match without_usage(&chunk.openai_json) {
                                    // A usage-only chunk the caller did not ask for.
                                    None => continue,
                                    Some(json) => {
                                        chunk.openai_json = json;
                                        chunk.usage = None;
                                    }
                                }
                            }
                        }
                        if tx.send(Ok(chunk)).await.is_err() {
                            drop(chunks);
                            return self.cancelled().await;
                        }
                        relayed = true;
                    }
                    Some(Err(status)) => {
                        if relayed {
                            // Part of the answer reached the caller: what the provider said
                            // it used, or else the worst case, stays charged.
                            self.completed(reported.as_ref()).await;
                        } else {
                            self.failed().await;
                        }
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    None => {
                        // Settled before `tx` drops, which is what ends the caller's stream.
                        return self.completed(reported.as_ref()).await;
                    }
                }
            }
        });
        rx
    }
}

/// A chunk's JSON without `usage`; `None` when nothing else is in it (no choices).
fn without_usage(json: &str) -> Option<String> {
    if json.is_empty() {
        // Portico's own shape carries usage in the typed field only; no choices either.
        return None;
    }
    match serde_json::from_str::<Value>(json) {
        Ok(Value::Object(mut chunk)) => {
            let has_choices = chunk
                .get("choices")
                .and_then(Value::as_array)
                .is_some_and(|c| !c.is_empty());
            if !has_choices {
                return None;
            }
            chunk.remove("usage");
            Some(Value::Object(chunk).to_string())
        }
        _ => Some(json.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_worst_case_is_the_prompt_estimate_plus_max_tokens_per_choice() {
        let object = |value: Value| match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        };
        let body = object(
            json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 10, "n": 2}),
        );
        let prompt =
            |body: &Map<String, Value>| prompt_estimate(&[Some(&Value::Object(body.clone()))]);
        assert!(
            prompt(&body) >= 7,
            "above what providers report for one word"
        );
        assert_eq!(chat_worst_case(&body, 4096), prompt(&body) + 20);
        let mut bare = body.clone();
        bare.remove("max_tokens");
        bare.remove("n");
        assert_eq!(chat_worst_case(&bare, 50), prompt(&bare) + 50);

        // Both limits: the larger one counts (a provider may honour either).
        let both = object(json!({"messages": [{"role": "user", "content": "hi"}],
            "max_completion_tokens": 1, "max_tokens": 4096}));
        assert_eq!(chat_worst_case(&both, 50), prompt(&both) + 4096);

        // Every field is prompt: a large response schema raises the estimate.
        let schema = object(
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"description": "y".repeat(30_000)}}}}),
        );
        assert!(chat_worst_case(&schema, 50) > 10_000);

        // A media part costs what its URL's length does not say.
        let image = object(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}], "max_tokens": 1}));
        assert_eq!(
            chat_worst_case(&image, 50),
            prompt(&image) + MEDIA_PART_TOKENS + 1
        );
    }

    #[test]
    fn usage_is_removed_and_usage_only_chunks_dropped() {
        assert_eq!(
            without_usage(r#"{"choices":[],"usage":{"prompt_tokens":1}}"#),
            None
        );
        let kept = without_usage(r#"{"choices":[{"index":0}],"usage":{"prompt_tokens":1}}"#)
            .expect("has choices");
        assert!(!kept.contains("usage"));
    }
}
