//! `MAINTENANCE_MODE`: every route but health and metrics answers 503 with `Retry-After`.

use tonic::Code;

use super::{Exchange, Handle, Step};
use crate::{ApiError, Response};

/// Seconds clients are told to wait while `MAINTENANCE_MODE` is on.
const RETRY_AFTER_SECONDS: u64 = 120;

/// See the module.
#[derive(Debug, Clone, Copy)]
pub struct Maintenance {
    on: bool,
}

impl Maintenance {
    /// `MAINTENANCE_MODE`.
    pub fn new(on: bool) -> Self {
        Self { on }
    }
}

impl Step for Maintenance {
    async fn call<'a, B: Send + 'static, N: Handle<B>>(
        &'a self,
        request: http::Request<B>,
        exchange: &'a mut Exchange,
        next: &'a N,
    ) -> Response {
        if self.on && !exchange.matched.is_operational() {
            return ApiError::new(Code::Unavailable, "Portico is in maintenance; retry later")
                .with_retry_after(RETRY_AFTER_SECONDS)
                .into_response(exchange.correlation_id());
        }
        next.handle(request, exchange).await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        layers::{testing, Matched},
        routes::{Match, RouteTable},
    };
    use http::Method;

    /// A request that matched its route in the real table.
    pub(crate) fn routed(
        table: &RouteTable,
        method: Method,
        path: &str,
    ) -> (http::Request<()>, crate::layers::Exchange) {
        let (request, mut exchange) = testing::request(method.clone(), path);
        exchange.matched = match table.find(&method, path) {
            Match::Found(route, params) => Matched::Found(route.clone(), params),
            other => panic!("{other:?}"),
        };
        (request, exchange)
    }

    #[tokio::test]
    async fn health_stays_up_and_the_rest_waits() {
        let table = RouteTable::portico();
        let login = routed(&table, Method::POST, "/api/v1/auth/login");
        let (response, inner) = testing::run(Maintenance::new(true), login).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (503, 0));
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "120");
        let health = routed(&table, Method::GET, "/readyz");
        let (response, inner) = testing::run(Maintenance::new(true), health).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
        let login = routed(&table, Method::POST, "/api/v1/auth/login");
        let (response, inner) = testing::run(Maintenance::new(false), login).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
    }
}
