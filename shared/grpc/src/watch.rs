//! `grpc.health.v1.Health` that lets a drain finish: tonic-health's `Watch` streams never end
//! on their own, so a probe or mesh holding one would keep every shutdown waiting for the whole
//! `SHUTDOWN_TIMEOUT`. Here each `Watch` ends once the server has reported NOT_SERVING at
//! shutdown, after sending that status, as gRPC servers such as grpc-go's do.

use std::pin::Pin;

use futures_util::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::{
    pb::{
        health_check_response::ServingStatus, health_server::Health, HealthCheckRequest,
        HealthCheckResponse,
    },
    server::{HealthReporter, HealthService},
};

/// tonic-health's service whose `Watch` streams end when `draining` is cancelled.
#[derive(Debug)]
pub(crate) struct DrainingHealth {
    inner: HealthService,
    draining: CancellationToken,
}

impl DrainingHealth {
    /// Serves `reporter`'s statuses; `draining` fires once NOT_SERVING has been set.
    pub(crate) fn new(reporter: HealthReporter, draining: CancellationToken) -> Self {
        Self {
            inner: HealthService::from_health_reporter(reporter),
            draining,
        }
    }
}

#[tonic::async_trait]
impl Health for DrainingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        let draining = self.draining.clone().cancelled_owned();
        // The last word is NOT_SERVING (the update itself may lose the race with the end).
        let last = futures_util::stream::once(async {
            Ok(HealthCheckResponse {
                status: ServingStatus::NotServing as i32,
            })
        });
        Ok(Response::new(Box::pin(
            statuses.take_until(draining).chain(last),
        )))
    }
}
