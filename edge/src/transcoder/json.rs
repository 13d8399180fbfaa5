//! JSON ↔ protobuf for the generic routes: proto3's canonical JSON mapping (prost-reflect), with
//! what the annotations change: enum values named by `json_value`, fields that are `null` when
//! empty, and 64-bit integers as JSON numbers (every Portico value fits 53 bits; proto3 JSON
//! would quote them).

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
    Value as ProtoValue,
};
use serde_json::Value;
use tonic::Code;

use super::rules::{is_scalar, Binding, BodyRule, JsonShape};
use crate::ApiError;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(Code::InvalidArgument, message)
}

/// The request message of `binding`: the body (as the binding says), the path variables and
/// the query parameters. Unknown fields and parameters are refused with a 400 that names them.
pub fn request(
    binding: &Binding,
    shape: &JsonShape,
    path: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, ApiError> {
    let input = binding.method.input();
    let bound: Vec<&str> = binding.path_fields.iter().map(|f| f.name()).collect();
    let mut message = match &binding.body {
        BodyRule::All => {
            let mut json = parse(body)?;
            if let Value::Object(fields) = &json {
                for field in &binding.path_fields {
                    if fields.contains_key(field.json_name()) || fields.contains_key(field.name()) {
                        return Err(bad_request(format!(
                            "`{}` is given by the path, not the body",
                            field.json_name()
                        )));
                    }
                }
            }
            check_known(&json, &input, "")?;
            to_proto_names(&mut json, &input, shape);
            deserialize(&input, json)?
        }
        BodyRule::Field(field) => {
            let mut json = parse(body)?;
            if let Kind::Message(message) = field.kind() {
                check_known(&json, &message, "")?;
                to_proto_names(&mut json, &message, shape);
            }
            let wrapped = serde_json::json!({ field.json_name(): json });
            deserialize(&input, wrapped)?
        }
        BodyRule::None => DynamicMessage::new(input.clone()),
    };
    for (field, (_, raw)) in binding.path_fields.iter().zip(path) {
        let value = scalar(field, &crate::auth_routes::percent_decode(raw), shape)
            .map_err(|why| bad_request(format!("path `{}`: {why}", field.json_name())))?;
        message.set_field(field, value);
    }
    let query_allowed = !matches!(binding.body, BodyRule::All);
    for (name, raw) in query_pairs(query) {
        let field = query_allowed
            .then(|| {
                input
                    .get_field_by_json_name(&name)
                    .or_else(|| input.get_field_by_name(&name))
            })
            .flatten()
            .filter(|field| !bound.contains(&field.name()))
            .filter(|field| !binding.route.leaves_unused(field))
            .filter(|field| is_scalar(field) || is_scalar_list(field))
            .filter(|field| !matches!(&binding.body, BodyRule::Field(body) if body == field))
            .ok_or_else(|| bad_request(format!("unknown query parameter `{name}`")))?;
        let value = scalar(&field, &raw, shape)
            .map_err(|why| bad_request(format!("query parameter `{name}`: {why}")))?;
        if field.is_list() {
            if let ProtoValue::List(items) = message.get_field_mut(&field) {
                items.push(value);
            }
        } else {
            message.set_field(&field, value);
        }
    }
    Ok(message)
}

fn is_scalar_list(field: &FieldDescriptor) -> bool {
    field.is_list() && !matches!(field.kind(), Kind::Message(_))
}

fn parse(body: &[u8]) -> Result<Value, ApiError> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|error| bad_request(format!("invalid JSON body: {error}")))?;
    if json.is_object() {
        Ok(json)
    } else {
        Err(bad_request("invalid JSON body: expected an object"))
    }
}

/// Refuses a key that names no field (by JSON or proto name) with a 400 that names it and
/// says where (`messages[2].colour`); well-known types and maps take any key.
fn check_known(json: &Value, message: &MessageDescriptor, at: &str) -> Result<(), ApiError> {
    let Value::Object(fields) = json else {
        return Ok(());
    };
    if message.full_name().starts_with("google.protobuf.") {
        return Ok(());
    }
    for (key, value) in fields {
        let field = message
            .get_field_by_json_name(key)
            .or_else(|| message.get_field_by_name(key))
            .ok_or_else(|| bad_request(format!("invalid JSON body: unknown field `{at}{key}`")))?;
        let Kind::Message(nested) = field.kind() else {
            continue;
        };
        if field.is_map() {
            continue;
        }
        match value {
            Value::Array(items) if field.is_list() => {
                for (index, item) in items.iter().enumerate() {
                    check_known(item, &nested, &format!("{at}{key}[{index}]."))?;
                }
            }
            value => check_known(value, &nested, &format!("{at}{key}."))?,
        }
    }
    Ok(())
}

fn deserialize(input: &MessageDescriptor, json: Value) -> Result<DynamicMessage, ApiError> {
    DynamicMessage::deserialize_with_options(
        input.clone(),
        json,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|error| bad_request(format!("invalid JSON body: {error}")))
}

/// `a=1&b=x%20y` → pairs, percent- and `+`-decoded (also for the hooks that read a query).
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |text: &str| crate::auth_routes::percent_decode(&text.replace('+', " "));
            (decode(name), decode(value))
        })
        .collect()
}

/// One path or query value, parsed as the field's type.
fn scalar(field: &FieldDescriptor, raw: &str, shape: &JsonShape) -> Result<ProtoValue, String> {
    let number = |kind: &str| format!("`{raw}` is not {kind}");
    // What the document states (`boolean`, `integer`) and nothing looser: not `1` for true, not
    // `+5` (which Rust's number parsing takes).
    let numeric = !matches!(
        field.kind(),
        Kind::String | Kind::Bytes | Kind::Bool | Kind::Enum(_) | Kind::Message(_)
    );
    if numeric && raw.starts_with('+') {
        return Err(number("a number (no leading `+`)"));
    }
    Ok(match field.kind() {
        Kind::String => ProtoValue::String(raw.to_owned()),
        Kind::Bool => match raw {
            "true" => ProtoValue::Bool(true),
            "false" => ProtoValue::Bool(false),
            _ => return Err(number("true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            ProtoValue::I32(raw.parse().map_err(|_| number("a 32-bit integer"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            ProtoValue::I64(raw.parse().map_err(|_| number("an integer"))?)
        }
        Kind::Uint32 | Kind::Fixed32 => ProtoValue::U32(
            raw.parse()
                .map_err(|_| number("a non-negative 32-bit integer"))?,
        ),
        Kind::Uint64 | Kind::Fixed64 => {
            ProtoValue::U64(raw.parse().map_err(|_| number("a non-negative integer"))?)
        }
        Kind::Float => ProtoValue::F32(raw.parse().map_err(|_| number("a number"))?),
        Kind::Double => ProtoValue::F64(raw.parse().map_err(|_| number("a number"))?),
        Kind::Bytes => ProtoValue::Bytes(raw.as_bytes().to_vec().into()),
        Kind::Enum(enumeration) => {
            let renamed = shape
                .enum_names
                .get(enumeration.full_name())
                .and_then(|names| names.iter().find(|(_, json)| json == raw))
                .map(|(name, _)| name.as_str())
                .unwrap_or(raw);
            let value = enumeration
                .get_value_by_name(renamed)
                .ok_or_else(|| format!("`{raw}` is not one of the allowed values"))?;
            ProtoValue::EnumNumber(value.number())
        }
        Kind::Message(_) => return Err("not a scalar".to_owned()),
    })
}

/// Renames `json_value` enum names back to the enum's own, before proto3 JSON parsing.
fn to_proto_names(json: &mut Value, message: &MessageDescriptor, shape: &JsonShape) {
    if !shape.is_shaped(message) {
        return;
    }
    let Value::Object(fields) = json else {
        return;
    };
    for field in message.fields() {
        let key = if fields.contains_key(field.json_name()) {
            field.json_name()
        } else {
            field.name()
        };
        let Some(value) = fields.get_mut(key) else {
            continue;
        };
        each(value, field.is_list(), &mut |item| match field.kind() {
            Kind::Enum(enumeration) => {
                if let (Some(names), Some(text)) =
                    (shape.enum_names.get(enumeration.full_name()), item.as_str())
                {
                    if let Some((name, _)) = names.iter().find(|(_, json)| json == text) {
                        *item = Value::String(name.clone());
                    }
                }
            }
            Kind::Message(nested) if !field.is_map() => to_proto_names(item, &nested, shape),
            _ => {}
        });
    }
}

fn each(value: &mut Value, list: bool, apply: &mut impl FnMut(&mut Value)) {
    match value {
        Value::Array(items) if list => items.iter_mut().for_each(apply),
        value => apply(value),
    }
}

/// The JSON answer: the response message (or its `response_body` field), every field
/// present (defaults included), shaped as the annotations say.
pub fn response(
    binding: &Binding,
    shape: &JsonShape,
    message: &DynamicMessage,
) -> Result<Value, ApiError> {
    let options = SerializeOptions::new()
        .skip_default_fields(false)
        .stringify_64_bit_integers(false);
    let internal = |error: serde_json::Error| {
        tracing::error!(%error, "a backend answer does not serialize as JSON");
        ApiError::new(Code::Internal, "the answer could not be encoded")
    };
    let mut json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(internal)?;
    shape_answer(
        &mut json,
        &prost_reflect::ReflectMessage::descriptor(message),
        shape,
    );
    Ok(match &binding.response_body {
        Some(field) => json
            .get_mut(field.json_name())
            .map(Value::take)
            .unwrap_or(Value::Null),
        None => json,
    })
}

fn shape_answer(json: &mut Value, message: &MessageDescriptor, shape: &JsonShape) {
    if !shape.is_shaped(message) {
        return;
    }
    let Value::Object(fields) = json else {
        return;
    };
    for field in message.fields() {
        let Some(value) = fields.get_mut(field.json_name()) else {
            continue;
        };
        if shape.null_when_empty.contains(field.full_name()) && is_empty(value) {
            *value = Value::Null;
            continue;
        }
        each(value, field.is_list(), &mut |item| match field.kind() {
            Kind::Enum(enumeration) => {
                if let (Some(names), Some(text)) =
                    (shape.enum_names.get(enumeration.full_name()), item.as_str())
                {
                    if let Some((_, json)) = names.iter().find(|(name, _)| name == text) {
                        *item = Value::String(json.clone());
                    }
                }
            }
            Kind::Message(nested) if !field.is_map() => shape_answer(item, &nested, shape),
            _ => {}
        });
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::String(text) => text.is_empty(),
        Value::Number(number) => number.as_f64() == Some(0.0),
        Value::Array(items) => items.is_empty(),
        Value::Null => true,
        _ => false,
    }
}
