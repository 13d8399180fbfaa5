//! JSON log lines, written cheaply: one object per event with the event's fields and each
//! enclosing span's fields once (no `span` copy of the innermost span beside the `spans` list),
//! span fields rendered once when the span is created or recorded (not re-parsed per event),
//! `otel.*` fields left to the OpenTelemetry layer that reads them, and the line appended to a
//! bounded buffer that a background thread writes out in batches ([`BackgroundWriter`]), so no
//! request thread waits on stdout. A full buffer drops the line and counts it
//! (`log_lines_dropped_total`) rather than stall.
//!
//! A line looks like
//! `{"timestamp":"2026-12-02T01:02:03.456789Z","level":"INFO","target":"portico_edge",
//! "fields":{"message":"request","status":200},"spans":[{"name":"http.request",
//! "correlation_id":"…","trace_id":"…"}]}`.

use std::{
    fmt::{self, Write as _},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, TypedMetric},
};
use tracing::{
    field::{Field, Visit},
    span, Event, Subscriber,
};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{format::Writer, FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter},
    registry::LookupSpan,
};

/// Bytes of log lines the background writer may hold before new lines are dropped.
pub const QUEUE_BYTES: usize = 8 << 20;

/// How long the writer thread lets lines gather after the first one arrives before it writes
/// them out in one `write`: under load, one wake-up and one system call per interval instead of
/// one per line (a thread woken per line cost a fifth of the process's CPU at 30k lines/s).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// A [`MakeWriter`] that appends each formatted line to a shared, bounded buffer; a background
/// thread writes the buffer to stdout every [`FLUSH_INTERVAL`] while there is something to write.
/// A line that would overflow [`QUEUE_BYTES`] is dropped and counted in `log_lines_dropped_total`.
#[derive(Clone, Debug)]
pub struct BackgroundWriter {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    closed: bool,
}

/// Stops the writer thread and writes out what is queued, when dropped.
#[derive(Debug)]
pub struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer of stdout and its guard (see [`BackgroundWriter`]).
pub fn background_stdout() -> (BackgroundWriter, WriterGuard) {
    background(std::io::stdout())
}

fn background(mut out: impl std::io::Write + Send + 'static) -> (BackgroundWriter, WriterGuard) {
    let shared = Arc::new(Shared::default());
    register_dropped(&shared);
    let thread_shared = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("portico-log".into())
        .spawn(move || {
            let shared = thread_shared;
            let mut batch = Vec::new();
            loop {
                let mut pending = lock(&shared.pending);
                while pending.bytes.is_empty() && !pending.closed {
                    pending = shared
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                let closed = pending.closed;
                if !closed {
                    // Let the lines of the next few milliseconds join this write.
                    drop(pending);
                    std::thread::sleep(FLUSH_INTERVAL);
                    pending = lock(&shared.pending);
                }
                std::mem::swap(&mut batch, &mut pending.bytes);
                drop(pending);
                // Nowhere to report a failed write to stdout: the lines are lost either way.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
                if closed {
                    return;
                }
            }
        })
        .ok();
    (
        BackgroundWriter {
            shared: Arc::clone(&shared),
        },
        WriterGuard { shared, thread },
    )
}

impl std::io::Write for BackgroundWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = lock(&self.shared.pending);
        if pending.bytes.len() + line.len() > QUEUE_BYTES {
            drop(pending);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            let was_empty = pending.bytes.is_empty();
            pending.bytes.extend_from_slice(line);
            drop(pending);
            if was_empty {
                self.shared.wake.notify_one();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BackgroundWriter {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

/// Registers `log_lines_dropped_total` once per process (the first writer's count).
fn register_dropped(shared: &Arc<Shared>) {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        crate::metrics::register(
            "log_lines_dropped",
            "Log lines dropped because the background log writer's buffer was full",
            DroppedLines(Arc::clone(shared)),
        );
    });
}

/// `log_lines_dropped_total`, read from the writer's own counter at each scrape.
#[derive(Debug)]
struct DroppedLines(Arc<Shared>);

impl TypedMetric for DroppedLines {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for DroppedLines {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> fmt::Result {
        let dropped = self.0.dropped.load(Ordering::Relaxed);
        encoder.encode_counter::<NoLabelSet, _, u64>(&dropped, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// The event formatter of `LOG_FORMAT=json`.
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonLines;

/// The span field formatter that goes with [`JsonLines`]: it keeps each span's fields as a
/// ready JSON fragment (`"key":value,…`, without braces).
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonSpanFields;

impl<'writer> FormatFields<'writer> for JsonSpanFields {
    /// Renders into a reused per-thread buffer first, then copies the fragment out in one
    /// write: the span's own string is allocated once at its final size instead of growing
    /// field by field (each growth a reallocation and a copy).
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        thread_local! {
            static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut scratch) => {
                scratch.clear();
                let mut buffer = Writer::new(&mut *scratch);
                let mut visitor = JsonVisitor::new(&mut buffer);
                fields.record(&mut visitor);
                visitor.result?;
                writer.write_str(&scratch)
            }
            // A field's formatting made a span (re-entered): straight into the writer.
            Err(_) => {
                let mut visitor = JsonVisitor::new(&mut writer);
                fields.record(&mut visitor);
                visitor.result
            }
        })
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &span::Record<'_>,
    ) -> fmt::Result {
        let first = current.fields.is_empty();
        // One growth for the usual recorded field (a status, an ID), not several.
        current.fields.reserve(64);
        let mut writer = current.as_writer();
        let mut visitor = JsonVisitor {
            writer: &mut writer,
            first,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        let mut timestamp = [0u8; crate::time::MICROS_LEN];
        let len = crate::time::write_rfc3339(&mut timestamp, std::time::SystemTime::now(), true);
        writer.write_str(std::str::from_utf8(&timestamp[..len]).map_err(|_| fmt::Error)?)?;
        write!(writer, "\",\"level\":\"{}\",\"target\":", meta.level())?;
        write_json_str(&mut writer, meta.target())?;
        writer.write_str(",\"fields\":{")?;
        let mut visitor = JsonVisitor::new(&mut writer);
        event.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')?;
        if let Some(scope) = ctx.event_scope() {
            writer.write_str(",\"spans\":[")?;
            for (n, span) in scope.from_root().enumerate() {
                if n > 0 {
                    writer.write_char(',')?;
                }
                writer.write_str("{\"name\":")?;
                write_json_str(&mut writer, span.name())?;
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.fields.is_empty() {
                        writer.write_char(',')?;
                        writer.write_str(&fields.fields)?;
                    }
                }
                writer.write_char('}')?;
            }
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// Writes fields as `"key":value` pairs separated by commas, skipping `otel.*`.
struct JsonVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl<'a, 'w> JsonVisitor<'a, 'w> {
    fn new(writer: &'a mut Writer<'w>) -> Self {
        Self {
            writer,
            first: true,
            result: Ok(()),
        }
    }

    /// Writes the separator and the key; `false` when the field is not for this layer.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if self.result.is_err() || name.starts_with("otel.") {
            return false;
        }
        let separator = if self.first { "" } else { "," };
        self.first = false;
        self.result = self
            .writer
            .write_str(separator)
            .and_then(|()| write_json_str(self.writer, name))
            .and_then(|()| self.writer.write_char(':'));
        self.result.is_ok()
    }

    fn raw(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if self.key(field) {
            self.result = self.writer.write_fmt(value);
        }
    }
}

impl Visit for JsonVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.key(field) {
            self.result = write_json_str(self.writer, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.key(field) {
            self.result = self
                .writer
                .write_char('"')
                .and_then(|()| write!(Escaped(self.writer), "{value:?}"))
                .and_then(|()| self.writer.write_char('"'));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.raw(field, format_args!("{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.raw(field, format_args!("{value}"));
        } else {
            // JSON has no NaN or infinity.
            self.raw(field, format_args!("null"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_debug(field, &format_args!("{value}"));
    }
}

/// A JSON string literal of `value`.
fn write_json_str(writer: &mut impl fmt::Write, value: &str) -> fmt::Result {
    writer.write_char('"')?;
    Escaped(writer).write_str(value)?;
    writer.write_char('"')
}

/// Escapes what passes through it for the inside of a JSON string.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, value: &str) -> fmt::Result {
        let mut start = 0;
        for (at, byte) in value.bytes().enumerate() {
            let escape = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&value[start..at])?;
            if escape.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            start = at + 1;
        }
        self.0.write_str(&value[start..])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    fn lines(run: impl FnOnce()) -> Vec<serde_json::Value> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(JsonLines)
                .fmt_fields(JsonSpanFields)
                .with_writer(captured.clone()),
        );
        tracing::subscriber::with_default(subscriber, run);
        let bytes = captured.0.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8")
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn each_field_appears_once_and_otel_fields_are_left_out() {
        let lines = lines(|| {
            let outer = tracing::info_span!(
                "http.request",
                otel.name = "GET /healthz",
                correlation_id = tracing::field::Empty,
                status = tracing::field::Empty,
            );
            outer.record("correlation_id", "abc-123");
            let _outer = outer.enter();
            let inner = tracing::info_span!("grpc.call", rpc = "Check");
            let _inner = inner.enter();
            outer.record("status", 200u16);
            tracing::info!(latency_ms = 0.25, ok = true, count = -3i64, "request");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], "request");
        assert_eq!(line["fields"]["latency_ms"], 0.25);
        assert_eq!(line["fields"]["ok"], true);
        assert_eq!(line["fields"]["count"], -3);
        assert_eq!(
            line["spans"],
            serde_json::json!([
                {"name": "http.request", "correlation_id": "abc-123", "status": 200},
                {"name": "grpc.call", "rpc": "Check"},
            ])
        );
        assert!(line.get("span").is_none(), "no second copy: {line}");
        let text = line.to_string();
        assert_eq!(text.matches("abc-123").count(), 1, "{text}");
        assert!(!text.contains("otel"), "{text}");
        let timestamp = line["timestamp"].as_str().expect("timestamp");
        assert_eq!(timestamp.len(), 27, "microseconds, UTC: {timestamp}");
        assert!(
            timestamp.ends_with('Z') && &timestamp[10..11] == "T" && &timestamp[19..20] == ".",
            "{timestamp}"
        );
    }

    #[test]
    fn a_span_made_with_the_incoming_ids_carries_each_once() {
        const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
        let mut headers = http::HeaderMap::new();
        headers.insert(
            crate::CORRELATION_HEADER,
            http::HeaderValue::from_static("req-42"),
        );
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let lines = lines(|| {
            let incoming = crate::Incoming::read(&headers);
            let span = tracing::info_span!(
                "http.request",
                correlation_id = incoming.correlation_id.as_str(),
                trace_id = incoming.trace_id.as_deref(),
            );
            let context = crate::RequestContext::with_ids(span.clone(), &headers, incoming);
            assert_eq!(context.correlation_id, "req-42");
            assert_eq!(context.trace_id, TRACE);
            let _entered = span.enter();
            tracing::info!("request");
        });
        assert_eq!(
            lines[0]["spans"],
            serde_json::json!([{"name": "http.request", "correlation_id": "req-42", "trace_id": TRACE}])
        );
        assert_eq!(lines[0].to_string().matches(TRACE).count(), 1);
    }

    #[test]
    fn the_background_writer_keeps_order_drops_past_its_bound_and_flushes_on_drop() {
        use std::io::Write as _;
        let captured = Captured::default();
        let (mut writer, guard) = background(captured.clone());
        for n in 0..1000 {
            writer
                .write_all(format!("line {n}\n").as_bytes())
                .expect("write");
        }
        drop(guard);
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(
            text, expected,
            "every line, in order, written by the time the guard is gone"
        );

        // Past the bound a line is dropped and counted, not queued (no thread drains this one).
        let mut writer = BackgroundWriter {
            shared: Arc::new(Shared::default()),
        };
        let big = vec![b'x'; QUEUE_BYTES / 2 + 1];
        writer.write_all(&big).expect("write");
        writer
            .write_all(&big)
            .expect("a dropped line is not an error");
        writer.write_all(b"small\n").expect("write");
        assert_eq!(writer.shared.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(lock(&writer.shared.pending).bytes.len(), big.len() + 6);
    }

    #[test]
    fn strings_and_debug_values_are_escaped() {
        let lines = lines(|| {
            tracing::warn!(
                path = "/a\"b\\c\n\u{1}",
                error = ?"quoted \"debug\"",
                nan = f64::NAN,
                "tab\there"
            );
        });
        let fields = &lines[0]["fields"];
        assert_eq!(fields["path"], "/a\"b\\c\n\u{1}");
        assert_eq!(fields["error"], "\"quoted \\\"debug\\\"\"");
        assert_eq!(fields["nan"], serde_json::Value::Null);
        assert_eq!(fields["message"], "tab\there");
        assert!(lines[0].get("spans").is_none(), "no span, no list");
    }
}
