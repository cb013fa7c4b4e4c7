//! The JSON log line layer: one object per event, with the OTel trace and
//! span ids of the current span so Loki lines link to Jaeger traces.
//!
//! A layer of its own rather than `tracing_subscriber::fmt` with a JSON event
//! format: the fmt layer formats every span's fields into a string when the
//! span is created and again on every `record`, which the JSON lines never
//! use and which cost more than the lines themselves on the runner's path.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceContextExt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Writes every event it sees as one JSON line:
/// `{"timestamp","level","target","message",<fields>,"span","trace_id","span_id"}`.
pub(crate) struct JsonLayer<W> {
    writer: W,
}

impl<W> JsonLayer<W> {
    pub(crate) fn new(writer: W) -> Self {
        Self { writer }
    }
}

/// Per-thread buffers, reused across events.
#[derive(Default)]
struct Buffers {
    line: String,
    fields: String,
    message: String,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers::default());
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let span_name = ctx.event_span(event).map(|s| s.name());
        let write = |b: &mut Buffers| {
            format_line(b, event, span_name);
            let mut out = self.writer.make_writer_for(event.metadata());
            let _ = out.write_all(b.line.as_bytes());
        };
        // An event raised while writing (by the writer itself) gets fresh
        // buffers instead of panicking on the borrowed ones.
        BUFFERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut b) => write(&mut b),
            Err(_) => write(&mut Buffers::default()),
        });
    }
}

fn format_line(b: &mut Buffers, event: &Event<'_>, span_name: Option<&str>) {
    let meta = event.metadata();
    b.fields.clear();
    b.message.clear();
    event.record(&mut FieldVisitor {
        fields: &mut b.fields,
        message: &mut b.message,
    });
    let line = &mut b.line;
    line.clear();
    line.push_str("{\"timestamp\":\"");
    push_timestamp(line, SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(meta.level().as_str());
    line.push_str("\",\"target\":");
    push_json_str(line, meta.target());
    line.push_str(",\"message\":");
    push_json_str(line, &b.message);
    line.push_str(&b.fields);
    if let Some(name) = span_name {
        line.push_str(",\"span\":");
        push_json_str(line, name);
    }
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    if sc.is_valid() {
        line.push_str(",\"trace_id\":\"");
        push_hex(line, &sc.trace_id().to_bytes());
        line.push_str("\",\"span_id\":\"");
        push_hex(line, &sc.span_id().to_bytes());
        line.push('"');
    }
    line.push_str("}\n");
}

/// Collects an event's fields as `,"name":value` pairs and its message.
struct FieldVisitor<'a> {
    fields: &'a mut String,
    message: &'a mut String,
}

impl FieldVisitor<'_> {
    fn key(&mut self, field: &Field) {
        self.fields.push(',');
        push_json_str(self.fields, field.name());
        self.fields.push(':');
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            self.fields
                .push_str(ryu::Buffer::new().format_finite(value));
        } else {
            self.fields.push_str("null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.fields.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.fields.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.fields.push_str(if value { "true" } else { "false" });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
            return;
        }
        self.key(field);
        push_json_str(self.fields, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write as _;
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        let text = format!("{value:?}");
        self.key(field);
        push_json_str(self.fields, &text);
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                push_hex(out, &[c as u8]);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// Appends `n` zero-padded to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(digits);
}

/// Appends `t` as RFC 3339 UTC with microseconds: `2026-11-23T19:34:45.995639Z`.
fn push_timestamp(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Days since the epoch to a civil date (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_padded(out, year.max(0) as u64, 4);
    out.push('-');
    push_padded(out, month as u64, 2);
    out.push('-');
    push_padded(out, day as u64, 2);
    out.push('T');
    push_padded(out, rem / 3600, 2);
    out.push(':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(':');
    push_padded(out, rem % 60, 2);
    out.push('.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c\nd\u{1}é");
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
        out.clear();
        push_json_str(&mut out, "plain");
        assert_eq!(out, "\"plain\"");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
            (1_795_462_485, 995_639, "2026-11-23T19:34:45.995639Z"),
            (4_102_444_799, 999_999, "2099-12-31T23:59:59.999999Z"),
        ];
        for (secs, micros, expected) in cases {
            let mut out = String::new();
            push_timestamp(
                &mut out,
                UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros),
            );
            assert_eq!(out, expected);
        }
    }
}
