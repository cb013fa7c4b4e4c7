//! The stack's files agree with each other and with the service, without a
//! Docker engine and without network beyond loopback:
//!
//! - everything docker-compose.yml mounts, builds or reads exists, and the
//!   container paths the configs point at resolve through those mounts;
//! - the compose services follow the stack's policy (healthchecks, memory
//!   limits, log rotation, pinned images, loopback-only ports, health-gated
//!   `depends_on`, no admin/admin, every variable documented in .env.example);
//! - every Prometheus scrape and Alertmanager target, Grafana data source URL
//!   and service-to-service URL in compose is `<compose service>:<a port it
//!   listens on>`, and every loopback healthcheck probes such a port;
//! - every metric a rule or a Prometheus dashboard query reads is exported by
//!   the real service after real runs (its live /metrics), recorded by a rule,
//!   or a known Prometheus / stack-component metric (or a
//!   champion-and-challengers series of `pipelens::names::PROM_CHAMPION_SERIES`);
//! - dashboards parse, their uids are unique and every data source they use
//!   is provisioned (with the same plugin type);
//! - the service does not wait for its telemetry backends to start;
//! - tail sampling and exemplars: compose runs pipelens with valid
//!   `PIPELENS_TRACES_KEEP_*` values (0.1 and p99) and Prometheus with
//!   exemplar storage; Grafana's Prometheus data source links exemplar
//!   trace ids to the provisioned Jaeger; every dashboard query over the
//!   three latency histograms' buckets shows exemplars; the service
//!   dashboard shows the tail sampling decisions;
//! - MLServer serves the sentiment model from deploy/mlserver with the
//!   tests' pins, pipelens calls it, Prometheus scrapes it and its spans go
//!   to Jaeger's OTLP gRPC receiver;
//! - a span in Jaeger links to its trace's logs with a query Loki accepts;
//! - every alert has a severity, summary, description, a runbook URL whose
//!   anchor is a README heading and a dashboard link to a real dashboard, and
//!   a firing and a non-firing `promtool test rules` case (a heartbeat:
//!   severity none, a route of its own, firing from the first evaluation; a
//!   generated SLO alert: its page and its ticket each seen firing);
//! - `promtool check config`, `promtool check rules`, `promtool test rules`,
//!   `amtool check-config` (on the shipped file and on the copy the container
//!   entrypoint renders) and `docker-compose config` accept the files.
//!
//! A missing tool fails the test with the command that installs it.

#[allow(dead_code, unreachable_pub)]
#[path = "../src/bin/pipelens/demo/mod.rs"]
mod demo;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use pipelens::faults::Faults;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use support::service::metrics_after_a_mix;
use support::stack::*;

// ------------------------------------------------------------------ compose

#[test]
fn compose_file_passes_docker_compose_config() {
    let docker_compose = require_tool(&["docker-compose"]);
    let (ok, out) = run(Command::new(docker_compose).current_dir(repo()).args([
        "-f",
        "docker-compose.yml",
        "config",
        "-q",
    ]));
    assert!(
        ok,
        "`docker-compose -f docker-compose.yml config -q` (Debian's compose v1) rejects the file. \
         If it only objects to keys that need Compose v2, say so in the README:\n{out}"
    );
}

#[test]
fn everything_compose_mounts_builds_or_reads_exists() {
    let compose = compose();
    let services = compose_services(&compose);
    let declared_volumes: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| yaml_str(k))
        .collect();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (name, service) in &services {
        let (binds, named) = service_volumes(service);
        for m in binds {
            checked += 1;
            if !m.host.exists() {
                problems.push(format!(
                    "{name}: volume {}:{} mounts {}, which does not exist",
                    m.declared,
                    m.container,
                    rel(&m.host)
                ));
            }
        }
        for v in named {
            if !declared_volumes.contains(&v) {
                problems.push(format!(
                    "{name}: named volume {v:?} is not declared under the top-level volumes"
                ));
            }
        }
        match &service["build"] {
            Yaml::Null => {}
            build => {
                let context = yaml_str(build)
                    .or_else(|| yaml_str(&build["context"]))
                    .unwrap_or_else(|| ".".to_owned());
                let context = repo().join(context);
                let dockerfile =
                    yaml_str(&build["dockerfile"]).unwrap_or_else(|| "Dockerfile".to_owned());
                checked += 2;
                if !context.is_dir() {
                    problems.push(format!(
                        "{name}: build context {} is not a directory",
                        rel(&context)
                    ));
                }
                if !context.join(&dockerfile).is_file() {
                    problems.push(format!(
                        "{name}: dockerfile {} does not exist",
                        rel(&context.join(&dockerfile))
                    ));
                }
            }
        }
        let env_files: Vec<(String, bool)> = match &service["env_file"] {
            Yaml::Sequence(items) => items
                .iter()
                .map(|i| match yaml_str(i) {
                    Some(p) => (p, true),
                    None => (
                        yaml_str(&i["path"]).unwrap_or_default(),
                        i["required"].as_bool().unwrap_or(true),
                    ),
                })
                .collect(),
            Yaml::Null => Vec::new(),
            other => vec![(yaml_str(other).unwrap_or_default(), true)],
        };
        for (path, required) in env_files {
            checked += 1;
            if required && !repo().join(&path).is_file() {
                problems.push(format!(
                    "{name}: env_file {path} does not exist (a fresh checkout has no .env)"
                ));
            }
        }
    }
    for section in ["configs", "secrets"] {
        for (k, v) in compose[section].as_mapping().into_iter().flatten() {
            if let Some(file) = yaml_str(&v["file"]) {
                checked += 1;
                if !repo().join(&file).exists() {
                    problems.push(format!(
                        "{section}.{}: file {file} does not exist",
                        yaml_str(k).unwrap_or_default()
                    ));
                }
            }
        }
    }
    assert!(checked > 0, "docker-compose.yml mounts and builds nothing?");
    assert_no_problems("docker-compose.yml refers to missing files", &problems);
}

/// The source path of every target Cargo.toml declares (`[lib]`, `[[bin]]`,
/// `[[example]]`, `[[bench]]`), its `path` or cargo's default for its name.
fn cargo_target_paths() -> Vec<String> {
    let manifest = read("Cargo.toml");
    // (default directory, name, path) of the target being read
    let mut current: Option<(&str, Option<String>, Option<String>)> = None;
    let mut paths = Vec::new();
    let mut finish = |target: Option<(&str, Option<String>, Option<String>)>| {
        if let Some((dir, name, path)) = target {
            paths.extend(path.or_else(|| Some(format!("{dir}/{}.rs", name?))));
        }
    };
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            finish(current.take());
            current = match line {
                "[lib]" => Some(("src", Some("lib".to_owned()), None)),
                "[[bin]]" => Some(("src/bin", None, None)),
                "[[example]]" => Some(("examples", None, None)),
                "[[bench]]" => Some(("benches", None, None)),
                _ => None,
            };
        } else if let Some((_, name, path)) = current.as_mut() {
            let value = |key: &str| {
                line.strip_prefix(key).map(|v| {
                    v.trim_start_matches([' ', '='])
                        .trim()
                        .trim_matches('"')
                        .to_owned()
                })
            };
            if let Some(v) = value("path ") {
                *path = Some(v);
            } else if let Some(v) = value("name ") {
                *name = Some(v);
            }
        }
    }
    finish(current.take());
    paths
}

#[test]
fn the_image_build_sees_every_cargo_target() {
    let dockerfile = read("deploy/Dockerfile");
    let dockerignore = read(".dockerignore");
    let paths = cargo_target_paths();
    assert!(paths.len() >= 4, "Cargo.toml declares {paths:?}");
    let mut problems = Vec::new();
    for path in &paths {
        // The dependency-caching stub build stands in for every target the
        // manifest declares (the bin must be there to build at all)...
        if !dockerfile.contains(&format!("> {path}")) {
            problems.push(format!("deploy/Dockerfile writes no stub for {path}"));
        }
        // ...and the real build needs the real file in the build context.
        let top = path.split('/').next().unwrap_or_default();
        if !dockerfile.contains(&format!("COPY {top} ./{top}")) {
            problems.push(format!(
                "deploy/Dockerfile does not COPY {top}/ (for {path})"
            ));
        }
        if !dockerignore.lines().any(|l| l.trim() == format!("!{top}/")) {
            problems.push(format!(
                ".dockerignore keeps {top}/ out of the build context (for {path})"
            ));
        }
    }
    assert_no_problems("the image build and Cargo.toml's targets", &problems);
}

/// The host path of a container path of `service` that must be an existing
/// file (or directory); a problem otherwise.
fn expect_mounted(
    services: &BTreeMap<String, Yaml>,
    problems: &mut Vec<String>,
    service: &str,
    container_path: &str,
    why: &str,
    dir: bool,
) -> Option<std::path::PathBuf> {
    let Some(svc) = services.get(service) else {
        problems.push(format!("no compose service {service:?} ({why})"));
        return None;
    };
    match host_path(svc, container_path) {
        Some(p) if (dir && p.is_dir()) || (!dir && p.is_file()) => Some(p),
        Some(p) => {
            problems.push(format!(
                "{service}: {why} {container_path} maps to {}, which does not exist",
                rel(&p)
            ));
            None
        }
        None => {
            problems.push(format!(
                "{service}: {why} {container_path} is not under any bind mount"
            ));
            None
        }
    }
}

/// Container paths named in commands, environment and provisioning files land
/// on a bind-mounted repository file, so the container finds what the config
/// promises.
#[test]
fn container_paths_in_configs_resolve_through_mounts() {
    let compose = compose();
    let services = compose_services(&compose);
    let mut problems = Vec::new();
    // Config files given on the command line.
    for (service, flag) in [
        ("prometheus", "config.file"),
        ("alertmanager", "config.file"),
        ("loki", "config.file"),
        ("jaeger", "config"),
    ] {
        if let Some(svc) = services.get(service) {
            if let Some(path) = flag_value(&command_args(svc), flag) {
                let path = path.trim_start_matches("file:").to_owned();
                expect_mounted(
                    &services,
                    &mut problems,
                    service,
                    &path,
                    &format!("--{flag}"),
                    false,
                );
            }
        }
    }
    // The Alertmanager entrypoint script and the template it renders.
    if let Some(am) = services.get("alertmanager") {
        for arg in yaml_strings(&am["entrypoint"]) {
            if arg.starts_with('/') && arg.ends_with(".sh") {
                expect_mounted(
                    &services,
                    &mut problems,
                    "alertmanager",
                    &arg,
                    "entrypoint script",
                    false,
                );
            }
        }
        expect_mounted(
            &services,
            &mut problems,
            "alertmanager",
            "/etc/alertmanager/alertmanager.yml",
            "entrypoint.sh's default template",
            false,
        );
    }
    // Prometheus rule files.
    let rule_files = prometheus_rule_files();
    let shipped: Vec<_> = files_in("prometheus/rules", &["yml", "yaml"]);
    if rule_files != shipped {
        problems.push(format!(
            "prometheus.yml's rule_files load {:?} in the container, but prometheus/rules holds {:?}",
            rule_files.iter().map(|p| rel(p)).collect::<Vec<_>>(),
            shipped.iter().map(|p| rel(p)).collect::<Vec<_>>()
        ));
    }
    // Grafana: provisioning directory, dashboard provider path, home dashboard.
    if let Some(grafana) = services.get("grafana") {
        let env = environment(grafana);
        let provisioning = env
            .get("GF_PATHS_PROVISIONING")
            .cloned()
            .unwrap_or_else(|| "/etc/grafana/provisioning".to_owned());
        for sub in ["datasources", "dashboards"] {
            let container = format!("{provisioning}/{sub}");
            if let Some(host) = expect_mounted(
                &services,
                &mut problems,
                "grafana",
                &container,
                "provisioning directory",
                true,
            ) {
                if host != repo().join("grafana/provisioning").join(sub) {
                    problems.push(format!(
                        "grafana: {container} is {}, not grafana/provisioning/{sub}",
                        rel(&host)
                    ));
                }
            }
        }
        for provider_file in files_in("grafana/provisioning/dashboards", &["yml", "yaml"]) {
            let doc = yaml_file(&provider_file);
            for p in doc["providers"].as_sequence().into_iter().flatten() {
                let Some(path) = yaml_str(&p["options"]["path"]) else {
                    problems.push(format!(
                        "{}: provider without options.path",
                        rel(&provider_file)
                    ));
                    continue;
                };
                if let Some(host) = expect_mounted(
                    &services,
                    &mut problems,
                    "grafana",
                    &path,
                    "dashboard provider path",
                    true,
                ) {
                    if host != repo().join("grafana/dashboards") {
                        problems.push(format!(
                            "grafana: dashboard provider path {path} is {}, not grafana/dashboards",
                            rel(&host)
                        ));
                    }
                }
            }
        }
        if let Some(home) = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
            expect_mounted(
                &services,
                &mut problems,
                "grafana",
                home,
                "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH",
                false,
            );
        }
    }
    // pipelens: the fault file it watches.
    if let Some(p) = services.get("pipelens") {
        if let Some(file) = environment(p).get("PIPELENS_FAULTS_FILE") {
            if let Some(host) = expect_mounted(
                &services,
                &mut problems,
                "pipelens",
                file,
                "PIPELENS_FAULTS_FILE",
                false,
            ) {
                let text = std::fs::read_to_string(&host).unwrap();
                match Faults::new(None, Some(&host)) {
                    Err(e) => problems.push(format!(
                        "{}: not a valid fault file ({e}): {text}",
                        rel(&host)
                    )),
                    Ok(f) if !f.snapshot().is_empty() => problems.push(format!(
                        "{}: the shipped fault file turns faults on by default: {text}",
                        rel(&host)
                    )),
                    Ok(_) => {}
                }
            }
        }
        // The learned drift references are written at run time into a
        // read-only container: they go to the durable run store, or to a
        // directory on a named volume (or under one); else they would fail
        // to save (and a new container would forget them).
        let env = environment(p);
        let durable_store = env
            .get("PIPELENS_RUN_STORE")
            .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("sqlite:"));
        match env.get("PIPELENS_DRIFT_REFERENCE_DIR") {
            None if durable_store => {}
            None => problems.push(
                "pipelens: neither a durable PIPELENS_RUN_STORE nor PIPELENS_DRIFT_REFERENCE_DIR \
                 is set, so the drift references are learned again on every restart"
                    .to_owned(),
            ),
            Some(file) => {
                let dir = file.trim_end_matches('/').to_owned();
                let (_, named) = service_volumes(p);
                let on_volume = p["volumes"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .filter_map(yaml_str)
                    .filter_map(|v| {
                        let (source, target) = v.split_once(':')?;
                        Some((source.to_owned(), target.split(':').next()?.to_owned()))
                    })
                    .any(|(source, target)| {
                        named.contains(&source)
                            && (target == dir || dir.starts_with(&format!("{target}/")))
                    });
                if !on_volume {
                    problems.push(format!(
                        "pipelens: PIPELENS_DRIFT_REFERENCE_DIR {file} is not on a named volume"
                    ));
                }
            }
        }
    }
    assert_no_problems("container paths do not resolve", &problems);
}

#[test]
fn compose_services_follow_the_stack_policy() {
    let text = read("docker-compose.yml");
    let compose = compose();
    let services = compose_services(&compose);
    let mut problems = Vec::new();
    for (name, s) in &services {
        let hc = &s["healthcheck"];
        if hc.is_null()
            || hc["disable"].as_bool() == Some(true)
            || yaml_strings(&hc["test"]).is_empty()
        {
            problems.push(format!("{name}: no healthcheck"));
        }
        if s["mem_limit"].is_null() && s["deploy"]["resources"]["limits"]["memory"].is_null() {
            problems.push(format!("{name}: no memory limit"));
        }
        let logging = &s["logging"];
        let driver = yaml_str(&logging["driver"]).unwrap_or_else(|| "json-file".to_owned());
        if !(driver == "local"
            || (driver == "json-file" && !logging["options"]["max-size"].is_null()))
        {
            problems.push(format!(
                "{name}: no log rotation (logging driver json-file with max-size, or local)"
            ));
        }
        if s["build"].is_null() {
            let image = yaml_str(&s["image"]).unwrap_or_default();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_default();
            if !image.contains('@') && (tag.is_empty() || tag.contains('/') || tag == "latest") {
                problems.push(format!(
                    "{name}: image {image:?} is not pinned to a version tag"
                ));
            }
        }
        for p in s["ports"].as_sequence().into_iter().flatten() {
            let bound = match p {
                Yaml::Mapping(_) => yaml_str(&p["host_ip"]).unwrap_or_default() == "127.0.0.1",
                other => {
                    let spec = yaml_str(other).unwrap_or_default();
                    spec.starts_with("127.0.0.1:") && spec.split(':').count() == 3
                }
            };
            if !bound {
                problems.push(format!(
                    "{name}: published port {p:?} is not bound to 127.0.0.1"
                ));
            }
        }
        match &s["depends_on"] {
            Yaml::Null => {}
            Yaml::Mapping(deps) => {
                for (dep, cond) in deps {
                    let dep = yaml_str(dep).unwrap_or_default();
                    if yaml_str(&cond["condition"]).as_deref() != Some("service_healthy") {
                        problems.push(format!("{name}: depends_on {dep} does not wait for service_healthy"));
                    }
                    if !services.contains_key(&dep) {
                        problems.push(format!("{name}: depends_on unknown service {dep}"));
                    }
                }
            }
            other => problems.push(format!(
                "{name}: depends_on {other:?} is a list; use the mapping form with condition: service_healthy"
            )),
        }
        // Telemetry never blocks the app: a service that exports over OTLP
        // starts whether its backends are up or not.
        let backends = otlp_backends(s);
        for dep in s["depends_on"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| yaml_str(k))
        {
            if backends.contains(&dep) {
                problems.push(format!(
                    "{name}: depends_on {dep}, which only receives its telemetry: telemetry must never \
                     keep the service from starting"
                ));
            }
        }
    }
    // Grafana: no admin/admin, anonymous access read-only.
    if let Some(g) = services.get("grafana") {
        let env = environment(g);
        let password = env
            .get("GF_SECURITY_ADMIN_PASSWORD")
            .cloned()
            .unwrap_or_default();
        let default = password
            .split_once(":-")
            .map(|(_, d)| d.trim_end_matches('}').to_owned())
            .unwrap_or_else(|| password.clone());
        if password.is_empty()
            || default == "admin"
            || (!password.contains('$') && !password.is_empty())
        {
            problems.push(format!(
                "grafana: GF_SECURITY_ADMIN_PASSWORD is {password:?}: it must come from .env with no admin default"
            ));
        }
        if env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str) == Some("true")
            && env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str) != Some("Viewer")
        {
            problems.push("grafana: anonymous access is enabled but not as Viewer".to_owned());
        }
    }
    // Every variable compose reads is documented in .env.example.
    let example = read(".env.example");
    let documented: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    for (i, _) in text.match_indices("${") {
        if i > 0 && bytes[i - 1] == b'$' {
            continue; // `$${...}` is an escaped literal for the container's shell.
        }
        let rest = &text[i + 2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        used.insert(rest[..end].to_owned());
    }
    for var in &used {
        if !documented.contains(var.as_str()) {
            problems.push(format!(
                "${{{var}}} is read by docker-compose.yml but not documented in .env.example"
            ));
        }
    }
    assert_no_problems("docker-compose.yml breaks the stack policy", &problems);
}

/// The compose services a service sends telemetry to: the hosts of its
/// `OTEL_EXPORTER_OTLP_*ENDPOINT` variables.
fn otlp_backends(service: &Yaml) -> BTreeSet<String> {
    environment(service)
        .into_iter()
        .filter(|(k, _)| k.starts_with("OTEL_EXPORTER_OTLP_") && k.ends_with("ENDPOINT"))
        .filter_map(|(_, url)| {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let authority = rest.split('/').next()?;
            Some(
                authority
                    .rsplit_once(':')
                    .map_or(authority, |(h, _)| h)
                    .to_owned(),
            )
        })
        .collect()
}

#[test]
fn the_service_does_not_wait_for_its_telemetry_backends() {
    let compose = compose();
    let services = compose_services(&compose);
    let pipelens = services
        .get("pipelens")
        .expect("docker-compose.yml has no pipelens service");
    let backends = otlp_backends(pipelens);
    // The policy test above holds every service to this; here, that the
    // compose file really exports to Jaeger and Loki, so that it means
    // something.
    assert!(
        backends.contains("jaeger") && backends.contains("loki"),
        "pipelens exports telemetry to {backends:?}, expected jaeger and loki"
    );
    let waits_for: Vec<String> = pipelens["depends_on"]
        .as_mapping()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| yaml_str(k))
        .filter(|d| backends.contains(d))
        .collect();
    assert!(
        waits_for.is_empty(),
        "pipelens depends_on {waits_for:?}: a dead Jaeger or Loki must cost only dropped telemetry, \
         not the service"
    );
}

// ------------------------------------------------------------------- ports

/// Well-known ports of the stack's images, used when neither the compose
/// file nor the image's mounted config sets another:
/// Prometheus `--web.listen-address` (:9090), Alertmanager
/// `--web.listen-address` (:9093), Grafana `GF_SERVER_HTTP_PORT` (3000), Loki
/// `server.http_listen_port` (3100), Jaeger v2 internal telemetry
/// `service.telemetry.metrics` (8888, the OpenTelemetry Collector default).
const WELL_KNOWN_PORTS: &[(&str, u16)] = &[
    ("prom/prometheus", 9090),
    ("prom/alertmanager", 9093),
    ("grafana/grafana", 3000),
    ("grafana/loki", 3100),
    ("jaegertracing/jaeger", 8888),
];

/// `host:port`-looking strings and `port`-like keys anywhere in a config.
fn configured_listen_ports(value: &Yaml, out: &mut BTreeMap<u16, String>, file: &str) {
    match value {
        Yaml::Mapping(m) => {
            for (k, v) in m {
                let key = yaml_str(k).unwrap_or_default();
                if key == "endpoint" || key == "address" || key.ends_with("listen_address") {
                    if let Some(p) = yaml_str(v).as_deref().and_then(port_of) {
                        out.insert(p, format!("{key} in {file}"));
                    }
                }
                if key.ends_with("listen_port") {
                    if let Some(p) = v.as_u64() {
                        out.insert(p as u16, format!("{key} in {file}"));
                    }
                }
                configured_listen_ports(v, out, file);
            }
        }
        Yaml::Sequence(items) => {
            for i in items {
                configured_listen_ports(i, out, file);
            }
        }
        _ => {}
    }
}

/// The ports a compose service listens on inside the network, each with
/// where that is known from.
fn listening_ports(service: &Yaml) -> BTreeMap<u16, String> {
    let mut ports = BTreeMap::new();
    for p in service["ports"].as_sequence().into_iter().flatten() {
        let container = match p {
            Yaml::Mapping(_) => yaml_str(&p["target"]),
            other => yaml_str(other).and_then(|s| s.rsplit(':').next().map(str::to_owned)),
        };
        if let Some(port) = container.and_then(|c| c.split('/').next().and_then(|c| c.parse().ok()))
        {
            ports.insert(port, "compose ports".to_owned());
        }
    }
    for e in service["expose"].as_sequence().into_iter().flatten() {
        if let Some(port) =
            yaml_str(e).and_then(|e| e.split('/').next().and_then(|p| p.parse().ok()))
        {
            ports.insert(port, "compose expose".to_owned());
        }
    }
    let args = command_args(service);
    let env = environment(service);
    let image = image_repository(&yaml_str(&service["image"]).unwrap_or_default());
    let config = ["config.file", "config"]
        .iter()
        .find_map(|f| flag_value(&args, f))
        .map(|p| p.trim_start_matches("file:").to_owned())
        .and_then(|p| host_path(service, &p))
        .filter(|p| p.is_file());
    let config_doc = config.as_ref().map(yaml_file);
    let config_name = config.as_ref().map(|p| rel(p)).unwrap_or_default();
    let default = WELL_KNOWN_PORTS
        .iter()
        .find(|(i, _)| *i == image)
        .map(|(_, p)| *p);
    match image.as_str() {
        "prom/prometheus" | "prom/alertmanager" => {
            match flag_value(&args, "web.listen-address")
                .as_deref()
                .and_then(port_of)
            {
                Some(p) => ports.insert(p, "--web.listen-address".to_owned()),
                None => ports.insert(default.unwrap(), format!("{image} default")),
            };
        }
        "grafana/grafana" => {
            match env.get("GF_SERVER_HTTP_PORT").and_then(|p| p.parse().ok()) {
                Some(p) => ports.insert(p, "GF_SERVER_HTTP_PORT".to_owned()),
                None => ports.insert(default.unwrap(), format!("{image} default")),
            };
        }
        "grafana/loki" => {
            let configured = config_doc
                .as_ref()
                .and_then(|d| d["server"]["http_listen_port"].as_u64());
            match configured {
                Some(p) => ports.insert(
                    p as u16,
                    format!("server.http_listen_port in {config_name}"),
                ),
                None => ports.insert(default.unwrap(), format!("{image} default")),
            };
        }
        "jaegertracing/jaeger" => {
            // The metrics endpoint: service.telemetry.metrics, either the
            // readers form or the older `address: host:port`.
            let metrics = config_doc
                .as_ref()
                .map(|d| &d["service"]["telemetry"]["metrics"]);
            let from_readers = metrics.and_then(|m| {
                m["readers"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find_map(|r| r["pull"]["exporter"]["prometheus"]["port"].as_u64())
            });
            let from_address = metrics
                .and_then(|m| yaml_str(&m["address"]))
                .as_deref()
                .and_then(port_of);
            match from_readers.map(|p| p as u16).or(from_address) {
                Some(p) => ports.insert(p, format!("service.telemetry.metrics in {config_name}")),
                None => ports.insert(
                    default.unwrap(),
                    format!("{image} default (internal telemetry)"),
                ),
            };
        }
        _ => {}
    }
    // Other listeners the mounted config declares (receivers, extensions...).
    if let Some(doc) = &config_doc {
        let mut more = BTreeMap::new();
        configured_listen_ports(doc, &mut more, &config_name);
        for (p, why) in more {
            ports.entry(p).or_insert(why);
        }
    }
    // MLServer's image listens on the ports of deploy/mlserver/settings.json
    // (values in that file win over MLSERVER_* variables).
    if built_from(service) == MLSERVER_DOCKERFILE {
        let settings = json_file("deploy/mlserver/settings.json");
        for key in ["http_port", "grpc_port", "metrics_port"] {
            ports.insert(
                settings[key].as_u64().unwrap_or_default() as u16,
                format!("{key} in deploy/mlserver/settings.json"),
            );
        }
        return ports;
    }
    // The pipelens image serves on PIPELENS_ADDR / --addr (default :8000)
    // when its command is `serve` (the image's CMD, when none is given).
    if built_from(service) == PIPELENS_DOCKERFILE && args.first().is_none_or(|c| c == "serve") {
        let addr = flag_value(&args, "addr").or_else(|| env.get("PIPELENS_ADDR").cloned());
        match addr.as_deref().and_then(port_of) {
            Some(p) => ports.insert(p, "PIPELENS_ADDR / --addr".to_owned()),
            None => ports.insert(8000, "pipelens serve default".to_owned()),
        };
    }
    ports
}

/// The pipelens image's Dockerfile.
const PIPELENS_DOCKERFILE: &str = "deploy/Dockerfile";
/// The sentiment model server's (MLServer's) Dockerfile.
const MLSERVER_DOCKERFILE: &str = "deploy/mlserver/Dockerfile";

/// The Dockerfile a compose service builds its image from, relative to the
/// repository (empty for a pulled image).
fn built_from(service: &Yaml) -> String {
    let build = &service["build"];
    if build.is_null() {
        return String::new();
    }
    let context = yaml_str(build)
        .or_else(|| yaml_str(&build["context"]))
        .unwrap_or_else(|| ".".to_owned());
    let dockerfile = yaml_str(&build["dockerfile"]).unwrap_or_else(|| "Dockerfile".to_owned());
    let path = Path::new(&context).join(dockerfile);
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect::<PathBuf>()
        .to_string_lossy()
        .into_owned()
}

/// A problem if `addr` (`host:port` or a URL) does not name a compose service
/// on a port it listens on. Hosts that are not compose services are a problem
/// only when `must_be_service`.
fn check_address(
    ports: &BTreeMap<String, BTreeMap<u16, String>>,
    what: &str,
    addr: &str,
    must_be_service: bool,
) -> Option<String> {
    let without_scheme = addr.split_once("://").map_or(addr, |(_, r)| r);
    let authority = without_host_user(without_scheme.split('/').next().unwrap_or_default());
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok()),
        None => (
            authority,
            match addr.split_once("://").map(|(s, _)| s) {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            },
        ),
    };
    let Some(listening) = ports.get(host) else {
        return must_be_service
            .then(|| format!("{what}: {addr}: {host:?} is not a compose service"));
    };
    match port {
        Some(p) if listening.contains_key(&p) => None,
        _ => Some(format!(
            "{what}: {addr}: {host} does not listen on that port; it listens on {listening:?}"
        )),
    }
}

/// `host[:port]` of an authority, without its `user@` or `user:password@`
/// (`postgres://pipelens@postgres:5432/pipelens` names `postgres:5432`).
fn without_host_user(authority: &str) -> &str {
    authority.rsplit_once('@').map_or(authority, |(_, h)| h)
}

#[test]
fn an_address_with_a_user_is_checked_against_its_host() {
    let ports: BTreeMap<String, BTreeMap<u16, String>> = [(
        "postgres".to_owned(),
        [(5432, "5432".to_owned())].into_iter().collect(),
    )]
    .into_iter()
    .collect();
    for ok in [
        "postgres://pipelens@postgres:5432/pipelens",
        "postgres://pipelens:secret@postgres:5432/pipelens",
        "postgres:5432",
    ] {
        assert_eq!(check_address(&ports, "t", ok, true), None, "{ok}");
    }
    for wrong in [
        "postgres://pipelens@postgres:5433/pipelens",
        "postgres://pipelens:secret@postgres:5433/pipelens",
    ] {
        assert!(
            check_address(&ports, "t", wrong, false).is_some(),
            "{wrong} names a port postgres does not listen on"
        );
    }
}

/// Every `host:port` a scrape or alerting target, Grafana data source or
/// compose service URL names is a compose service and a port it listens on;
/// every loopback healthcheck probes a port its own service listens on.
#[test]
fn every_target_and_url_names_a_compose_service_on_a_port_it_listens_on() {
    let compose = compose();
    let services = compose_services(&compose);
    let ports: BTreeMap<String, BTreeMap<u16, String>> = services
        .iter()
        .map(|(n, s)| (n.clone(), listening_ports(s)))
        .collect();
    let mut problems = Vec::new();
    let check = |problems: &mut Vec<String>, what: &str, addr: &str, must_be_service: bool| {
        if let Some(p) = check_address(&ports, what, addr, must_be_service) {
            problems.push(p);
        }
    };
    let prometheus = yaml_file("prometheus/prometheus.yml");
    let mut scrape_targets = 0;
    for job in prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        let job_name = yaml_str(&job["job_name"]).unwrap_or_default();
        for sc in job["static_configs"].as_sequence().into_iter().flatten() {
            for t in yaml_strings(&sc["targets"]) {
                scrape_targets += 1;
                check(
                    &mut problems,
                    &format!("prometheus.yml scrape job {job_name}"),
                    &t,
                    true,
                );
            }
        }
    }
    assert!(
        scrape_targets > 0,
        "prometheus.yml has no static scrape target"
    );
    for am in prometheus["alerting"]["alertmanagers"]
        .as_sequence()
        .into_iter()
        .flatten()
    {
        for sc in am["static_configs"].as_sequence().into_iter().flatten() {
            for t in yaml_strings(&sc["targets"]) {
                check(&mut problems, "prometheus.yml alerting", &t, true);
            }
        }
    }
    for ds in files_in("grafana/provisioning/datasources", &["yml", "yaml"]) {
        let doc = yaml_file(&ds);
        for d in doc["datasources"].as_sequence().into_iter().flatten() {
            if let Some(url) = yaml_str(&d["url"]) {
                check(
                    &mut problems,
                    &format!(
                        "{} datasource {}",
                        rel(&ds),
                        yaml_str(&d["name"]).unwrap_or_default()
                    ),
                    &url,
                    true,
                );
            }
        }
    }
    for (name, s) in &services {
        let mut urls: Vec<String> = environment(s).into_values().collect();
        urls.extend(command_args(s));
        for u in urls.iter().filter(|u| u.contains("://")) {
            check(&mut problems, &format!("compose service {name}"), u, false);
        }
        // Healthchecks: a loopback URL must be one of the service's own ports.
        for arg in yaml_strings(&s["healthcheck"]["test"]) {
            let Some(rest) = arg.split_once("://").map(|(_, r)| r) else {
                continue;
            };
            let authority = without_host_user(rest.split('/').next().unwrap_or_default());
            let (host, port) = authority.rsplit_once(':').unwrap_or((authority, "80"));
            if host == "127.0.0.1" || host == "localhost" {
                let port: u16 = port.parse().unwrap_or(0);
                if !ports[name].contains_key(&port) {
                    problems.push(format!(
                        "{name}: healthcheck probes {arg}, but {name} listens on {:?}",
                        ports[name]
                    ));
                }
            } else {
                check(&mut problems, &format!("{name} healthcheck"), &arg, true);
            }
        }
    }
    assert_no_problems(
        "targets and URLs do not match the compose services",
        &problems,
    );
}

/// `docker compose up` runs MLServer as the sentiment model server: built
/// from deploy/mlserver with the tests' Python pins and the model files,
/// called by pipelens, scraped by Prometheus and exporting its spans to
/// Jaeger's OTLP gRPC receiver; the pipelens image carries the ONNX model.
#[test]
fn mlserver_serves_the_sentiment_model_and_reports_to_the_stack() {
    let compose = compose();
    let services = compose_services(&compose);
    let mut problems = Vec::new();
    let Some(mlserver) = services.get("mlserver") else {
        panic!("docker-compose.yml has no mlserver service");
    };
    assert_eq!(built_from(mlserver), MLSERVER_DOCKERFILE);
    let settings = json_file("deploy/mlserver/settings.json");
    let port = |key: &str| settings[key].as_u64().unwrap_or_else(|| panic!("{key}"));

    // The image: the tests' pins, MLServer's settings and the model.
    let dockerfile = read(MLSERVER_DOCKERFILE);
    let requirements = read("scripts/models/requirements.txt");
    let python = requirements
        .lines()
        .find_map(|l| l.split("CPython ").nth(1))
        .map(|v| {
            let end = v
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(v.len());
            v[..end].trim_end_matches('.').to_owned()
        })
        .expect("requirements.txt names its CPython version");
    for needle in [
        format!("FROM python:{python}"),
        "COPY scripts/models/requirements.txt".to_owned(),
        "--no-deps -r /tmp/requirements.txt".to_owned(),
        "COPY deploy/mlserver/settings.json ./settings.json".to_owned(),
        "COPY deploy/mlserver/sentiment/model-settings.json ./sentiment/model-settings.json"
            .to_owned(),
        "COPY models/sentiment/model.joblib ./sentiment/model.joblib".to_owned(),
        r#"ENTRYPOINT ["mlserver", "start", "/opt/mlserver"]"#.to_owned(),
    ] {
        if !dockerfile.contains(&needle) {
            problems.push(format!("{MLSERVER_DOCKERFILE} lacks {needle:?}"));
        }
    }
    for pin in ["mlserver==", "mlserver-sklearn==", "scikit-learn=="] {
        if !requirements.lines().any(|l| l.starts_with(pin)) {
            problems.push(format!(
                "scripts/models/requirements.txt does not pin {pin}"
            ));
        }
    }
    let model_settings = json_file("deploy/mlserver/sentiment/model-settings.json");
    assert_eq!(model_settings["parameters"]["uri"], "./model.joblib");
    let served = model_settings["name"].as_str().unwrap().to_owned();
    assert_eq!(served, "sentiment", "the name the demo asks the server for");

    // pipelens calls it, on its HTTP port.
    let pipelens = &services["pipelens"];
    let server = environment(pipelens)
        .get("PIPELENS_SENTIMENT_MODEL_SERVER")
        .cloned()
        .unwrap_or_default();
    if server != format!("http://mlserver:{}", port("http_port")) {
        problems.push(format!(
            "pipelens: PIPELENS_SENTIMENT_MODEL_SERVER is {server:?}, not MLServer's HTTP port {}",
            port("http_port")
        ));
    }
    if pipelens["depends_on"]
        .as_mapping()
        .is_some_and(|d| d.keys().any(|k| yaml_str(k).as_deref() == Some("mlserver")))
    {
        problems.push(
            "pipelens depends_on mlserver: a missing model server must cost one candidate \
             (its load retried, /ready 503), not the service"
                .to_owned(),
        );
    }

    // Prometheus scrapes its metrics port.
    let prometheus = yaml_file("prometheus/prometheus.yml");
    let target = format!("mlserver:{}", port("metrics_port"));
    let scraped = prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|job| {
            job["static_configs"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|sc| yaml_strings(&sc["targets"]).contains(&target))
        });
    if !scraped {
        problems.push(format!("prometheus.yml has no scrape job for {target}"));
    }

    // Its spans go to Jaeger's OTLP gRPC receiver (host:port, no scheme).
    let tracing = environment(mlserver)
        .get("MLSERVER_TRACING_SERVER")
        .cloned()
        .or_else(|| settings["tracing_server"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let jaeger = yaml_file("deploy/jaeger/config.yml");
    let grpc = yaml_str(&jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
        .and_then(|e| port_of(&e))
        .expect("deploy/jaeger/config.yml has an OTLP gRPC receiver");
    if tracing != format!("jaeger:{grpc}") {
        problems.push(format!(
            "mlserver: its tracing server is {tracing:?}, not Jaeger's OTLP gRPC receiver jaeger:{grpc}"
        ));
    }

    // The pipelens image carries the ONNX model and says where.
    let image = read(PIPELENS_DOCKERFILE);
    let dir = image
        .lines()
        .find_map(|l| l.strip_prefix("ENV PIPELENS_SENTIMENT_MODEL_DIR="))
        .expect("deploy/Dockerfile sets PIPELENS_SENTIMENT_MODEL_DIR");
    let copy = format!(
        "COPY models/sentiment/model.onnx models/sentiment/features.json {}/",
        dir.trim_end_matches('/')
    );
    if !image.contains(&copy) {
        problems.push(format!("{PIPELENS_DOCKERFILE} lacks {copy:?}"));
    }
    assert_no_problems("MLServer is not wired into the stack", &problems);
}

// ----------------------------------------------------------------- metrics

/// Series that Prometheus itself writes for every target or rule, whatever
/// the job: always known.
const PROMETHEUS_SYNTHETIC_METRICS: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
    "ALERTS",
    "ALERTS_FOR_STATE",
];

/// pipelens' own telemetry self-observability series, which exist only with
/// OTLP export configured (the in-process service here has none):
/// `a_dead_backend_costs_only_dropped_telemetry` and
/// `a_full_export_queue_counts_every_drop` check them on a live /metrics.
/// Tail sampling's decisions and held traces exist only with OTLP trace
/// export too (tail sampling sits in front of the export queue):
/// `tail_sampling_keeps_what_matters` checks them on a live /metrics.
const OTLP_SELF_OBSERVABILITY: &[&str] = &[
    "otel_sdk_processor_span_processed_total",
    "otel_sdk_processor_log_processed_total",
    "otel_sdk_exporter_span_exported_total",
    "otel_sdk_exporter_log_exported_total",
    "pipelens_traces_sampled_total",
    "pipelens_traces_held",
];

/// Series of the stdout log writer that `telemetry::init` installs (the
/// in-process service here writes its lines elsewhere):
/// `metrics_contract_after_a_run` checks them on `pipelens serve`'s /metrics.
const STDOUT_WRITER_SERIES: &[&str] = &["pipelens_log_lines_dropped_total"];

/// The champion-and-challengers series (model roles, the champion, measured
/// accuracy and error, shadows ahead of the champion, promotions, skipped
/// shadows): `pipelens::names::PROM_CHAMPION_SERIES`. Most exist only with
/// shadows, a measured-accuracy selection policy, a value judge or a
/// promotion, which the in-process mix does not all build: the library's
/// list of them is what rules and dashboards may read.
fn is_champion_series(name: &str) -> bool {
    pipelens::names::PROM_CHAMPION_SERIES
        .iter()
        .any(|(metric, _)| *metric == name)
}

/// Prometheus' and Alertmanager's own metrics that rules and dashboards read,
/// each with the scrape job (prometheus.yml) that collects it. A selector
/// must name that job. `alerts_fire_on_a_live_stack` checks every
/// `prometheus_*` / `alertmanager_*` metric a rule or dashboard reads against
/// the real binaries' /metrics.
const STACK_COMPONENT_METRICS: &[(&str, &str)] = &[
    ("prometheus_rule_evaluation_failures_total", "prometheus"),
    ("alertmanager_notifications_total", "alertmanager"),
    ("alertmanager_notifications_failed_total", "alertmanager"),
];

/// Metric name prefixes of the stack's other components that nothing here
/// runs (Loki, Grafana, Jaeger / the OpenTelemetry Collector, Go runtimes;
/// Prometheus and Alertmanager are listed metric by metric above). A
/// selector restricted to the pipelens job never counts as one of these: the
/// service must export it.
const KNOWN_EXTERNAL_PREFIXES: &[&str] = &[
    "loki_",
    "grafana_",
    "otelcol_",
    "jaeger_",
    "go_",
    "process_",
    "promhttp_",
    "net_conntrack_",
];

/// The sample names on the in-process service's /metrics after real runs:
/// good and bad rooms, and one candidate model always failing so that the
/// error series exist. Histograms appear as their `_bucket`, `_sum` and
/// `_count` series, which is what PromQL must name (a bare histogram family
/// name selects nothing).
async fn live_sample_names() -> BTreeSet<String> {
    let reply = metrics_after_a_mix().await;
    reply
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

/// Whether a selector's matchers restrict it to `job` (`job="x"` or a
/// `job=~` regex naming it).
fn selects_job(matchers: &str, job: &str) -> bool {
    matchers.split(',').any(|m| {
        let m: String = m.chars().filter(|c| !c.is_whitespace()).collect();
        m == format!("job=\"{job}\"") || (m.starts_with("job=~") && m.contains(job))
    })
}

/// The scrape job of the pipelens service in prometheus.yml.
fn pipelens_job() -> String {
    let prometheus = yaml_file("prometheus/prometheus.yml");
    prometheus["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|j| scrapes_pipelens(j))
        .and_then(|j| yaml_str(&j["job_name"]))
        .expect("prometheus.yml scrapes no pipelens:<port> target")
}

#[tokio::test]
async fn every_metric_in_rules_and_dashboards_is_exported_or_known() {
    let exported = live_sample_names().await;
    let all_rules = rules();
    let recorded: BTreeSet<String> = all_rules.iter().filter_map(|r| r.record.clone()).collect();
    let job = pipelens_job();

    // (where, PromQL)
    let mut queries: Vec<(String, String)> = all_rules
        .iter()
        .map(|r| {
            let name = r
                .alert
                .clone()
                .or_else(|| r.record.clone())
                .unwrap_or_default();
            (format!("{} rule {name}", r.file), r.expr.clone())
        })
        .collect();
    let provisioned = provisioned_datasources();
    let dashboard_queries = dashboard_queries(&provisioned);
    let mut prometheus_queries = 0;
    for q in &dashboard_queries {
        if let Some(expr) = q.promql() {
            prometheus_queries += 1;
            queries.push((q.name(), expr.to_owned()));
        }
    }
    assert!(
        prometheus_queries > 0,
        "no dashboard has a Prometheus query"
    );

    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let selectors = promql_selectors(expr);
        if selectors.is_empty() && !expr.contains("vector(") {
            problems.push(format!("{place}: no metric found in {expr:?}"));
        }
        for (name, matchers) in selectors {
            used.insert(name.clone());
            if exported.contains(&name) || recorded.contains(&name) {
                continue;
            }
            if PROMETHEUS_SYNTHETIC_METRICS.contains(&name.as_str()) {
                continue;
            }
            if OTLP_SELF_OBSERVABILITY.contains(&name.as_str())
                || STDOUT_WRITER_SERIES.contains(&name.as_str())
            {
                continue;
            }
            if is_champion_series(&name) {
                continue;
            }
            if name.starts_with("prometheus_") || name.starts_with("alertmanager_") {
                match STACK_COMPONENT_METRICS.iter().find(|(m, _)| *m == name) {
                    Some((_, component_job)) if selects_job(&matchers, component_job) => {}
                    Some((_, component_job)) => problems.push(format!(
                        "{place}: {name}{{{matchers}}} must select job=\"{component_job}\", the \
                         job that scrapes it"
                    )),
                    None => problems.push(format!(
                        "{place}: {name} is not in STACK_COMPONENT_METRICS (add it once the live \
                         stack test has seen it on the real binary)"
                    )),
                }
                continue;
            }
            if KNOWN_EXTERNAL_PREFIXES.iter().any(|p| name.starts_with(p))
                && !selects_job(&matchers, &job)
            {
                continue;
            }
            let hint = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .filter_map(|s| {
                    let candidate = format!("{name}{s}");
                    exported.contains(&candidate).then_some(candidate)
                })
                .collect::<Vec<_>>();
            problems.push(format!(
                "{place}: {name}{} is neither exported by the service, nor recorded by a rule, \
                 nor a known Prometheus/stack metric{}",
                if matchers.is_empty() {
                    String::new()
                } else {
                    format!("{{{matchers}}}")
                },
                if hint.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean {hint:?}?)")
                }
            ));
        }
    }
    eprintln!(
        "checked {} rule and dashboard queries; metrics used: {used:?}",
        queries.len()
    );
    assert_no_problems(
        &format!("unknown metrics (the service exports {exported:?})"),
        &problems,
    );
}

// -------------------------------------------------------------- dashboards

/// Every `"datasource"` value anywhere in a JSON document, with a path.
fn datasource_values(value: &Json, path: String, out: &mut Vec<(String, Json)>) {
    match value {
        Json::Object(o) => {
            for (k, v) in o {
                if k == "datasource" {
                    out.push((format!("{path}.datasource"), v.clone()));
                } else {
                    datasource_values(v, format!("{path}.{k}"), out);
                }
            }
        }
        Json::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                datasource_values(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Every value of `key` anywhere in a YAML document.
fn yaml_values_of(value: &Yaml, key: &str, out: &mut Vec<String>) {
    match value {
        Yaml::Mapping(m) => {
            for (k, v) in m {
                if yaml_str(k).as_deref() == Some(key) {
                    out.extend(yaml_str(v));
                }
                yaml_values_of(v, key, out);
            }
        }
        Yaml::Sequence(items) => {
            for i in items {
                yaml_values_of(i, key, out);
            }
        }
        _ => {}
    }
}

#[test]
fn dashboards_parse_have_unique_uids_and_use_provisioned_datasources() {
    let provisioned = provisioned_datasources();
    let mut problems = Vec::new();

    // The data sources themselves: fixed unique uids, one default, links
    // between them (derived fields, traces-to-logs) to provisioned uids.
    assert!(!provisioned.is_empty(), "no datasource is provisioned");
    let mut uids = BTreeSet::new();
    for d in &provisioned {
        if d.uid.is_empty() {
            problems.push(format!(
                "{}: datasource {} has no fixed uid",
                d.file, d.name
            ));
        } else if !uids.insert(d.uid.clone()) {
            problems.push(format!(
                "{}: datasource uid {} is provisioned twice",
                d.file, d.uid
            ));
        }
    }
    let defaults: Vec<_> = provisioned.iter().filter(|d| d.is_default).collect();
    if defaults.len() != 1 {
        problems.push(format!(
            "{} datasources are isDefault (need exactly one)",
            defaults.len()
        ));
    }
    for kind in ["prometheus", "loki", "jaeger"] {
        if !provisioned.iter().any(|d| d.kind == kind) {
            problems.push(format!("no {kind} datasource is provisioned"));
        }
    }
    for file in files_in("grafana/provisioning/datasources", &["yml", "yaml"]) {
        let mut linked = Vec::new();
        yaml_values_of(&yaml_file(&file), "datasourceUid", &mut linked);
        for uid in linked {
            if !uids.contains(&uid) {
                problems.push(format!(
                    "{}: datasourceUid {uid:?} is not provisioned",
                    rel(&file)
                ));
            }
        }
    }

    // The dashboards.
    let dashboards = dashboards();
    assert!(
        dashboards.len() >= 4,
        "expected at least 4 dashboards, found {}",
        dashboards.len()
    );
    let mut dashboard_uids = BTreeMap::new();
    let mut titles = BTreeMap::new();
    for (file, dash) in &dashboards {
        match dash["uid"].as_str() {
            Some(uid) if !uid.is_empty() => {
                if let Some(other) = dashboard_uids.insert(uid.to_owned(), file.clone()) {
                    problems.push(format!(
                        "dashboard uid {uid:?} is used by {other} and {file}"
                    ));
                }
            }
            _ => problems.push(format!("{file}: no uid")),
        }
        if let Some(title) = dash["title"].as_str() {
            if let Some(other) = titles.insert(title.to_owned(), file.clone()) {
                problems.push(format!(
                    "dashboard title {title:?} is used by {other} and {file}"
                ));
            }
        }
        let mut values = Vec::new();
        datasource_values(dash, String::new(), &mut values);
        for (path, value) in values {
            if let Err(e) = resolve_datasource(&value, dash, &provisioned) {
                problems.push(format!("{file}{path}: {e}"));
            }
        }
        let panel_count = panels(dash).iter().filter(|p| p["type"] != "row").count();
        if panel_count == 0 {
            problems.push(format!("{file}: no panel"));
        }
    }
    for q in dashboard_queries(&provisioned) {
        if let Err(e) = &q.datasource {
            problems.push(format!("{}: {e}", q.name()));
        }
        if let Ok(Some(ds)) = &q.datasource {
            if (ds.kind == "prometheus" || ds.kind == "loki")
                && q.expr.as_deref().is_none_or(|e| e.trim().is_empty())
            {
                problems.push(format!("{}: empty {} query", q.name(), ds.kind));
            }
        }
    }
    assert_no_problems("dashboards and datasources disagree", &problems);
}

/// A LogQL label matcher: (label, operator, value).
type LabelMatcher = (String, String, String);

/// The stream selector of a LogQL query (`{a="b", c=~"d"} | ...`) as
/// label matchers, and the rest of the query.
fn logql_stream_selector(query: &str) -> Result<(Vec<LabelMatcher>, String), String> {
    let query = query.trim();
    let inner = query
        .strip_prefix('{')
        .ok_or_else(|| format!("{query:?} does not start with a stream selector"))?;
    let end = inner
        .find('}')
        .ok_or_else(|| format!("{query:?}: unclosed stream selector"))?;
    let mut matchers = Vec::new();
    for m in inner[..end]
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let at = m
            .find(['=', '!'])
            .ok_or_else(|| format!("{m:?} is not a label matcher"))?;
        let (label, rest) = m.split_at(at);
        let op_len = rest.find('"').unwrap_or(rest.len());
        let (op, value) = rest.split_at(op_len);
        matchers.push((
            label.trim().to_owned(),
            op.trim().to_owned(),
            value.trim().trim_matches('"').to_owned(),
        ));
    }
    Ok((matchers, inner[end + 1..].to_owned()))
}

/// A span in Jaeger links to the logs of its trace in Loki with a query Loki
/// accepts: a stream selector with a matcher that cannot match the empty
/// string (Loki refuses `{}`) naming the service's real `service_name`
/// label, and a filter on the trace id.
#[test]
fn jaeger_links_a_span_to_the_logs_of_its_trace_with_a_query_loki_accepts() {
    let provisioned = provisioned_datasources();
    let mut found = 0;
    for file in files_in("grafana/provisioning/datasources", &["yml", "yaml"]) {
        let doc = yaml_file(&file);
        for ds in doc["datasources"].as_sequence().into_iter().flatten() {
            if yaml_str(&ds["type"]).as_deref() != Some("jaeger") {
                continue;
            }
            found += 1;
            let here = format!(
                "{} datasource {}",
                rel(&file),
                yaml_str(&ds["name"]).unwrap_or_default()
            );
            let link = &ds["jsonData"]["tracesToLogsV2"];
            let target = yaml_str(&link["datasourceUid"]).unwrap_or_default();
            assert!(
                provisioned
                    .iter()
                    .any(|d| d.uid == target && d.kind == "loki"),
                "{here}: tracesToLogsV2.datasourceUid {target:?} is not a provisioned Loki"
            );
            // Without a custom query Grafana builds the selector from span
            // tags, and Jaeger keeps service.name out of them: `{}`.
            assert_eq!(
                link["customQuery"].as_bool(),
                Some(true),
                "{here}: tracesToLogsV2 must use a custom query"
            );
            // `$$` is how the provisioning file escapes Grafana's own `$`.
            let query = yaml_str(&link["query"])
                .unwrap_or_default()
                .replace("$$", "$");
            let (matchers, pipeline) =
                logql_stream_selector(&query).unwrap_or_else(|e| panic!("{here}: {e}"));
            assert!(
                matchers
                    .iter()
                    .any(|(_, op, value)| op == "=" && !value.is_empty() && !value.contains('$')),
                "{here}: the stream selector of {query:?} needs a fixed, non-empty `label=\"value\"` \
                 matcher (Loki refuses a selector that matches everything)"
            );
            let service = environment(&compose_services(&compose())["pipelens"])
                .get("OTEL_SERVICE_NAME")
                .cloned()
                .unwrap_or_else(|| "pipelens".to_owned());
            assert!(
                matchers
                    .iter()
                    .any(|(l, op, v)| l == "service_name" && op == "=" && *v == service),
                "{here}: {query:?} must select service_name=\"{service}\", the label Loki's OTLP \
                 endpoint makes of the service's service.name"
            );
            assert!(
                pipeline.contains("trace_id")
                    && (pipeline.contains("${__trace.traceId}")
                        || pipeline.contains("${__span.traceId}")),
                "{here}: {query:?} does not filter on the span's trace id"
            );
        }
    }
    assert_eq!(found, 1, "expected one provisioned Jaeger datasource");
    // Loki keeps its default OTLP label mapping (service.name ->
    // service_name): nothing in its config overrides it.
    let loki = read("deploy/loki/loki.yml");
    assert!(
        !loki.contains("otlp_config"),
        "deploy/loki/loki.yml changes the OTLP attribute mapping: check that service.name still \
         becomes the service_name label"
    );
}

#[test]
fn logql_stream_selectors_are_split_into_matchers() {
    let (matchers, rest) =
        logql_stream_selector(r#"{service_name="pipelens", level=~"err.*"} | trace_id="x""#)
            .unwrap();
    assert_eq!(
        matchers,
        vec![
            ("service_name".into(), "=".into(), "pipelens".into()),
            ("level".into(), "=~".into(), "err.*".into()),
        ]
    );
    assert_eq!(rest, r#" | trace_id="x""#);
    assert_eq!(logql_stream_selector("{} | x").unwrap().0, vec![]);
    assert!(logql_stream_selector("| trace_id").is_err());
}

// ------------------------------------------- tail sampling and exemplars

/// The histograms whose buckets carry exemplars (`# {trace_id=...}` on
/// /metrics in OpenMetrics), each pointing at a kept, exported trace.
const EXEMPLAR_HISTOGRAMS: &[&str] = &[
    "ml_pipeline_duration_seconds",
    "ml_model_execution_duration_seconds",
    "http_server_request_duration_seconds",
];

/// The exemplar label that holds the trace id.
const EXEMPLAR_TRACE_ID_LABEL: &str = "trace_id";

/// What compose's tail sampling runs with (issue 16: keep one healthy trace
/// in ten, and every run slower than its pipeline's own p99).
const COMPOSE_KEEP_RATIO: (&str, &str) = ("PIPELENS_TRACES_KEEP_RATIO", "0.1");
const COMPOSE_KEEP_SLOWER_THAN: (&str, &str) = ("PIPELENS_TRACES_KEEP_SLOWER_THAN", "p99");

/// A compose value with `${VAR:-default}`, `${VAR-default}` and `${VAR}`
/// replaced by what a fresh checkout (no .env) gives, and `$$` by `$`.
fn compose_default(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let (Some(inner), Some(end)) = (after.strip_prefix('{'), after.find('}')) {
            let inner = &inner[..end - 1];
            if let Some((_, default)) = inner.split_once(":-").or_else(|| inner.split_once('-')) {
                out.push_str(default);
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Every feature of `--enable-feature=a,b` / `--enable-feature a` in `args`
/// (the flag may be repeated).
fn enabled_features(args: &[String]) -> BTreeSet<String> {
    let mut features = BTreeSet::new();
    for (i, a) in args.iter().enumerate() {
        let value = match a.trim_start_matches('-').split_once('=') {
            Some(("enable-feature", v)) => Some(v.to_owned()),
            None if a.trim_start_matches('-') == "enable-feature" && a.starts_with('-') => {
                args.get(i + 1).cloned()
            }
            _ => None,
        };
        for f in value.iter().flat_map(|v| v.split(',')) {
            features.insert(f.trim().to_owned());
        }
    }
    features
}

#[test]
fn compose_prometheus_stores_exemplars() {
    let compose = compose();
    let services = compose_services(&compose);
    let prometheus = services
        .get("prometheus")
        .expect("docker-compose.yml has no prometheus service");
    let args = command_args(prometheus);
    let features = enabled_features(&args);
    assert!(
        features.contains("exemplar-storage"),
        "compose's prometheus must run with --enable-feature=exemplar-storage, or the exemplars \
         pipelens writes are thrown away at the scrape; its features: {features:?} (command {args:?})"
    );
}

#[test]
fn compose_runs_pipelens_with_valid_tail_sampling_settings() {
    let compose = compose();
    let services = compose_services(&compose);
    let pipelens = services
        .get("pipelens")
        .expect("docker-compose.yml has no pipelens service");
    let env: BTreeMap<String, String> = environment(pipelens)
        .into_iter()
        .map(|(k, v)| (k, compose_default(&v)))
        .collect();
    let mut problems = Vec::new();
    for (name, want) in [COMPOSE_KEEP_RATIO, COMPOSE_KEEP_SLOWER_THAN] {
        match env.get(name) {
            None => problems.push(format!("pipelens: {name} is not set")),
            Some(v) if v != want => problems.push(format!(
                "pipelens: {name} is {v:?} on a fresh checkout, not {want:?}"
            )),
            Some(_) => {}
        }
    }
    // The service's own parser accepts the whole environment as compose
    // gives it, and reads the two settings as meant.
    let vars: std::collections::HashMap<String, String> = env.clone().into_iter().collect();
    match pipelens::telemetry::TelemetryConfig::from_vars(&vars) {
        Err(e) => problems.push(format!(
            "pipelens would refuse to start with compose's environment: {e}"
        )),
        Ok(config) => {
            if config.traces_keep_ratio != 0.1 {
                problems.push(format!(
                    "{} is read as {}, not 0.1",
                    COMPOSE_KEEP_RATIO.0, config.traces_keep_ratio
                ));
            }
            if config.traces_keep_slower_than != pipelens::telemetry::SlowThreshold::Quantile(0.99)
            {
                problems.push(format!(
                    "{} is read as {:?}, not p99",
                    COMPOSE_KEEP_SLOWER_THAN.0, config.traces_keep_slower_than
                ));
            }
            if config.traces.is_none() {
                problems.push(
                    "compose's pipelens exports no traces: tail sampling would never run"
                        .to_owned(),
                );
            }
        }
    }
    // .env.example gives the same values as compose's defaults.
    let example = read(".env.example");
    for (name, want) in [COMPOSE_KEEP_RATIO, COMPOSE_KEEP_SLOWER_THAN] {
        let documented = example
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find_map(|l| l.split_once('=').filter(|(k, _)| k.trim() == name))
            .map(|(_, v)| v.trim().to_owned());
        if documented.as_deref() != Some(want) {
            problems.push(format!(
                ".env.example gives {name}={documented:?}, compose's default is {want:?}"
            ));
        }
    }
    assert_no_problems("compose's tail sampling settings", &problems);
}

/// The provisioned data sources' `exemplarTraceIdDestinations`:
/// (file, data source uid, label name, destination uid).
fn exemplar_destinations() -> Vec<(String, String, String, String)> {
    let mut out = Vec::new();
    for file in files_in("grafana/provisioning/datasources", &["yml", "yaml"]) {
        let doc = yaml_file(&file);
        for ds in doc["datasources"].as_sequence().into_iter().flatten() {
            for d in ds["jsonData"]["exemplarTraceIdDestinations"]
                .as_sequence()
                .into_iter()
                .flatten()
            {
                out.push((
                    rel(&file),
                    yaml_str(&ds["uid"]).unwrap_or_default(),
                    yaml_str(&d["name"]).unwrap_or_default(),
                    yaml_str(&d["datasourceUid"]).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

#[test]
fn prometheus_exemplars_link_to_the_provisioned_jaeger() {
    let provisioned = provisioned_datasources();
    let jaeger: Vec<&Datasource> = provisioned.iter().filter(|d| d.kind == "jaeger").collect();
    assert_eq!(
        jaeger.len(),
        1,
        "expected one provisioned Jaeger datasource"
    );
    let jaeger_uid = &jaeger[0].uid;
    let destinations = exemplar_destinations();
    let mut problems = Vec::new();
    let prometheus: Vec<&Datasource> = provisioned
        .iter()
        .filter(|d| d.kind == "prometheus")
        .collect();
    assert!(
        !prometheus.is_empty(),
        "no Prometheus datasource is provisioned"
    );
    for ds in prometheus {
        let links: Vec<_> = destinations
            .iter()
            .filter(|(_, uid, _, _)| *uid == ds.uid)
            .collect();
        let to_jaeger = links
            .iter()
            .any(|(_, _, label, target)| label == EXEMPLAR_TRACE_ID_LABEL && target == jaeger_uid);
        if !to_jaeger {
            problems.push(format!(
                "{}: Prometheus datasource {:?} has no jsonData.exemplarTraceIdDestinations entry \
                 {{name: {EXEMPLAR_TRACE_ID_LABEL}, datasourceUid: {jaeger_uid}}} (found {links:?})",
                ds.file, ds.uid
            ));
        }
    }
    for (file, uid, label, target) in &destinations {
        if !provisioned.iter().any(|d| d.uid == *target) {
            problems.push(format!(
                "{file}: datasource {uid:?} links exemplar label {label:?} to {target:?}, which is \
                 not provisioned"
            ));
        }
    }
    assert_no_problems("exemplar links", &problems);
}

#[test]
fn latency_panels_show_exemplars() {
    let provisioned = provisioned_datasources();
    let linked: BTreeSet<String> = exemplar_destinations()
        .into_iter()
        .filter(|(_, _, label, _)| label == EXEMPLAR_TRACE_ID_LABEL)
        .map(|(_, uid, _, _)| uid)
        .collect();
    let mut problems = Vec::new();
    // Per histogram, the time series panels that show its exemplars.
    let mut shown: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (file, dash) in dashboards() {
        for panel in panels(&dash) {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let names = promql_metric_names(expr);
                let histograms: Vec<&str> = EXEMPLAR_HISTOGRAMS
                    .iter()
                    .copied()
                    .filter(|h| names.contains(&format!("{h}_bucket")))
                    .collect();
                if histograms.is_empty() {
                    continue;
                }
                let here = format!(
                    "{file} / {title:?} / {}",
                    target["refId"].as_str().unwrap_or("?")
                );
                if target["exemplar"] != Json::Bool(true) {
                    problems.push(format!(
                        "{here}: reads {histograms:?} but has no \"exemplar\": true"
                    ));
                    continue;
                }
                let ds = match (&target["datasource"], &panel["datasource"]) {
                    (Json::Null, p) => p,
                    (t, _) => t,
                };
                match resolve_datasource(ds, &dash, &provisioned) {
                    Ok(Some(d)) if linked.contains(&d.uid) => {}
                    other => problems.push(format!(
                        "{here}: its datasource {other:?} links no {EXEMPLAR_TRACE_ID_LABEL} \
                         exemplar to a trace"
                    )),
                }
                if panel["type"] == "timeseries" {
                    for h in histograms {
                        shown.entry(h).or_default().push(here.clone());
                    }
                }
            }
        }
    }
    for h in EXEMPLAR_HISTOGRAMS {
        if !shown.contains_key(h) {
            problems.push(format!(
                "no time series panel reads {h}_bucket with exemplars: a spike of {h} has no path \
                 to its trace"
            ));
        }
    }
    eprintln!("exemplars shown: {shown:#?}");
    assert_no_problems("latency panels and exemplars", &problems);
}

#[test]
fn the_service_dashboard_shows_the_tail_sampling_decisions() {
    let file = "grafana/dashboards/pipelens-service.json";
    let dash = json_file(file);
    let mut decisions = Vec::new();
    let mut held = Vec::new();
    for panel in panels(&dash) {
        let title = panel["title"].as_str().unwrap_or_default().to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            let names = promql_metric_names(expr);
            if names.contains("pipelens_traces_sampled_total") {
                decisions.push((title.clone(), expr.to_owned()));
            }
            if names.contains("pipelens_traces_held") {
                held.push((title.clone(), expr.to_owned()));
            }
        }
    }
    assert!(
        decisions
            .iter()
            .any(|(title, expr)| title == "Tail sampling"
                && expr.contains("rate(pipelens_traces_sampled_total")
                && ["decision", "reason"]
                    .iter()
                    .all(|l| promql_has_by_label(expr, l))),
        "{file}: no \"Tail sampling\" panel with the rate of pipelens_traces_sampled_total by \
         (decision, reason); found {decisions:?}"
    );
    assert!(
        held.iter().any(|(title, _)| title == "Tail sampling"),
        "{file}: the \"Tail sampling\" panel does not show pipelens_traces_held; found {held:?}"
    );
}

// ------------------------------------------------------------------ alerts

/// The alerts the stack must have (issue: "at least ...").
const REQUIRED_ALERTS: &[&str] = &[
    "ServiceDown",
    "HighErrorRate",
    "HighLatencyP95",
    "ModelExecutionFailures",
    "LowModelConfidence",
    "ModelNotLoaded",
    "PipelineStalled",
    "TargetDown",
    "Watchdog",
    "AlertmanagerNotificationsFailing",
    "PrometheusRuleEvaluationFailures",
];

/// Whether an alert is a heartbeat (a dead man's switch): always firing by
/// design, `vector(1)`.
fn is_heartbeat(rule: &Rule) -> bool {
    rule.alert.is_some() && rule.expr.trim() == "vector(1)"
}

#[test]
fn alerts_have_severity_annotations_runbooks_in_the_readme_and_dashboard_links() {
    let readme = read("README.md");
    let anchors = markdown_anchors(&readme);
    let dashboard_uids: BTreeSet<String> = dashboards()
        .iter()
        .filter_map(|(_, d)| d["uid"].as_str().map(str::to_owned))
        .collect();
    let alerts: Vec<Rule> = rules().into_iter().filter(|r| r.alert.is_some()).collect();
    let names: BTreeSet<String> = alerts.iter().filter_map(|r| r.alert.clone()).collect();
    let mut problems = Vec::new();
    let mut missing_anchors = Vec::new();
    for required in REQUIRED_ALERTS {
        if !names.contains(*required) {
            problems.push(format!("no alert named {required}"));
        }
    }
    let alertmanager = yaml_file("deploy/alertmanager/alertmanager.yml");
    for r in &alerts {
        let name = r.alert.as_deref().unwrap();
        let here = format!("{} alert {name}", r.file);
        match r.labels.get("severity").map(String::as_str) {
            Some("critical" | "warning") if !is_heartbeat(r) => {}
            // A heartbeat is no problem to page about: severity none, and a
            // route of its own to a receiver that is not a pager's.
            Some("none") if is_heartbeat(r) => {
                match route_receiver(&alertmanager, &format!("alertname={name}")) {
                    Some(receiver) if receiver != "critical" && receiver != "warning" => {}
                    other => problems.push(format!(
                        "{here}: a heartbeat needs an alertname={name} route to a receiver of its \
                         own in alertmanager.yml, found {other:?}"
                    )),
                }
            }
            Some("none") => problems.push(format!(
                "{here}: severity none is for heartbeats (expr vector(1)) only"
            )),
            other => problems.push(format!(
                "{here}: labels.severity is {other:?}, not critical or warning{}",
                if is_heartbeat(r) {
                    " (a heartbeat: none)"
                } else {
                    ""
                }
            )),
        }
        for a in ["summary", "description", "runbook_url"] {
            if r.annotations.get(a).is_none_or(|v| v.trim().is_empty()) {
                problems.push(format!("{here}: no annotations.{a}"));
            }
        }
        if let Some(url) = r.annotations.get("runbook_url") {
            match url.split_once('#') {
                Some((page, anchor)) if page.ends_with("README.md") => {
                    if !anchors.contains(anchor) {
                        missing_anchors.push(anchor.to_owned());
                        problems.push(format!(
                            "{here}: runbook_url anchor #{anchor} is not a README.md heading"
                        ));
                    }
                }
                _ => problems.push(format!(
                    "{here}: runbook_url {url:?} is not a README.md#<section> link"
                )),
            }
        }
        let links: Vec<&str> = r
            .annotations
            .values()
            .filter_map(|v| v.split_once("/d/").map(|(_, rest)| rest))
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default())
            .collect();
        if links.is_empty() {
            problems.push(format!(
                "{here}: no dashboard link (an annotation with a Grafana /d/<uid> URL)"
            ));
        }
        for uid in links {
            if !dashboard_uids.contains(uid) {
                problems.push(format!(
                    "{here}: links to dashboard uid {uid:?}, which no dashboard has"
                ));
            }
        }
    }
    if !missing_anchors.is_empty() {
        eprintln!("README headings missing for anchors: {missing_anchors:?}");
    }
    assert_no_problems("alert rules are incomplete", &problems);
}

/// Every alert has a `promtool test rules` case where it fires and one where
/// it must not (an empty `exp_alerts`). A heartbeat (always firing) cannot
/// have a silent case; it must instead be tested firing at the very first
/// evaluation (no `for`, nothing it waits on).
#[test]
fn every_alert_has_a_firing_and_a_silent_rule_unit_test() {
    let mut firing: BTreeMap<String, usize> = BTreeMap::new();
    let mut silent: BTreeMap<String, usize> = BTreeMap::new();
    let mut fires_at_start: BTreeSet<String> = BTreeSet::new();
    let mut firing_variants: BTreeSet<(String, String)> = BTreeSet::new();
    for file in files_in("prometheus/tests", &["yml", "yaml"]) {
        let doc = yaml_file(&file);
        for t in doc["tests"].as_sequence().into_iter().flatten() {
            for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
                let name = yaml_str(&case["alertname"]).unwrap_or_default();
                let fires = case["exp_alerts"]
                    .as_sequence()
                    .is_some_and(|a| !a.is_empty());
                // Generated SLO alerts come as a page and a ticket of one
                // name (label sloth_severity): each must be seen firing.
                for alert in case["exp_alerts"].as_sequence().into_iter().flatten() {
                    if let Some(s) = yaml_str(&alert["exp_labels"]["sloth_severity"]) {
                        firing_variants.insert((name.clone(), s));
                    }
                }
                let at = yaml_str(&case["eval_time"]).unwrap_or_default();
                if fires && at.trim_end_matches(['s', 'm', 'h']) == "0" {
                    fires_at_start.insert(name.clone());
                }
                *if fires { &mut firing } else { &mut silent }
                    .entry(name)
                    .or_default() += 1;
            }
        }
    }
    let mut problems = Vec::new();
    for r in rules() {
        let heartbeat = is_heartbeat(&r);
        if let (Some(name), Some(variant)) = (&r.alert, r.labels.get("sloth_severity")) {
            if !firing_variants.contains(&(name.clone(), variant.clone())) {
                problems.push(format!(
                    "{name}: no promtool test case where its {variant} alert (sloth_severity) fires"
                ));
            }
        }
        let Some(name) = r.alert else { continue };
        if !firing.contains_key(&name) {
            problems.push(format!("{name}: no promtool test case where it fires"));
        }
        if heartbeat {
            if !fires_at_start.contains(&name) || r.for_.is_some() {
                problems.push(format!(
                    "{name}: a heartbeat must fire from the first evaluation (no `for`), with a \
                     promtool case at eval_time 0m"
                ));
            }
            if silent.contains_key(&name) {
                problems.push(format!(
                    "{name}: a heartbeat has a case where it is silent?"
                ));
            }
        } else if !silent.contains_key(&name) {
            problems.push(format!(
                "{name}: no promtool test case where it must not fire"
            ));
        }
    }
    assert_no_problems("prometheus/tests does not cover every alert", &problems);
}

// ------------------------------------------------------------------- tools

#[test]
fn promtool_checks_the_config_and_the_rules() {
    let promtool = require_tool(&["promtool"]);
    let dir = tempfile::tempdir().unwrap();

    // The shipped config, with rule_files pointing at the files the
    // container would load (resolved through the compose mounts), so the
    // check does not depend on where the file sits.
    let mut config = prometheus_config_for_2_42();
    let rule_files = prometheus_rule_files();
    config["rule_files"] = Yaml::Sequence(
        rule_files
            .iter()
            .map(|p| Yaml::String(p.display().to_string()))
            .collect(),
    );
    let copy = dir.path().join("prometheus.yml");
    std::fs::write(&copy, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let (ok, out) = run(Command::new(&promtool)
        .arg("check")
        .arg("config")
        .arg(&copy));
    assert!(
        ok,
        "promtool check config prometheus/prometheus.yml failed:\n{out}"
    );
    assert!(
        out.contains(&format!("{} rule files found", rule_files.len())),
        "promtool did not load the {} rule files:\n{out}",
        rule_files.len()
    );

    // The shipped file as it sits beside its rules (rule_files relative to
    // it), but for the Prometheus 3 keys: a copy next to a link to the rules.
    let beside = dir.path().join("beside");
    std::fs::create_dir(&beside).unwrap();
    std::os::unix::fs::symlink(repo().join("prometheus/rules"), beside.join("rules")).unwrap();
    let in_place = prometheus_config_for_2_42();
    assert_eq!(
        in_place["rule_files"],
        yaml_file("prometheus/prometheus.yml")["rule_files"]
    );
    std::fs::write(
        beside.join("prometheus.yml"),
        serde_yaml_ng::to_string(&in_place).unwrap(),
    )
    .unwrap();
    let (ok, out) = run(Command::new(&promtool).current_dir(&beside).args([
        "check",
        "config",
        "prometheus.yml",
    ]));
    assert!(
        ok,
        "promtool check config on the shipped file beside its rules failed:\n{out}"
    );
    // Only the keys Prometheus 3 needs are left out, and 2.42 does refuse
    // them (if it took them, they would not need leaving out).
    let full = yaml_file("prometheus/prometheus.yml");
    for key in PROMETHEUS_3_ONLY {
        assert!(full.get(*key).is_some(), "prometheus.yml has no {key}");
        let mut only_that = in_place.clone();
        only_that[*key] = full[*key].clone();
        let path = beside.join("with-key.yml");
        std::fs::write(&path, serde_yaml_ng::to_string(&only_that).unwrap()).unwrap();
        let (ok, out) = run(Command::new(&promtool).current_dir(&beside).args([
            "check",
            "config",
            "with-key.yml",
        ]));
        assert!(
            !ok && out.contains(&format!("field {key} not found")),
            "promtool 2.42 takes `{key}` now: drop it from PROMETHEUS_3_ONLY\n{out}"
        );
    }

    let shipped = files_in("prometheus/rules", &["yml", "yaml"]);
    assert!(!shipped.is_empty(), "prometheus/rules holds no rule file");
    let (ok, out) = run(Command::new(&promtool)
        .args(["check", "rules"])
        .args(&shipped));
    assert!(ok, "promtool check rules failed:\n{out}");
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let promtool = require_tool(&["promtool"]);
    let tests: Vec<String> = files_in("prometheus/tests", &["yml", "yaml"])
        .iter()
        .map(|p| rel(p))
        .collect();
    assert!(
        !tests.is_empty(),
        "prometheus/tests holds no promtool test file"
    );
    let (ok, out) = run(Command::new(&promtool)
        .current_dir(repo())
        .args(["test", "rules"])
        .args(&tests));
    assert!(ok, "promtool test rules {} failed:\n{out}", tests.join(" "));
    assert_eq!(
        out.matches("SUCCESS").count(),
        tests.len(),
        "not every test file passed:\n{out}"
    );
}

/// The webhook URL variables of deploy/alertmanager/entrypoint.sh and the
/// receiver each one fills.
const WEBHOOK_VARIABLES: &[(&str, &str)] = &[
    ("ALERTMANAGER_CRITICAL_WEBHOOK_URL", "critical"),
    ("ALERTMANAGER_WARNING_WEBHOOK_URL", "warning"),
    ("ALERTMANAGER_WATCHDOG_WEBHOOK_URL", "watchdog"),
];

/// The receiver of the first route of `config` (an Alertmanager config)
/// whose matchers are exactly `matcher` (spaces and quotes ignored), if any.
fn route_receiver(config: &Yaml, matcher: &str) -> Option<String> {
    config["route"]["routes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|r| {
            yaml_strings(&r["matchers"])
                .iter()
                .any(|m| m.replace([' ', '\'', '"'], "") == matcher)
        })
        .and_then(|r| yaml_str(&r["receiver"]))
}

/// The shipped alertmanager.yml passes amtool as it is, and so does the copy
/// that deploy/alertmanager/entrypoint.sh renders in the container, both
/// with the webhook URLs set (they land in the right receivers, characters
/// special to sed included) and unset (the file is unchanged: every receiver
/// a null receiver, so no notification is attempted and none can fail).
#[test]
fn amtool_checks_the_shipped_and_the_rendered_alertmanager_config() {
    let amtool = require_tool(&["amtool"]);
    let shipped = repo().join("deploy/alertmanager/alertmanager.yml");
    let (ok, out) = run(Command::new(&amtool).arg("check-config").arg(&shipped));
    assert!(
        ok,
        "amtool check-config deploy/alertmanager/alertmanager.yml failed:\n{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let render = |name: &str, urls: &[(&str, &str)]| {
        let rendered = dir.path().join(name);
        let mut cmd = Command::new("sh");
        cmd.arg(repo().join("deploy/alertmanager/entrypoint.sh"))
            .arg("--ignored-by-true")
            .env("ALERTMANAGER_CONFIG_TEMPLATE", &shipped)
            .env("ALERTMANAGER_RENDERED_CONFIG", &rendered)
            .env("ALERTMANAGER_BIN", "true");
        for (var, _) in WEBHOOK_VARIABLES {
            cmd.env_remove(var);
        }
        for (var, url) in urls {
            cmd.env(var, url);
        }
        let (ok, out) = run(&mut cmd);
        assert!(ok, "deploy/alertmanager/entrypoint.sh failed:\n{out}");
        let (ok, out) = run(Command::new(&amtool).arg("check-config").arg(&rendered));
        assert!(
            ok,
            "amtool check-config on the rendered {name} failed:\n{out}"
        );
        rendered
    };
    let webhooks_of = |doc: &Yaml, receiver: &str| -> Vec<(String, Option<bool>)> {
        doc["receivers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|r| yaml_str(&r["name"]).as_deref() == Some(receiver))
            .flat_map(|r| {
                r["webhook_configs"]
                    .as_sequence()
                    .cloned()
                    .unwrap_or_default()
            })
            .map(|w| {
                (
                    yaml_str(&w["url"]).unwrap_or_default(),
                    w["send_resolved"].as_bool(),
                )
            })
            .collect()
    };

    let unset = render("unset.yml", &[]);
    assert_eq!(
        std::fs::read_to_string(&unset).unwrap(),
        read(&shipped),
        "with no webhook URL set the rendered config should be the shipped one"
    );
    let doc = yaml_file(&unset);
    for (_, receiver) in WEBHOOK_VARIABLES {
        assert_eq!(
            webhooks_of(&doc, receiver),
            vec![],
            "with no URL set, receiver {receiver} must be a null receiver (nothing to fail)"
        );
    }

    let critical = "https://hooks.example.com/critical?a=1&b=x|y";
    let warning = "http://warning-bridge:8080/hook";
    let watchdog = "https://hc-ping.example.com/0f1e2d3c";
    let set = render(
        "set.yml",
        &[
            ("ALERTMANAGER_CRITICAL_WEBHOOK_URL", critical),
            ("ALERTMANAGER_WARNING_WEBHOOK_URL", warning),
            ("ALERTMANAGER_WATCHDOG_WEBHOOK_URL", watchdog),
        ],
    );
    let doc: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(&set).unwrap()).unwrap();
    assert_eq!(
        webhooks_of(&doc, "critical"),
        vec![(critical.to_owned(), Some(true))],
        "critical receiver"
    );
    assert_eq!(
        webhooks_of(&doc, "warning"),
        vec![(warning.to_owned(), Some(true))],
        "warning receiver"
    );
    // The heartbeat never resolves; a resolved message would read as "stop".
    assert_eq!(
        webhooks_of(&doc, "watchdog"),
        vec![(watchdog.to_owned(), Some(false))],
        "watchdog receiver"
    );

    // One variable alone fills its receiver only.
    let one = render(
        "one.yml",
        &[("ALERTMANAGER_WATCHDOG_WEBHOOK_URL", watchdog)],
    );
    let one = yaml_file(&one);
    assert_eq!(webhooks_of(&one, "critical"), vec![]);
    assert_eq!(webhooks_of(&one, "watchdog").len(), 1);

    // Routing: Watchdog -> watchdog first (before any severity route could
    // take it), critical -> critical, warning -> warning.
    assert_eq!(
        route_receiver(&doc, "alertname=Watchdog").as_deref(),
        Some("watchdog"),
        "alertname=Watchdog route"
    );
    let first = &doc["route"]["routes"][0];
    assert!(
        yaml_strings(&first["matchers"])
            .iter()
            .any(|m| m.replace([' ', '\'', '"'], "") == "alertname=Watchdog")
            && first["continue"].as_bool() != Some(true),
        "the Watchdog route must come first and not continue: {first:?}"
    );
    for severity in ["critical", "warning"] {
        let receiver = route_receiver(&doc, &format!("severity={severity}")).or_else(|| {
            (severity == "warning")
                .then(|| yaml_str(&doc["route"]["receiver"]))
                .flatten()
        });
        assert_eq!(
            receiver.as_deref(),
            Some(severity),
            "severity={severity} route"
        );
    }
}

// -------------------------------------------------- the helpers themselves

#[test]
fn promql_metric_extraction_skips_functions_labels_strings_and_durations() {
    let names = |e: &str| promql_metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (job, instance, le) (rate(http_server_request_duration_seconds_bucket{job="pipelens", le="0.5"}[5m] offset 1m))
               / on (job) group_left (stage) sum without (le) (rate(ml_model_confidence_count[$__rate_interval]))
               # a comment with a_fake_metric
               or on() label_replace(vector(0), "error_type", "none", "", "") > bool 0.95e-3
               and pipeline_model_name_error_type:ml_model_errors:rate5m unless count(ALERTS{alertstate="firing"})"#
        ),
        vec![
            "ALERTS",
            "http_server_request_duration_seconds_bucket",
            "ml_model_confidence_count",
            "pipeline_model_name_error_type:ml_model_errors:rate5m",
        ]
    );
    assert_eq!(
        names("histogram_quantile(0.9, sum(rate(x_bucket[1m])) by (le))"),
        vec!["x_bucket"]
    );
    assert_eq!(names("max_over_time(up[5m:30s]) == Inf"), vec!["up"]);
    assert_eq!(
        promql_selectors(r#"up{job="pipelens"} == 0"#),
        vec![("up".to_owned(), r#"job="pipelens""#.to_owned())]
    );
}

#[test]
fn grafana_variables_and_github_anchors_are_handled() {
    assert_eq!(
        grafana_substitute(
            r#"rate(x{model_name="$model", stage=~"${stage:regex}"}[$__rate_interval])"#
        ),
        r#"rate(x{model_name=~".*", stage=~".*"}[1m])"#
    );
    assert_eq!(github_anchor("Alert: ServiceDown"), "alert-servicedown");
    assert_eq!(
        github_anchor("Run the stack (Docker)"),
        "run-the-stack-docker"
    );
    let anchors = markdown_anchors("# A\n```sh\n# not a heading\n```\n## A\n### Alert: X_y\n");
    assert_eq!(
        anchors.into_iter().collect::<Vec<_>>(),
        vec!["a", "a-1", "alert-x_y"]
    );
    assert_eq!(
        image_repository("docker.io/prom/prometheus:v3.1.0"),
        "prom/prometheus"
    );
    assert_eq!(image_repository("grafana/loki:3.4.2"), "grafana/loki");
    assert_eq!(port_of("http://loki:3100/otlp/v1/logs"), Some(3100));
    assert_eq!(port_of("0.0.0.0:8888"), Some(8888));
}

/// Whether a series carries the `pipeline` label: a contract or
/// champion-and-challengers metric (or one of its histogram series) that has
/// it, or a recording rule that keeps it.
fn carries_pipeline(name: &str, recorded: &BTreeMap<String, String>) -> bool {
    let base = ["_bucket", "_count", "_sum"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name);
    pipelens::names::PROM_CONTRACT
        .iter()
        .chain(pipelens::names::PROM_CHAMPION_SERIES)
        .any(|(metric, labels)| {
            (*metric == name || *metric == base) && labels.contains(&"pipeline")
        })
        || recorded
            .get(name)
            .is_some_and(|expr| promql_has_by_label(expr, "pipeline"))
}

/// Whether a `by (...)` clause of `expr` keeps `label`.
fn promql_has_by_label(expr: &str, label: &str) -> bool {
    expr.match_indices("by (").any(|(i, _)| {
        expr[i + 4..]
            .split(')')
            .next()
            .unwrap_or_default()
            .split(',')
            .any(|l| l.trim() == label)
    })
}

#[test]
fn pipeline_level_dashboard_queries_follow_the_pipeline_variable() {
    let recorded: BTreeMap<String, String> = rules()
        .into_iter()
        .filter_map(|r| Some((r.record?, r.expr)))
        .collect();
    let dashboards: BTreeMap<String, Json> = dashboards().into_iter().collect();
    let mut problems = Vec::new();
    let mut filtered = 0;
    for q in dashboard_queries(&provisioned_datasources()) {
        let Some(expr) = q.promql() else { continue };
        let selectors = promql_selectors(expr);
        if !selectors
            .iter()
            .any(|(name, _)| carries_pipeline(name, &recorded))
        {
            continue; // a series without a pipeline label (HTTP, up, exporter health)
        }
        for (name, matchers) in selectors {
            if !carries_pipeline(&name, &recorded) {
                continue;
            }
            let variable = dashboards[&q.dashboard]["templating"]["list"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "pipeline")
                .cloned();
            match variable {
                None => problems.push(format!(
                    "{}: reads {name}, which has a pipeline label, but the dashboard has no \
                     `pipeline` variable",
                    q.name()
                )),
                Some(v) => {
                    let definition = v["definition"].as_str().unwrap_or_default();
                    let source = promql_metric_names(definition);
                    if v["type"] != "query"
                        || v["multi"] != true
                        || v["includeAll"] != true
                        || !source.iter().any(|m| carries_pipeline(m, &recorded))
                    {
                        problems.push(format!(
                            "{}: the `pipeline` variable must be a multi-value query with All over \
                             a series that has the label, not {v}",
                            q.dashboard
                        ));
                    }
                }
            }
            if matchers
                .replace(' ', "")
                .contains(r#"pipeline=~"$pipeline""#)
            {
                filtered += 1;
            } else {
                problems.push(format!(
                    "{}: {name}{{{matchers}}} is not filtered by pipeline=~\"$pipeline\"",
                    q.name()
                ));
            }
        }
        // Grouping by model, stage or feature must keep pipelines apart.
        for label in ["model_name", "stage", "feature", "component_type"] {
            if promql_has_by_label(expr, label) && !promql_has_by_label(expr, "pipeline") {
                problems.push(format!(
                    "{}: groups by {label} without pipeline, merging pipelines whose names coincide: {expr}",
                    q.name()
                ));
            }
        }
    }
    assert!(
        filtered >= 10,
        "only {filtered} pipeline-filtered queries found"
    );
    assert_no_problems("dashboards and the pipeline variable", &problems);
}
