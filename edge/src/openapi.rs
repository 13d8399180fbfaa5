//! The OpenAPI 3.1 document of the route table, generated from the same descriptors the
//! transcoder serves: each binding's path, parameters and bodies from its `google.api.http`
//! rule and messages, its description from the RPC's proto comment, its statuses from
//! `portico.api.v1.Route.errors` through the edge's error map. The edge's own routes
//! (health, metrics, console) are described here.

use std::collections::BTreeMap;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor};
use serde_json::{json, Map, Value};

use crate::{
    routes::{Handler, Route, RouteTable, Target, NATIVE},
    transcoder::{rules, Binding, BodyRule},
};

/// The statuses every non-operational route can answer, whatever the RPC.
const COMMON: &[(&str, &str)] = &[
    (
        "400",
        "Invalid JSON, an unknown field or parameter, or a refused value",
    ),
    ("413", "The body is larger than the limit"),
    ("429", "Rate limited (RateLimit and Retry-After headers)"),
    ("431", "A forwarded header is larger than the limit"),
    (
        "503",
        "Maintenance mode, or a service is unreachable (Retry-After)",
    ),
];

/// The document; `chat_max_tokens` is the token bound the chat routes state (`LLM_MAX_TOKENS`).
pub fn document(
    table: &RouteTable,
    pool: &DescriptorPool,
    version: &str,
    chat_max_tokens: u32,
) -> Value {
    let mut schemas = Schemas::new(pool, chat_max_tokens);
    let mut paths = Map::new();
    let mut operation_ids: BTreeMap<String, usize> = BTreeMap::new();
    for route in table.routes() {
        let operation = match &route.target {
            Target::Native(handler) => native_operation(route, *handler),
            Target::Hook(handler, binding) => {
                binding_operation(binding, Some(*handler), &mut schemas)
            }
            Target::Rpc(binding) => binding_operation(binding, None, &mut schemas),
        };
        let mut operation = operation;
        let id = operation["operationId"].as_str().unwrap_or("op").to_owned();
        let seen = operation_ids.entry(id.clone()).or_insert(0);
        *seen += 1;
        if *seen > 1 {
            operation["operationId"] = json!(format!("{id}_{seen}"));
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(methods) = entry {
            methods.insert(route.method.as_str().to_ascii_lowercase(), operation);
        }
    }
    let mut components = schemas.into_components();
    components.insert("Error".to_owned(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portico REST edge",
            "version": version,
            "description": "REST edge of the Portico suite, generated from the google.api.http annotations of its protos (proto/proto/portico). Every error body is {\"error\":{\"code\",\"message\",\"correlationId\"}} (OpenAI's shape on /v1/*); every response carries x-correlation-id.",
        },
        "paths": paths,
        "components": { "schemas": components },
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "properties": {
                "code": {"type": ["string", "null"]},
                "message": {"type": "string"},
                "correlationId": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "details": {"type": "array"}
            }
        }}
    })
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn add_common(responses: &mut Map<String, Value>) {
    for (status, description) in COMMON {
        responses
            .entry((*status).to_owned())
            .or_insert_with(|| error_response(description));
    }
}

fn native_operation(route: &Route, handler: Handler) -> Value {
    let native = NATIVE
        .iter()
        .find(|n| n.path == route.path)
        .copied()
        .unwrap_or(NATIVE[0]);
    let mut responses = Map::new();
    let mut parameters: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    match handler {
        Handler::Live => {
            responses.insert("200".into(), json!({"description": "The process answers", "content": {"application/json": {"schema": {
                "type": "object", "required": ["status", "timestamp", "uptime", "version"],
                "properties": {"status": {"type": "string", "enum": ["ok"]}, "timestamp": {"type": "string"}, "uptime": {"type": "number"}, "version": {"type": "string"}}}}}}));
        }
        Handler::Startup => {
            let schema = json!({"type": "object", "properties": {"status": {"type": "string", "enum": ["ok", "starting"]}}});
            responses.insert("200".into(), json!({"description": "Every service answered SERVING once", "content": {"application/json": {"schema": schema}}}));
            responses.insert("503".into(), json!({"description": "Still starting", "content": {"application/json": {"schema": schema}}}));
        }
        Handler::Ready => {
            let check = json!({"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded", "unhealthy"]},
                "latencyMs": {"type": "integer"}, "error": {"type": "string"}}});
            let schema = json!({"type": "object", "required": ["status", "checks"], "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded", "unhealthy"]},
                "checks": {"type": "object", "additionalProperties": check}}});
            responses.insert("200".into(), json!({"description": "Healthy or degraded", "content": {"application/json": {"schema": schema}}}));
            responses.insert("503".into(), json!({"description": "Unhealthy, or maintenance mode", "content": {"application/json": {"schema": schema}}}));
        }
        Handler::Metrics => {
            parameters.push(json!({"name": "x-metrics-secret", "in": "header", "required": false, "schema": {"type": "string"}}));
            responses.insert("200".into(), json!({"description": "Prometheus exposition; OpenMetrics when the Accept header asks for it", "content": {
                "text/plain; version=0.0.4; charset=utf-8": {"schema": {"type": "string"}},
                "application/openmetrics-text; version=1.0.0; charset=utf-8": {"schema": {"type": "string"}}}}));
            responses.insert(
                "401".into(),
                error_response("The metrics secret is missing or wrong"),
            );
            responses.insert(
                "403".into(),
                error_response("The client is not in METRICS_ALLOW"),
            );
            responses.insert(
                "404".into(),
                error_response("Metrics are off at the edge (METRICS_GUARD=off)"),
            );
        }
        Handler::OpenApi => {
            responses.insert("200".into(), json!({"description": "This document", "content": {"application/json": {"schema": {"type": "object"}}}}));
        }
        _ => {
            responses.insert(
                "200".into(),
                json!({"description": "The page or one of its files", "content": {
                "text/html; charset=utf-8": {"schema": {"type": "string"}},
                "text/javascript; charset=utf-8": {"schema": {"type": "string"}},
                "text/css; charset=utf-8": {"schema": {"type": "string"}}}}),
            );
            responses.insert(
                "304".into(),
                json!({"description": "Not modified (If-None-Match)"}),
            );
            responses.insert("404".into(), error_response("No such console file"));
        }
    }
    if !route.is_operational() {
        add_common(&mut responses);
    }
    let id = route
        .path
        .trim_matches('/')
        .replace(['/', '.', '-'], "_")
        .replace(['{', '}'], "");
    json!({
        "tags": [native.tag],
        "summary": native.summary,
        "operationId": format!("edge_{id}"),
        "parameters": parameters,
        "responses": responses,
    })
}

fn binding_operation(binding: &Binding, hook: Option<Handler>, schemas: &mut Schemas) -> Value {
    let method = &binding.method;
    let input = method.input();
    let mut parameters: Vec<Value> = binding
        .path_fields
        .iter()
        .map(|field| {
            json!({"name": field.name(), "in": "path", "required": true,
                   "description": schemas.comment_of_field(field),
                   "schema": schemas.constrained(field, schemas.scalar(field))})
        })
        .collect();
    // A hook's path variable that binds no field (`/v1/models/{id}` of a list RPC).
    for variable in binding
        .template
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    {
        if !binding.path_fields.iter().any(|f| f.name() == variable) {
            parameters.push(json!({"name": variable, "in": "path", "required": true, "schema": {"type": "string"}}));
        }
    }
    for parameter in &binding.route.hook_query {
        let text = json!({"type": "string"});
        let schema = match parameter
            .like
            .as_deref()
            .and_then(|like| schemas.field_named(like))
        {
            Some(field) => schemas.constrained(&field, text),
            None => text,
        };
        parameters.push(
            json!({"name": parameter.name, "in": "query", "required": false,
            "description": parameter.what, "schema": schema}),
        );
    }
    let bound: Vec<&str> = binding.path_fields.iter().map(|f| f.name()).collect();
    let mut request_body = None;
    match &binding.body {
        BodyRule::None | BodyRule::Field(_) => {
            for field in input.fields().filter(|_| hook.is_none()) {
                let in_body = matches!(&binding.body, BodyRule::Field(body) if *body == field);
                if bound.contains(&field.name()) || in_body || binding.route.leaves_unused(&field) {
                    continue;
                }
                if rules::is_scalar(&field)
                    || (field.is_list() && !matches!(field.kind(), Kind::Message(_)))
                {
                    let schema = if field.is_list() {
                        json!({"type": "array", "items": schemas.scalar(&field)})
                    } else {
                        schemas.scalar(&field)
                    };
                    let required = schemas.keywords(&field).1;
                    parameters.push(
                        json!({"name": field.json_name(), "in": "query", "required": required,
                        "description": schemas.comment_of_field(&field),
                        "schema": schemas.constrained(&field, schema)}),
                    );
                }
            }
            if let BodyRule::Field(field) = &binding.body {
                request_body = Some(schemas.field(field));
            }
        }
        BodyRule::All => {
            // A hook that reads its own JSON (OpenAI's dialect, content's fields) says its shape.
            request_body = Some(
                hook.and_then(|hook| hook.body_schema(schemas.chat_max_tokens))
                    .unwrap_or_else(|| schemas.body_of(&input, &bound)),
            );
        }
    }
    let mut responses = Map::new();
    let status = binding.route.success_status.to_string();
    let success = if binding.route.success_status == 204 {
        json!({"description": "Done; no body"})
    } else {
        let schema = match (&binding.response_body, hook) {
            (_, Some(_)) => json!({"type": "object"}),
            (Some(field), None) => schemas.field(field),
            (None, None) => schemas.reference(&method.output()),
        };
        let mut content = Map::new();
        content.insert("application/json".into(), json!({"schema": schema}));
        if matches!(hook, Some(Handler::Chat | Handler::ChatCompletions)) {
            // Each event as schemathesis and OpenAPI 3.2's `itemSchema` read it.
            content.insert(
                "text/event-stream".into(),
                json!({"schema": {"type": "object", "required": ["data"], "properties": {
                    "data": {"type": "string"}, "event": {"type": "string"},
                    "id": {"type": "string"}}}}),
            );
        }
        if matches!(hook, Some(Handler::ContentGet | Handler::ContentList)) {
            responses.insert(
                "304".into(),
                json!({"description": "Not modified (If-None-Match)"}),
            );
        }
        json!({"description": binding.route.summary, "content": content})
    };
    responses.insert(status, success);
    for line in &binding.route.errors {
        let (code, when) = line.split_once(':').unwrap_or((line, ""));
        let mut words = code.split_whitespace();
        let name = words.next().unwrap_or_default();
        let status = words
            .next()
            .and_then(|s| s.parse::<u16>().ok())
            .or_else(|| code_by_name(name).map(|c| crate::http_status(c).as_u16()));
        let Some(status) = status else { continue };
        let key = status.to_string();
        let when = when.trim();
        match responses.get_mut(&key) {
            Some(existing) => {
                if let Some(Value::String(text)) = existing.get_mut("description") {
                    text.push_str("; ");
                    text.push_str(when);
                }
            }
            None => {
                responses.insert(key, error_response(when));
            }
        }
    }
    add_common(&mut responses);
    let service = method.parent_service();
    let mut operation = json!({
        "tags": [binding.route.tag],
        "summary": binding.route.summary,
        "description": schemas.comment_of_method(method),
        "operationId": format!("{}_{}", service.name(), method.name()),
        "parameters": parameters,
        "responses": responses,
    });
    if let Some(schema) = request_body {
        operation["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    operation
}

fn code_by_name(name: &str) -> Option<tonic::Code> {
    use tonic::Code;
    Some(match name {
        "INVALID_ARGUMENT" => Code::InvalidArgument,
        "FAILED_PRECONDITION" => Code::FailedPrecondition,
        "OUT_OF_RANGE" => Code::OutOfRange,
        "UNAUTHENTICATED" => Code::Unauthenticated,
        "PERMISSION_DENIED" => Code::PermissionDenied,
        "NOT_FOUND" => Code::NotFound,
        "ALREADY_EXISTS" => Code::AlreadyExists,
        "ABORTED" => Code::Aborted,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "UNAVAILABLE" => Code::Unavailable,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "UNIMPLEMENTED" => Code::Unimplemented,
        "INTERNAL" => Code::Internal,
        _ => return None,
    })
}

/// The message schemas referenced so far, and the descriptors' comments.
struct Schemas<'a> {
    pool: &'a DescriptorPool,
    /// Message names that more than one package uses: those schemas take the full name.
    ambiguous: std::collections::HashSet<String>,
    shape: rules::JsonShape,
    extensions: rules::Extensions,
    done: BTreeMap<String, Value>,
    pending: Vec<MessageDescriptor>,
    /// The chat routes' token bound.
    chat_max_tokens: u32,
}

impl<'a> Schemas<'a> {
    fn new(pool: &'a DescriptorPool, chat_max_tokens: u32) -> Self {
        let extensions = rules::Extensions::of(pool);
        let mut seen = std::collections::HashSet::new();
        let ambiguous = pool
            .all_messages()
            .filter(|message| !seen.insert(message.name().to_owned()))
            .map(|message| message.name().to_owned())
            .collect();
        Self {
            pool,
            ambiguous,
            shape: rules::JsonShape::of(pool, &extensions),
            extensions,
            done: BTreeMap::new(),
            pending: Vec::new(),
            chat_max_tokens,
        }
    }

    fn into_components(mut self) -> Map<String, Value> {
        while let Some(message) = self.pending.pop() {
            if self.done.contains_key(message.full_name()) {
                continue;
            }
            let schema = self.object(&message, &[]);
            let name = self.name_of(&message);
            self.done.insert(name, schema);
        }
        self.done.into_iter().collect()
    }

    /// The schema's name: the message's own, or its full name where two packages share it.
    fn name_of(&self, message: &MessageDescriptor) -> String {
        if self.ambiguous.contains(message.name()) {
            message.full_name().to_owned()
        } else {
            message.name().to_owned()
        }
    }

    fn reference(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = well_known(message) {
            return schema;
        }
        let name = self.name_of(message);
        if !self.done.contains_key(&name) {
            self.pending.push(message.clone());
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// A request body: the message's fields less those the path binds; no others.
    fn body_of(&mut self, message: &MessageDescriptor, bound: &[&str]) -> Value {
        if bound.is_empty() {
            return self.reference(message);
        }
        self.object(message, bound)
    }

    fn object(&mut self, message: &MessageDescriptor, skip: &[&str]) -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            if skip.contains(&field.name()) {
                continue;
            }
            let must = self.keywords(&field).1;
            let mut schema = if must {
                self.value_of(&field, false)
            } else {
                self.field(&field)
            };
            let comment = self.comment_of_field(&field);
            if !comment.is_empty() {
                if let Value::Object(map) = &mut schema {
                    if !map.contains_key("$ref") {
                        map.insert("description".into(), json!(comment));
                    }
                }
            }
            if must {
                required.push(json!(field.json_name()));
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        // Proto3 JSON refuses a field the message does not have (400 naming it).
        let mut schema = json!({"type": "object", "properties": properties,
                                "additionalProperties": false});
        if !required.is_empty() {
            schema["required"] = Value::Array(required);
        }
        // Each `oneof`: exactly one of its fields, set (not null); several: all of them.
        let mut groups: Vec<Value> = Vec::new();
        for oneof in message.oneofs().filter(|oneof| !oneof.is_synthetic()) {
            let alternatives: Vec<Value> = oneof
                .fields()
                .filter(|field| !skip.contains(&field.name()))
                .map(|field| {
                    let name = field.json_name().to_owned();
                    json!({"required": [name], "properties": {name: self.value_of(&field, false)}})
                })
                .collect();
            if !alternatives.is_empty() {
                groups.push(json!({ "oneOf": alternatives }));
            }
        }
        match groups.len() {
            0 => {}
            1 => schema["oneOf"] = groups.swap_remove(0)["oneOf"].take(),
            _ => schema["allOf"] = Value::Array(groups),
        }
        let description = self.comment_at(message.parent_file_descriptor_proto(), message.path());
        if !description.is_empty() {
            schema["description"] = json!(description);
        }
        schema
    }

    /// The field's `portico.api.v1.schema` option as JSON Schema keywords (its proto3 JSON:
    /// `minLength`, `anyOf`, `items`), and whether the caller must send it.
    fn keywords(&self, field: &FieldDescriptor) -> (Map<String, Value>, bool) {
        let Some(option) = self.extensions.schema_of(field) else {
            return (Map::new(), false);
        };
        let Ok(Value::Object(mut keywords)) = serde_json::to_value(&option) else {
            return (Map::new(), false);
        };
        let required = keywords.remove("required").and_then(|v| v.as_bool()) == Some(true);
        (self.resolved(keywords), required)
    }

    /// `keywords` with each `like` (another field's option) replaced by that option's keywords,
    /// these over them; in `anyOf` alternatives and `items` too.
    fn resolved(&self, mut keywords: Map<String, Value>) -> Map<String, Value> {
        if let Some(Value::String(name)) = keywords.remove("like") {
            let mut base = self
                .field_named(&name)
                .map(|field| self.keywords(&field).0)
                .unwrap_or_default();
            base.extend(keywords);
            keywords = base;
        }
        if let Some(Value::Array(alternatives)) = keywords.get_mut("anyOf") {
            for alternative in alternatives {
                if let Value::Object(map) = alternative {
                    *map = self.resolved(std::mem::take(map));
                }
            }
        }
        if let Some(Value::Object(items)) = keywords.get_mut("items") {
            *items = self.resolved(std::mem::take(items));
        }
        keywords
    }

    /// A field by full name (`package.Message.field`).
    fn field_named(&self, name: &str) -> Option<FieldDescriptor> {
        rules::field_named(self.pool, name)
    }

    /// `schema` (the field's generated one) with the field's option over it.
    fn constrained(&self, field: &FieldDescriptor, schema: Value) -> Value {
        let (keywords, required) = self.keywords(field);
        let mut schema = merge(schema, keywords);
        // A path or query value that must be given is not empty either.
        if required && field.kind() == Kind::String && schema.get("minLength").is_none() {
            schema["minLength"] = json!(1);
        }
        schema
    }

    fn field(&mut self, field: &FieldDescriptor) -> Value {
        self.value_of(field, true)
    }

    /// The field's schema; `nullable_if_optional`: `null` is accepted for a field with presence.
    fn value_of(&mut self, field: &FieldDescriptor, nullable_if_optional: bool) -> Value {
        if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => {
                    let value = entry.map_entry_value_field();
                    self.field(&value)
                }
                _ => json!({}),
            };
            return json!({"type": "object", "additionalProperties": value});
        }
        let item = match field.kind() {
            Kind::Message(message) => self.reference(&message),
            _ => self.scalar(field),
        };
        if field.is_list() {
            self.constrained(field, json!({"type": "array", "items": item}))
        } else if nullable_if_optional
            && field.supports_presence()
            && !matches!(field.kind(), Kind::Message(_))
        {
            nullable(self.constrained(field, item))
        } else {
            self.constrained(field, item)
        }
    }

    fn scalar(&self, field: &FieldDescriptor) -> Value {
        let schema = match field.kind() {
            Kind::String => json!({"type": "string"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "int32", "minimum": 0, "maximum": u32::MAX})
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "integer", "format": "int64"})
            }
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "integer", "minimum": 0}),
            Kind::Float | Kind::Double => json!({"type": "number"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(enumeration) => {
                let renamed = self.shape.enum_names.get(enumeration.full_name());
                let names: Vec<String> = enumeration
                    .values()
                    .map(|value| {
                        renamed
                            .and_then(|names| names.iter().find(|(name, _)| name == value.name()))
                            .map_or_else(|| value.name().to_owned(), |(_, json)| json.clone())
                    })
                    .collect();
                json!({"type": "string", "enum": names})
            }
            Kind::Message(_) => json!({"type": "object"}),
        };
        if self.shape.null_when_empty.contains(field.full_name()) {
            nullable(schema)
        } else {
            schema
        }
    }

    fn comment_of_method(&self, method: &MethodDescriptor) -> String {
        self.comment_at(method.parent_file().file_descriptor_proto(), method.path())
    }

    fn comment_of_field(&self, field: &FieldDescriptor) -> String {
        self.comment_at(field.parent_file().file_descriptor_proto(), field.path())
    }

    fn comment_at(
        &self,
        file: &prost_reflect::prost_types::FileDescriptorProto,
        path: &[i32],
    ) -> String {
        file.source_code_info
            .as_ref()
            .and_then(|info| info.location.iter().find(|l| l.path == path))
            .and_then(|location| location.leading_comments.as_deref())
            .map(|text| {
                text.lines()
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(" ")
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default()
    }
}

/// `schema` with `keywords` over it: an `anyOf` replaces the generated type, `items` applies
/// to the items.
fn merge(schema: Value, mut keywords: Map<String, Value>) -> Value {
    if keywords.is_empty() {
        return schema;
    }
    let Value::Object(mut schema) = schema else {
        return schema;
    };
    if let Some(Value::Object(items)) = keywords.remove("items") {
        let inner = schema.remove("items").unwrap_or_else(|| json!({}));
        schema.insert("items".into(), merge(inner, items));
    }
    if keywords.contains_key("anyOf") {
        schema.remove("type");
        schema.remove("format");
    }
    schema.extend(keywords);
    Value::Object(schema)
}

/// `T` or `null`.
fn nullable(mut schema: Value) -> Value {
    match schema.get_mut("type") {
        Some(Value::String(kind)) => {
            let kind = kind.clone();
            schema["type"] = json!([kind, "null"]);
            schema
        }
        _ => json!({"anyOf": [schema, {"type": "null"}]}),
    }
}

/// Protobuf's well-known types in proto3 JSON.
fn well_known(message: &MessageDescriptor) -> Option<Value> {
    Some(match message.full_name() {
        "google.protobuf.Struct" => json!({"type": "object"}),
        "google.protobuf.Value" => json!({}),
        "google.protobuf.ListValue" => json!({"type": "array"}),
        "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
        "google.protobuf.Duration" => json!({"type": "string"}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.StringValue" => json!({"type": ["string", "null"]}),
        "google.protobuf.BoolValue" => json!({"type": ["boolean", "null"]}),
        "google.protobuf.Int64Value"
        | "google.protobuf.UInt64Value"
        | "google.protobuf.Int32Value"
        | "google.protobuf.UInt32Value" => json!({"type": ["integer", "null"]}),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => {
            json!({"type": ["number", "null"]})
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `like` in a value of `portico.api.v1.schema` (at any depth).
    fn likes(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(name)) = map.get("like") {
                    out.push(name.clone());
                }
                map.values().for_each(|v| likes(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| likes(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_like_names_a_field_with_a_schema_of_its_own() {
        let pool = DescriptorPool::decode(portico_proto::FILE_DESCRIPTOR_SET).expect("pool");
        let schemas = Schemas::new(&pool, portico_config::DEFAULT_LLM_MAX_TOKENS);
        let mut names = Vec::new();
        for message in pool.all_messages() {
            for field in message.fields() {
                if let Some(option) = schemas.extensions.schema_of(&field) {
                    likes(&serde_json::to_value(&option).expect("json"), &mut names);
                }
            }
        }
        assert!(!names.is_empty(), "the protos share rules by `like`");
        for name in names {
            let field = schemas
                .field_named(&name)
                .unwrap_or_else(|| panic!("{name}"));
            assert!(schemas.extensions.schema_of(&field).is_some(), "{name}");
        }
    }
}
