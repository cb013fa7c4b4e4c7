//! Shared pieces of the stack tests (`stack_files_agree`,
//! `alerts_fire_on_a_live_stack`): reading the shipped config files,
//! extracting metric names from PromQL, listing dashboard queries, finding
//! the external tools, running child processes that are always cleaned up,
//! and small HTTP helpers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// What a missing external tool is installed with (Debian packages).
pub const INSTALL_HINT: &str =
    "apt-get install -y prometheus prometheus-alertmanager docker-compose";

// ----------------------------------------------------------------- files

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A repository file's text; fails the test naming the file.
pub fn read(path: impl AsRef<Path>) -> String {
    let path = repo().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A YAML file, with `<<` merge keys applied (compose files use them).
pub fn yaml_file(path: impl AsRef<Path>) -> Yaml {
    let path = repo().join(path);
    let text = read(&path);
    let mut value: Yaml = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{}: bad merge key: {e}", path.display()));
    value
}

/// A JSON file.
pub fn json_file(path: impl AsRef<Path>) -> Json {
    let path = repo().join(path);
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

/// The files of a repository directory whose names end in one of `exts`,
/// sorted (the `dir/*.ext` glob).
pub fn files_in(dir: impl AsRef<Path>, exts: &[&str]) -> Vec<PathBuf> {
    let dir = repo().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e))
        })
        .collect();
    files.sort();
    files
}

/// A path relative to the repository root, for messages.
pub fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Fails with every problem at once, one per line.
pub fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

/// A YAML scalar as a string (numbers and booleans too).
pub fn yaml_str(v: &Yaml) -> Option<String> {
    match v {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        Yaml::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether a Prometheus scrape job targets the pipelens compose service.
pub fn scrapes_pipelens(job: &Yaml) -> bool {
    scrapes(job, "pipelens")
}

/// Whether a Prometheus scrape job targets the compose service `host`.
pub fn scrapes(job: &Yaml, host: &str) -> bool {
    job["static_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|sc| {
            yaml_strings(&sc["targets"])
                .iter()
                .any(|t| t.starts_with(&format!("{host}:")))
        })
}

/// A YAML value that is a string or a list of strings, as a list.
pub fn yaml_strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Sequence(items) => items.iter().filter_map(yaml_str).collect(),
        other => yaml_str(other).into_iter().collect(),
    }
}

// --------------------------------------------------------------- compose

/// docker-compose.yml, merge keys applied.
pub fn compose() -> Yaml {
    yaml_file("docker-compose.yml")
}

/// The compose services by name.
pub fn compose_services(compose: &Yaml) -> BTreeMap<String, Yaml> {
    compose["services"]
        .as_mapping()
        .expect("docker-compose.yml has no services mapping")
        .iter()
        .map(|(k, v)| (yaml_str(k).unwrap(), v.clone()))
        .collect()
}

/// One bind mount of a compose service.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// As written in the compose file.
    pub declared: String,
    /// The host side, resolved against the compose file's directory.
    pub host: PathBuf,
    /// The path inside the container.
    pub container: String,
}

/// The host-side volumes of a service: bind mounts (host path) and named
/// volumes (name), from the short and the long syntax.
pub fn service_volumes(service: &Yaml) -> (Vec<BindMount>, Vec<String>) {
    let mut binds = Vec::new();
    let mut named = Vec::new();
    for v in service["volumes"].as_sequence().into_iter().flatten() {
        let (source, target, kind) = match v {
            Yaml::String(s) => {
                let mut parts = s.splitn(3, ':');
                let source = parts.next().unwrap_or_default().to_owned();
                let Some(target) = parts.next() else {
                    // An anonymous volume: only a container path.
                    continue;
                };
                let kind = if source.starts_with('.')
                    || source.starts_with('/')
                    || source.starts_with('~')
                {
                    "bind"
                } else {
                    "volume"
                };
                (source, target.to_owned(), kind.to_owned())
            }
            other => (
                yaml_str(&other["source"]).unwrap_or_default(),
                yaml_str(&other["target"]).unwrap_or_default(),
                yaml_str(&other["type"]).unwrap_or_else(|| "volume".to_owned()),
            ),
        };
        match kind.as_str() {
            "bind" => binds.push(BindMount {
                host: repo().join(source.trim_start_matches("./")),
                declared: source,
                container: target,
            }),
            "volume" if !source.is_empty() => named.push(source),
            _ => {}
        }
    }
    (binds, named)
}

/// Where a container path of `service` lives on the host, through its bind
/// mounts (the longest mounted prefix wins).
pub fn host_path(service: &Yaml, container_path: &str) -> Option<PathBuf> {
    let (binds, _) = service_volumes(service);
    binds
        .iter()
        .filter_map(|m| {
            let target = m.container.trim_end_matches('/');
            if container_path == target {
                Some((target.len(), m.host.clone()))
            } else {
                container_path
                    .strip_prefix(target)
                    .and_then(|rest| rest.strip_prefix('/'))
                    .map(|rest| (target.len(), m.host.join(rest)))
            }
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

/// The service's command as a list of arguments.
pub fn command_args(service: &Yaml) -> Vec<String> {
    match &service["command"] {
        Yaml::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => yaml_strings(other),
    }
}

/// The service's environment as a map (list or mapping syntax).
pub fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Mapping(m) => m
            .iter()
            .map(|(k, v)| (yaml_str(k).unwrap(), yaml_str(v).unwrap_or_default()))
            .collect(),
        Yaml::Sequence(items) => items
            .iter()
            .filter_map(yaml_str)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_owned(), v.to_owned()),
                None => (kv, String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// The value of `--flag=value`, `-flag=value` or `--flag value` in `args`.
pub fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let bare = flag.trim_start_matches('-');
    for (i, a) in args.iter().enumerate() {
        let name = a.trim_start_matches('-');
        if !a.starts_with('-') {
            continue;
        }
        if let Some(v) = name.strip_prefix(bare).and_then(|r| r.strip_prefix('=')) {
            return Some(v.to_owned());
        }
        if name == bare {
            return args.get(i + 1).cloned();
        }
    }
    None
}

/// The port of `host:port`, `:port` or `scheme://host:port/...`.
pub fn port_of(addr: &str) -> Option<u16> {
    let without_scheme = addr.split_once("://").map_or(addr, |(_, r)| r);
    let authority = without_scheme.split('/').next().unwrap_or_default();
    authority.rsplit_once(':')?.1.parse().ok()
}

/// The image's repository without registry host or tag
/// (`docker.io/prom/prometheus:v3` -> `prom/prometheus`).
pub fn image_repository(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or_default();
    let no_tag = match no_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => no_digest,
    };
    let parts: Vec<&str> = no_tag.split('/').collect();
    if parts.len() > 2 && (parts[0].contains('.') || parts[0].contains(':')) {
        parts[1..].join("/")
    } else {
        no_tag.to_owned()
    }
}

// ------------------------------------------------------------ prometheus

/// One rule of prometheus/rules/*.yml.
#[derive(Debug, Clone)]
pub struct Rule {
    pub file: String,
    pub group: String,
    pub alert: Option<String>,
    pub record: Option<String>,
    pub expr: String,
    pub for_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

fn string_map(v: &Yaml) -> BTreeMap<String, String> {
    v.as_mapping()
        .into_iter()
        .flatten()
        .map(|(k, v)| (yaml_str(k).unwrap(), yaml_str(v).unwrap_or_default()))
        .collect()
}

/// Top-level keys of prometheus/prometheus.yml that only Prometheus 3
/// knows; Debian's 2.42 (promtool and the server the live tests run)
/// refuses them, so its copies go without.
pub const PROMETHEUS_3_ONLY: &[&str] = &["otlp"];

/// prometheus/prometheus.yml as Prometheus 2.42 can load it: without the
/// [`PROMETHEUS_3_ONLY`] keys.
pub fn prometheus_config_for_2_42() -> Yaml {
    let mut config = yaml_file("prometheus/prometheus.yml");
    if let Some(map) = config.as_mapping_mut() {
        for key in PROMETHEUS_3_ONLY {
            map.remove(*key);
        }
    }
    config
}

/// The rule files Prometheus loads: prometheus.yml's `rule_files` globs,
/// resolved the way the container sees them (relative to the config file's
/// directory inside the container) and mapped back to the repository through
/// the prometheus service's bind mounts.
pub fn prometheus_rule_files() -> Vec<PathBuf> {
    let compose = compose();
    let services = compose_services(&compose);
    let prometheus = services
        .get("prometheus")
        .expect("docker-compose.yml has no prometheus service");
    let config_in_container = flag_value(&command_args(prometheus), "config.file")
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".to_owned());
    let config_dir = Path::new(&config_in_container).parent().unwrap().to_owned();
    let config = yaml_file("prometheus/prometheus.yml");
    let mut files = Vec::new();
    for pattern in yaml_strings(&config["rule_files"]) {
        let in_container = config_dir.join(&pattern);
        let in_container = in_container.to_str().unwrap();
        // Only `dir/*.ext` and plain file globs are supported here.
        let (dir, name_glob) = in_container.rsplit_once('/').unwrap();
        let host_dir = host_path(prometheus, dir).unwrap_or_else(|| {
            panic!("rule_files entry {pattern:?} ({in_container}) is not under a mount of the prometheus service")
        });
        let matcher = |name: &str| match name_glob.split_once('*') {
            Some((pre, post)) => {
                name.starts_with(pre)
                    && name.ends_with(post)
                    && name.len() >= pre.len() + post.len()
            }
            None => name == name_glob,
        };
        let mut matched: Vec<PathBuf> = std::fs::read_dir(&host_dir)
            .unwrap_or_else(|e| {
                panic!(
                    "rule_files {pattern:?}: cannot list {}: {e}",
                    host_dir.display()
                )
            })
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file() && matcher(p.file_name().unwrap().to_str().unwrap()))
            .collect();
        matched.sort();
        assert!(
            !matched.is_empty(),
            "rule_files entry {pattern:?} matches no file in {}",
            host_dir.display()
        );
        files.extend(matched);
    }
    files
}

/// Every rule of prometheus/rules/*.yml.
pub fn rules() -> Vec<Rule> {
    let mut all = Vec::new();
    for path in files_in("prometheus/rules", &["yml", "yaml"]) {
        let doc = yaml_file(&path);
        for group in doc["groups"].as_sequence().into_iter().flatten() {
            let group_name = yaml_str(&group["name"]).unwrap_or_default();
            for r in group["rules"].as_sequence().into_iter().flatten() {
                all.push(Rule {
                    file: rel(&path),
                    group: group_name.clone(),
                    alert: yaml_str(&r["alert"]),
                    record: yaml_str(&r["record"]),
                    expr: yaml_str(&r["expr"]).unwrap_or_default(),
                    for_: yaml_str(&r["for"]),
                    labels: string_map(&r["labels"]),
                    annotations: string_map(&r["annotations"]),
                });
            }
        }
    }
    all
}

// ------------------------------------------------------------------ PromQL

/// Words of PromQL that look like identifiers but are not metric names:
/// binary and set operators, modifiers, special numbers and the aggregation
/// operators (which may be followed by `by (...)` rather than `(`).
const PROMQL_KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    "atan2",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Keywords followed by a parenthesised list of label names.
const PROMQL_LABEL_LIST_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Every vector selector of a PromQL expression: (metric name, the text
/// between its braces or "").
///
/// A small scanner rather than a parser, robust to everything the rules and
/// dashboards use:
/// - string literals ("...", '...', `...`) and `# comments` are skipped, so
///   label_replace arguments and matcher values never count;
/// - `{...}` label matchers are captured for the preceding name (or dropped
///   when there is none, e.g. a bare `{__name__=~"..."}`), `[...]` range and
///   subquery windows (and Grafana's `[[var]]`) are skipped;
/// - numbers and durations (`0.95`, `1e-3`, `5m`, `0x1f`) are skipped;
/// - an identifier directly followed by `(` is a function or aggregation;
/// - `by`, `without`, `on`, `ignoring`, `group_left`, `group_right` are
///   keywords and their `( label, ... )` list is skipped, as are `and`, `or`,
///   `unless`, `bool`, `offset`, `inf`, `nan`, `atan2` and the aggregation
///   operators (`sum by (job) (...)` puts `by`, not `(`, after `sum`);
/// - Grafana variables (`$var`, `${var}`, `${var:opt}`) are skipped;
/// - every other identifier (`[a-zA-Z_:][a-zA-Z0-9_:]*`) is a metric name,
///   recording rule names with colons included.
pub fn promql_selectors(expr: &str) -> Vec<(String, String)> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < chars.len() && chars[j].is_whitespace() {
            j += 1;
        }
        j
    };
    // Index just past the string literal starting at `j`.
    let skip_string = |mut j: usize| {
        let quote = chars[j];
        j += 1;
        while j < chars.len() && chars[j] != quote {
            if chars[j] == '\\' && quote != '`' {
                j += 1;
            }
            j += 1;
        }
        j + 1
    };
    // Index just past the bracket group opening at `j`, strings respected.
    let skip_group = |mut j: usize, open: char, close: char| {
        let mut depth = 0usize;
        while j < chars.len() {
            let c = chars[j];
            if c == '"' || c == '\'' || c == '`' {
                j = skip_string(j);
                continue;
            }
            if c == open {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            j += 1;
        }
        j
    };
    let is_ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            i = skip_string(i);
        } else if c == '{' {
            // Matchers without a name before them.
            i = skip_group(i, '{', '}');
        } else if c == '[' {
            i = skip_group(i, '[', ']');
        } else if c == '$' {
            i += 1;
            if i < chars.len() && chars[i] == '{' {
                i = skip_group(i, '{', '}');
            } else {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                let exp = chars[i] == 'e' || chars[i] == 'E';
                i += 1;
                if exp && i < chars.len() && (chars[i] == '+' || chars[i] == '-') {
                    i += 1;
                }
            }
        } else if is_ident_start(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = skip_ws(i);
            let lower = word.to_ascii_lowercase();
            if PROMQL_LABEL_LIST_KEYWORDS.contains(&lower.as_str()) {
                if next < chars.len() && chars[next] == '(' {
                    i = skip_group(next, '(', ')');
                }
            } else if PROMQL_KEYWORDS.contains(&lower.as_str())
                || (next < chars.len() && chars[next] == '(')
            {
                // A keyword, or a function / aggregation call.
            } else if next < chars.len() && chars[next] == '{' {
                let end = skip_group(next, '{', '}');
                let inner: String = chars[next + 1..end.saturating_sub(1)].iter().collect();
                out.push((word, inner));
                i = end;
            } else {
                out.push((word, String::new()));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names a PromQL expression reads (see [`promql_selectors`]).
pub fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    promql_selectors(expr).into_iter().map(|(n, _)| n).collect()
}

// ----------------------------------------------------------------- Grafana

/// A data source provisioned from grafana/provisioning/datasources/*.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datasource {
    pub file: String,
    pub name: String,
    pub uid: String,
    pub kind: String,
    pub is_default: bool,
}

/// Every provisioned data source.
pub fn provisioned_datasources() -> Vec<Datasource> {
    let mut all = Vec::new();
    for path in files_in("grafana/provisioning/datasources", &["yml", "yaml"]) {
        let doc = yaml_file(&path);
        for ds in doc["datasources"].as_sequence().into_iter().flatten() {
            all.push(Datasource {
                file: rel(&path),
                name: yaml_str(&ds["name"]).unwrap_or_default(),
                uid: yaml_str(&ds["uid"]).unwrap_or_default(),
                kind: yaml_str(&ds["type"]).unwrap_or_default(),
                is_default: ds["isDefault"].as_bool().unwrap_or(false),
            });
        }
    }
    all
}

/// Every dashboard file with its parsed JSON; fails naming a file that does
/// not parse.
pub fn dashboards() -> Vec<(String, Json)> {
    files_in("grafana/dashboards", &["json"])
        .into_iter()
        .map(|p| (rel(&p), json_file(&p)))
        .collect()
}

/// Grafana's built-in pseudo data sources.
pub const GRAFANA_BUILTIN_DATASOURCES: &[&str] =
    &["-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"];

/// The provisioned data source a dashboard's `datasource` value refers to:
/// `null` (the default data source), a `{type, uid}` object, a legacy name
/// or uid string, or a `$var` / `${var}` data source template variable (its
/// current value, else the only provisioned data source of its plugin type).
/// `Ok(None)` for Grafana's built-in pseudo data sources.
pub fn resolve_datasource(
    value: &Json,
    dashboard: &Json,
    provisioned: &[Datasource],
) -> Result<Option<Datasource>, String> {
    let (uid, kind) = match value {
        Json::Null => {
            return provisioned
                .iter()
                .find(|d| d.is_default)
                .cloned()
                .map(Some)
                .ok_or_else(|| "no datasource given and none is provisioned as default".to_owned())
        }
        Json::String(s) => (Some(s.clone()), None),
        Json::Object(o) => (
            o.get("uid").and_then(Json::as_str).map(str::to_owned),
            o.get("type").and_then(Json::as_str).map(str::to_owned),
        ),
        other => return Err(format!("unexpected datasource value {other}")),
    };
    let found = match uid {
        Some(uid) if GRAFANA_BUILTIN_DATASOURCES.contains(&uid.as_str()) => return Ok(None),
        Some(uid) if uid.starts_with('$') => {
            let var = uid
                .trim_start_matches('$')
                .trim_start_matches('{')
                .trim_end_matches('}');
            let var = var.split(':').next().unwrap_or_default();
            let template = dashboard["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|t| t["name"] == var && t["type"] == "datasource")
                .ok_or_else(|| {
                    format!("{uid} is not a datasource template variable of the dashboard")
                })?;
            let current = template["current"]["value"].as_str().unwrap_or_default();
            let plugin = template["query"].as_str().unwrap_or_default();
            if !current.is_empty() && current != "default" {
                provisioned
                    .iter()
                    .find(|d| d.uid == current || d.name == current)
                    .cloned()
                    .ok_or_else(|| {
                        format!("{uid}: current value {current:?} is not a provisioned datasource")
                    })?
            } else {
                let of_type: Vec<&Datasource> =
                    provisioned.iter().filter(|d| d.kind == plugin).collect();
                match of_type.as_slice() {
                    [one] => (*one).clone(),
                    _ => {
                        return Err(format!(
                        "{uid}: {} provisioned datasources of type {plugin:?} (need exactly one)",
                        of_type.len()
                    ))
                    }
                }
            }
        }
        Some(uid) => provisioned
            .iter()
            .find(|d| d.uid == uid || (value.is_string() && d.name == uid))
            .cloned()
            .ok_or_else(|| format!("datasource {uid:?} is not provisioned"))?,
        None => {
            let kind = kind.clone().unwrap_or_default();
            provisioned
                .iter()
                .find(|d| d.kind == kind)
                .cloned()
                .ok_or_else(|| format!("no provisioned datasource of type {kind:?}"))?
        }
    };
    if let Some(kind) = kind {
        if !kind.starts_with('$') && kind != found.kind {
            return Err(format!(
                "datasource {:?} is provisioned as type {:?}, the dashboard says {kind:?}",
                found.uid, found.kind
            ));
        }
    }
    Ok(Some(found))
}

/// One query of one dashboard panel.
#[derive(Debug, Clone)]
pub struct DashboardQuery {
    pub dashboard: String,
    pub panel: String,
    pub ref_id: String,
    /// The data source it runs on (`Ok(None)`: a built-in one).
    pub datasource: Result<Option<Datasource>, String>,
    /// The query as written (`expr`, or `query` for some plugins).
    pub expr: Option<String>,
}

impl DashboardQuery {
    /// `file / panel / refId`, for messages.
    pub fn name(&self) -> String {
        format!("{} / {:?} / {}", self.dashboard, self.panel, self.ref_id)
    }

    /// The PromQL of a query on a Prometheus data source.
    pub fn promql(&self) -> Option<&str> {
        match &self.datasource {
            Ok(Some(ds)) if ds.kind == "prometheus" => self.expr.as_deref(),
            _ => None,
        }
    }
}

/// Every panel of a dashboard, rows and collapsed rows included.
pub fn panels(dashboard: &Json) -> Vec<Json> {
    fn walk(list: &Json, out: &mut Vec<Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p.clone());
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    for row in dashboard["rows"].as_array().into_iter().flatten() {
        walk(&row["panels"], &mut out);
    }
    out
}

/// Every query of every panel of every dashboard. A target's datasource
/// falls back to its panel's, then to the default data source.
pub fn dashboard_queries(provisioned: &[Datasource]) -> Vec<DashboardQuery> {
    let mut all = Vec::new();
    for (file, dash) in dashboards() {
        for panel in panels(&dash) {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let ds = match (&target["datasource"], &panel["datasource"]) {
                    (Json::Null, p) => p,
                    (t, _) => t,
                };
                all.push(DashboardQuery {
                    dashboard: file.clone(),
                    panel: title.clone(),
                    ref_id: target["refId"].as_str().unwrap_or("?").to_owned(),
                    datasource: resolve_datasource(ds, &dash, provisioned),
                    expr: target["expr"]
                        .as_str()
                        .or_else(|| target["query"].as_str())
                        .map(str::to_owned),
                });
            }
        }
    }
    all
}

/// Grafana's built-in interval variables and the values the live test runs
/// the queries with: what Grafana would use for a last-5-minutes view with
/// a 15 s step (`$__rate_interval` is at least 4 scrape intervals: 1m covers
/// the shipped 10 s-15 s scrape intervals).
pub const GRAFANA_BUILTIN_SUBSTITUTIONS: &[(&str, &str)] = &[
    ("$__rate_interval_ms", "60000"),
    ("${__rate_interval}", "1m"),
    ("$__rate_interval", "1m"),
    ("$__interval_ms", "15000"),
    ("${__interval}", "15s"),
    ("$__interval", "15s"),
    ("$__range_ms", "300000"),
    ("$__range_s", "300"),
    ("${__range}", "5m"),
    ("$__range", "5m"),
];

/// `expr` with Grafana's variables replaced so Prometheus can run it:
/// the interval variables by [`GRAFANA_BUILTIN_SUBSTITUTIONS`]; a template
/// variable (`$var`, `${var}`, `${var:format}`, `[[var]]`) by `.*`, i.e. all
/// values, and an `="$var"` equality matcher becomes `=~".*"`, the way
/// Grafana's "All" works.
pub fn grafana_substitute(expr: &str) -> String {
    let mut s = expr.to_owned();
    for (from, to) in GRAFANA_BUILTIN_SUBSTITUTIONS {
        s = s.replace(from, to);
    }
    // Equality matchers on a variable: `label="$var"` -> `label=~"$var"`.
    let mut out = String::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let prev = if i > 0 { chars[i - 1] } else { ' ' };
        if c == '=' && prev != '!' && prev != '=' && chars.get(i + 1) == Some(&'"') {
            let rest: String = chars[i + 2..].iter().collect();
            if rest.starts_with('$') || rest.starts_with("[[") {
                out.push_str("=~");
                i += 1;
                continue;
            }
        }
        if c == '$'
            && chars
                .get(i + 1)
                .is_some_and(|n| *n == '{' || n.is_ascii_alphabetic() || *n == '_')
        {
            i += 1;
            if chars[i] == '{' {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
            out.push_str(".*");
            continue;
        }
        if c == '[' && chars.get(i + 1) == Some(&'[') {
            while i < chars.len() && !(chars[i] == ']' && chars.get(i + 1) == Some(&']')) {
                i += 1;
            }
            i += 2;
            out.push_str(".*");
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

// --------------------------------------------------------------- README

/// The GitHub anchor of a Markdown heading: lowercase, punctuation other
/// than `-` and `_` dropped, spaces to `-`.
pub fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of every heading of a Markdown text (fenced code blocks
/// skipped; repeated headings get GitHub's `-1`, `-2` suffixes).
pub fn markdown_anchors(text: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fence: Option<&str> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            let f = &trimmed[..3];
            fence = match fence {
                Some(open) if open == f => None,
                None => Some(f),
                other => other,
            };
            continue;
        }
        if fence.is_some() {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let heading = line[hashes..].trim().trim_end_matches('#').trim();
            let base = github_anchor(heading);
            let n = seen.entry(base.clone()).or_insert(0);
            let anchor = if *n == 0 { base } else { format!("{base}-{n}") };
            *n += 1;
            anchors.insert(anchor);
        }
    }
    anchors
}

// ----------------------------------------------------------------- tools

/// The path of the first of `names` found on PATH; fails the test with the
/// install command otherwise. Never skips.
pub fn require_tool(names: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            {
                return candidate;
            }
        }
    }
    panic!(
        "{} is required and not on PATH: install it with `{INSTALL_HINT}` (scripts/test does this)",
        names.join(" or ")
    );
}

/// Runs a command to completion: (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ------------------------------------------------------- child processes

/// A free TCP port on 127.0.0.1 (bound, then released for a child to use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Running {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Child processes that are killed (and reaped) when this is dropped, on
/// success and on a failed assertion alike. Each child's stdout and stderr
/// go to a log file, whose tail is printed when the test fails.
pub struct Children {
    dir: PathBuf,
    running: Vec<Running>,
    deadline: Instant,
}

impl Children {
    /// Children logging into `dir`; every wait ends by `budget` from now.
    pub fn new(dir: &Path, budget: Duration) -> Self {
        Self {
            dir: dir.to_owned(),
            running: Vec::new(),
            deadline: Instant::now() + budget,
        }
    }

    /// Starts `cmd` as `name`.
    pub fn spawn(&mut self, name: &str, cmd: &mut Command) {
        let log = self.dir.join(format!("{name}.log"));
        let file = File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        self.running.push(Running {
            name: name.to_owned(),
            child,
            log,
        });
    }

    /// The last `lines` lines of a child's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let Some(r) = self.running.iter().find(|r| r.name == name) else {
            return String::new();
        };
        tail(&r.log, lines)
    }

    /// Fails the test if a child has exited.
    pub fn check_alive(&mut self) {
        for r in &mut self.running {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!(
                    "{} exited early ({status}); its log:\n{}",
                    r.name,
                    tail(&r.log, 40)
                );
            }
        }
    }

    /// Polls `probe` every 500 ms until it returns `Ok`, for at most
    /// `timeout` (and never past the test's overall budget); fails the test
    /// with `what` and the last `Err` otherwise. Also fails as soon as a
    /// child dies.
    pub async fn wait_for<T, F, Fut>(&mut self, what: &str, timeout: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let start = Instant::now();
        let deadline = (start + timeout).min(self.deadline);
        loop {
            self.check_alive();
            let last = match probe().await {
                Ok(v) => {
                    eprintln!("[{:>6.1?}] {what}", start.elapsed());
                    return v;
                }
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {:?} waiting for {what}: {last}",
                    start.elapsed()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for r in self.running.iter_mut().rev() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
        if std::thread::panicking() {
            for r in &self.running {
                eprintln!(
                    "----- {} log ({}):\n{}",
                    r.name,
                    r.log.display(),
                    tail(&r.log, 30)
                );
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------ HTTP

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP request with a 10 s limit: (status, body).
pub async fn http(method: Method, url: &str, body: &str) -> Result<(u16, String), String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| format!("{url}: no answer within 10 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// GET `url` and parse the JSON body of a 2xx answer.
pub async fn get_json(url: &str) -> Result<Json, String> {
    let (status, body) = http(Method::GET, url, "").await?;
    if !(200..300).contains(&status) {
        return Err(format!("{url} answered {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{url}: not JSON ({e}): {body}"))
}
