//! The JSON log line format: one object per event, with the OTel trace and
//! span ids of the current span so Loki lines link to Jaeger traces.

use std::fmt::{self, Write as _};

use opentelemetry::trace::TraceContextExt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as single-line JSON objects:
/// `{"timestamp","level","target","message",<fields>,"span","trace_id","span_id"}`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
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
        SystemTime.format_time(&mut writer)?;
        write!(writer, "\",\"level\":\"{}\",\"target\":", meta.level())?;
        write_json_str(&mut writer, meta.target())?;
        let mut fields = JsonFields {
            out: String::with_capacity(256),
            message: None,
        };
        event.record(&mut fields);
        writer.write_str(",\"message\":")?;
        write_json_str(&mut writer, fields.message.as_deref().unwrap_or(""))?;
        writer.write_str(&fields.out)?;
        if let Some(span) = ctx.lookup_current() {
            writer.write_str(",\"span\":")?;
            write_json_str(&mut writer, span.name())?;
        }
        let cx = opentelemetry::Context::current();
        let otel_span = cx.span();
        let sc = otel_span.span_context();
        if sc.is_valid() {
            write!(
                writer,
                ",\"trace_id\":\"{}\",\"span_id\":\"{}\"",
                sc.trace_id(),
                sc.span_id()
            )?;
        }
        writer.write_str("}\n")
    }
}

/// Collects an event's fields as `,"name":value` pairs.
struct JsonFields {
    out: String,
    message: Option<String>,
}

impl JsonFields {
    fn key(&mut self, field: &Field) {
        self.out.push(',');
        let _ = write_json_str(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for JsonFields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            self.out.push_str("null");
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
            return;
        }
        self.key(field);
        let _ = write_json_str(&mut self.out, value);
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.message = Some(format!("{value:?}"));
            return;
        }
        self.key(field);
        let _ = write_json_str(&mut self.out, &format!("{value:?}"));
    }
}

/// Writes `s` as a JSON string literal.
fn write_json_str(out: &mut impl fmt::Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escaped = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            c if (c as u32) < 0x20 => "",
            _ => continue,
        };
        out.write_str(&s[start..i])?;
        if escaped.is_empty() {
            write!(out, "\\u{:04x}", c as u32)?;
        } else {
            out.write_str(escaped)?;
        }
        start = i + c.len_utf8();
    }
    out.write_str(&s[start..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_as_json() {
        let mut out = String::new();
        write_json_str(&mut out, "a\"b\\c\nd\u{1}é").unwrap();
        let parsed: String = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, "a\"b\\c\nd\u{1}é");
    }
}
