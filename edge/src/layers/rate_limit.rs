//! Rate limiting at the edge: it resolves the client IP (`TRUSTED_PROXIES` applied) into the
//! [`Exchange`]; then the `global` policy per client network, the route's own policy (its
//! binding's `policy`: `auth`, `chat`), then the caller's API key rate; the first refusal is
//! answered (429, `Retry-After`; 503 when the limiter cannot decide and `RATE_LIMIT_FAIL_MODE`
//! is `closed`), and every answer carries the RateLimit headers of the buckets the request went
//! through. Health and metrics are never limited.

use portico_telemetry::RequestContext;

use super::{Exchange, Handle, Step};
use crate::{client_ip, limits, routes::Route, Edge, Response};

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
    /// With the edge's limiter, verifier and `TRUSTED_PROXIES`.
    pub fn new(edge: Edge) -> Self {
        Self { edge }
    }
}

impl Step for RateLimit {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        let edge = &self.edge;
        let client_ip = client_ip::client_ip(
            exchange.peer,
            request.headers(),
            &edge.inner.settings.trusted_proxies,
        );
        exchange.client_ip = client_ip;
        let Some(route) = exchange
            .matched
            .route()
            .filter(|route| !route.is_operational())
        else {
            return next.handle(request, exchange).await;
        };
        // Boxed: the decisions' futures (gRPC calls to the ratelimit and auth services) would
        // otherwise make this layer's future, which the outer layers move, kilobytes larger.
        let verdicts = match Box::pin(admit(
            edge,
            route,
            request.headers(),
            client_ip,
            &exchange.context,
        ))
        .await
        {
            Ok(verdicts) => verdicts,
            Err(refused) => return refused,
        };
        let mut response = next.handle(request, exchange).await;
        edge.inner
            .limiter
            .apply_headers(response.headers_mut(), &verdicts);
        response
    }
}

/// Every policy's decision for a request to `route`: the verdicts (for the RateLimit headers),
/// or the answer to a refused request.
async fn admit(
    edge: &Edge,
    route: &Route,
    headers: &http::HeaderMap,
    client_ip: std::net::IpAddr,
    context: &RequestContext,
) -> Result<Vec<limits::Verdict>, Response> {
    let correlation = context.correlation_id.as_str();
    // Every policy's decision, in the order asked: the rate limit headers describe them.
    let mut verdicts: Vec<limits::Verdict> = Vec::new();
    // IPv6 clients share one bucket per /64 (one subscriber's usual allocation).
    let ip = portico_limiter::client_network(client_ip);
    let limiter = &edge.inner.limiter;
    let bearer = headers.contains_key(http::header::AUTHORIZATION);
    let mut outcomes = match route.extra_policy() {
        // A chat caller's token is verified only after `global` admitted the request,
        // so floods of forged tokens are limited before any verification work.
        Some("chat") if bearer => {
            let global = limiter.check("global", &ip, client_ip, context).await;
            if global.is_err() {
                vec![global]
            } else {
                match edge.chat_key(headers, &ip).await {
                    Ok(key) => {
                        let chat = limiter.check("chat", &key, client_ip, context).await;
                        vec![global, chat]
                    }
                    Err(error) => return Err(error.into_response(correlation)),
                }
            }
        }
        // Every key is known up front: both decisions at once (one hop, not two).
        Some(policy) => {
            let key = if policy == "chat" {
                match edge.chat_key(headers, &ip).await {
                    Ok(key) => key,
                    Err(error) => return Err(error.into_response(correlation)),
                }
            } else {
                ip.clone()
            };
            let (global, extra) = tokio::join!(
                limiter.check("global", &ip, client_ip, context),
                limiter.check(policy, &key, client_ip, context)
            );
            vec![global, extra]
        }
        None => vec![limiter.check("global", &ip, client_ip, context).await],
    };
    // A key's own request rate, once the other policies admitted the request.
    if outcomes.iter().all(Result::is_ok) {
        outcomes.push(edge.api_key_rate(headers, client_ip, context).await);
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
        let mut response = refusal.error.into_response(correlation);
        if described {
            limiter.apply_headers(response.headers_mut(), &verdicts);
        }
        return Err(response);
    }
    Ok(verdicts)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use http::Method;

    use super::*;
    use crate::{
        layers::{maintenance::tests::routed, testing},
        routes::RouteTable,
    };

    /// An edge whose ratelimit service is a closed port, in `closed` fail mode.
    async fn edge(extra: &[(&str, &str)]) -> Edge {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", closed.local_addr().expect("addr"));
        drop(closed);
        let mut source: HashMap<String, String> = HashMap::from([
            ("RATELIMIT_GRPC_URL".to_owned(), url),
            ("RATE_LIMIT_FAIL_MODE".to_owned(), "closed".to_owned()),
            ("RATE_LIMIT_CHECK_TIMEOUT".to_owned(), "200ms".to_owned()),
            ("TRUSTED_PROXIES".to_owned(), "192.0.2.0/24".to_owned()),
        ]);
        for (name, value) in extra {
            source.insert((*name).to_owned(), (*value).to_owned());
        }
        let settings = portico_config::Settings::from_source(&source).expect("settings");
        Edge::new(&settings, tokio_util::sync::CancellationToken::new())
            .await
            .expect("edge")
    }

    #[tokio::test]
    async fn an_undecided_limit_refuses_in_closed_mode_and_health_is_never_asked() {
        let layer = RateLimit::new(edge(&[]).await);
        let table = RouteTable::portico();
        let login = routed(&table, Method::POST, "/api/v1/auth/login");
        let (response, inner) = testing::run(layer.clone(), login).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (503, 0));
        assert!(response.headers().contains_key(http::header::RETRY_AFTER));
        let health = routed(&table, Method::GET, "/healthz");
        let (response, inner) = testing::run(layer, health).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
    }

    #[tokio::test]
    async fn the_client_ip_comes_through_trusted_proxies_and_a_whitelisted_one_is_not_limited() {
        let layer = RateLimit::new(edge(&[("RATE_LIMIT_WHITELIST", "203.0.113.0/24")]).await);
        let table = RouteTable::portico();
        let (mut request, mut exchange) = routed(&table, Method::POST, "/api/v1/auth/login");
        request.headers_mut().insert(
            "x-forwarded-for",
            http::HeaderValue::from_static("203.0.113.5"),
        );
        let inner = testing::Inner::default();
        let stack = tower::Layer::layer(&crate::layers::StepLayer(layer), inner.clone());
        let response = stack.handle(request, &mut exchange).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
        assert_eq!(exchange.client_ip.to_string(), "203.0.113.5");
    }
}
