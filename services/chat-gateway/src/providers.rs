//! Which providers and model aliases exist: `LLM_PROVIDERS_FILE`, else `LLM_BASE_URL` +
//! `LLM_API_KEY` + `LLM_MODEL`, else the built-in `echo` provider. API keys are named, never
//! written: the file says which variable holds each key, and the variable is read once at startup.
//!
//! An alias is what callers may put in `model`; it maps to deployments (provider + that
//! provider's name for the model). A provider's own `model` and `models:` are aliases of the same
//! name on that provider (several providers listing one name make one alias, ordered by provider
//! priority); the file's `models:` section declares aliases with their own deployments.

use std::time::Duration;

use portico_config::{ChatSettings, ExposeSecret as _, SecretString};
use serde::Deserialize;

/// The name and base URL of the built-in provider.
pub const ECHO: &str = "echo";
/// The base URL that selects the built-in provider.
pub const ECHO_URL: &str = "builtin:echo";

/// One provider as configured.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Unique name (the `circuit_breaker_state{name}` label).
    pub name: String,
    /// OpenAI-compatible base URL (`…/v1`), or [`ECHO_URL`].
    pub base_url: String,
    /// Default model.
    pub model: String,
    /// Other models callers may ask for (`models:` in the file, `LLM_MODELS`): the allowlist,
    /// with `model`. A caller's model that no provider lists is refused (400), so nobody picks
    /// the most expensive model on Portico's bill.
    pub models: Vec<String>,
    /// The variable that holds the API key, when the provider needs one.
    pub api_key_env: Option<String>,
    /// The key itself, read from `api_key_env` at startup.
    pub api_key: Option<SecretString>,
    /// Lower is tried first.
    pub priority: i32,
    /// Whether it is tried at all.
    pub enabled: bool,
    /// One attempt's bound (whole answer; first token when streaming).
    pub timeout: Duration,
}

impl Spec {
    /// Whether this is the built-in echo provider.
    pub fn is_echo(&self) -> bool {
        self.base_url == ECHO_URL
    }
}

/// How equal-priority deployments of an alias are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// At random, in proportion to their weights (the default).
    Weighted,
    /// Fewest calls in flight on this replica first; ties by weight.
    LeastBusy,
}

impl Balance {
    /// `weighted` or `least-busy`.
    pub fn name(self) -> &'static str {
        match self {
            Balance::Weighted => "weighted",
            Balance::LeastBusy => "least-busy",
        }
    }
}

/// One deployment of an alias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentSpec {
    /// The admin route's name for it (`<alias>@<provider>` unless configured); `None` for the
    /// deployments a provider's own `model`/`models:` make, which follow the provider.
    pub name: Option<String>,
    /// The provider it calls.
    pub provider: String,
    /// The model name sent to that provider.
    pub model: String,
    /// Lower first; `None` follows the provider's priority.
    pub priority: Option<i32>,
    /// Share among equal priorities (weighted balancing).
    pub weight: u32,
    /// Whether it is tried at all.
    pub enabled: bool,
}

/// A name callers may use, and where it goes.
#[derive(Debug, Clone)]
pub struct AliasSpec {
    pub name: String,
    pub balance: Balance,
    pub deployments: Vec<DeploymentSpec>,
}

/// Providers and aliases.
#[derive(Debug, Clone)]
pub struct Config {
    pub providers: Vec<Spec>,
    pub aliases: Vec<AliasSpec>,
    /// The alias a request naming no model gets.
    pub default_alias: String,
}

/// A configuration mistake, reported at startup.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    providers: Vec<Entry>,
    /// Aliases with their own deployments.
    #[serde(default)]
    models: Vec<AliasEntry>,
    /// The alias a request without `model` gets (default: the first of `models:`, else the
    /// first provider's `model`).
    default_model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasEntry {
    name: String,
    #[serde(default)]
    balance: Option<String>,
    deployments: Vec<DeploymentEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentEntry {
    name: Option<String>,
    provider: String,
    model: String,
    priority: Option<i32>,
    weight: Option<u32>,
    #[serde(default = "enabled_default")]
    enabled: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    base_url: String,
    #[serde(default)]
    model: String,
    /// Further models callers may ask for.
    #[serde(default)]
    models: Vec<String>,
    api_key_env: Option<String>,
    priority: Option<i32>,
    #[serde(default = "enabled_default")]
    enabled: bool,
    /// Seconds, or a number with a unit (`500ms`, `20s`, `2m`).
    timeout: Option<serde_yaml_ng::Value>,
}

fn enabled_default() -> bool {
    true
}

/// Reads the providers from the settings, reading files and key variables through `lookup`.
pub fn load(
    settings: &ChatSettings,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, SpecError> {
    let config = if let Some(path) = &settings.providers_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError(format!("LLM_PROVIDERS_FILE `{path}`: {e}")))?;
        from_file(&text, settings.timeout, lookup)
            .map_err(|e| SpecError(format!("LLM_PROVIDERS_FILE `{path}`: {}", e.0)))?
    } else if let Some(base_url) = &settings.base_url {
        let providers = vec![Spec {
            name: "default".into(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            model: settings.model.clone().unwrap_or_default(),
            models: settings.models.clone(),
            api_key_env: settings.api_key.as_ref().map(|_| "LLM_API_KEY".to_owned()),
            api_key: settings
                .api_key
                .as_ref()
                .map(|k| SecretString::from(k.expose_secret().to_owned())),
            priority: 0,
            enabled: true,
            timeout: settings.timeout,
        }];
        let default = settings.model.clone().unwrap_or_default();
        aliases(
            providers,
            Vec::new(),
            Some(default).filter(|d| !d.is_empty()),
        )
        .map_err(|e| SpecError(format!("LLM_BASE_URL: {}", e.0)))?
    } else {
        aliases(vec![echo(settings.timeout)], Vec::new(), None)?
    };
    Ok(config)
}

/// The aliases: the file's, then one per provider model name not already declared.
fn aliases(
    providers: Vec<Spec>,
    declared: Vec<AliasEntry>,
    default_model: Option<String>,
) -> Result<Config, SpecError> {
    let mut aliases: Vec<AliasSpec> = Vec::new();
    let mut names: std::collections::HashSet<String> =
        providers.iter().map(|p| p.name.clone()).collect();
    for entry in declared {
        let alias = entry.name.trim().to_owned();
        if alias.is_empty() || alias.len() > 256 || alias.chars().any(char::is_whitespace) {
            return Err(SpecError(format!(
                "model `{alias}`: a name is 1-256 characters without spaces"
            )));
        }
        if aliases.iter().any(|a| a.name == alias) {
            return Err(SpecError(format!("model `{alias}` is listed twice")));
        }
        let balance = match entry.balance.as_deref() {
            None | Some("weighted") => Balance::Weighted,
            Some("least-busy") => Balance::LeastBusy,
            Some(other) => {
                return Err(SpecError(format!(
                    "model `{alias}`: balance `{other}` is not weighted or least-busy"
                )))
            }
        };
        if entry.deployments.is_empty() {
            return Err(SpecError(format!(
                "model `{alias}`: `deployments` is empty"
            )));
        }
        let mut deployments = Vec::with_capacity(entry.deployments.len());
        for (index, d) in entry.deployments.into_iter().enumerate() {
            if !providers.iter().any(|p| p.name == d.provider) {
                return Err(SpecError(format!(
                    "model `{alias}`: provider `{}` is not in `providers`",
                    d.provider
                )));
            }
            if d.model.trim().is_empty() {
                return Err(SpecError(format!(
                    "model `{alias}`: a deployment of `{}` has no model",
                    d.provider
                )));
            }
            let name = d.name.unwrap_or_else(|| format!("{alias}@{}", d.provider));
            if name.is_empty() || name.len() > 64 {
                return Err(SpecError(format!(
                    "model `{alias}`: deployment name `{name}` must be 1-64 characters (set `name:`)"
                )));
            }
            if !names.insert(name.clone()) {
                return Err(SpecError(format!(
                    "model `{alias}`: the name `{name}` is taken (give the deployment a `name:`)"
                )));
            }
            let weight = d.weight.unwrap_or(1);
            if !(1..=1000).contains(&weight) {
                return Err(SpecError(format!(
                    "model `{alias}`: weight {weight} is not between 1 and 1000"
                )));
            }
            deployments.push(DeploymentSpec {
                name: Some(name),
                provider: d.provider,
                model: d.model,
                priority: Some(d.priority.unwrap_or(index as i32)),
                weight,
                enabled: d.enabled,
            });
        }
        aliases.push(AliasSpec {
            name: alias,
            balance,
            deployments,
        });
    }
    let declared = aliases.len();
    for provider in &providers {
        for model in std::iter::once(&provider.model).chain(&provider.models) {
            if model.is_empty() || aliases[..declared].iter().any(|a| &a.name == model) {
                continue;
            }
            let deployment = DeploymentSpec {
                name: None,
                provider: provider.name.clone(),
                model: model.clone(),
                priority: None,
                weight: 1,
                enabled: true,
            };
            match aliases.iter_mut().find(|a| &a.name == model) {
                Some(alias) if !alias.deployments.contains(&deployment) => {
                    alias.deployments.push(deployment)
                }
                Some(_) => {}
                None => aliases.push(AliasSpec {
                    name: model.clone(),
                    balance: Balance::Weighted,
                    deployments: vec![deployment],
                }),
            }
        }
    }
    let Some(first) = aliases.first() else {
        return Err(SpecError(
            "no model: give a provider a `model` (LLM_MODEL) or declare `models:`".into(),
        ));
    };
    let default_alias = default_model.unwrap_or_else(|| first.name.clone());
    if !aliases.iter().any(|a| a.name == default_alias) {
        return Err(SpecError(format!(
            "the default model `{default_alias}` is not a model"
        )));
    }
    Ok(Config {
        providers,
        aliases,
        default_alias,
    })
}

/// The built-in deterministic provider.
pub fn echo(timeout: Duration) -> Spec {
    Spec {
        name: ECHO.into(),
        base_url: ECHO_URL.into(),
        model: ECHO.into(),
        models: Vec::new(),
        api_key_env: None,
        api_key: None,
        priority: 0,
        enabled: true,
        timeout,
    }
}

fn from_file(
    text: &str,
    default_timeout: Duration,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, SpecError> {
    let file: File =
        serde_yaml_ng::from_str(text).map_err(|e| SpecError(format!("not valid: {e}")))?;
    if file.providers.is_empty() {
        return Err(SpecError("`providers` is empty".into()));
    }
    let mut specs: Vec<Spec> = Vec::with_capacity(file.providers.len());
    for (index, entry) in file.providers.into_iter().enumerate() {
        let name = entry.name.trim().to_owned();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid_name {
            return Err(SpecError(format!(
                "provider {index}: name `{name}` must be 1-64 letters, digits, '-', '_' or '.'"
            )));
        }
        if specs.iter().any(|s| s.name == name) {
            return Err(SpecError(format!("provider `{name}` is listed twice")));
        }
        let base_url = entry.base_url.trim_end_matches('/').to_owned();
        let is_url = base_url.starts_with("http://") || base_url.starts_with("https://");
        if !is_url && base_url != ECHO_URL {
            return Err(SpecError(format!(
                "provider `{name}`: base_url `{base_url}` is not http(s)://… (or {ECHO_URL})"
            )));
        }
        let api_key = match &entry.api_key_env {
            Some(variable) => Some(SecretString::from(lookup(variable).ok_or_else(|| {
                SpecError(format!(
                    "provider `{name}`: api_key_env names `{variable}`, which is not set"
                ))
            })?)),
            None => None,
        };
        let timeout = match &entry.timeout {
            None => default_timeout,
            Some(value) => timeout(value).ok_or_else(|| {
                SpecError(format!(
                    "provider `{name}`: timeout `{value:?}` is not a duration such as 20s or 500ms"
                ))
            })?,
        };
        specs.push(Spec {
            name,
            base_url,
            model: entry.model,
            models: entry.models,
            api_key_env: entry.api_key_env,
            api_key,
            priority: entry.priority.unwrap_or(index as i32),
            enabled: entry.enabled,
            timeout,
        });
    }
    aliases(specs, file.models, file.default_model)
}

fn timeout(value: &serde_yaml_ng::Value) -> Option<Duration> {
    let duration = match value {
        serde_yaml_ng::Value::Number(n) => Duration::try_from_secs_f64(n.as_f64()?).ok()?,
        serde_yaml_ng::Value::String(s) => {
            let s = s.trim();
            let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
                (n, 0.001)
            } else if let Some(n) = s.strip_suffix('s') {
                (n, 1.0)
            } else if let Some(n) = s.strip_suffix('m') {
                (n, 60.0)
            } else {
                (s, 1.0)
            };
            Duration::try_from_secs_f64(number.trim().parse::<f64>().ok()? * scale).ok()?
        }
        _ => return None,
    };
    (!duration.is_zero()).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, SpecError> {
        from_file(text, Duration::from_secs(30), &|name| {
            (name == "OPENAI_KEY").then(|| "sk-test".to_owned())
        })
    }

    fn alias<'a>(config: &'a Config, name: &str) -> &'a AliasSpec {
        config
            .aliases
            .iter()
            .find(|a| a.name == name)
            .expect("alias")
    }

    #[test]
    fn a_file_lists_providers_in_order_with_keys_by_variable_name() {
        let config = parse(
            "providers:\n\
             - {name: openai, base_url: 'https://api.openai.com/v1/', model: gpt-4o-mini, models: [gpt-4o], api_key_env: OPENAI_KEY, timeout: 20s}\n\
             - {name: local, base_url: 'http://127.0.0.1:11434/v1', model: llama3, priority: 5, enabled: false, timeout: 1500ms}\n",
        )
        .expect("valid");
        let specs = &config.providers;
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].base_url, "https://api.openai.com/v1");
        assert_eq!(
            specs[0]
                .api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            Some("sk-test".to_owned())
        );
        assert_eq!(specs[0].priority, 0);
        assert_eq!(specs[0].timeout, Duration::from_secs(20));
        assert_eq!(specs[1].priority, 5);
        assert!(!specs[1].enabled);
        assert_eq!(specs[1].timeout, Duration::from_millis(1500));
        // Each provider model name is an alias of that name on that provider only.
        let names: Vec<&str> = config.aliases.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["gpt-4o-mini", "gpt-4o", "llama3"]);
        assert_eq!(config.default_alias, "gpt-4o-mini");
        let gpt4o = alias(&config, "gpt-4o");
        assert_eq!(gpt4o.deployments.len(), 1);
        assert_eq!(
            (
                gpt4o.deployments[0].provider.as_str(),
                gpt4o.deployments[0].priority
            ),
            ("openai", None)
        );
    }

    #[test]
    fn aliases_map_to_deployments_with_their_own_model_names() {
        let config = parse(
            "providers:\n\
             - {name: openai, base_url: 'https://api.openai.com/v1', model: gpt-4o-mini}\n\
             - {name: claude, base_url: 'https://proxy.example.com/v1'}\n\
             models:\n\
             - name: chat-default\n\
             \x20 balance: least-busy\n\
             \x20 deployments:\n\
             \x20   - {provider: openai, model: gpt-4o-mini, weight: 3}\n\
             \x20   - {provider: claude, model: claude-sonnet-4, priority: 0}\n\
             - name: gpt-4o-mini\n\
             \x20 deployments: [{provider: claude, model: claude-haiku, name: cheap}]\n\
             default_model: chat-default\n",
        )
        .expect("valid");
        assert_eq!(config.default_alias, "chat-default");
        let default = alias(&config, "chat-default");
        assert_eq!(default.balance, Balance::LeastBusy);
        assert_eq!(
            default.deployments[0],
            DeploymentSpec {
                name: Some("chat-default@openai".into()),
                provider: "openai".into(),
                model: "gpt-4o-mini".into(),
                priority: Some(0),
                weight: 3,
                enabled: true,
            }
        );
        assert_eq!(default.deployments[1].model, "claude-sonnet-4");
        // A declared alias wins over a provider's model of the same name.
        let mini = alias(&config, "gpt-4o-mini");
        assert_eq!(mini.deployments.len(), 1);
        assert_eq!(mini.deployments[0].name.as_deref(), Some("cheap"));
        for (text, fragment) in [
            (
                "providers: [{name: a, base_url: 'http://x', model: m}]\nmodels: [{name: x, deployments: [{provider: b, model: m}]}]",
                "provider `b`",
            ),
            (
                "providers: [{name: a, base_url: 'http://x', model: m}]\nmodels: [{name: x, balance: random, deployments: [{provider: a, model: m}]}]",
                "balance",
            ),
            (
                "providers: [{name: a, base_url: 'http://x', model: m}]\ndefault_model: nope",
                "default model `nope`",
            ),
            ("providers: [{name: a, base_url: 'http://x'}]", "no model"),
            (
                "providers: [{name: a, base_url: 'http://x', model: m}]\nmodels: [{name: x, deployments: [{provider: a, model: m}, {provider: a, model: n}]}]",
                "taken",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.0.contains(fragment), "{text}: {}", error.0);
        }
    }

    #[test]
    fn variables_give_one_provider_and_nothing_gives_echo() {
        let mut settings = portico_config::Settings::from_source(&std::collections::HashMap::<
            String,
            String,
        >::new())
        .expect("defaults")
        .chat;
        let none = load(&settings, &|_| None).expect("echo");
        assert_eq!(none.providers.len(), 1);
        assert!(none.providers[0].is_echo());
        assert_eq!(none.default_alias, ECHO);
        settings.base_url = Some("https://llm.example.com/v1/".into());
        settings.model = Some("m1".into());
        settings.models = vec!["m2".into()];
        settings.api_key = Some(SecretString::from("sk-1".to_owned()));
        let config = load(&settings, &|_| None).expect("one");
        let one = &config.providers;
        assert_eq!(
            (
                one[0].name.as_str(),
                one[0].base_url.as_str(),
                one[0].model.as_str()
            ),
            ("default", "https://llm.example.com/v1", "m1")
        );
        assert_eq!(
            one[0]
                .api_key
                .as_ref()
                .map(|k| k.expose_secret().to_owned()),
            Some("sk-1".to_owned())
        );
        assert_eq!(config.default_alias, "m1");
        assert_eq!(config.aliases.len(), 2, "LLM_MODEL and LLM_MODELS");
    }

    #[test]
    fn mistakes_are_named() {
        for (text, fragment) in [
            ("providers: []", "empty"),
            ("providers:\n- {name: a, base_url: 'ftp://x'}", "not http"),
            (
                "providers:\n- {name: a, base_url: 'http://x'}\n- {name: a, base_url: 'http://y'}",
                "twice",
            ),
            (
                "providers:\n- {name: a, base_url: 'http://x', api_key_env: MISSING}",
                "MISSING",
            ),
            (
                "providers:\n- {name: a, base_url: 'http://x', timeout: soon}",
                "timeout",
            ),
            ("providers:\n- {name: 'a b', base_url: 'http://x'}", "name"),
            (
                "providers:\n- {name: a, base_url: 'http://x', key: 1}",
                "key",
            ),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.0.contains(fragment), "{text}: {}", error.0);
        }
    }
}
