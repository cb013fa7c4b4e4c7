//! How a run is answered: the whole report, or the summary a caller asks
//! for with `Prefer: return=minimal` (RFC 7240), serialised once into a
//! buffer sized from the previous answers.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use crate::pipeline::RunReport;

/// `Prefer`, the header a caller states its preferences in (RFC 7240 §2).
pub(crate) const PREFER: HeaderName = HeaderName::from_static("prefer");
/// `Preference-Applied`, the header that says a preference was honoured
/// (RFC 7240 §3).
pub(crate) const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// How much of a run the answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// The run report: ids, duration, every stage and model, the output.
    Full,
    /// `Prefer: return=minimal`: the pipeline, run and trace ids, the
    /// duration and the output, without the per-stage reports.
    Minimal,
}

impl Detail {
    /// What the request's `Prefer` headers ask for. The first `return`
    /// preference counts (RFC 7240 §2); names and values are matched
    /// without case and may be quoted; parameters after `;` are ignored.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let first_return = headers
            .get_all(PREFER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|p| p.split(';').next()?.split_once('='))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("return"));
        match first_return {
            Some((_, value))
                if value
                    .trim()
                    .trim_matches('"')
                    .eq_ignore_ascii_case("minimal") =>
            {
                Self::Minimal
            }
            _ => Self::Full,
        }
    }
}

/// The answer to `Prefer: return=minimal`.
#[derive(Serialize)]
struct Summary<'a, T> {
    pipeline: &'a str,
    run_id: &'a str,
    trace_id: Option<&'a str>,
    duration_seconds: f64,
    output: &'a T,
}

/// Serialises answers into a buffer as large as the largest answer so far
/// (at most 64 KiB), so that a report of a few kilobytes is not grown by
/// doubling from 128 bytes (axum's `Json`) on every request.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    /// Bytes of the largest answer so far, per detail.
    sizes: [AtomicUsize; 2],
}

/// The smallest buffer an answer starts with.
const MIN_CAPACITY: usize = 256;
/// The largest buffer reserved up front: a bigger answer grows its own.
const MAX_CAPACITY: usize = 64 * 1024;

impl Answers {
    /// The 200 answer to a run, in the detail the caller asked for.
    pub(crate) fn run<T: Serialize>(
        &self,
        report: &RunReport<T>,
        detail: Detail,
    ) -> Result<Response, ApiError> {
        match detail {
            Detail::Full => self.json(&self.sizes[0], report),
            Detail::Minimal => {
                let summary = Summary {
                    pipeline: &report.pipeline,
                    run_id: &report.run_id,
                    trace_id: report.trace_id.as_deref(),
                    duration_seconds: report.duration.as_secs_f64(),
                    output: &report.output,
                };
                let mut response = self.json(&self.sizes[1], &summary)?;
                response.headers_mut().insert(
                    PREFERENCE_APPLIED,
                    HeaderValue::from_static("return=minimal"),
                );
                Ok(response)
            }
        }
    }

    fn json<T: Serialize>(&self, size: &AtomicUsize, value: &T) -> Result<Response, ApiError> {
        let capacity = size
            .load(Ordering::Relaxed)
            .clamp(MIN_CAPACITY, MAX_CAPACITY);
        let mut body = Vec::with_capacity(capacity);
        serde_json::to_writer(&mut body, value).map_err(|e| ApiError::Unserializable {
            message: e.to_string(),
        })?;
        size.fetch_max(body.len(), Ordering::Relaxed);
        Ok((
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;

    use super::*;

    fn prefer(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(PREFER, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    #[test]
    fn prefer_return_minimal_is_read_as_rfc_7240_writes_it() {
        assert_eq!(Detail::of(&HeaderMap::new()), Detail::Full);
        assert_eq!(Detail::of(&prefer(&["return=minimal"])), Detail::Minimal);
        assert_eq!(
            Detail::of(&prefer(&["Return=\"Minimal\""])),
            Detail::Minimal
        );
        assert_eq!(
            Detail::of(&prefer(&["respond-async, wait=10", "return=minimal; x=1"])),
            Detail::Minimal
        );
        assert_eq!(
            Detail::of(&prefer(&["return=representation"])),
            Detail::Full
        );
        // Only the first `return` preference counts.
        assert_eq!(
            Detail::of(&prefer(&["return=representation, return=minimal"])),
            Detail::Full
        );
        assert_eq!(Detail::of(&prefer(&["handling=lenient"])), Detail::Full);
    }

    fn report() -> RunReport<Vec<u32>> {
        RunReport {
            pipeline: "p".to_owned(),
            run_id: "0123456789abcdef0123456789abcdef".to_owned(),
            trace_id: None,
            duration: Duration::from_millis(3),
            stages: Vec::new(),
            output: (0..400).collect(),
        }
    }

    #[test]
    fn an_answer_is_the_report_or_its_summary_and_the_buffer_remembers_its_size() {
        let answers = Answers::default();
        let full = answers.run(&report(), Detail::Full).unwrap();
        assert_eq!(full.status(), StatusCode::OK);
        assert!(full.headers().get(PREFERENCE_APPLIED).is_none());
        let learned = answers.sizes[0].load(Ordering::Relaxed);
        let expected = serde_json::to_vec(&report()).unwrap().len();
        assert_eq!(learned, expected);
        assert!(learned > MIN_CAPACITY);

        let minimal = answers.run(&report(), Detail::Minimal).unwrap();
        assert_eq!(minimal.headers()[PREFERENCE_APPLIED], "return=minimal");
        assert_eq!(minimal.headers()[CONTENT_TYPE], "application/json");
        assert!(answers.sizes[1].load(Ordering::Relaxed) < learned);
    }

    #[test]
    fn an_output_that_cannot_be_serialised_is_a_json_500() {
        let mut report = report();
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1);
        let report = RunReport {
            output: bad,
            pipeline: std::mem::take(&mut report.pipeline),
            run_id: std::mem::take(&mut report.run_id),
            trace_id: None,
            duration: report.duration,
            stages: Vec::new(),
        };
        let err = Answers::default()
            .run(&report, Detail::Full)
            .expect_err("a map with non-string keys is not JSON");
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.code(), "unserializable_output");
    }
}
