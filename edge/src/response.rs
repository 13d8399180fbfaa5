//! Response bodies and small builders.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt as _, Full};

/// The edge's response body: whole or streamed (SSE), never failing mid-body at this layer.
pub type Body = BoxBody<Bytes, Infallible>;
/// The edge's response.
pub type Response = http::Response<Body>;

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// An answer with `status` and no body.
pub fn empty_response(status: StatusCode) -> Response {
    let mut response = http::Response::new(empty());
    *response.status_mut() = status;
    response
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = http::Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A plain-text response with the given content type.
pub fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response {
    let mut response = http::Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A body that records, in `histogram`, the time from `started` until its last byte was
/// taken or it was dropped (a client that went away mid-stream): what a stream really took,
/// where the response head is sent long before.
pub(crate) fn timed(
    body: Body,
    started: std::time::Instant,
    histogram: prometheus_client::metrics::histogram::Histogram,
) -> Body {
    TimedBody {
        inner: body,
        started,
        histogram: Some(histogram),
    }
    .boxed()
}

struct TimedBody {
    inner: Body,
    started: std::time::Instant,
    histogram: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl TimedBody {
    fn observe(&mut self) {
        if let Some(histogram) = self.histogram.take() {
            histogram.observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) {
            self.observe();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        self.observe();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt, StreamBody};
    use prometheus_client::metrics::histogram::Histogram;

    use super::*;

    #[tokio::test]
    async fn a_timed_stream_is_recorded_at_its_end_not_at_its_head() {
        let histogram = Histogram::new([0.01, 0.05, 1.0]);
        let chunks = futures_util::stream::iter(0..3).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!("chunk {i}"))))
        });
        let body = timed(
            BodyExt::boxed(StreamBody::new(chunks)),
            Instant::now(),
            histogram.clone(),
        );
        let mut encoded = String::new();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("stream", "test", histogram.clone());
        prometheus_client::encoding::text::encode(&mut encoded, &registry).expect("encode");
        assert!(
            encoded.contains("stream_count 0"),
            "nothing at the head: {encoded}"
        );

        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(collected.len(), 21);
        let mut encoded = String::new();
        prometheus_client::encoding::text::encode(&mut encoded, &registry).expect("encode");
        assert!(encoded.contains("stream_count 1"), "{encoded}");
        // Three chunks 20 ms apart: past the 50 ms bucket.
        assert!(
            encoded.contains("stream_bucket{le=\"0.05\"} 0"),
            "{encoded}"
        );
    }
}
