//! Which providers exist: `LLM_PROVIDERS_FILE`, else `LLM_BASE_URL` + `LLM_API_KEY` +
//! `LLM_MODEL`, else the built-in `echo` provider. API keys are named, never written: the file
//! says which variable holds each key, and the variable is read once at startup.

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

    /// Whether a caller may ask this provider for `model` (empty: the default model).
    pub fn offers(&self, model: &str) -> bool {
        model.is_empty() || model == self.model || self.models.iter().any(|m| m == model)
    }
}

/// A configuration mistake, reported at startup.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    providers: Vec<Entry>,
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
) -> Result<Vec<Spec>, SpecError> {
    let specs = if let Some(path) = &settings.providers_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SpecError(format!("LLM_PROVIDERS_FILE `{path}`: {e}")))?;
        from_file(&text, settings.timeout, lookup)
            .map_err(|e| SpecError(format!("LLM_PROVIDERS_FILE `{path}`: {}", e.0)))?
    } else if let Some(base_url) = &settings.base_url {
        vec![Spec {
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
        }]
    } else {
        vec![echo(settings.timeout)]
    };
    Ok(specs)
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
) -> Result<Vec<Spec>, SpecError> {
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
    Ok(specs)
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

    fn parse(text: &str) -> Result<Vec<Spec>, SpecError> {
        from_file(text, Duration::from_secs(30), &|name| {
            (name == "OPENAI_KEY").then(|| "sk-test".to_owned())
        })
    }

    #[test]
    fn a_file_lists_providers_in_order_with_keys_by_variable_name() {
        let specs = parse(
            "providers:\n\
             - {name: openai, base_url: 'https://api.openai.com/v1/', model: gpt-4o-mini, models: [gpt-4o], api_key_env: OPENAI_KEY, timeout: 20s}\n\
             - {name: local, base_url: 'http://127.0.0.1:11434/v1', model: llama3, priority: 5, enabled: false, timeout: 1500ms}\n",
        )
        .expect("valid");
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
        assert!(specs[0].offers("gpt-4o") && specs[0].offers("gpt-4o-mini") && specs[0].offers(""));
        assert!(!specs[0].offers("gpt-4-32k"), "only the listed models");
        assert!(!specs[1].offers("gpt-4o"));
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
        assert_eq!(none.len(), 1);
        assert!(none[0].is_echo());
        settings.base_url = Some("https://llm.example.com/v1/".into());
        settings.model = Some("m1".into());
        settings.api_key = Some(SecretString::from("sk-1".to_owned()));
        let one = load(&settings, &|_| None).expect("one");
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
