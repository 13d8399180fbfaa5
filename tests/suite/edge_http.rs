//! The edge's HTTP behaviour: correlation IDs, JSON errors, 404/405, 413, maintenance mode,
//! backend errors mapped to HTTP, the OpenAPI document, and the header-read timeout.

use std::time::Duration;

use portico::Component;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::harness::TestSuite;

fn correlation(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn correlation_id_is_echoed_or_generated() {
    let suite = TestSuite::spawn().await;
    let response = suite
        .http
        .get(suite.url("/healthz"))
        .header("x-correlation-id", "abc-123")
        .send()
        .await
        .expect("edge answers");
    assert_eq!(correlation(&response), "abc-123");

    for bad in ["has space", "<script>", &"x".repeat(129)] {
        let response = suite
            .http
            .get(suite.url("/healthz"))
            .header("x-correlation-id", bad)
            .send()
            .await
            .expect("edge answers");
        let id = correlation(&response);
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "a UUIDv7: {id}");
    }
    let generated = correlation(&suite.get("/healthz").await);
    assert_eq!(
        uuid::Uuid::parse_str(&generated).map(|u| u.get_version_num()),
        Ok(7)
    );
}

#[tokio::test]
async fn unknown_route_is_json_404_with_the_correlation_id() {
    let suite = TestSuite::spawn().await;
    let response = suite.get("/no/such/route").await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["content-type"], "application/json");
    let id = correlation(&response);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "NOT_FOUND");
    assert_eq!(body["error"]["correlationId"], id.as_str());
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("/no/such/route")));
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let suite = TestSuite::spawn().await;
    let response = suite
        .http
        .delete(suite.url("/readyz"))
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.status(), 405);
    let allow = response.headers()["allow"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        allow.contains("GET") && allow.contains("OPTIONS"),
        "{allow}"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "UNIMPLEMENTED");
}

#[tokio::test]
async fn body_over_one_mebibyte_is_413() {
    let suite = TestSuite::spawn().await;
    let response = suite
        .http
        .post(suite.url("/api/v1/auth/register"))
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024 + 1])
        .send()
        .await
        .expect("edge answers");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "INVALID_ARGUMENT");
}

#[tokio::test]
async fn maintenance_mode_closes_everything_but_health() {
    let suite = TestSuite::builder()
        .env("MAINTENANCE_MODE", "true")
        .spawn()
        .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(suite.get(path).await.status(), 200, "{path}");
    }
    for path in ["/api/openapi.json", "/.well-known/jwks.json"] {
        let response = suite.get(path).await;
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "120");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"]["code"], "UNAVAILABLE");
    }
}

#[tokio::test]
async fn jwks_is_served_and_a_down_service_is_503() {
    let mut suite = TestSuite::spawn().await;
    let response = suite.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "public, max-age=300");
    let jwks: Value = response.json().await.expect("json");
    assert!(
        jwks["keys"][0]["kid"]
            .as_str()
            .is_some_and(|kid| kid.len() == 43),
        "{jwks}"
    );

    suite.stop(Component::Auth).await;
    let response = suite.get("/.well-known/jwks.json").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "UNAVAILABLE");
    assert_eq!(body["error"]["message"], "the auth service is unavailable");
}

#[tokio::test]
async fn openapi_documents_exactly_the_routes_that_exist() {
    let suite = TestSuite::spawn().await;
    let spec = suite.openapi().await;
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().expect("paths");

    // Every route of the edge's table is documented…
    for route in portico_edge::routes::RouteTable::portico().routes() {
        let method = route.method.as_str().to_ascii_lowercase();
        assert!(
            paths.get(route.path).and_then(|p| p.get(&method)).is_some(),
            "{} {}",
            route.method,
            route.path
        );
    }
    // …and every documented operation is really served (never the router's 404 or 405).
    for (path, operations) in paths {
        for method in operations.as_object().expect("operations").keys() {
            let concrete = path
                .replace("{slug}", "example")
                .replace("{name}", "example");
            let request = suite.http.request(
                method.to_uppercase().parse().expect("method"),
                suite.url(&concrete),
            );
            let response = request.send().await.expect("edge answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let router_miss = (status == 404
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("no route")))
                || status == 405;
            assert!(
                !router_miss,
                "{method} {path} is documented but not routed ({status})"
            );
        }
    }
}

#[tokio::test]
async fn openapi_says_what_each_field_accepts() {
    let suite = TestSuite::spawn().await;
    let spec = suite.openapi().await;
    let schemas = &spec["components"]["schemas"];
    // A field's `portico.api.v1.schema` option: required, and its rule.
    let register = &schemas["RegisterRequest"];
    assert_eq!(
        register["required"],
        json!(["email", "password"]),
        "{register}"
    );
    assert_eq!(register["properties"]["password"]["minLength"], 8);
    assert_eq!(register["properties"]["password"]["maxLength"], 128);
    // The auth service checks an address against the very pattern the document states.
    assert_eq!(
        register["properties"]["email"]["pattern"],
        portico_auth::EMAIL_PATTERN,
        "{register}"
    );
    // A proto `oneof`: exactly one of its fields.
    let revoke = &schemas["RevokeTokenRequest"];
    let alternatives: Vec<&Value> = revoke["oneOf"]
        .as_array()
        .expect("oneOf")
        .iter()
        .map(|branch| &branch["required"][0])
        .collect();
    assert_eq!(alternatives, [&json!("jti"), &json!("userId")], "{revoke}");
    // The transcoder refuses unknown fields, and the document says so.
    for (name, schema) in schemas.as_object().expect("schemas") {
        if schema["type"] == "object" && schema.get("properties").is_some() && name != "Error" {
            assert_eq!(schema["additionalProperties"], false, "{name}");
        }
    }
    let parameter = |path: &str, name: &str| {
        spec["paths"][path]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path}: {name}"))
            .clone()
    };
    // A path variable's rule.
    let slug = parameter("/api/v1/content/{slug}", "slug");
    assert_eq!(slug["schema"]["pattern"], "^[a-z0-9-]{1,100}$", "{slug}");
    // The hooks that read their own JSON say its shape, not just "an object".
    let body = |path: &str, method: &str| {
        spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"].clone()
    };
    let chat = body("/v1/chat/completions", "post");
    assert_eq!(chat["required"], json!(["messages"]), "{chat}");
    assert_eq!(chat["properties"]["messages"]["minItems"], 1);
    assert_eq!(chat["properties"]["n"]["anyOf"][0]["maximum"], 8);
    // The gateway takes `tool_calls: null` on an assistant message (SDKs send it back so), and
    // the document says so; a schema that did not would flag it as an invalid body accepted.
    let assistant = chat["properties"]["messages"]["items"]["anyOf"]
        .as_array()
        .expect("message alternatives")
        .iter()
        .find(|m| m["properties"]["role"]["const"] == "assistant")
        .expect("the assistant's message");
    let tool_calls = assistant["properties"]["tool_calls"]["anyOf"]
        .as_array()
        .expect("tool_calls alternatives");
    assert!(tool_calls.contains(&json!({"type": "null"})), "{assistant}");
    let portico_chat = body("/api/v1/chat", "post");
    assert_eq!(
        portico_chat["additionalProperties"], false,
        "{portico_chat}"
    );
    let create = body("/api/v1/admin/content", "post");
    assert_eq!(create["required"], json!(["slug", "title"]), "{create}");
    // A title is trimmed, then 1 to 200 characters: the hook states the proto's own pattern
    // (a bare `maxLength` would count the spaces the service trims away).
    let title = portico_edge::transcoder::rules::portico_schema_of(
        "portico.content.v1.CreateContentRequest.title",
    )
    .expect("the title's option");
    let body_option = portico_edge::transcoder::rules::portico_schema_of(
        "portico.content.v1.CreateContentRequest.body",
    )
    .expect("the body's option");
    for path in [
        ("/api/v1/admin/content", "post"),
        ("/api/v1/admin/content/{slug}", "put"),
    ] {
        let edited = body(path.0, path.1);
        assert_eq!(
            edited["properties"]["title"]["pattern"], title["pattern"],
            "{edited}"
        );
        assert!(
            edited["properties"]["title"].get("maxLength").is_none(),
            "{edited}"
        );
        // A body's limit is in bytes: the proto's alternatives by character width.
        assert_eq!(
            edited["properties"]["body"]["anyOf"], body_option["anyOf"],
            "{edited}"
        );
        assert!(body_option["anyOf"].is_array(), "{body_option}");
    }
    let embeddings = body("/v1/embeddings", "post");
    assert_eq!(embeddings["required"], json!(["input"]), "{embeddings}");
    let provider = body("/api/v1/admin/llm/providers/{name}", "put");
    assert_eq!(
        provider["anyOf"].as_array().map(Vec::len),
        Some(2),
        "{provider}"
    );
    // A hook's own query parameter states the schema of the field it follows.
    let day = portico_edge::transcoder::rules::portico_schema_of(
        "portico.chat.v1.GetUsageRequest.from_day",
    )
    .expect("from_day's option");
    let from = parameter("/api/v1/api-keys/{id}/usage", "from");
    assert_eq!(from["schema"]["pattern"], day["pattern"], "{from}");
    // A streamed answer: each event as SSE carries it.
    let events = &spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
        ["text/event-stream"]["schema"];
    assert_eq!(events["required"], json!(["data"]), "{events}");
}

#[tokio::test]
async fn slow_client_headers_time_out() {
    let suite = TestSuite::builder()
        .env("EDGE_HEADER_READ_TIMEOUT", "300ms")
        .spawn()
        .await;
    let mut stream = tokio::net::TcpStream::connect(suite.edge_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial headers");
    // The edge must close the connection on its own; the outer timeout only bounds a failure.
    let mut buffer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buffer)).await;
    assert!(
        closed.is_ok(),
        "the edge kept a slow client's connection open"
    );
    let text = String::from_utf8_lossy(&buffer);
    assert!(!text.contains("200 OK"), "{text}");
}
