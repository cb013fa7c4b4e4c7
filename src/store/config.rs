//! Where the run store lives and how long it keeps runs:
//! `PIPELENS_RUN_STORE`, `PIPELENS_FEEDBACK_RETENTION`,
//! `PIPELENS_RUN_STORE_PASSWORD_FILE`, `PIPELENS_RUN_STORE_MAX_RUNS`.

use std::path::PathBuf;
use std::time::Duration;

use super::{
    StoreError, DURABLE_RETENTION, FEEDBACK_RETENTION, FEEDBACK_RUNS, MAX_RUNS_PER_PIPELINE,
};

/// The variable naming the store: `memory`, `sqlite:PATH` or
/// `postgres://…`.
pub const RUN_STORE_VAR: &str = "PIPELENS_RUN_STORE";
/// The variable holding how long a run waits for its truth (`30d`, `12h`).
pub const RETENTION_VAR: &str = "PIPELENS_FEEDBACK_RETENTION";
/// The variable naming a file that holds the Postgres password, for a URL
/// without one (a mounted Kubernetes or Docker secret).
pub const PASSWORD_FILE_VAR: &str = "PIPELENS_RUN_STORE_PASSWORD_FILE";
/// The variable bounding the rows kept per pipeline.
pub const MAX_RUNS_VAR: &str = "PIPELENS_RUN_STORE_MAX_RUNS";

/// Which backend, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreTarget {
    /// In the process: lost on restart, not shared by replicas.
    Memory,
    /// A SQLite file (created, with its directory, if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://user[:password]@host[:port]/db`).
    Postgres(String),
}

impl StoreTarget {
    /// Parses `memory`, `sqlite:PATH` or `postgres://…` (`postgresql://`
    /// too).
    pub fn parse(value: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::Config {
            variable: RUN_STORE_VAR.to_owned(),
            value: redact(value),
            reason: reason.to_owned(),
        };
        let value = value.trim();
        if value == "memory" {
            return Ok(Self::Memory);
        }
        if let Some(path) = value.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(bad(
                    "sqlite: needs a file path, as in sqlite:data/pipelens.db",
                ));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            let rest = value.split_once("://").map_or("", |(_, r)| r);
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            if host.is_empty() || host.starts_with('/') {
                return Err(bad(
                    "the postgres URL needs a host, as in postgres://user@host:5432/db",
                ));
            }
            return Ok(Self::Postgres(value.to_owned()));
        }
        Err(bad(
            "expected memory, sqlite:PATH or postgres://user@host:port/database",
        ))
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Where, fit for a log line: a path, or the URL without its password.
    pub fn display(&self) -> String {
        match self {
            Self::Memory => "memory".to_owned(),
            Self::Sqlite(path) => format!("sqlite:{}", path.display()),
            Self::Postgres(url) => redact(url),
        }
    }
}

/// How a [`super::RunStore`] is opened and run.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Which backend, and where.
    pub target: StoreTarget,
    /// How long a run waits for its ground truth.
    pub retention: Duration,
    /// Rows (one per judged stage of a run) kept per pipeline; for the
    /// memory store, runs kept in all.
    pub max_runs_per_pipeline: u64,
    /// A file holding the Postgres password, for a URL without one.
    pub password_file: Option<PathBuf>,
    /// Runs that may wait to be written; past it a run is dropped (and
    /// counted).
    pub queue: usize,
    /// Most runs in one write.
    pub batch: usize,
    /// Longest a run waits in the queue before its batch is written.
    pub flush_interval: Duration,
    /// How often expired runs are deleted.
    pub sweep_interval: Duration,
}

impl StoreConfig {
    fn with_target(target: StoreTarget) -> Self {
        let durable = target != StoreTarget::Memory;
        Self {
            target,
            retention: if durable {
                DURABLE_RETENTION
            } else {
                FEEDBACK_RETENTION
            },
            max_runs_per_pipeline: if durable {
                MAX_RUNS_PER_PIPELINE
            } else {
                FEEDBACK_RUNS as u64
            },
            password_file: None,
            queue: 8192,
            batch: 256,
            flush_interval: Duration::from_millis(5),
            sweep_interval: Duration::from_secs(60),
        }
    }

    /// The memory store: 1 h, 100 000 runs.
    pub fn memory() -> Self {
        Self::with_target(StoreTarget::Memory)
    }

    /// A SQLite file: 30 days, 10 million rows per pipeline.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self::with_target(StoreTarget::Sqlite(path.into()))
    }

    /// A Postgres database: 30 days, 10 million rows per pipeline.
    pub fn postgres(url: impl Into<String>) -> Self {
        Self::with_target(StoreTarget::Postgres(url.into()))
    }

    /// `default`, changed by whichever of `PIPELENS_RUN_STORE`,
    /// `PIPELENS_FEEDBACK_RETENTION`, `PIPELENS_RUN_STORE_PASSWORD_FILE` and
    /// `PIPELENS_RUN_STORE_MAX_RUNS` are set. An invalid value is an error
    /// naming its variable.
    pub fn from_env(default: Self) -> Result<Self, StoreError> {
        Self::from_vars(default, |name| std::env::var(name).ok())
    }

    /// Like [`StoreConfig::from_env`], reading variables from `get`.
    pub fn from_vars(
        default: Self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, StoreError> {
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let mut config = match get(RUN_STORE_VAR) {
            Some(value) => Self::with_target(StoreTarget::parse(&value)?),
            None => default,
        };
        if let Some(value) = get(RETENTION_VAR) {
            config.retention = parse_duration(&value).map_err(|reason| StoreError::Config {
                variable: RETENTION_VAR.to_owned(),
                value: value.clone(),
                reason,
            })?;
        }
        if let Some(value) = get(MAX_RUNS_VAR) {
            config.max_runs_per_pipeline = match value.trim().parse::<u64>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(StoreError::Config {
                        variable: MAX_RUNS_VAR.to_owned(),
                        value,
                        reason: "expected a positive whole number".to_owned(),
                    })
                }
            };
        }
        if let Some(value) = get(PASSWORD_FILE_VAR) {
            config.password_file = Some(PathBuf::from(value));
        }
        Ok(config)
    }
}

/// Parses a duration such as `30d`, `12h`, `90m`, `45s` or `500ms` (a
/// whole number and a unit; more than zero).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "give a unit: ms, s, m, h or d (as in 30d)".to_owned())?;
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected a whole number and a unit, as in 30d or 12h".to_owned())?;
    let seconds = match unit {
        "ms" => return positive(Duration::from_millis(n)),
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("unknown unit `{unit}`: use ms, s, m, h or d")),
    };
    positive(Duration::from_secs(seconds))
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() {
        Err("must be more than zero".to_owned())
    } else {
        Ok(d)
    }
}

/// `value` with the password of a URL in it replaced by `***`
/// (`postgres://app:secret@db/x` → `postgres://app:***@db/x`); anything
/// else as it is.
pub fn redact(value: &str) -> String {
    match split_password(value) {
        Some((scheme, user, _, host)) => format!("{scheme}://{user}:***@{host}"),
        None => value.to_owned(),
    }
}

/// The scheme, user, password and the rest of a
/// `scheme://user:password@host…` URL; `None` without a password part.
pub(crate) fn split_password(url: &str) -> Option<(&str, &str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (userinfo, host) = rest.rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    Some((scheme, user, password, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_name_the_variable() {
        assert_eq!(StoreTarget::parse("memory").unwrap(), StoreTarget::Memory);
        assert_eq!(
            StoreTarget::parse("sqlite:data/p.db").unwrap(),
            StoreTarget::Sqlite("data/p.db".into())
        );
        assert_eq!(
            StoreTarget::parse("sqlite:///abs/p.db").unwrap(),
            StoreTarget::Sqlite("/abs/p.db".into())
        );
        assert!(matches!(
            StoreTarget::parse("postgresql://u@db:5432/x").unwrap(),
            StoreTarget::Postgres(_)
        ));
        for bad in ["redis://x", "sqlite:", "postgres://", "mem"] {
            let e = StoreTarget::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("PIPELENS_RUN_STORE="), "{e}");
        }
    }

    #[test]
    fn a_password_never_shows() {
        let e = StoreTarget::parse("postgres://app:hunter2@/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            redact("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        let t = StoreTarget::parse("postgres://app:p@ss@db/x").unwrap();
        assert_eq!(t.display(), "postgres://app:***@db/x");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(parse_duration("12h").unwrap(), Duration::from_secs(43_200));
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "30", "d", "0s", "3w", "-1h", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_environment_changes_the_default() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let default = StoreConfig::sqlite("data/pipelens.db");
        let c = StoreConfig::from_vars(default.clone(), vars(&[])).unwrap();
        assert_eq!(c, default);
        assert_eq!(c.retention, DURABLE_RETENTION);
        let c =
            StoreConfig::from_vars(default.clone(), vars(&[(RUN_STORE_VAR, "memory")])).unwrap();
        assert_eq!(c.target, StoreTarget::Memory);
        assert_eq!(c.retention, FEEDBACK_RETENTION);
        let c = StoreConfig::from_vars(default.clone(), vars(&[(RETENTION_VAR, "14d")])).unwrap();
        assert_eq!(c.retention, Duration::from_secs(14 * 86_400));
        let e = StoreConfig::from_vars(default.clone(), vars(&[(RETENTION_VAR, "soon")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("PIPELENS_FEEDBACK_RETENTION=soon"), "{e}");
        let e = StoreConfig::from_vars(default, vars(&[(MAX_RUNS_VAR, "0")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("PIPELENS_RUN_STORE_MAX_RUNS=0"), "{e}");
    }
}
