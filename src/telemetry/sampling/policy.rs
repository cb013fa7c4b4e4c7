//! What tail sampling keeps: the settings (`PIPELENS_TRACES_KEEP_*`), the
//! decision's reasons, and the random share by trace id.

use std::time::Duration;

use opentelemetry::trace::{TraceId, TraceState};

/// What an upstream's sampled flag (`traceparent` `01`) means to tail
/// sampling (`PIPELENS_TRACES_KEEP_PARENT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeepParent {
    /// Keep the trace for its parent only when the caller says it sampled
    /// at a probability below 1: OpenTelemetry's consistent probability
    /// sampling writes its rejection threshold into `tracestate`
    /// (`ot=th:…`, a threshold above 0). An always-on caller (no threshold,
    /// or `th:0`) flags every request: that keeps nothing by itself.
    #[default]
    Threshold,
    /// Keep every trace whose parent was sampled (a caller that samples
    /// without saying so keeps its traces whole here too).
    Always,
    /// The parent's flag keeps nothing: errors, slow runs and the ratio
    /// decide.
    Never,
}

impl KeepParent {
    /// Parses `threshold`, `always` or `never`.
    pub fn parse(value: &str) -> Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "threshold" => Ok(Self::Threshold),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err("expected threshold, always or never".to_owned()),
        }
    }

    /// Whether a trace whose sampled parent carried `state` is kept for it.
    pub(crate) fn keeps(self, state: &TraceState) -> bool {
        match self {
            Self::Always => true,
            Self::Never => false,
            Self::Threshold => threshold(state).is_some_and(|t| t > 0),
        }
    }
}

/// 2^56: thresholds and randomness are 56-bit numbers.
const MAX_THRESHOLD: u64 = 1 << 56;

/// The rejection threshold `th` of an OpenTelemetry `tracestate` entry
/// (`ot=th:c;rv:…`): up to 14 hex digits, trailing zeros dropped, so `c`
/// is 0xc0000000000000 (a probability of 1/4). `None` when absent or
/// malformed.
pub(crate) fn threshold(state: &TraceState) -> Option<u64> {
    let th = ot_hex(state, "th:")?;
    let value = u64::from_str_radix(th, 16).ok()?;
    Some(value << (4 * (14 - th.len())))
}

/// The value of the `ot` entry's field `key` (`th:`, `rv:`) when it is 1 to
/// 14 hex digits, as every such field of the specification is.
fn ot_hex<'a>(state: &'a TraceState, key: &str) -> Option<&'a str> {
    let ot = state.get("ot")?;
    let value = ot.split(';').find_map(|field| field.strip_prefix(key))?;
    let hex =
        !value.is_empty() && value.len() <= 14 && value.bytes().all(|b| b.is_ascii_hexdigit());
    hex.then_some(value)
}

/// When a run counts as slow, and so is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SlowThreshold {
    /// Slower than a fixed duration (`250ms`, `1s`).
    Duration(Duration),
    /// Slower than the recent quantile of the same root (`p99` is `0.99`):
    /// the same pipeline's or route's own runs, estimated in bounded memory.
    Quantile(f64),
    /// No run is kept for being slow (`off`).
    Off,
}

impl Default for SlowThreshold {
    /// `p99`: the slowest percent of each pipeline's runs.
    fn default() -> Self {
        Self::Quantile(0.99)
    }
}

impl SlowThreshold {
    /// Parses `250ms`, `1s`, `1.5s`, `500us`, `p99`, `p99.9`, `p95` or `off`.
    pub fn parse(value: &str) -> Result<Self, String> {
        let v = value.trim();
        if v.eq_ignore_ascii_case("off") || v.eq_ignore_ascii_case("none") {
            return Ok(Self::Off);
        }
        if let Some(q) = v.strip_prefix(['p', 'P']) {
            return match q.parse::<f64>() {
                Ok(q) if q > 0.0 && q < 100.0 => Ok(Self::Quantile(q / 100.0)),
                _ => Err("expected a quantile between p0 and p100 such as p99".to_owned()),
            };
        }
        let (number, scale) = if let Some(n) = v.strip_suffix("ms") {
            (n, 1e-3)
        } else if let Some(n) = v.strip_suffix("us").or_else(|| v.strip_suffix("µs")) {
            (n, 1e-6)
        } else if let Some(n) = v.strip_suffix('s') {
            (n, 1.0)
        } else {
            return Err(
                "expected a duration such as 250ms or 1s, a quantile such as p99, or off"
                    .to_owned(),
            );
        };
        match number.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.0 => {
                Ok(Self::Duration(Duration::from_secs_f64(n * scale)))
            }
            _ => Err("expected a non-negative duration such as 250ms or 1s".to_owned()),
        }
    }
}

/// Bounds on what tail sampling holds while traces are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldLimits {
    /// At most this many traces held at once (`PIPELENS_TRACES_MAX_HELD`,
    /// default 4096); a new trace past it is decided at once.
    pub max_traces: usize,
    /// At most this many spans and log records held per trace
    /// (`PIPELENS_TRACES_MAX_SPANS`, default 512); past it the trace is
    /// decided at once and the rest follow the decision.
    pub max_items_per_trace: usize,
    /// A trace whose local root has not ended this long after its first
    /// span is decided and evicted (`PIPELENS_TRACES_HOLD_TIMEOUT`, in
    /// seconds, default 30).
    pub timeout: Duration,
}

impl Default for HoldLimits {
    fn default() -> Self {
        Self {
            max_traces: 4096,
            max_items_per_trace: 512,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Why a trace was kept or dropped: the `reason` label of
/// `pipelens_traces_sampled_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A span had error status.
    Error,
    /// The run was slower than the threshold.
    Slow,
    /// The incoming `traceparent` was sampled.
    Parent,
    /// The random share (kept) or the rest (dropped).
    Ratio,
    /// Decided early: too many traces or items held.
    Overflow,
    /// Decided when its root never ended within the timeout.
    Evicted,
}

impl Reason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Slow => "slow",
            Self::Parent => "parent",
            Self::Ratio => "ratio",
            Self::Overflow => "overflow",
            Self::Evicted => "evicted",
        }
    }
}

/// Whether a trace is exported, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) keep: bool,
    pub(crate) reason: Reason,
}

/// Every (decision, reason) pair that can happen, for counters bound in
/// advance.
pub(crate) const DECISIONS: [Decision; 9] = [
    Decision::kept(Reason::Error),
    Decision::kept(Reason::Slow),
    Decision::kept(Reason::Parent),
    Decision::kept(Reason::Ratio),
    Decision::kept(Reason::Overflow),
    Decision::kept(Reason::Evicted),
    Decision::dropped(Reason::Ratio),
    Decision::dropped(Reason::Overflow),
    Decision::dropped(Reason::Evicted),
];

impl Decision {
    pub(crate) const fn kept(reason: Reason) -> Self {
        Self { keep: true, reason }
    }

    pub(crate) const fn dropped(reason: Reason) -> Self {
        Self {
            keep: false,
            reason,
        }
    }

    /// Index into [`DECISIONS`].
    pub(crate) fn index(self) -> usize {
        DECISIONS
            .iter()
            .position(|d| *d == self)
            .unwrap_or(DECISIONS.len() - 1)
    }

    /// An early decision (`Overflow`, `Evicted`): errors so far keep the
    /// trace, else the random share decides.
    pub(crate) fn early(reason: Reason, error: bool, in_ratio: bool) -> Self {
        Self {
            keep: error || in_ratio,
            reason,
        }
    }
}

/// Whether `trace_id` falls in the random share `ratio`, decided as
/// OpenTelemetry's consistent probability sampling decides: the trace id's
/// low 56 bits are its randomness R, the ratio's rejection threshold is
/// T = (1 - ratio) x 2^56, and the trace is kept when R >= T. So every
/// process that sees the trace decides the same, and a caller sampling at
/// a probability of at least `ratio` kept every trace this keeps.
pub(crate) fn in_ratio(trace_id: TraceId, ratio: f64) -> bool {
    admits(id_randomness(trace_id), ratio)
}

/// [`in_ratio`] for a trace whose `tracestate` may carry explicit
/// randomness (`ot=rv:…`, 14 hex digits), which the specification has a
/// sampler use instead of the trace id's bits when present: a caller that
/// sets it (because its trace ids are not random) gets the same decision
/// here as from its own samplers.
pub(crate) fn in_ratio_of(trace_id: TraceId, state: &TraceState, ratio: f64) -> bool {
    admits(
        explicit_randomness(state).unwrap_or_else(|| id_randomness(trace_id)),
        ratio,
    )
}

/// The low 56 bits of the trace id.
fn id_randomness(trace_id: TraceId) -> u64 {
    let bytes = trace_id.to_bytes();
    let mut low = [0u8; 8];
    low[1..].copy_from_slice(&bytes[9..16]);
    u64::from_be_bytes(low)
}

/// `rv` of the `ot` entry: exactly 14 hex digits, else `None`.
fn explicit_randomness(state: &TraceState) -> Option<u64> {
    let rv = ot_hex(state, "rv:").filter(|rv| rv.len() == 14)?;
    u64::from_str_radix(rv, 16).ok()
}

/// Whether randomness R is kept at `ratio`: R >= (1 - ratio) x 2^56.
fn admits(randomness: u64, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let threshold = ((1.0 - ratio) * MAX_THRESHOLD as f64).round() as u64;
    randomness >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ot: &str) -> TraceState {
        TraceState::from_key_value([("ot", ot)]).unwrap()
    }

    #[test]
    fn explicit_randomness_in_tracestate_decides_instead_of_the_trace_id() {
        assert_eq!(
            explicit_randomness(&state("th:c;rv:f0000000000000")),
            Some(0xf0_0000_0000_0000)
        );
        for malformed in ["rv:f", "rv:f00000000000000", "rv:g0000000000000", "th:c"] {
            assert_eq!(explicit_randomness(&state(malformed)), None, "{malformed}");
        }
        // A trace id whose low bits are all zero: never in a 10% share by
        // itself, always with randomness 0xf0... (above 0.9 x 2^56), and
        // never with randomness 0x10... (below it).
        let id = TraceId::from_bytes(
            [0xab; 8]
                .into_iter()
                .chain([0; 8])
                .collect::<Vec<_>>()
                .try_into()
                .unwrap(),
        );
        assert!(!in_ratio(id, 0.1));
        assert!(!in_ratio_of(id, &TraceState::default(), 0.1));
        assert!(in_ratio_of(id, &state("rv:f0000000000000"), 0.1));
        assert!(!in_ratio_of(id, &state("rv:10000000000000"), 0.1));
        // Malformed randomness falls back to the trace id.
        assert!(!in_ratio_of(id, &state("rv:zz"), 0.1));
    }

    #[test]
    fn thresholds_are_read_from_the_ot_tracestate_entry() {
        assert_eq!(threshold(&state("th:c")), Some(0xc0_0000_0000_0000));
        assert_eq!(
            threshold(&state("rv:1234;th:e668")),
            Some(0xe6_6800_0000_0000)
        );
        assert_eq!(threshold(&state("th:0")), Some(0));
        assert_eq!(threshold(&state("rv:12")), None);
        assert_eq!(threshold(&state("th:xyz")), None);
        assert_eq!(threshold(&state("th:123456789abcdef")), None, "15 digits");
        assert_eq!(threshold(&TraceState::NONE), None);
        // 10%: a threshold of 0.9 x 2^56 is above 0, so kept for the parent.
        assert!(KeepParent::Threshold.keeps(&state("th:e666666666666")));
        assert!(!KeepParent::Threshold.keeps(&state("th:0")));
        assert!(!KeepParent::Threshold.keeps(&TraceState::NONE));
        assert!(KeepParent::Always.keeps(&TraceState::NONE));
        assert!(!KeepParent::Never.keeps(&state("th:e666666666666")));
        assert_eq!(KeepParent::parse("ALWAYS"), Ok(KeepParent::Always));
        assert!(KeepParent::parse("sometimes").is_err());
    }

    #[test]
    fn the_ratio_is_consistent_with_a_callers_threshold() {
        let id = |r: u64| TraceId::from_bytes(u128::from(r).to_be_bytes());
        // R = 0.95 x 2^56 is kept at 10% (T = 0.9 x 2^56), R = 0.85 x 2^56 not.
        let r = |share: f64| (share * MAX_THRESHOLD as f64) as u64;
        assert!(in_ratio(id(r(0.95)), 0.1));
        assert!(!in_ratio(id(r(0.85)), 0.1));
        // Only the low 56 bits count.
        assert!(in_ratio(id(r(0.95) | (0xff << 56)), 0.1));
        // What a 20% caller kept includes everything a 10% ratio keeps.
        for n in 0..10_000u64 {
            let t = id(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8);
            if in_ratio(t, 0.1) {
                assert!(in_ratio(t, 0.2));
            }
        }
        let kept = (0..100_000u64)
            .filter(|n| in_ratio(id(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 8), 0.1))
            .count();
        assert!((9_000..11_000).contains(&kept), "{kept}");
    }

    #[test]
    fn thresholds_parse_durations_quantiles_and_off() {
        assert_eq!(
            SlowThreshold::parse("250ms"),
            Ok(SlowThreshold::Duration(Duration::from_millis(250)))
        );
        assert_eq!(
            SlowThreshold::parse("1s"),
            Ok(SlowThreshold::Duration(Duration::from_secs(1)))
        );
        assert_eq!(
            SlowThreshold::parse("1.5s"),
            Ok(SlowThreshold::Duration(Duration::from_millis(1500)))
        );
        assert_eq!(
            SlowThreshold::parse("500us"),
            Ok(SlowThreshold::Duration(Duration::from_micros(500)))
        );
        assert_eq!(
            SlowThreshold::parse("p99"),
            Ok(SlowThreshold::Quantile(0.99))
        );
        assert_eq!(
            SlowThreshold::parse("p95"),
            Ok(SlowThreshold::Quantile(0.95))
        );
        assert_eq!(SlowThreshold::parse("off"), Ok(SlowThreshold::Off));
        for bad in ["", "fast", "p0", "p100", "p-3", "10", "-5ms", "1h"] {
            assert!(
                SlowThreshold::parse(bad).is_err(),
                "{bad:?} must be rejected"
            );
        }
    }

    #[test]
    fn the_ratio_keeps_about_its_share_and_the_ends_are_exact() {
        let ids: Vec<TraceId> = (0..20_000u64)
            .map(|i| {
                let mut b = [0u8; 16];
                b[8..].copy_from_slice(&i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes());
                TraceId::from_bytes(b)
            })
            .collect();
        let kept = |r: f64| ids.iter().filter(|t| in_ratio(**t, r)).count();
        assert_eq!(kept(0.0), 0);
        assert_eq!(kept(1.0), ids.len());
        let tenth = kept(0.1);
        assert!((1_700..2_300).contains(&tenth), "0.1 kept {tenth} of 20000");
    }

    #[test]
    fn every_decision_has_its_own_index() {
        for (i, d) in DECISIONS.iter().enumerate() {
            assert_eq!(d.index(), i);
        }
        assert_eq!(
            Decision::early(Reason::Overflow, true, false),
            Decision::kept(Reason::Overflow)
        );
        assert_eq!(
            Decision::early(Reason::Evicted, false, false),
            Decision::dropped(Reason::Evicted)
        );
    }
}
