//! The deadline of a request's answer head: `EDGE_REQUEST_TIMEOUT` (the chat and embedding
//! routes: `LLM_TIMEOUT` and the hops' margin) and a second, after which the edge answers 504
//! and drops the work.
//! Each gRPC call already carries the same deadline and usually answers first with its own
//! message; this layer bounds whatever else a route waits on (a body that trickles in, several
//! calls in a row). A streamed answer's body is not bounded here: its stream has its own limits.
//! Health and metrics have no deadline (they wait on nothing unbounded).

use std::time::Duration;

use tonic::Code;

use super::{Exchange, Handle, Step};
use crate::{routes::Handler, ApiError, Response};

/// Added to the deadline, so a gRPC call's own (which names what timed out) answers first.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(1);

/// See the module.
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    request: Duration,
    chat: Duration,
}

impl Timeout {
    /// `request` for every route, `chat` for the LLM routes.
    pub fn new(request: Duration, chat: Duration) -> Self {
        Self { request, chat }
    }
}

impl Step for Timeout {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        let Some(route) = exchange.matched.route().filter(|r| !r.is_operational()) else {
            return next.handle(request, exchange).await;
        };
        let llm = matches!(
            route.handler(),
            Some(Handler::Chat | Handler::ChatCompletions | Handler::Embeddings)
        );
        let deadline = if llm { self.chat } else { self.request } + BACKSTOP_MARGIN;
        // The correlation ID is copied before `exchange` is lent to the rest of the stack.
        let correlation = exchange.context.correlation_id.clone();
        match tokio::time::timeout(deadline, next.handle(request, exchange)).await {
            Ok(response) => response,
            Err(_) => ApiError::new(
                Code::DeadlineExceeded,
                format!("no answer within {} ms", deadline.as_millis()),
            )
            .into_response(&correlation),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::{
        layers::{maintenance::tests::routed, testing, StepLayer},
        routes::RouteTable,
    };

    /// Never answers.
    struct Stalls;

    impl<B: Send + 'static> Handle<B> for Stalls {
        async fn handle<'a>(&'a self, _: http::Request<B>, _: &'a mut Exchange) -> Response {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_stalled_route_is_504_at_its_deadline() {
        let table = RouteTable::portico();
        // The margin is the layer's own; the deadlines are what the settings give.
        let stack = tower::Layer::layer(
            &StepLayer(Timeout::new(Duration::ZERO, Duration::from_millis(500))),
            Stalls,
        );
        let (request, mut exchange) = routed(&table, Method::POST, "/api/v1/auth/login");
        let started = std::time::Instant::now();
        let response = stack.handle(request, &mut exchange).await;
        assert_eq!(response.status(), 504);
        let waited = started.elapsed();
        assert!(waited >= BACKSTOP_MARGIN, "{waited:?}");
        let (request, mut exchange) = routed(&table, Method::POST, "/v1/chat/completions");
        let started = std::time::Instant::now();
        let response = stack.handle(request, &mut exchange).await;
        assert_eq!(response.status(), 504);
        let chat = started.elapsed();
        assert!(
            chat >= BACKSTOP_MARGIN + Duration::from_millis(500),
            "the chat routes wait for LLM_TIMEOUT: {chat:?}"
        );
    }

    #[tokio::test]
    async fn health_has_no_deadline_and_answers_pass_through() {
        let table = RouteTable::portico();
        let layer = Timeout::new(Duration::from_secs(5), Duration::from_secs(60));
        let (response, inner) = testing::run(layer, routed(&table, Method::GET, "/healthz")).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
        let (response, inner) =
            testing::run(layer, routed(&table, Method::POST, "/api/v1/auth/login")).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
    }
}
