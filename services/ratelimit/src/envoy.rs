//! Envoy's global rate limit API (`envoy.service.ratelimit.v3`), configured by
//! `RATE_LIMIT_DESCRIPTORS_FILE` in envoyproxy/ratelimit's YAML format (one domain per YAML
//! document: `domain`, nested `descriptors` with `key`, optional `value` — a trailing `*` is a
//! prefix wildcard — `rate_limit: {unit, requests_per_unit, unlimited, name}`, `shadow_mode`).
//! Each matched descriptor takes tokens from its own GCRA bucket
//! `ratelimit:envoy.{domain}:{key}={value}|…`.

use std::{collections::HashMap, time::Duration};

use portico_limiter::Limit;
use portico_proto::envoy_rls::{
    rate_limit_response::{self, rate_limit::Unit, DescriptorStatus},
    wkt, RateLimitRequest, RateLimitResponse,
};
use serde::Deserialize;

use crate::{limiter::RateLimiter, Error};

#[derive(Debug, Deserialize)]
struct DomainFile {
    domain: String,
    #[serde(default)]
    descriptors: Vec<DescriptorFile>,
}

#[derive(Debug, Deserialize)]
struct DescriptorFile {
    key: String,
    value: Option<String>,
    rate_limit: Option<RateLimitFile>,
    #[serde(default)]
    descriptors: Vec<DescriptorFile>,
    #[serde(default)]
    shadow_mode: bool,
}

#[derive(Debug, Deserialize)]
struct RateLimitFile {
    unit: Option<String>,
    requests_per_unit: Option<u32>,
    #[serde(default)]
    unlimited: bool,
    name: Option<String>,
}

/// What a matched descriptor does.
#[derive(Debug, Clone)]
enum Rule {
    Limited {
        limit: Limit,
        requests_per_unit: u32,
        unit: Unit,
        name: String,
    },
    Unlimited,
}

#[derive(Debug, Default)]
struct Node {
    rule: Option<Rule>,
    shadow: bool,
    /// `key_value` (exact) or `key` (any value) → child.
    children: HashMap<String, Node>,
    /// (key, value prefix, child) for `value: "prefix*"`.
    wildcards: Vec<(String, String, Node)>,
}

/// The configured domains.
#[derive(Debug, Default)]
pub struct Descriptors {
    domains: HashMap<String, Node>,
}

impl Descriptors {
    /// Parses envoyproxy/ratelimit YAML (several domains as several YAML documents).
    pub fn parse(yaml: &str) -> Result<Self, String> {
        let mut domains = HashMap::new();
        for document in serde_yaml_ng::Deserializer::from_str(yaml) {
            let file = DomainFile::deserialize(document).map_err(|e| e.to_string())?;
            if file.domain.is_empty() {
                return Err("a domain must have a non-empty `domain`".into());
            }
            let mut root = Node::default();
            for descriptor in file.descriptors {
                insert(&mut root, descriptor, &file.domain)?;
            }
            if domains.insert(file.domain.clone(), root).is_some() {
                return Err(format!("domain `{}` is defined twice", file.domain));
            }
        }
        Ok(Self { domains })
    }

    /// Reads `path`.
    pub fn load(path: &str) -> Result<Self, String> {
        let yaml = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Self::parse(&yaml).map_err(|e| format!("{path}: {e}"))
    }

    /// The rule, shadow flag and bucket for one request descriptor, if any rule matches.
    fn lookup(&self, domain: &str, entries: &[(String, String)]) -> Option<(Rule, bool, String)> {
        let mut node = self.domains.get(domain)?;
        for (key, value) in entries {
            node = node
                .children
                .get(&format!("{key}_{value}"))
                .or_else(|| {
                    node.wildcards
                        .iter()
                        .find(|(k, prefix, _)| k == key && value.starts_with(prefix.as_str()))
                        .map(|(_, _, child)| child)
                })
                .or_else(|| node.children.get(key.as_str()))?;
        }
        let bucket = entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("|");
        Some((
            node.rule.clone()?,
            node.shadow,
            format!("envoy.{domain}:{bucket}"),
        ))
    }
}

fn insert(parent: &mut Node, descriptor: DescriptorFile, domain: &str) -> Result<(), String> {
    if descriptor.key.is_empty() {
        return Err(format!("domain `{domain}`: a descriptor needs a `key`"));
    }
    let mut node = Node {
        shadow: descriptor.shadow_mode,
        ..Node::default()
    };
    if let Some(rate_limit) = descriptor.rate_limit {
        node.rule = Some(rule(rate_limit, domain, &descriptor.key)?);
    }
    for child in descriptor.descriptors {
        insert(&mut node, child, domain)?;
    }
    match descriptor.value {
        Some(value) if value.ends_with('*') => {
            let prefix = value.trim_end_matches('*').to_owned();
            parent.wildcards.push((descriptor.key, prefix, node));
        }
        Some(value) => {
            parent
                .children
                .insert(format!("{}_{value}", descriptor.key), node);
        }
        None => {
            parent.children.insert(descriptor.key, node);
        }
    }
    Ok(())
}

fn rule(rate_limit: RateLimitFile, domain: &str, key: &str) -> Result<Rule, String> {
    if rate_limit.unlimited {
        return Ok(Rule::Unlimited);
    }
    let context = || format!("domain `{domain}`, descriptor `{key}`");
    let unit_name = rate_limit
        .unit
        .ok_or_else(|| format!("{}: rate_limit needs a `unit`", context()))?;
    let (unit, seconds) = match unit_name.to_ascii_lowercase().as_str() {
        "second" => (Unit::Second, 1),
        "minute" => (Unit::Minute, 60),
        "hour" => (Unit::Hour, 3600),
        "day" => (Unit::Day, 86_400),
        "week" => (Unit::Week, 7 * 86_400),
        "month" => (Unit::Month, 30 * 86_400),
        "year" => (Unit::Year, 365 * 86_400),
        other => {
            return Err(format!(
                "{}: unit `{other}` is not one of second, minute, hour, day, week, month, year",
                context()
            ))
        }
    };
    let requests_per_unit = rate_limit
        .requests_per_unit
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{}: rate_limit needs requests_per_unit > 0", context()))?;
    Ok(Rule::Limited {
        limit: Limit::per_window(requests_per_unit, Duration::from_secs(seconds)),
        requests_per_unit,
        unit,
        name: rate_limit.name.unwrap_or_default(),
    })
}

/// Answers `ShouldRateLimit`: one status per descriptor, `OVER_LIMIT` overall when any
/// non-shadow descriptor is over its limit.
pub async fn should_rate_limit(
    descriptors: &Descriptors,
    limiter: &RateLimiter,
    request: &RateLimitRequest,
) -> Result<RateLimitResponse, Error> {
    if request.domain.is_empty() {
        return Err(Error::InvalidArgument("domain must not be empty".into()));
    }
    if request.descriptors.is_empty() {
        return Err(Error::InvalidArgument(
            "descriptors must not be empty".into(),
        ));
    }
    let mut over = false;
    let mut statuses = Vec::with_capacity(request.descriptors.len());
    for descriptor in &request.descriptors {
        let entries: Vec<(String, String)> = descriptor
            .entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect();
        let hits = descriptor
            .hits_addend
            .as_ref()
            .map_or(u64::from(request.hits_addend), |h| h.value);
        let hits = u32::try_from(hits.max(1)).unwrap_or(u32::MAX);
        let status = match descriptors.lookup(&request.domain, &entries) {
            None | Some((Rule::Unlimited, _, _)) => DescriptorStatus {
                code: rate_limit_response::Code::Ok as i32,
                ..Default::default()
            },
            Some((
                Rule::Limited {
                    limit,
                    requests_per_unit,
                    unit,
                    name,
                },
                shadow,
                bucket,
            )) => {
                let decision = if hits > limit.capacity {
                    portico_limiter::Decision {
                        allowed: false,
                        limit: limit.capacity,
                        remaining: 0,
                        reset_after_ms: 0,
                        retry_after_ms: 0,
                    }
                } else {
                    limiter.check_bucket(&bucket, limit, hits).await.decision
                };
                if !decision.allowed && shadow {
                    tracing::info!(domain = %request.domain, %bucket, "shadow mode: would be over limit");
                }
                let limited = !decision.allowed && !shadow;
                over |= limited;
                DescriptorStatus {
                    code: if limited {
                        rate_limit_response::Code::OverLimit as i32
                    } else {
                        rate_limit_response::Code::Ok as i32
                    },
                    current_limit: Some(rate_limit_response::RateLimit {
                        name,
                        requests_per_unit,
                        unit: unit as i32,
                    }),
                    limit_remaining: decision.remaining,
                    duration_until_reset: Some(wkt::Duration {
                        seconds: (decision.reset_after_ms / 1000) as i64,
                        nanos: ((decision.reset_after_ms % 1000) * 1_000_000) as i32,
                    }),
                    ..Default::default()
                }
            }
        };
        statuses.push(status);
    }
    Ok(RateLimitResponse {
        overall_code: if over {
            rate_limit_response::Code::OverLimit as i32
        } else {
            rate_limit_response::Code::Ok as i32
        },
        statuses,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
domain: edge_proxy
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: path
    value: /login
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: /static/*
    rate_limit: {unlimited: true}
  - key: tenant
    descriptors:
      - key: plan
        value: free
        shadow_mode: true
        rate_limit: {unit: hour, requests_per_unit: 100, name: free-plan}
---
domain: other
descriptors:
  - key: k
    rate_limit: {unit: day, requests_per_unit: 1}
"#;

    fn entries(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn lookup_follows_envoyproxy_ratelimit_matching() {
        let d = Descriptors::parse(YAML).expect("valid");
        let (rule, shadow, bucket) = d
            .lookup("edge_proxy", &entries(&[("remote_address", "1.2.3.4")]))
            .expect("match");
        assert!(
            matches!(
                rule,
                Rule::Limited {
                    requests_per_unit: 10,
                    ..
                }
            ) && !shadow
        );
        assert_eq!(bucket, "envoy.edge_proxy:remote_address=1.2.3.4");
        assert!(d
            .lookup("edge_proxy", &entries(&[("path", "/login")]))
            .is_some());
        assert!(
            d.lookup("edge_proxy", &entries(&[("path", "/other")]))
                .is_none(),
            "no key-only rule for path"
        );
        assert!(matches!(
            d.lookup("edge_proxy", &entries(&[("path", "/static/app.js")]))
                .map(|m| m.0),
            Some(Rule::Unlimited)
        ));
        let (_, shadow, _) = d
            .lookup(
                "edge_proxy",
                &entries(&[("tenant", "acme"), ("plan", "free")]),
            )
            .expect("nested");
        assert!(shadow);
        assert!(
            d.lookup("edge_proxy", &entries(&[("tenant", "acme")]))
                .is_none(),
            "no rule at the parent"
        );
        assert!(d.lookup("unknown", &entries(&[("k", "v")])).is_none());
        assert!(d.lookup("other", &entries(&[("k", "v")])).is_some());
    }

    #[test]
    fn invalid_files_name_the_problem() {
        let error = Descriptors::parse("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n")
            .expect_err("bad unit");
        assert!(error.contains("fortnight"), "{error}");
        let error = Descriptors::parse(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second}\n",
        )
        .expect_err("no requests_per_unit");
        assert!(error.contains("requests_per_unit"), "{error}");
    }
}
