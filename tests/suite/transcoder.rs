//! An RPC annotated with `google.api.http` in a test-only proto
//! (proto/proto/portico/testing/v1/greeter.proto) is served over REST and documented in the
//! OpenAPI by the edge's generic transcoder, with no edge code for it.

use std::{collections::HashMap, sync::Mutex};

use http_body_util::BodyExt as _;
use portico_edge::{
    backends::{Backend, Forwarded},
    routes::{Match, RouteTable, Target},
    transcoder::Transcoder,
};
use portico_proto::testing::{
    greeter_server::{Greeter, GreeterServer},
    GreetRequest, Greeting, LastGreetingRequest, Tone,
};
use serde_json::{json, Value};
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Greetings {
    last: Mutex<HashMap<String, Greeting>>,
}

#[tonic::async_trait]
impl Greeter for Greetings {
    async fn greet(&self, request: Request<GreetRequest>) -> Result<Response<Greeting>, Status> {
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(Status::invalid_argument("name must not be empty"));
        }
        let word = if request.language == "fr" {
            "Bonjour"
        } else {
            "Hello"
        };
        let text = format!(
            "{} {}{}",
            vec![word; request.times.max(1) as usize].join(" "),
            request.name,
            request.marks.concat()
        );
        let greeting = Greeting {
            text,
            at_ms: 1_700_000_000_123,
            tone: request.tone,
            nickname: String::new(),
        };
        self.last
            .lock()
            .expect("lock")
            .insert(request.name, greeting.clone());
        Ok(Response::new(greeting))
    }

    async fn last_greeting(
        &self,
        request: Request<LastGreetingRequest>,
    ) -> Result<Response<Greeting>, Status> {
        self.last
            .lock()
            .expect("lock")
            .get(&request.get_ref().name)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found("never greeted"))
    }
}

struct Served {
    transcoder: Transcoder,
    table: RouteTable,
}

impl Served {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(GreeterServer::new(Greetings::default()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect_lazy();
        let backend = Backend {
            name: "greeter",
            service: "portico.testing.v1.Greeter",
            critical: false,
            component: None,
            channel: channel.into(),
        };
        let pool =
            prost_reflect::DescriptorPool::decode(portico_proto::TESTING_FILE_DESCRIPTOR_SET)
                .expect("pool");
        let transcoder = Transcoder::new(pool, [backend]).expect("bindings");
        let table = RouteTable::new(transcoder.bindings()).expect("table");
        Self { transcoder, table }
    }

    /// The status and JSON body of `method path?query` with `body`.
    async fn call(&self, method: http::Method, path: &str, body: Value) -> (u16, Value) {
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let Match::Found(route, params) = self.table.find(&method, path) else {
            panic!("{method} {path} is not routed");
        };
        let Target::Rpc(binding) = &route.target else {
            panic!("{path} is not a generic route");
        };
        let context = portico_telemetry::RequestContext::attach(
            tracing::info_span!("test", trace_id = tracing::field::Empty),
            &http::HeaderMap::new(),
        );
        let body = if body.is_null() {
            Vec::new()
        } else {
            serde_json::to_vec(&body).expect("body")
        };
        let response = self
            .transcoder
            .call(
                binding,
                &params,
                query,
                &http::HeaderMap::new(),
                &body,
                &context,
                &Forwarded::none(),
                std::time::Duration::from_secs(5),
            )
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => error.into_response("test"),
        };
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn an_annotated_rpc_is_served_over_rest_with_no_edge_code() {
    let served = Served::start().await;
    // Path variable, body fields, an enum by its json_value, a repeated field; 201 as annotated.
    let (status, body) = served
        .call(
            http::Method::POST,
            "/api/v1/greetings/ada",
            json!({"language": "fr", "times": 2, "tone": "warm", "marks": ["!", "?"]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({
            "text": "Bonjour Bonjour ada!?",
            // 64-bit integers as JSON numbers; the enum by its json_value; empty is null.
            "atMs": 1_700_000_000_123_i64,
            "tone": "warm",
            "nickname": null,
        })
    );
    assert_eq!(Tone::Warm as i32, 1);
    // `response_body: "text"`: the GET answers that one field.
    let (status, body) = served
        .call(http::Method::GET, "/api/v1/greetings/ada", Value::Null)
        .await;
    assert_eq!((status, body), (200, json!("Bonjour Bonjour ada!?")));
    // The service's errors map to HTTP statuses.
    let (status, body) = served
        .call(http::Method::GET, "/api/v1/greetings/bob", Value::Null)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["message"], "never greeted");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_400_that_names_it() {
    let served = Served::start().await;
    for (body, fragment) in [
        (json!({"colour": "red"}), "unknown field `colour`"),
        (json!({"times": "many"}), "invalid JSON body"),
        (json!({"tone": "grumpy"}), "invalid JSON body"),
        (json!({"name": "eve"}), "`name` is given by the path"),
        (json!(["not", "an", "object"]), "expected an object"),
    ] {
        let (status, answer) = served
            .call(http::Method::POST, "/api/v1/greetings/ada", body.clone())
            .await;
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(fragment), "{body}: {message}");
    }
    // A query parameter that is no field of the request.
    let (status, answer) = served
        .call(
            http::Method::GET,
            "/api/v1/greetings/ada?verbose=1",
            Value::Null,
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("unknown query parameter `verbose`")));
    // Wrong method on a known path: 405 with the allowed ones.
    assert!(matches!(
        served.table.find(&http::Method::DELETE, "/api/v1/greetings/ada"),
        Match::MethodNotAllowed(allowed) if allowed.contains(&http::Method::GET) && allowed.contains(&http::Method::POST)
    ));
}

#[tokio::test]
async fn the_annotated_rpc_is_in_the_openapi_document() {
    let served = Served::start().await;
    let spec = portico_edge::openapi::document(
        &served.table,
        served.transcoder.pool(),
        "test",
        portico_config::DEFAULT_LLM_MAX_TOKENS,
    );
    let greet = &spec["paths"]["/api/v1/greetings/{name}"]["post"];
    assert_eq!(greet["operationId"], "Greeter_Greet");
    assert_eq!(greet["summary"], "Greet someone");
    // The proto comment is the description.
    assert_eq!(
        greet["description"],
        "Greets one person by name, in the language asked for."
    );
    assert_eq!(greet["parameters"][0]["name"], "name");
    assert_eq!(greet["parameters"][0]["in"], "path");
    assert!(greet["responses"]["201"].is_object());
    // INVALID_ARGUMENT from the annotation's errors, and the statuses every route has.
    for status in ["400", "413", "429", "503"] {
        assert!(greet["responses"][status].is_object(), "{status}");
    }
    // The body is the request less the path's field; enums by their json_value.
    let body = &greet["requestBody"]["content"]["application/json"]["schema"];
    assert!(body["properties"]["name"].is_null());
    assert!(body["properties"]["language"].is_object());
    let tone = &spec["components"]["schemas"]["Greeting"]["properties"]["tone"];
    assert_eq!(tone["enum"], json!(["TONE_UNSPECIFIED", "warm", "formal"]));
    let nickname = &spec["components"]["schemas"]["Greeting"]["properties"]["nickname"];
    assert_eq!(nickname["type"], json!(["string", "null"]));
    let last = &spec["paths"]["/api/v1/greetings/{name}"]["get"];
    assert!(last["responses"]["404"].is_object());
    assert_eq!(
        last["responses"]["200"]["content"]["application/json"]["schema"]["type"],
        "string"
    );
}
