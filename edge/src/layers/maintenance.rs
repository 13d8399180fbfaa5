//! `MAINTENANCE_MODE`: every route but health and metrics answers 503 with `Retry-After`.

use tonic::Code;

use super::{correlation_id, Matched, Next, Step};
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
    async fn call<B: Send + 'static>(
        &self,
        request: http::Request<B>,
        next: impl Next<B>,
    ) -> Response {
        let operational = request
            .extensions()
            .get::<Matched>()
            .and_then(Matched::route)
            .is_some_and(|route| route.is_operational());
        if self.on && !operational {
            return ApiError::new(Code::Unavailable, "Portico is in maintenance; retry later")
                .with_retry_after(RETRY_AFTER_SECONDS)
                .into_response(&correlation_id(&request));
        }
        next.run(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        layers::testing,
        routes::{Match, RouteTable},
    };
    use http::Method;

    fn matched(table: &RouteTable, method: Method, path: &str) -> Matched {
        match table.find(&method, path) {
            Match::Found(route, params) => Matched::Found(route.clone(), params.into()),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn health_stays_up_and_the_rest_waits() {
        let table = RouteTable::portico();
        let mut login = testing::request(Method::POST, "/api/v1/auth/login");
        login
            .extensions_mut()
            .insert(matched(&table, Method::POST, "/api/v1/auth/login"));
        let (response, inner) = testing::run(Maintenance::new(true), login).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (503, 0));
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "120");
        let mut health = testing::request(Method::GET, "/readyz");
        health
            .extensions_mut()
            .insert(matched(&table, Method::GET, "/readyz"));
        let (response, inner) = testing::run(Maintenance::new(true), health).await;
        assert_eq!((response.status().as_u16(), inner.reached()), (200, 1));
    }
}
