//! The REST bindings of a descriptor set: every RPC's `google.api.http` rule (and its
//! `additional_bindings`) with Portico's `portico.api.v1.route` options beside it
//! (proto/proto/portico/api/v1/http.proto).

use std::collections::{HashMap, HashSet};

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, Value,
};

/// Where the request message's fields come from besides the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: every field not bound by the path is a query parameter.
    None,
    /// `body: "*"`: the JSON body holds every field not bound by the path.
    All,
    /// `body: "field"`: the JSON body is that one field's value; the rest are query parameters.
    Field(FieldDescriptor),
}

/// One REST binding of an RPC.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The RPC.
    pub method: MethodDescriptor,
    /// The HTTP method.
    pub http_method: Method,
    /// The path template as the annotation wrote it (`/api/v1/api-keys/{id}`): also the
    /// `http.route` of spans and metrics.
    pub template: &'static str,
    /// The request fields the template's `{variables}` bind, in order.
    pub path_fields: Vec<FieldDescriptor>,
    /// Where the other fields come from.
    pub body: BodyRule,
    /// `response_body`: the one response field sent as the HTTP body, if set.
    pub response_body: Option<FieldDescriptor>,
    /// Portico's options for this binding.
    pub route: RouteOptions,
}

impl Binding {
    /// `/{package.Service}/{Method}`, the gRPC path.
    pub fn grpc_path(&self) -> String {
        format!(
            "/{}/{}",
            self.method.parent_service().full_name(),
            self.method.name()
        )
    }
}

/// `portico.api.v1.Route`, read.
#[derive(Debug, Clone, Default)]
pub struct RouteOptions {
    /// OpenAPI tag.
    pub tag: String,
    /// One-line summary.
    pub summary: String,
    /// The status of a success (200 unless the annotation says otherwise).
    pub success_status: u16,
    /// The rate-limit policy on top of `global`.
    pub policy: Option<&'static str>,
    /// `Cache-Control: no-store`.
    pub no_store: bool,
    /// The edge hook that answers instead of the generic call.
    pub hook: Option<String>,
    /// `CODE: when` lines.
    pub errors: Vec<String>,
    /// Admin only.
    pub admin: bool,
    /// Query parameters a hook reads itself.
    pub hook_query: Vec<HookParameter>,
    /// Request fields this binding does not take (proto names).
    pub unused_fields: Vec<String>,
}

/// A query parameter a hook reads itself: `name: what`, or `name like package.Message.field:
/// what` when the value follows that field's `portico.api.v1.schema` (which OpenAPI states).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookParameter {
    /// The parameter's name.
    pub name: String,
    /// What it means.
    pub what: String,
    /// The field whose schema the value follows (full name).
    pub like: Option<String>,
}

impl HookParameter {
    fn parse(line: &str) -> Self {
        let (head, what) = line.split_once(':').unwrap_or((line, ""));
        let (name, like) = match head.split_once(" like ") {
            Some((name, like)) => (name, Some(like.trim().to_owned())),
            None => (head, None),
        };
        Self {
            name: name.trim().to_owned(),
            what: what.trim().to_owned(),
            like,
        }
    }
}

impl RouteOptions {
    /// The binding does not take this request field.
    pub fn leaves_unused(&self, field: &FieldDescriptor) -> bool {
        self.unused_fields.iter().any(|name| name == field.name())
    }
}

/// Why a descriptor set's annotations cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A template, body or response body that does not fit the messages.
    #[error("{method}: {message}")]
    Invalid {
        /// The RPC.
        method: String,
        /// What is wrong.
        message: String,
    },
}

/// The extensions Portico reads, resolved in one pool.
#[derive(Debug, Clone)]
pub struct Extensions {
    http: Option<ExtensionDescriptor>,
    route: Option<ExtensionDescriptor>,
    json_value: Option<ExtensionDescriptor>,
    null_when_empty: Option<ExtensionDescriptor>,
    schema: Option<ExtensionDescriptor>,
}

impl Extensions {
    /// The extensions of `pool` (absent ones are simply never set).
    pub fn of(pool: &DescriptorPool) -> Self {
        Self {
            http: pool.get_extension_by_name("google.api.http"),
            route: pool.get_extension_by_name("portico.api.v1.route"),
            json_value: pool.get_extension_by_name("portico.api.v1.json_value"),
            null_when_empty: pool.get_extension_by_name("portico.api.v1.null_when_empty"),
            schema: pool.get_extension_by_name("portico.api.v1.schema"),
        }
    }

    /// The field's `portico.api.v1.schema` option (what it accepts), when it has one.
    pub fn schema_of(&self, field: &FieldDescriptor) -> Option<prost_reflect::DynamicMessage> {
        let extension = self.schema.as_ref()?;
        let options = field.options();
        if !options.has_extension(extension) {
            return None;
        }
        match options.get_extension(extension).into_owned() {
            Value::Message(message) => Some(message),
            _ => None,
        }
    }
}

/// How JSON differs from proto3's canonical mapping, per field, as the annotations say:
/// enum values with a `json_value`, fields that are `null` when empty.
#[derive(Debug, Default)]
pub struct JsonShape {
    /// Enum full name → (value name, JSON name).
    pub enum_names: HashMap<String, Vec<(String, String)>>,
    /// Full names of the fields that are `null` when empty.
    pub null_when_empty: HashSet<String>,
    /// Full names of the messages that hold (perhaps nested) any of the above.
    pub shaped_messages: HashSet<String>,
}

impl JsonShape {
    /// Reads every enum value and field option of `pool`.
    pub fn of(pool: &DescriptorPool, extensions: &Extensions) -> Self {
        let mut shape = Self::default();
        for enumeration in pool.all_enums() {
            let Some(extension) = &extensions.json_value else {
                break;
            };
            let names: Vec<(String, String)> = enumeration
                .values()
                .filter_map(|value| {
                    let options = value.options();
                    options.has_extension(extension).then(|| {
                        let json = options.get_extension(extension);
                        (
                            value.name().to_owned(),
                            json.as_str().unwrap_or_default().to_owned(),
                        )
                    })
                })
                .collect();
            if !names.is_empty() {
                shape
                    .enum_names
                    .insert(enumeration.full_name().to_owned(), names);
            }
        }
        for message in pool.all_messages() {
            for field in message.fields() {
                let null = extensions
                    .null_when_empty
                    .as_ref()
                    .is_some_and(|extension| {
                        field
                            .options()
                            .get_extension(extension)
                            .as_bool()
                            .unwrap_or(false)
                    });
                if null {
                    shape.null_when_empty.insert(field.full_name().to_owned());
                }
            }
        }
        // A message is shaped when a field of it is, directly or through a message field.
        loop {
            let before = shape.shaped_messages.len();
            for message in pool.all_messages() {
                if shape.shaped_messages.contains(message.full_name()) {
                    continue;
                }
                if message.fields().any(|field| shape.field_is_shaped(&field)) {
                    shape.shaped_messages.insert(message.full_name().to_owned());
                }
            }
            if shape.shaped_messages.len() == before {
                break;
            }
        }
        shape
    }

    fn field_is_shaped(&self, field: &FieldDescriptor) -> bool {
        if self.null_when_empty.contains(field.full_name()) {
            return true;
        }
        match field.kind() {
            Kind::Enum(enumeration) => self.enum_names.contains_key(enumeration.full_name()),
            Kind::Message(message) => self.shaped_messages.contains(message.full_name()),
            _ => false,
        }
    }

    /// Whether answers of `message` differ from proto3 JSON.
    pub fn is_shaped(&self, message: &MessageDescriptor) -> bool {
        self.shaped_messages.contains(message.full_name())
    }
}

/// Every binding of every service in `pool`, in declaration order.
pub fn bindings(pool: &DescriptorPool, extensions: &Extensions) -> Result<Vec<Binding>, RuleError> {
    let Some(http) = &extensions.http else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(http) {
                continue;
            }
            let Value::Message(rule) = options.get_extension(http).into_owned() else {
                continue;
            };
            let route = extensions
                .route
                .as_ref()
                .filter(|route| options.has_extension(route))
                .and_then(|route| match options.get_extension(route).into_owned() {
                    Value::Message(message) => Some(message),
                    _ => None,
                });
            let primary = route.as_ref().map(read_route).unwrap_or_default();
            let extra_routes: Vec<RouteOptions> = route
                .as_ref()
                .map(|route| messages(route, "additional_bindings"))
                .unwrap_or_default()
                .iter()
                .map(read_route)
                .collect();
            out.push(binding(&method, &rule, primary.clone())?);
            for (index, extra) in messages(&rule, "additional_bindings").iter().enumerate() {
                let options = extra_routes
                    .get(index)
                    .cloned()
                    .unwrap_or_else(|| primary.clone());
                out.push(binding(&method, extra, options)?);
            }
        }
    }
    Ok(out)
}

fn messages(message: &DynamicMessage, field: &str) -> Vec<DynamicMessage> {
    match message.get_field_by_name(field).as_deref() {
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|item| item.as_message().cloned())
            .collect(),
        _ => Vec::new(),
    }
}

fn text(message: &DynamicMessage, field: &str) -> String {
    message
        .get_field_by_name(field)
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn strings(message: &DynamicMessage, field: &str) -> Vec<String> {
    match message.get_field_by_name(field).as_deref() {
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn read_route(route: &DynamicMessage) -> RouteOptions {
    let flag = |name: &str| {
        route
            .get_field_by_name(name)
            .and_then(|value| value.as_bool())
            .unwrap_or(false)
    };
    let status = route
        .get_field_by_name("success_status")
        .and_then(|value| value.as_u32())
        .and_then(|status| u16::try_from(status).ok())
        .filter(|status| *status != 0)
        .unwrap_or(200);
    let policy = text(route, "policy");
    let hook = text(route, "hook");
    RouteOptions {
        tag: text(route, "tag"),
        summary: text(route, "summary"),
        success_status: status,
        policy: (!policy.is_empty()).then(|| intern(&policy)),
        no_store: flag("no_store"),
        hook: (!hook.is_empty()).then_some(hook),
        errors: strings(route, "errors"),
        admin: flag("admin"),
        hook_query: strings(route, "hook_query")
            .iter()
            .map(|line| HookParameter::parse(line))
            .collect(),
        unused_fields: strings(route, "unused_fields"),
    }
}

fn binding(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    route: RouteOptions,
) -> Result<Binding, RuleError> {
    let invalid = |message: String| RuleError::Invalid {
        method: method.full_name().to_owned(),
        message,
    };
    let (http_method, template) = ["get", "put", "post", "delete", "patch"]
        .iter()
        .find_map(|name| {
            let template = text(rule, name);
            (!template.is_empty()).then(|| (name.to_ascii_uppercase(), template))
        })
        .ok_or_else(|| invalid("a binding without get, put, post, delete or patch".into()))?;
    let http_method = Method::from_bytes(http_method.as_bytes())
        .map_err(|_| invalid(format!("method {http_method}")))?;
    let input = method.input();
    let hook = route.hook.is_some();
    let mut path_fields = Vec::new();
    for segment in template.split('/') {
        let Some(variable) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            if segment.contains(['{', '}', '*', ':']) {
                return Err(invalid(format!(
                    "`{segment}` in {template}: only whole-segment `{{field}}` variables are supported"
                )));
            }
            continue;
        };
        match input.get_field_by_name(variable) {
            Some(field) if is_scalar(&field) => path_fields.push(field),
            // A hook reads its own path (`/v1/models/{id}` of a list RPC).
            None if hook => {}
            _ => {
                return Err(invalid(format!(
                    "{template}: `{variable}` is not a singular scalar field of {}",
                    input.full_name()
                )))
            }
        }
    }
    if method.is_client_streaming() || (method.is_server_streaming() && !hook) {
        return Err(invalid("streaming RPCs need a hook".into()));
    }
    let body = match text(rule, "body").as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::All,
        name => BodyRule::Field(
            input
                .get_field_by_name(name)
                .ok_or_else(|| invalid(format!("body `{name}` is not a field")))?,
        ),
    };
    // Unused fields are the query's: a binding with a body would take them there.
    if !route.unused_fields.is_empty() && !matches!(body, BodyRule::None) {
        return Err(invalid(format!(
            "{template}: unused_fields on a binding with a body"
        )));
    }
    if let Some(name) = route
        .unused_fields
        .iter()
        .find(|name| input.get_field_by_name(name).is_none())
    {
        return Err(invalid(format!(
            "{template}: unused field `{name}` is not a field of {}",
            input.full_name()
        )));
    }
    let pool = method.parent_pool();
    if let Some(like) = route
        .hook_query
        .iter()
        .filter_map(|p| p.like.as_deref())
        .find(|like| field_named(pool, like).is_none())
    {
        return Err(invalid(format!(
            "{template}: hook_query `like {like}` is not a field"
        )));
    }
    let response_body = match text(rule, "response_body").as_str() {
        "" => None,
        name => Some(
            method
                .output()
                .get_field_by_name(name)
                .ok_or_else(|| invalid(format!("response_body `{name}` is not a field")))?,
        ),
    };
    Ok(Binding {
        method: method.clone(),
        http_method,
        template: intern(&template),
        path_fields,
        body,
        response_body,
        route,
    })
}

/// Portico's own descriptor set, decoded once per process: the route table and the transcoder
/// read the same pool (a clone shares it).
pub fn portico_pool() -> DescriptorPool {
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(portico_proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled-in descriptor set decodes")
    })
    .clone()
}

/// The `portico.api.v1.schema` option of one of Portico's fields (`package.Message.field`), as
/// the JSON Schema keywords the OpenAPI document states: for the edge's own hooks, so that
/// what they check and what they document is one text.
pub fn portico_schema_of(field: &str) -> Option<serde_json::Value> {
    let pool = portico_pool();
    let field = field_named(&pool, field)?;
    let option = Extensions::of(&pool).schema_of(&field)?;
    serde_json::to_value(&option).ok()
}

/// A field of `pool` by full name (`package.Message.field`).
pub fn field_named(pool: &DescriptorPool, name: &str) -> Option<FieldDescriptor> {
    let (message, field) = name.rsplit_once('.')?;
    pool.get_message_by_name(message)?.get_field_by_name(field)
}

/// A string that lives as long as the process: route templates and policy names label
/// metrics and spans. Each distinct string is stored once, however many edges are built.
fn intern(text: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static STRINGS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut strings = STRINGS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(existing) = strings.get(text) {
        return existing;
    }
    let leaked: &'static str = Box::leak(text.to_owned().into_boxed_str());
    strings.insert(leaked);
    leaked
}

/// A field a path or query parameter can set: singular, not a message.
pub fn is_scalar(field: &FieldDescriptor) -> bool {
    !field.is_list() && !field.is_map() && !matches!(field.kind(), Kind::Message(_))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portico() -> (DescriptorPool, Extensions) {
        let pool = DescriptorPool::decode(portico_proto::FILE_DESCRIPTOR_SET).expect("pool");
        let extensions = Extensions::of(&pool);
        (pool, extensions)
    }

    #[test]
    fn every_annotated_rpc_has_its_bindings() {
        let (pool, extensions) = portico();
        let bindings = bindings(&pool, &extensions).expect("bindings");
        let find = |method: &str, template: &str| {
            bindings
                .iter()
                .find(|b| b.http_method.as_str() == method && b.template == template)
                .unwrap_or_else(|| panic!("{method} {template}"))
        };
        let register = find("POST", "/api/v1/auth/register");
        assert_eq!(register.method.name(), "Register");
        assert_eq!(register.route.success_status, 201);
        assert_eq!(register.route.policy, Some("auth"));
        assert_eq!(register.body, BodyRule::All);
        // An additional binding has its own options.
        let admin = find("DELETE", "/api/v1/admin/auth/users/{user}");
        assert_eq!(admin.method.name(), "DeleteAccount");
        assert!(admin.route.admin && admin.route.policy.is_none());
        assert_eq!(admin.path_fields[0].name(), "user");
        assert_eq!(admin.route.unused_fields, ["password"]);
        let own = find("DELETE", "/api/v1/auth/me");
        assert_eq!(own.route.policy, Some("auth"));
        assert!(find("POST", "/v1/chat/completions").route.hook.is_some());
        // A hook's own query parameter, with the schema of the field it is like.
        let usage = find("GET", "/api/v1/api-keys/{id}/usage");
        assert_eq!(
            usage.route.hook_query[0],
            HookParameter {
                name: "from".into(),
                what: "the first day, YYYY-MM-DD".into(),
                like: Some("portico.chat.v1.GetUsageRequest.from_day".into()),
            }
        );
        assert_eq!(HookParameter::parse("user: an account id").like, None);
    }

    #[test]
    fn shapes_come_from_the_options() {
        let (pool, extensions) = portico();
        let shape = JsonShape::of(&pool, &extensions);
        assert_eq!(
            shape.enum_names["portico.auth.v1.Role"],
            vec![
                ("ROLE_USER".to_owned(), "user".to_owned()),
                ("ROLE_ADMIN".to_owned(), "admin".to_owned())
            ]
        );
        assert!(shape
            .null_when_empty
            .contains("portico.auth.v1.ApiKey.revoked_at"));
        // Nested: a response that holds keys is shaped, one that does not is not.
        let listed = pool
            .get_message_by_name("portico.auth.v1.ListApiKeysResponse")
            .expect("message");
        assert!(shape.is_shaped(&listed));
        let tokens = pool
            .get_message_by_name("portico.auth.v1.TokenPair")
            .expect("message");
        assert!(!shape.is_shaped(&tokens));
    }
}
