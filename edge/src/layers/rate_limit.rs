//! Rate limiting at the edge: the `global` policy per client network, the route's own policy
//! (its binding's `policy`: `auth`, `chat`), then the caller's API key rate; the first refusal
//! is answered (429, `Retry-After`), and every answer carries the RateLimit headers of the
//! buckets the request went through. Health and metrics are never limited. The client IP it
//! resolves (trusted proxies applied) is left for the dispatch as [`ClientIp`].

use std::net::IpAddr;

use super::{correlation_id, Matched, Next, Peer, Step};
use crate::{client_ip, limits, Edge, Response};

/// The client's IP, after `TRUSTED_PROXIES` (set by [`RateLimit`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// See the module.
#[derive(Clone)]
pub struct RateLimit {
    edge: Edge,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").finish_non_exhaustive()
    }
}

impl RateLimit {
    /// With the edge's limiter and verifier.
    pub fn new(edge: Edge) -> Self {
        Self { edge }
    }
}

impl Step for RateLimit {
    async fn call<B: Send + 'static>(
        &self,
        mut request: http::Request<B>,
        next: impl Next<B>,
    ) -> Response {
        let edge = &self.edge;
        let peer = request
            .extensions()
            .get::<Peer>()
            .map_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)), |p| p.0);
        let client_ip = client_ip::client_ip(
            peer,
            request.headers(),
            &edge.inner.settings.trusted_proxies,
        );
        request.extensions_mut().insert(ClientIp(client_ip));
        let Some(route) = request
            .extensions()
            .get::<Matched>()
            .and_then(Matched::route)
            .filter(|route| !route.is_operational())
            .cloned()
        else {
            return next.run(request).await;
        };
        let Some(context) = request
            .extensions()
            .get::<portico_telemetry::RequestContext>()
            .cloned()
        else {
            return next.run(request).await;
        };
        let correlation = correlation_id(&request);
        // Every policy's decision, in the order asked: the rate limit headers describe them.
        let mut verdicts: Vec<limits::Verdict> = Vec::new();
        // IPv6 clients share one bucket per /64 (one subscriber's usual allocation).
        let ip = portico_limiter::client_network(client_ip);
        let limiter = &edge.inner.limiter;
        let bearer = request.headers().contains_key(http::header::AUTHORIZATION);
        let outcomes = match route.extra_policy() {
            // A chat caller's token is verified only after `global` admitted the request,
            // so floods of forged tokens are limited before any verification work.
            Some("chat") if bearer => {
                let global = limiter.check("global", &ip, client_ip, &context).await;
                if global.is_err() {
                    vec![global]
                } else {
                    match edge.chat_key(request.headers(), &ip).await {
                        Ok(key) => {
                            let chat = limiter.check("chat", &key, client_ip, &context).await;
                            vec![global, chat]
                        }
                        Err(error) => return error.into_response(&correlation),
                    }
                }
            }
            // Every key is known up front: both decisions at once (one hop, not two).
            Some(policy) => {
                let key = if policy == "chat" {
                    match edge.chat_key(request.headers(), &ip).await {
                        Ok(key) => key,
                        Err(error) => return error.into_response(&correlation),
                    }
                } else {
                    ip.clone()
                };
                let (global, extra) = tokio::join!(
                    limiter.check("global", &ip, client_ip, &context),
                    limiter.check(policy, &key, client_ip, &context)
                );
                vec![global, extra]
            }
            None => vec![limiter.check("global", &ip, client_ip, &context).await],
        };
        let mut outcomes = outcomes;
        // A key's own request rate, once the other policies admitted the request.
        if outcomes.iter().all(Result::is_ok) {
            outcomes.push(
                edge.api_key_rate(request.headers(), client_ip, &context)
                    .await,
            );
        }
        let mut refused: Option<limits::Refusal> = None;
        for outcome in outcomes {
            match outcome {
                Ok(verdict) => verdicts.extend(verdict),
                Err(refusal) => {
                    verdicts.extend(refusal.decision);
                    // The first refusal is the one answered (and counted).
                    refused.get_or_insert(refusal);
                }
            }
        }
        if let Some(refusal) = refused {
            refusal.count();
            let described = refusal.decision.is_some();
            let mut response = refusal.error.into_response(&correlation);
            if described {
                limiter.apply_headers(response.headers_mut(), &verdicts);
            }
            return response;
        }
        let mut response = next.run(request).await;
        limiter.apply_headers(response.headers_mut(), &verdicts);
        response
    }
}
