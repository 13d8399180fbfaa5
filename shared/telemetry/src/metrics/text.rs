//! The two exposition formats and the choice between them: OpenMetrics when the scraper asks
//! for it (Prometheus does by default), the Prometheus text format 0.0.4 otherwise — what
//! `promtool check metrics`, older scrapers and `curl | grep` read. prometheus-client writes
//! OpenMetrics only; the 0.0.4 text is derived from it line by line.

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
    /// `text/plain; version=0.0.4`.
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics only when it is named with a
    /// non-zero quality at least that of any text/plain entry; everything else (no header,
    /// `*/*`, `text/plain`) gets text 0.0.4, as the Prometheus client libraries do.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let Some(accept) = accept else {
            return Self::Text;
        };
        let mut openmetrics: Option<f32> = None;
        let mut text: Option<f32> = None;
        for entry in accept.split(',') {
            let mut parts = entry.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut openmetrics,
                "text/plain" => &mut text,
                _ => continue,
            };
            *slot = Some(slot.map_or(quality, |q| q.max(quality)));
        }
        match openmetrics {
            Some(q) if q > 0.0 && q >= text.unwrap_or(0.0) => Self::OpenMetrics,
            _ => Self::Text,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text (as prometheus-client writes it) rewritten as text 0.0.4: a counter
/// family is named after its `_total` series, `info` becomes a gauge named `…_info`,
/// `unknown` is `untyped`, and `# UNIT` / `# EOF` go (0.0.4 has neither). Series lines are the
/// same in both formats.
pub(crate) fn from_openmetrics(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP precedes TYPE, and only TYPE says how the family is renamed.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (renamed, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(help_name, _)| *help_name == name) {
                // OpenMetrics may escape `"` in HELP; 0.0.4 knows only `\\` and `\n`.
                out.push_str(&format!(
                    "# HELP {renamed} {}\n",
                    text.replace("\\\"", "\"")
                ));
            }
            out.push_str(&format!("# TYPE {renamed} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_format_prometheus_and_curl_expect() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.9, application/openmetrics-text;q=0.5")),
            Format::Text
        );
    }

    #[test]
    fn counters_and_infos_are_renamed_and_openmetrics_only_lines_dropped() {
        let openmetrics = "# HELP http_requests Requests.\n# TYPE http_requests counter\nhttp_requests_total{a=\"b\"} 3\n# HELP build Build.\n# TYPE build info\nbuild_info{v=\"1\"} 1\n# HELP up Up.\n# TYPE up gauge\n# UNIT up seconds\nup 1\n# EOF\n";
        assert_eq!(
            from_openmetrics(openmetrics),
            "# HELP http_requests_total Requests.\n# TYPE http_requests_total counter\nhttp_requests_total{a=\"b\"} 3\n# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n# HELP up Up.\n# TYPE up gauge\nup 1\n"
        );
    }
}
