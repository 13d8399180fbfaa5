//! An in-process OpenAI-compatible provider on port 0 that tests script: answer, fail with a
//! status, stall, or stream words and then finish, break, send an error event, or hold the
//! stream open until the client goes away (which it reports); or answer exact bytes (a whole
//! body, or a stream's `data:` payloads) so tests can compare what reaches the client.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Notify};

/// How a stream ends after its words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Finish reason, usage, `[DONE]`.
    Done,
    /// The connection breaks mid-answer.
    Break,
    /// `data: {"error": …}` mid-answer.
    ErrorEvent,
    /// Nothing more until the client disconnects.
    Hold,
}

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole answer (or, for a streaming request, these words then `[DONE]`).
    Answer(&'static str),
    /// An error status with an optional `Retry-After` (seconds).
    Status(u16, Option<u32>),
    /// An error status with this exact body.
    StatusBody(u16, &'static str),
    /// Never answers.
    Stall,
    /// For streaming requests: these words, then `End`.
    Stream(&'static [&'static str], End),
    /// Whole answers as [`Reply::Answer`]; streams held open as [`End::Hold`].
    HoldStreams(&'static str),
    /// This exact JSON body (a completion, an embeddings list…), status 200.
    Raw(String),
    /// A stream of exactly these `data:` payloads, then `data: [DONE]`.
    Chunks(Vec<String>),
}

#[derive(Default)]
struct State {
    queue: Mutex<VecDeque<Reply>>,
    default: Mutex<Option<Reply>>,
    requests: Mutex<Vec<Value>>,
    paths: Mutex<Vec<String>>,
    cancelled: Notify,
}

/// A running fake provider.
#[derive(Clone)]
pub struct FakeLlm {
    /// Its base URL (`http://127.0.0.1:<port>/v1`).
    pub base_url: String,
    state: Arc<State>,
}

type Body = BoxBody<Bytes, std::io::Error>;

impl FakeLlm {
    /// Starts a provider that answers every request with `default`.
    pub async fn start(default: Reply) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake LLM");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        *state.default.lock().expect("lock") = Some(default);
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(state, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            state,
        }
    }

    /// Replies with `reply` to the next request (before the default).
    pub fn then(&self, reply: Reply) -> &Self {
        self.state.queue.lock().expect("lock").push_back(reply);
        self
    }

    /// Changes the default reply.
    pub fn set_default(&self, reply: Reply) {
        *self.state.default.lock().expect("lock") = Some(reply);
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    /// The JSON bodies received.
    pub fn bodies(&self) -> Vec<Value> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// The request paths received (`/v1/chat/completions`, `/v1/embeddings`).
    pub fn paths(&self) -> Vec<String> {
        self.state.paths.lock().expect("lock").clone()
    }

    /// Resolves once a held stream's client has gone away.
    pub async fn cancelled(&self) {
        self.state.cancelled.notified().await;
    }
}

fn full(status: u16, body: Value) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

fn answer_text(text: &str) -> hyper::Response<Body> {
    let words = text.split_whitespace().count();
    full(
        200,
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": words, "total_tokens": 7 + words},
        }),
    )
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let value = json!({
        "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {value}\n\n")
}

async fn answer(
    state: Arc<State>,
    request: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Body> {
    state
        .paths
        .lock()
        .expect("lock")
        .push(request.uri().path().to_owned());
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let streaming = body["stream"] == json!(true);
    state.requests.lock().expect("lock").push(body.clone());
    let reply = state
        .queue
        .lock()
        .expect("lock")
        .pop_front()
        .or_else(|| state.default.lock().expect("lock").clone())
        .expect("a reply");
    let (words, end): (Vec<&str>, End) = match reply {
        Reply::Status(status, retry_after) => {
            let mut response = full(
                status,
                json!({"error": {"message": format!("fake says {status}"), "type": "fake"}}),
            );
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.into());
            }
            return response;
        }
        Reply::StatusBody(status, body) => {
            let mut response = full(status, Value::Null);
            *response.body_mut() = Full::new(Bytes::from_static(body.as_bytes()))
                .map_err(|never| match never {})
                .boxed();
            return response;
        }
        Reply::Stall => std::future::pending().await,
        Reply::Raw(body) => {
            let mut response = full(200, Value::Null);
            *response.body_mut() = Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed();
            return response;
        }
        Reply::Chunks(chunks) => {
            let mut text = String::new();
            for data in chunks {
                text.push_str(&format!("data: {data}\n\n"));
            }
            text.push_str("data: [DONE]\n\n");
            let mut response = full(200, Value::Null);
            *response.body_mut() = Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed();
            response
                .headers_mut()
                .insert("content-type", "text/event-stream".parse().expect("header"));
            return response;
        }
        Reply::HoldStreams(text) if !streaming => {
            return answer_text(text);
        }
        Reply::HoldStreams(text) => (text.split(' ').collect(), End::Hold),
        Reply::Answer(text) if !streaming => return answer_text(text),
        Reply::Answer(text) => (text.split(' ').collect(), End::Done),
        Reply::Stream(words, end) => (words.to_vec(), end),
    };
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(16);
    let drained = Arc::new(Notify::new());
    let body_drained = Arc::clone(&drained);
    let frames = futures_util::stream::poll_fn(move |cx| {
        let poll = rx.poll_recv(cx);
        if poll.is_pending() {
            body_drained.notify_one();
        }
        poll
    });
    tokio::spawn(async move {
        let send = |text: String| tx.send(Ok(Frame::data(Bytes::from(text))));
        let _ = send(chunk(json!({"role": "assistant", "content": ""}), None)).await;
        for (i, word) in words.iter().enumerate() {
            let text = if i == 0 {
                (*word).to_owned()
            } else {
                format!(" {word}")
            };
            let _ = send(chunk(json!({"content": text}), None)).await;
        }
        match end {
            End::Done => {
                let _ = send(chunk(json!({}), Some("stop"))).await;
                let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "fake-model", "choices": [],
                    "usage": {"prompt_tokens": 7, "completion_tokens": words.len(), "total_tokens": 7 + words.len()}});
                let _ = send(format!("data: {usage}\n\n")).await;
                let _ = send("data: [DONE]\n\n".to_owned()).await;
            }
            End::Break => {
                // Break only once the words have left: the body stream was found empty, so
                // hyper has flushed them to the socket.
                while tx.capacity() < tx.max_capacity() {
                    drained.notified().await;
                }
                let _ = tx
                    .send(Err(std::io::Error::other("fake breaks the stream")))
                    .await;
            }
            End::ErrorEvent => {
                let _ = send(
                    "data: {\"error\":{\"message\":\"fake overloaded mid-stream\"}}\n\n".to_owned(),
                )
                .await;
            }
            End::Hold => {
                tx.closed().await;
                state.cancelled.notify_one();
            }
        }
    });
    let mut response = hyper::Response::new(StreamBody::new(frames).boxed());
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().expect("header"));
    response
}
