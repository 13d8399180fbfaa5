//! Typed configuration read from the environment (README, Configuration), validated at start.
//!
//! Every variable is parsed before any error is reported, so one start-up shows every
//! mistake at once, each naming the variable and the form it accepts. Values come through
//! [`Source`], so tests inject them without touching the process environment.

use std::{collections::HashMap, fmt, net::SocketAddr, str::FromStr, time::Duration};

pub use ipnet::IpNet;
pub use secrecy::{ExposeSecret, SecretString};

mod settings;
mod transport;
pub use settings::*;
pub use transport::*;

/// Whether `given` equals `secret`, in time independent of where they differ (admin keys,
/// the metrics secret).
pub fn secret_matches(given: &[u8], secret: &SecretString) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(given.ct_eq(secret.expose_secret().as_bytes()))
}

/// Where configuration values come from.
pub trait Source: Send + Sync {
    /// The raw value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// One invalid variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The variable's name.
    pub variable: String,
    /// What was wrong and the accepted form.
    pub message: String,
}

/// Every problem found while reading the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// One entry per invalid variable, in reading order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for problem in &self.problems {
            writeln!(f, "  {}: {}", problem.variable, problem.message)?;
        }
        Ok(())
    }
}

/// Reads typed values from a [`Source`], collecting problems instead of stopping at the first.
pub struct Reader<'a> {
    source: &'a dyn Source,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    /// A reader over `source`.
    pub fn new(source: &'a dyn Source) -> Self {
        Self {
            source,
            problems: Vec::new(),
        }
    }

    /// The trimmed value of `key`; unset and empty are both `None`.
    pub fn raw(&self, key: &str) -> Option<String> {
        self.source
            .get(key)
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
    }

    /// Records a problem with `key`.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            variable: key.to_owned(),
            message: message.into(),
        });
    }

    /// A string with a default.
    pub fn string(&self, key: &str, default: &str) -> String {
        self.raw(key).unwrap_or_else(|| default.to_owned())
    }

    /// A secret (never printed by `Debug`).
    pub fn secret(&self, key: &str) -> Option<SecretString> {
        self.raw(key).map(SecretString::from)
    }

    /// Any `FromStr` value; `expected` describes the accepted form in the error.
    pub fn parse<T: FromStr>(&mut self, key: &str, default: T, expected: &str) -> T {
        match self.raw(key) {
            None => default,
            Some(raw) => match raw.parse() {
                Ok(value) => value,
                Err(_) => {
                    self.problem(key, format!("`{raw}` is not {expected}"));
                    default
                }
            },
        }
    }

    /// A number within `min..=max`.
    pub fn number<T>(&mut self, key: &str, default: T, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + Copy + fmt::Display,
    {
        let expected = format!("a number from {min} to {max}");
        let value = self.parse(key, default, &expected);
        if value < min || value > max {
            self.problem(
                key,
                format!("`{value}` is out of range: expected {expected}"),
            );
            return default;
        }
        value
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
    pub fn bool(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key).map(|raw| raw.to_ascii_lowercase()) {
            None => default,
            Some(raw) => match raw.as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    self.problem(
                        key,
                        format!("`{raw}` is not a boolean: expected true or false"),
                    );
                    default
                }
            },
        }
    }

    /// One of `choices` (case-insensitive), returned lower-cased.
    pub fn choice(&mut self, key: &str, default: &str, choices: &[&str]) -> String {
        let Some(raw) = self.raw(key) else {
            return default.to_owned();
        };
        let lower = raw.to_ascii_lowercase();
        if choices.contains(&lower.as_str()) {
            lower
        } else {
            self.problem(
                key,
                format!("`{raw}` is not one of: {}", choices.join(", ")),
            );
            default.to_owned()
        }
    }

    /// A listen address `host:port`.
    pub fn addr(&mut self, key: &str, default: &str) -> SocketAddr {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
        let default = default.parse().unwrap_or(fallback);
        self.parse(
            key,
            default,
            "a socket address such as 127.0.0.1:3000 or 0.0.0.0:3000",
        )
    }

    /// A duration: a number with a unit (`500ms`, `30s`, `15m`, `2h`, `7d`); a bare number
    /// is read in `bare_unit`, so the operators' `RATE_LIMIT_GLOBAL_WINDOW=60000` keeps working.
    pub fn duration(&mut self, key: &str, default: Duration, bare_unit: Unit) -> Duration {
        let Some(raw) = self.raw(key) else {
            return default;
        };
        match parse_duration(&raw, bare_unit) {
            Some(value) if !value.is_zero() => value,
            _ => {
                self.problem(
                    key,
                    format!(
                        "`{raw}` is not a positive duration: expected a number with a unit \
                         (ms, s, m, h, d), or a bare number of {}",
                        bare_unit.name()
                    ),
                );
                default
            }
        }
    }

    /// Like [`Reader::duration`], but zero is allowed (it switches the feature off).
    pub fn duration_or_zero(&mut self, key: &str, default: Duration, bare_unit: Unit) -> Duration {
        let Some(raw) = self.raw(key) else {
            return default;
        };
        match parse_duration(&raw, bare_unit) {
            Some(value) => value,
            None => {
                self.problem(
                    key,
                    format!(
                        "`{raw}` is not a duration: expected a number with a unit (ms, s, m, h, \
                         d), a bare number of {}, or 0",
                        bare_unit.name()
                    ),
                );
                default
            }
        }
    }

    /// A comma-separated list of non-empty items.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.raw(key)
            .map(|raw| {
                raw.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A comma-separated list of CIDRs; a bare IP is a /32 or /128.
    pub fn cidrs(&mut self, key: &str) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for item in self.list(key) {
            match parse_net(&item) {
                Some(net) => nets.push(net),
                None => self.problem(
                    key,
                    format!("`{item}` is not an IP address or CIDR such as 10.0.0.0/8 or ::1"),
                ),
            }
        }
        nets
    }

    /// An `http://` or `https://` URL.
    pub fn url(&mut self, key: &str, default: &str) -> String {
        let value = self.string(key, default);
        if value.starts_with("http://") || value.starts_with("https://") {
            value
        } else {
            self.problem(
                key,
                format!("`{value}` is not a URL: expected http://host:port or https://host:port"),
            );
            default.to_owned()
        }
    }

    /// The problems found so far, or `Ok` when there are none.
    pub fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: self.problems,
            })
        }
    }
}

/// The unit of a duration given as a bare number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Milliseconds.
    Millis,
    /// Seconds.
    Seconds,
    /// Minutes.
    Minutes,
}

impl Unit {
    fn name(self) -> &'static str {
        match self {
            Unit::Millis => "milliseconds",
            Unit::Seconds => "seconds",
            Unit::Minutes => "minutes",
        }
    }
}

/// Parses `500ms`, `30s`, `1.5s`, `15m`, `2h`, `7d`, or a bare number in `bare_unit`.
pub fn parse_duration(raw: &str, bare_unit: Unit) -> Option<Duration> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: f64 = number.parse().ok()?;
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let seconds = match unit.trim() {
        "" => match bare_unit {
            Unit::Millis => number / 1000.0,
            Unit::Seconds => number,
            Unit::Minutes => number * 60.0,
        },
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        "d" => number * 86_400.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Parses a CIDR, or a bare IP as a host network.
pub fn parse_net(raw: &str) -> Option<IpNet> {
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<std::net::IpAddr>().ok().map(IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn durations_accept_units_and_bare_numbers() {
        assert_eq!(
            parse_duration("500ms", Unit::Seconds),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_duration("15m", Unit::Seconds),
            Some(Duration::from_secs(900))
        );
        assert_eq!(
            parse_duration("7d", Unit::Seconds),
            Some(Duration::from_secs(604_800))
        );
        assert_eq!(
            parse_duration("60000", Unit::Millis),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_duration("30", Unit::Seconds),
            Some(Duration::from_secs(30))
        );
        assert_eq!(parse_duration("3 weeks", Unit::Seconds), None);
        assert_eq!(parse_duration("-1s", Unit::Seconds), None);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let values = source(&[("A", "maybe"), ("B", "x"), ("C", "10.0.0.0/33")]);
        let mut reader = Reader::new(&values);
        reader.bool("A", false);
        reader.number("B", 1u32, 0, 10);
        reader.cidrs("C");
        let error = reader.finish().expect_err("three bad values");
        let names: Vec<_> = error.problems.iter().map(|p| p.variable.as_str()).collect();
        assert_eq!(names, ["A", "B", "C"]);
        assert!(error.to_string().contains("expected true or false"));
    }

    #[test]
    fn cidrs_accept_bare_ips() {
        let values = source(&[("N", "10.0.0.0/8, 127.0.0.1,::1")]);
        let mut reader = Reader::new(&values);
        let nets = reader.cidrs("N");
        assert!(reader.finish().is_ok());
        assert_eq!(nets.len(), 3);
        let loopback: std::net::IpAddr = "127.0.0.1".parse().expect("an IP");
        assert!(nets[1].contains(&loopback));
    }
}
