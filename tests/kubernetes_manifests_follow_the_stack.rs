//! The Kubernetes manifests (`deploy/kubernetes/`) follow the same sources as
//! the compose stack:
//!
//! - `monitoring/generated/prometheus-rules.yaml` holds one PrometheusRule per
//!   file of `prometheus/rules/`, with exactly that file's rule groups;
//! - `monitoring/generated/grafana-dashboards.yaml` holds one ConfigMap per
//!   dashboard of `grafana/dashboards/`, labelled for Grafana's sidecar, with
//!   exactly that dashboard's JSON;
//! - both are byte for byte what the generator below writes (so nobody edits
//!   them by hand), and a changed, added or removed rule or dashboard fails
//!   the checks (proven on a copy of the sources);
//! - the Grafana data sources are compose's, but for their URLs;
//! - the service and load generator Deployments run what compose runs, with
//!   its environment (the OTLP endpoints pointing at the collector), memory
//!   limits and hardening, the image of this crate's version, and probes on
//!   the compose healthcheck's path;
//! - the ServiceMonitor scrapes the Service whose name is the rules' `job`, at
//!   the interval of `prometheus/prometheus.yml`;
//! - exemplars as in compose: the Helm values turn on Prometheus' exemplar
//!   storage when compose does, and link the chart's Prometheus data source's
//!   `trace_id` exemplars to the Jaeger data source compose links them to.
//! - MLServer runs as compose's `mlserver` does: the ports of its
//!   settings.json behind a Service pipelens calls, its spans to the
//!   collector, its metrics scraped by a ServiceMonitor.
//!
//! Regenerate the generated files (the only way to change them):
//!
//! ```sh
//! UPDATE_KUBERNETES=1 cargo test --test kubernetes_manifests_follow_the_stack
//! ```
//!
//! Schema validation of every manifest (Kubernetes and Prometheus Operator
//! CRD schemas) is `scripts/validate-kubernetes`.

// The stack tests' file and compose helpers; the rest of `support` would
// bring the demo along.
#[allow(dead_code, unreachable_pub)]
#[path = "support/stack.rs"]
mod stack;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Deserialize as _;
use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;
use stack::{
    assert_no_problems, command_args, compose, environment, read, repo, yaml_file, yaml_str,
};

/// The command that rewrites the generated files.
const REGENERATE: &str =
    "UPDATE_KUBERNETES=1 cargo test --test kubernetes_manifests_follow_the_stack";
const RULES_DIR: &str = "prometheus/rules";
const DASHBOARDS_DIR: &str = "grafana/dashboards";
const GENERATED_RULES: &str = "deploy/kubernetes/monitoring/generated/prometheus-rules.yaml";
const GENERATED_DASHBOARDS: &str = "deploy/kubernetes/monitoring/generated/grafana-dashboards.yaml";
const APP_SERVICE: &str = "deploy/kubernetes/app/pipelens.yaml";
const APP_LOADGEN: &str = "deploy/kubernetes/app/loadgen.yaml";
const APP_COLLECTOR: &str = "deploy/kubernetes/app/otel-collector.yaml";
const BATCH_JOB: &str = "deploy/kubernetes/batch/job.yaml";
const APP_MLSERVER: &str = "deploy/kubernetes/app/mlserver.yaml";
const APP_POSTGRES: &str = "deploy/kubernetes/app/postgres.yaml";
/// The variable naming the run store: compose writes its URL, the
/// Deployment takes it from this Secret's key (the URL of a managed
/// Postgres belongs to the cluster, not to git).
const RUN_STORE_VAR: &str = "PIPELENS_RUN_STORE";
const RUN_STORE_SECRET: (&str, &str) = ("pipelens-run-store", "url");
const SERVICE_MONITORS: &str = "deploy/kubernetes/monitoring/servicemonitors.yaml";
const DATASOURCES: &str = "deploy/kubernetes/monitoring/grafana-datasources.yaml";
const HELM_VALUES: &str = "deploy/kubernetes/helm/kube-prometheus-stack-values.yaml";
/// The label kube-prometheus-stack's Prometheus selects ServiceMonitors and
/// PrometheusRules by: `release: <its Helm release name>`.
const RELEASE_LABEL: (&str, &str) = ("release", "kube-prometheus-stack");
/// The annotation the generated dashboard ConfigMaps name their Grafana
/// folder in (the sidecar's `folderAnnotation` in the Helm values).
const FOLDER_ANNOTATION: &str = "grafana_folder";
/// The data source kube-prometheus-stack's Grafana provisions itself.
const CHART_PROMETHEUS_UID: &str = "prometheus";

/// Every non-empty document of a multi-document YAML stream.
fn yaml_documents(text: &str) -> Result<Vec<Yaml>, String> {
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        let doc = Yaml::deserialize(de).map_err(|e| e.to_string())?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

fn manifest_objects(rel: &str) -> Vec<Yaml> {
    yaml_documents(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn find<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name:?}"))
}

// ------------------------------------------------------------ the sources

/// A rule file or dashboard of the compose stack.
#[derive(Clone, Debug)]
struct Source {
    /// Path from the repository root, `/`-separated: `prometheus/rules/alerts.yml`.
    rel: String,
    /// Path inside its directory without the extension: `alerts`.
    stem: String,
    file_name: String,
    text: String,
}

/// The files with one of `extensions` under `root/dir`, sorted by path;
/// subdirectories too when `recursive` (Grafana's file provider reads them;
/// Prometheus' `rule_files: [rules/*.yml]` glob does not).
fn sources(root: &Path, dir: &str, extensions: &[&str], recursive: bool) -> Vec<Source> {
    fn walk(base: &Path, at: &Path, recursive: bool, out: &mut Vec<PathBuf>) {
        let entries =
            fs::read_dir(at).unwrap_or_else(|e| panic!("cannot list {}: {e}", at.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                if recursive {
                    walk(base, &path, recursive, out);
                }
            } else {
                out.push(path.strip_prefix(base).expect("under base").to_owned());
            }
        }
    }
    let base = root.join(dir);
    let mut found = Vec::new();
    walk(&base, &base, recursive, &mut found);
    let mut out: Vec<Source> = found
        .into_iter()
        .filter_map(|inner| {
            let inner_str = inner.to_string_lossy().replace('\\', "/");
            if inner_str.split('/').any(|part| part.starts_with('.')) {
                return None; // editor and lock files
            }
            let ext = extensions
                .iter()
                .find(|ext| inner_str.ends_with(&format!(".{ext}")))?;
            Some(Source {
                rel: format!("{dir}/{inner_str}"),
                stem: inner_str[..inner_str.len() - ext.len() - 1].to_owned(),
                file_name: inner
                    .file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                text: read(base.join(&inner)),
            })
        })
        .collect();
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    out
}

fn rule_sources(root: &Path) -> Vec<Source> {
    sources(root, RULES_DIR, &["yml", "yaml"], false)
}

fn dashboard_sources(root: &Path) -> Vec<Source> {
    sources(root, DASHBOARDS_DIR, &["json"], true)
}

/// A DNS-1123 name made of `text`: lower case, runs of anything else than
/// letters and digits as one `-`.
fn dns_name(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_owned()
}

fn rule_object_name(source: &Source) -> String {
    let name = dns_name(&source.stem);
    if name.starts_with("pipelens") {
        name
    } else {
        format!("pipelens-{name}")
    }
}

fn dashboard_object_name(source: &Source) -> String {
    format!("grafana-dashboard-{}", dns_name(&source.stem))
}

/// A ConfigMap key (`[-._a-zA-Z0-9]+`) for the dashboard's file name.
fn dashboard_key(source: &Source) -> String {
    source
        .file_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The Grafana folder of the compose stack's dashboard provider.
fn dashboard_folder(root: &Path) -> String {
    let path = root.join("grafana/provisioning/dashboards/dashboards.yml");
    let provisioning: Yaml = serde_yaml_ng::from_str(&read(&path)).expect("dashboards.yml");
    provisioning["providers"][0]["folder"]
        .as_str()
        .unwrap_or("pipelens")
        .to_owned()
}

// --------------------------------------------------------- the generator

fn indent(text: &str, prefix: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if !line.is_empty() {
            out.push_str(prefix);
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn header(what: &str) -> String {
    format!(
        "# generated, do not edit: {what}\n\
         # Regenerate with: {REGENERATE}\n"
    )
}

fn parse_source_yaml(source: &Source) -> Yaml {
    serde_yaml_ng::from_str(&source.text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", source.rel))
}

/// The rule file under `spec:`, comments and layout kept, if that parses back
/// to the same groups; otherwise its groups re-serialised.
fn rule_spec(source: &Source) -> String {
    let want = parse_source_yaml(source);
    let verbatim = indent(&source.text, "  ");
    let parsed = serde_yaml_ng::from_str::<Yaml>(&format!("spec:\n{verbatim}"))
        .ok()
        .map(|doc| doc["spec"].clone());
    if parsed.as_ref() == Some(&want) {
        verbatim
    } else {
        indent(
            &serde_yaml_ng::to_string(&want).expect("serialise rule groups"),
            "  ",
        )
    }
}

fn render_rules(sources: &[Source]) -> String {
    let mut out = header(
        "one PrometheusRule (Prometheus Operator) per rule file of prometheus/rules/,\n\
         # holding that file's rule groups as they are, comments included.",
    );
    let mut names = BTreeSet::new();
    for source in sources {
        let name = rule_object_name(source);
        assert!(
            names.insert(name.clone()),
            "two rule files make the PrometheusRule name {name}: rename one"
        );
        let (label, value) = RELEASE_LABEL;
        let _ = write!(
            out,
            "---\n\
             # From {rel}\n\
             apiVersion: monitoring.coreos.com/v1\n\
             kind: PrometheusRule\n\
             metadata:\n  \
               name: {name}\n  \
               labels:\n    \
                 app.kubernetes.io/name: pipelens\n    \
                 app.kubernetes.io/part-of: pipelens\n    \
                 {label}: {value}\n\
             spec:\n{spec}",
            rel = source.rel,
            spec = rule_spec(source),
        );
    }
    out
}

/// The dashboard's text as a YAML literal block (the file as it is), or as a
/// double-quoted string if a block would not read back the same.
fn dashboard_value(text: &str) -> String {
    let block_fits = text.ends_with('\n')
        && !text.ends_with("\n\n")
        && !text.starts_with([' ', '\t', '\n', '\r'])
        && !text.contains('\r');
    if block_fits {
        let block = format!("|\n{}", indent(text, "    "));
        let parsed = serde_yaml_ng::from_str::<Yaml>(&format!("k: {block}")).ok();
        if parsed.as_ref().and_then(|doc| doc["k"].as_str()) == Some(text) {
            return block;
        }
    }
    format!(
        "{}\n",
        serde_json::to_string(text).expect("a string serialises")
    )
}

fn render_dashboards(sources: &[Source], folder: &str) -> String {
    let mut out = header(
        "one ConfigMap per dashboard of grafana/dashboards/, labelled for the\n\
         # Grafana sidecar of kube-prometheus-stack, holding the dashboard's JSON as it is.",
    );
    let mut names = BTreeSet::new();
    for source in sources {
        let name = dashboard_object_name(source);
        assert!(
            names.insert(name.clone()),
            "two dashboards make the ConfigMap name {name}: rename one"
        );
        let _ = write!(
            out,
            "---\n\
             # From {rel}\n\
             apiVersion: v1\n\
             kind: ConfigMap\n\
             metadata:\n  \
               name: {name}\n  \
               labels:\n    \
                 app.kubernetes.io/name: pipelens\n    \
                 app.kubernetes.io/part-of: pipelens\n    \
                 grafana_dashboard: \"1\"\n  \
               annotations:\n    \
                 {FOLDER_ANNOTATION}: {folder}\n\
             data:\n  \
               {key}: {value}",
            rel = source.rel,
            key = dashboard_key(source),
            value = dashboard_value(&source.text),
        );
    }
    out
}

fn write_atomically(rel: &str, text: &str) {
    let path = repo().join(rel);
    fs::create_dir_all(path.parent().expect("parent")).expect("create the directory");
    let tmp = path.with_extension("yaml.tmp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
    fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// With `UPDATE_KUBERNETES=1`, rewrites the generated files once, before any
/// test reads them.
fn update_if_asked() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if std::env::var("UPDATE_KUBERNETES").is_ok_and(|v| v == "1") {
            write_atomically(GENERATED_RULES, &render_rules(&rule_sources(&repo())));
            write_atomically(
                GENERATED_DASHBOARDS,
                &render_dashboards(&dashboard_sources(&repo()), &dashboard_folder(&repo())),
            );
            eprintln!("UPDATE_KUBERNETES=1: wrote {GENERATED_RULES} and {GENERATED_DASHBOARDS}");
        }
    });
}

// ------------------------------------------------------------ the checks

/// Where `got` differs from `want`, as paths (`groups["pipelens.alerts"]
/// .rules["HighErrorRate"].expr`), at most `limit` of them.
fn differences(want: &Json, got: &Json, path: &str, out: &mut Vec<String>, limit: usize) {
    fn short(value: Option<&Json>) -> String {
        let text = value.map_or_else(|| "nothing".to_owned(), Json::to_string);
        if text.chars().count() > 80 {
            format!("{}…", text.chars().take(80).collect::<String>())
        } else {
            text
        }
    }
    fn item_label(item: &Json, index: usize) -> String {
        ["alert", "record", "name", "title", "uid"]
            .iter()
            .find_map(|key| item.get(key).and_then(Json::as_str))
            .map_or_else(|| index.to_string(), |label| format!("{label:?}"))
    }
    if want == got || out.len() >= limit {
        return;
    }
    match (want, got) {
        (Json::Object(w), Json::Object(g)) => {
            let keys: BTreeSet<&String> = w.keys().chain(g.keys()).collect();
            for key in keys {
                let at = format!("{path}.{key}");
                match (w.get(key), g.get(key)) {
                    (Some(a), Some(b)) => differences(a, b, &at, out, limit),
                    (a, b) => {
                        if out.len() < limit {
                            out.push(format!(
                                "{at}: {} in the source, {} in the manifest",
                                short(a),
                                short(b)
                            ));
                        }
                    }
                }
            }
        }
        (Json::Array(w), Json::Array(g)) => {
            if w.len() != g.len() {
                out.push(format!(
                    "{path}: {} items in the source, {} in the manifest",
                    w.len(),
                    g.len()
                ));
            }
            for (i, (a, b)) in w.iter().zip(g).enumerate() {
                differences(a, b, &format!("{path}[{}]", item_label(a, i)), out, limit);
            }
        }
        (a, b) => out.push(format!(
            "{path}: {} in the source, {} in the manifest",
            short(Some(a)),
            short(Some(b))
        )),
    }
}

fn yaml_to_json(value: &Yaml) -> Json {
    serde_json::to_value(value).unwrap_or(Json::Null)
}

/// Objects of `kind` in a generated manifest by name, with a problem for
/// anything else in it.
fn objects_by_name<'a>(
    docs: &'a [Yaml],
    kind: &str,
    api_version: &str,
    problems: &mut Vec<String>,
) -> BTreeMap<String, &'a Yaml> {
    let mut by_name = BTreeMap::new();
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().unwrap_or("").to_owned();
        if doc["kind"].as_str() != Some(kind) || doc["apiVersion"].as_str() != Some(api_version) {
            problems.push(format!(
                "{name:?}: a {} {}, not a {api_version} {kind}",
                doc["apiVersion"].as_str().unwrap_or("?"),
                doc["kind"].as_str().unwrap_or("?")
            ));
        } else if by_name.insert(name.clone(), doc).is_some() {
            problems.push(format!("{kind} {name} appears twice"));
        }
    }
    by_name
}

/// How the PrometheusRules of `manifest` differ from the rule files.
fn rule_problems(sources: &[Source], manifest: &str) -> Vec<String> {
    let docs = match yaml_documents(manifest) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("the manifest does not parse: {e}")],
    };
    let mut problems = Vec::new();
    let mut objects = objects_by_name(
        &docs,
        "PrometheusRule",
        "monitoring.coreos.com/v1",
        &mut problems,
    );
    for source in sources {
        let name = rule_object_name(source);
        let Some(object) = objects.remove(&name) else {
            problems.push(format!("{}: no PrometheusRule {name}", source.rel));
            continue;
        };
        let (label, value) = RELEASE_LABEL;
        if object["metadata"]["labels"][label].as_str() != Some(value) {
            problems.push(format!("PrometheusRule {name}: no label {label}: {value}"));
        }
        let want = match serde_yaml_ng::from_str::<Yaml>(&source.text) {
            Ok(want) => want,
            Err(e) => {
                problems.push(format!("{} is not YAML: {e}", source.rel));
                continue;
            }
        };
        let keys = |v: &Yaml| -> Vec<String> {
            v.as_mapping()
                .map(|m| m.keys().filter_map(yaml_str).collect())
                .unwrap_or_default()
        };
        if keys(&want) != ["groups"] {
            problems.push(format!(
                "{}: a rule file holds `groups` only, not {:?}",
                source.rel,
                keys(&want)
            ));
        }
        if keys(&object["spec"]) != ["groups"] {
            problems.push(format!(
                "PrometheusRule {name}: spec holds `groups` only, not {:?}",
                keys(&object["spec"])
            ));
        }
        if want["groups"] != object["spec"]["groups"] {
            let mut found = Vec::new();
            differences(
                &yaml_to_json(&want["groups"]),
                &yaml_to_json(&object["spec"]["groups"]),
                "groups",
                &mut found,
                10,
            );
            if found.is_empty() {
                found.push("groups differ".to_owned());
            }
            for difference in found {
                problems.push(format!(
                    "{} vs PrometheusRule {name}: {difference}",
                    source.rel
                ));
            }
        }
    }
    for name in objects.keys() {
        problems.push(format!(
            "PrometheusRule {name} has no rule file under {RULES_DIR}/ (removed or renamed?)"
        ));
    }
    problems
}

/// How the dashboard ConfigMaps of `manifest` differ from the dashboards.
fn dashboard_problems(sources: &[Source], manifest: &str) -> Vec<String> {
    let docs = match yaml_documents(manifest) {
        Ok(docs) => docs,
        Err(e) => return vec![format!("the manifest does not parse: {e}")],
    };
    let mut problems = Vec::new();
    let mut objects = objects_by_name(&docs, "ConfigMap", "v1", &mut problems);
    for source in sources {
        let name = dashboard_object_name(source);
        let Some(object) = objects.remove(&name) else {
            problems.push(format!("{}: no ConfigMap {name}", source.rel));
            continue;
        };
        if object["metadata"]["labels"]["grafana_dashboard"].as_str() != Some("1") {
            problems.push(format!(
                "ConfigMap {name}: no label grafana_dashboard: \"1\" (the sidecar would skip it)"
            ));
        }
        let key = dashboard_key(source);
        let data = object["data"].as_mapping().cloned().unwrap_or_default();
        let keys: Vec<String> = data.keys().filter_map(yaml_str).collect();
        if keys != [key.clone()] {
            problems.push(format!(
                "ConfigMap {name}: data holds {keys:?}, not just {key:?}"
            ));
        }
        let want: Json = match serde_json::from_str(&source.text) {
            Ok(want) => want,
            Err(e) => {
                problems.push(format!("{} is not JSON: {e}", source.rel));
                continue;
            }
        };
        let got: Json = match object["data"][key.as_str()]
            .as_str()
            .map(serde_json::from_str)
        {
            Some(Ok(got)) => got,
            Some(Err(e)) => {
                problems.push(format!("ConfigMap {name}: {key} is not JSON: {e}"));
                continue;
            }
            None => {
                problems.push(format!("ConfigMap {name}: no {key}"));
                continue;
            }
        };
        if want != got {
            let mut found = Vec::new();
            differences(&want, &got, "", &mut found, 10);
            for difference in found {
                problems.push(format!("{} vs ConfigMap {name}: {difference}", source.rel));
            }
        }
    }
    for name in objects.keys() {
        problems.push(format!(
            "ConfigMap {name} has no dashboard under {DASHBOARDS_DIR}/ (removed or renamed?)"
        ));
    }
    problems
}

fn out_of_date(what: &str, problems: &[String]) -> String {
    format!(
        "{what}: {} difference(s):\n  - {}\n\nRegenerate the file: {REGENERATE}",
        problems.len(),
        problems.join("\n  - ")
    )
}

#[test]
fn the_prometheus_rules_hold_exactly_the_rule_files() {
    update_if_asked();
    let sources = rule_sources(&repo());
    assert!(!sources.is_empty(), "no rule file under {RULES_DIR}/");
    let problems = rule_problems(&sources, &read(GENERATED_RULES));
    assert!(
        problems.is_empty(),
        "{}",
        out_of_date(
            &format!("{GENERATED_RULES} does not hold the rule groups of {RULES_DIR}/"),
            &problems
        )
    );
}

#[test]
fn the_dashboard_config_maps_hold_exactly_the_dashboards() {
    update_if_asked();
    let sources = dashboard_sources(&repo());
    assert!(!sources.is_empty(), "no dashboard under {DASHBOARDS_DIR}/");
    let problems = dashboard_problems(&sources, &read(GENERATED_DASHBOARDS));
    assert!(
        problems.is_empty(),
        "{}",
        out_of_date(
            &format!("{GENERATED_DASHBOARDS} does not hold the dashboards of {DASHBOARDS_DIR}/"),
            &problems
        )
    );
}

#[test]
fn the_generated_files_are_what_the_generator_writes() {
    update_if_asked();
    let expected = [
        (GENERATED_RULES, render_rules(&rule_sources(&repo()))),
        (
            GENERATED_DASHBOARDS,
            render_dashboards(&dashboard_sources(&repo()), &dashboard_folder(&repo())),
        ),
    ];
    let stale: Vec<String> = expected
        .iter()
        .filter(|(rel, want)| fs::read_to_string(repo().join(rel)).ok().as_ref() != Some(want))
        .map(|(rel, _)| {
            format!(
                "{rel} differs from what the generator writes (a source's comments or layout \
                 changed, or the file was edited by hand: it is generated)"
            )
        })
        .collect();
    assert!(
        stale.is_empty(),
        "{}",
        out_of_date("generated files", &stale)
    );
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create the copy");
    for entry in fs::read_dir(from).expect("list the sources") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_tree(&path, &target);
        } else {
            fs::copy(&path, &target).expect("copy a source");
        }
    }
}

/// The checks above on a copy of the sources: the manifest rendered from the
/// copy passes, then one changed rule or dashboard, one added and one removed
/// file each fail it with a message that names them.
#[test]
fn a_changed_added_or_removed_rule_or_dashboard_fails_the_checks() {
    let copy = tempfile::tempdir().expect("tempdir");
    let root = copy.path();
    copy_tree(&repo().join(RULES_DIR), &root.join(RULES_DIR));
    copy_tree(&repo().join(DASHBOARDS_DIR), &root.join(DASHBOARDS_DIR));

    // Rules.
    let rules = rule_sources(root);
    let manifest = render_rules(&rules);
    assert_no_problems(
        "a manifest rendered from the rule files",
        &rule_problems(&rules, &manifest),
    );
    let first = &rules[0];
    let mut changed = parse_source_yaml(first);
    let rule = changed
        .get_mut("groups")
        .and_then(|g| g.get_mut(0))
        .and_then(|g| g.get_mut("rules"))
        .and_then(|r| r.get_mut(0))
        .expect("the first rule file has a rule");
    let rule_name = yaml_str(&rule["alert"])
        .or_else(|| yaml_str(&rule["record"]))
        .expect("alert or record");
    rule["expr"] = Yaml::String("vector(1)".to_owned());
    let path = root.join(&first.rel);
    fs::write(&path, serde_yaml_ng::to_string(&changed).expect("yaml")).expect("write");
    let problems = rule_problems(&rule_sources(root), &manifest);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&rule_name) && p.contains("expr")),
        "a changed expression of {rule_name} in {} went unnoticed: {problems:?}",
        first.rel
    );
    fs::write(&path, &first.text).expect("restore");
    fs::write(root.join(RULES_DIR).join("zz-extra.yml"), &first.text).expect("add");
    let problems = rule_problems(&rule_sources(root), &manifest);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("zz-extra.yml") && p.contains("no PrometheusRule")),
        "an added rule file went unnoticed: {problems:?}"
    );
    fs::remove_file(root.join(RULES_DIR).join("zz-extra.yml")).expect("remove");
    fs::remove_file(&path).expect("remove");
    let problems = rule_problems(&rule_sources(root), &manifest);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&rule_object_name(first)) && p.contains("no rule file")),
        "a removed rule file went unnoticed: {problems:?}"
    );

    // Dashboards.
    let folder = "pipelens";
    let dashboards = dashboard_sources(root);
    let manifest = render_dashboards(&dashboards, folder);
    assert_no_problems(
        "a manifest rendered from the dashboards",
        &dashboard_problems(&dashboards, &manifest),
    );
    let first = &dashboards[0];
    let mut changed: Json = serde_json::from_str(&first.text).expect("json");
    changed["title"] = Json::String("Renamed".to_owned());
    let path = root.join(&first.rel);
    fs::write(&path, serde_json::to_string_pretty(&changed).expect("json")).expect("write");
    let problems = dashboard_problems(&dashboard_sources(root), &manifest);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(".title") && p.contains("Renamed")),
        "a changed title of {} went unnoticed: {problems:?}",
        first.rel
    );
    fs::write(&path, &first.text).expect("restore");
    fs::write(root.join(DASHBOARDS_DIR).join("zz-extra.json"), &first.text).expect("add");
    let problems = dashboard_problems(&dashboard_sources(root), &manifest);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("zz-extra.json") && p.contains("no ConfigMap")),
        "an added dashboard went unnoticed: {problems:?}"
    );
    fs::remove_file(root.join(DASHBOARDS_DIR).join("zz-extra.json")).expect("remove");
    fs::remove_file(&path).expect("remove");
    let problems = dashboard_problems(&dashboard_sources(root), &manifest);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&dashboard_object_name(first)) && p.contains("no dashboard")),
        "a removed dashboard went unnoticed: {problems:?}"
    );
}

#[test]
fn the_generator_keeps_odd_sources_intact() {
    // A rule file whose text cannot be indented under spec: as it is.
    let odd = Source {
        rel: "prometheus/rules/odd.yml".to_owned(),
        stem: "odd".to_owned(),
        file_name: "odd.yml".to_owned(),
        text: "---\ngroups:\n- name: g\n  rules:\n  - record: r\n    expr: vector(1)\n".to_owned(),
    };
    let manifest = render_rules(std::slice::from_ref(&odd));
    assert_no_problems("odd rule file", &rule_problems(&[odd], &manifest));
    // Dashboards that a literal block would not carry unchanged.
    for text in [
        "  {\"title\": \"x\"}\n",
        "{\"a\": 1}",
        "{\"a\":\r\n 1}\r\n",
        "{}\n\n",
    ] {
        let odd = Source {
            rel: "grafana/dashboards/Odd Name.json".to_owned(),
            stem: "Odd Name".to_owned(),
            file_name: "Odd Name.json".to_owned(),
            text: text.to_owned(),
        };
        let manifest = render_dashboards(std::slice::from_ref(&odd), "f");
        assert_no_problems(
            &format!("dashboard {text:?}"),
            &dashboard_problems(&[odd], &manifest),
        );
    }
}

// ------------------------------------------------- Grafana data sources

fn datasource_uids_in(value: &Json, out: &mut BTreeSet<String>) {
    match value {
        Json::Object(map) => {
            if let Some(uid) = map
                .get("datasource")
                .and_then(|d| d.get("uid"))
                .and_then(Json::as_str)
            {
                if !uid.starts_with('$') && !uid.starts_with("-- ") {
                    out.insert(uid.to_owned());
                }
            }
            map.values().for_each(|v| datasource_uids_in(v, out));
        }
        Json::Array(items) => items.iter().for_each(|v| datasource_uids_in(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_data_sources_are_composes_but_for_their_urls() {
    let compose: Yaml = yaml_file("grafana/provisioning/datasources/datasources.yml");
    let compose: BTreeMap<String, &Yaml> = compose["datasources"]
        .as_sequence()
        .expect("compose data sources")
        .iter()
        .map(|d| (yaml_str(&d["uid"]).expect("uid"), d))
        .collect();
    let objects = manifest_objects(DATASOURCES);
    assert_eq!(objects.len(), 1, "{DATASOURCES}: one ConfigMap");
    let config_map = &objects[0];
    assert_eq!(
        config_map["metadata"]["labels"]["grafana_datasource"].as_str(),
        Some("1"),
        "{DATASOURCES}: the sidecar loads ConfigMaps labelled grafana_datasource: \"1\""
    );
    let data = config_map["data"].as_mapping().expect("data");
    assert_eq!(data.len(), 1, "{DATASOURCES}: one provisioning file");
    let provisioning: Yaml = serde_yaml_ng::from_str(
        data.values()
            .next()
            .and_then(Yaml::as_str)
            .expect("a string"),
    )
    .expect("the provisioning file is YAML");

    let mut problems = Vec::new();
    let mut provided = BTreeSet::from([CHART_PROMETHEUS_UID.to_owned()]);
    for datasource in provisioning["datasources"]
        .as_sequence()
        .expect("datasources")
    {
        let uid = yaml_str(&datasource["uid"]).unwrap_or_default();
        provided.insert(uid.clone());
        let Some(theirs) = compose.get(&uid) else {
            problems.push(format!(
                "data source {uid:?} is not in compose's provisioning"
            ));
            continue;
        };
        let mut ours = datasource.clone();
        let mut theirs = (*theirs).clone();
        let url = ours.as_mapping_mut().and_then(|m| m.remove("url"));
        if let Some(m) = theirs.as_mapping_mut() {
            m.remove("url");
        }
        if !url
            .as_ref()
            .and_then(Yaml::as_str)
            .is_some_and(|u| u.contains(".svc"))
        {
            problems.push(format!(
                "data source {uid}: url {url:?} is not a cluster Service"
            ));
        }
        if ours != theirs {
            let mut found = Vec::new();
            differences(
                &yaml_to_json(&theirs),
                &yaml_to_json(&ours),
                &uid,
                &mut found,
                10,
            );
            problems.extend(found.into_iter().map(|d| format!("data source {d}")));
        }
    }
    for uid in compose.keys() {
        if !provided.contains(uid) {
            problems.push(format!("compose's data source {uid:?} is missing"));
        }
    }
    let mut used = BTreeSet::new();
    for dashboard in dashboard_sources(&repo()) {
        let json: Json = serde_json::from_str(&dashboard.text).expect("dashboard JSON");
        datasource_uids_in(&json, &mut used);
    }
    for uid in used.difference(&provided) {
        problems.push(format!(
            "the dashboards use data source {uid:?}, which is not provided"
        ));
    }
    // The chart's own Prometheus data source must keep the uid the
    // dashboards use, and its sidecars must find these ConfigMaps.
    let values = yaml_file(HELM_VALUES);
    let sidecar = &values["grafana"]["sidecar"];
    if sidecar["datasources"]["uid"].as_str() != Some(CHART_PROMETHEUS_UID) {
        problems.push(format!(
            "{HELM_VALUES}: grafana.sidecar.datasources.uid is not {CHART_PROMETHEUS_UID:?}"
        ));
    }
    if sidecar["dashboards"]["folderAnnotation"].as_str() != Some(FOLDER_ANNOTATION) {
        problems.push(format!(
            "{HELM_VALUES}: grafana.sidecar.dashboards.folderAnnotation is not {FOLDER_ANNOTATION:?}"
        ));
    }
    for what in ["dashboards", "datasources"] {
        if sidecar[what]["searchNamespace"].as_str() != Some("ALL") {
            problems.push(format!(
                "{HELM_VALUES}: grafana.sidecar.{what}.searchNamespace is not ALL \
                 (the ConfigMaps live in the pipelens namespace)"
            ));
        }
    }
    assert_no_problems("Grafana data sources", &problems);
}

// --------------------------------------------- the Deployments vs compose

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

fn compose_service(name: &str) -> Yaml {
    compose()["services"][name].clone()
}

/// The service's environment, `${VAR:-default}` values resolved to their
/// defaults.
fn compose_environment(service: &Yaml) -> BTreeMap<String, String> {
    environment(service)
        .into_iter()
        .map(|(k, v)| (k, compose_default(&v)))
        .collect()
}

/// The service's command list, `${VAR:-default}` resolved to the defaults.
fn compose_command(service: &Yaml) -> Vec<String> {
    assert!(service["command"].is_sequence(), "a command list");
    command_args(service)
        .iter()
        .map(|arg| compose_default(arg))
        .collect()
}

fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let at = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    Some((text[..at].parse().ok()?, &text[at..]))
}

/// A compose memory size (`256m`, `1g`, `512mb`: binary units) in bytes.
fn compose_memory(text: &str) -> Option<u64> {
    let (number, unit) = split_number(text)?;
    let factor: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return None,
    };
    Some(number * factor)
}

/// A Kubernetes memory quantity (`256Mi`, `1G`, `1000`) in bytes.
fn kubernetes_memory(text: &str) -> Option<u64> {
    let (number, unit) = split_number(text)?;
    let factor: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => return None,
    };
    Some(number * factor)
}

fn pod_spec(deployment: &Yaml) -> &Yaml {
    &deployment["spec"]["template"]["spec"]
}

fn container<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    pod_spec(deployment)["containers"]
        .as_sequence()
        .and_then(|cs| cs.iter().find(|c| c["name"].as_str() == Some(name)))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container's plain `value` variables (downward API ones are left out).
fn container_env(container: &Yaml) -> BTreeMap<String, String> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((yaml_str(&e["name"])?, yaml_str(&e["value"])?)))
        .collect()
}

/// The Secret name and key the container's variable `name` is read from
/// (`valueFrom.secretKeyRef`), if it is set that way and only that way.
fn container_secret_ref<'a>(container: &'a Yaml, name: &str) -> Option<(&'a str, &'a str)> {
    let entry = container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))?;
    if !entry["value"].is_null() {
        return None;
    }
    let secret = &entry["valueFrom"]["secretKeyRef"];
    Some((secret["name"].as_str()?, secret["key"].as_str()?))
}

fn named_port(container: &Yaml, name: &str) -> Option<u64> {
    container["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?["containerPort"]
        .as_u64()
}

fn service_port(service: &Yaml, name: &str) -> Option<(u64, String)> {
    let port = service["spec"]["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"].as_str() == Some(name))?;
    Some((port["port"].as_u64()?, yaml_str(&port["targetPort"])?))
}

fn labels_select(selector: &Yaml, labels: &Yaml) -> bool {
    selector
        .as_mapping()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// What the pipelens container's OTLP endpoint variable `name` must say: the
/// collector Service on its port for the variable's protocol, with the
/// signal's path for OTLP/HTTP.
fn collector_endpoint(name: &str, env: &BTreeMap<String, String>, collector: &Yaml) -> String {
    let signal = name
        .strip_prefix("OTEL_EXPORTER_OTLP_")
        .and_then(|s| s.strip_suffix("ENDPOINT"))
        .expect("an endpoint variable");
    let protocol = env
        .get(&format!("OTEL_EXPORTER_OTLP_{signal}PROTOCOL"))
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .map_or("http/protobuf", String::as_str);
    let collector_name = collector["metadata"]["name"].as_str().expect("name");
    let (port_name, path) = if protocol == "grpc" {
        ("otlp-grpc", String::new())
    } else {
        let signal = signal.trim_end_matches('_').to_ascii_lowercase();
        (
            "otlp-http",
            if signal.is_empty() {
                String::new()
            } else {
                format!("/v1/{signal}")
            },
        )
    };
    let (port, _) = service_port(collector, port_name)
        .unwrap_or_else(|| panic!("the collector Service has no port {port_name}"));
    format!("http://{collector_name}:{port}{path}")
}

#[test]
fn the_service_runs_what_compose_runs_with_its_environment() {
    let compose = compose_service("pipelens");
    let objects = manifest_objects(APP_SERVICE);
    let collector_objects = manifest_objects(APP_COLLECTOR);
    let deployment = find(&objects, "Deployment", "pipelens");
    let service = find(&objects, "Service", "pipelens");
    let pdb = find(&objects, "PodDisruptionBudget", "pipelens");
    let collector = find(&collector_objects, "Service", "otel-collector");
    let ctr = container(deployment, "pipelens");
    let env = container_env(ctr);
    let mut problems = Vec::new();

    let image = format!("pipelens:{}", env!("CARGO_PKG_VERSION"));
    if ctr["image"].as_str() != Some(image.as_str()) {
        problems.push(format!(
            "image is {:?}, not {image:?} (Cargo.toml's version)",
            ctr["image"]
        ));
    }
    let args: Vec<String> = ctr["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(yaml_str)
        .collect();
    if args != compose_command(&compose) {
        problems.push(format!(
            "args {args:?}, compose runs {:?}",
            compose_command(&compose)
        ));
    }

    for (name, theirs) in compose_environment(&compose) {
        if name == RUN_STORE_VAR {
            let from = container_secret_ref(ctr, &name);
            if from != Some(RUN_STORE_SECRET) {
                problems.push(format!(
                    "{name} is not taken from the Secret {:?} key {:?} (secretKeyRef: {from:?})",
                    RUN_STORE_SECRET.0, RUN_STORE_SECRET.1
                ));
            }
            continue;
        }
        let Some(ours) = env.get(&name) else {
            problems.push(format!("compose sets {name}, the Deployment does not"));
            continue;
        };
        if name.starts_with("OTEL_EXPORTER_OTLP_") && name.ends_with("ENDPOINT") {
            let want = collector_endpoint(&name, &env, collector);
            if *ours != want {
                problems.push(format!("{name} is {ours:?}, not the collector's {want:?}"));
            }
        } else if name == "OTEL_RESOURCE_ATTRIBUTES" {
            let keys = |s: &str| -> BTreeSet<String> {
                s.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, _)| k.trim().to_owned())
                    .collect()
            };
            let missing: Vec<String> = keys(&theirs).difference(&keys(ours)).cloned().collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "OTEL_RESOURCE_ATTRIBUTES lacks compose's {missing:?}"
                ));
            }
        } else if *ours != theirs {
            problems.push(format!("{name} is {ours:?}, compose says {theirs:?}"));
        }
    }

    // The listen port, the Service and the probes.
    let addr_port: Option<u64> = env
        .get("PIPELENS_ADDR")
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok());
    if addr_port.is_none() || named_port(ctr, "http") != addr_port {
        problems.push(format!(
            "container port `http` {:?} is not PIPELENS_ADDR's {addr_port:?}",
            named_port(ctr, "http")
        ));
    }
    if service_port(service, "http").map(|(_, target)| target) != Some("http".to_owned()) {
        problems
            .push("the Service's port `http` does not target the container's `http`".to_owned());
    }
    let compose_health = compose["healthcheck"]["test"]
        .as_sequence()
        .and_then(|t| {
            t.iter()
                .filter_map(yaml_str)
                .find(|a| a.starts_with("http"))
        })
        .and_then(|url| url.splitn(4, '/').nth(3).map(|p| format!("/{p}")))
        .expect("compose's healthcheck URL");
    for (probe, path) in [
        ("livenessProbe", compose_health.as_str()),
        ("readinessProbe", "/ready"),
    ] {
        let get = &ctr[probe]["httpGet"];
        if get["path"].as_str() != Some(path) || get["port"].as_str() != Some("http") {
            problems.push(format!("{probe} is not GET {path} on port http: {get:?}"));
        }
    }
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (what, selector) in [
        ("Deployment", &deployment["spec"]["selector"]["matchLabels"]),
        ("Service", &service["spec"]["selector"]),
        (
            "PodDisruptionBudget",
            &pdb["spec"]["selector"]["matchLabels"],
        ),
    ] {
        if !labels_select(selector, pod_labels) {
            problems.push(format!(
                "the {what} selector {selector:?} does not select the pods"
            ));
        }
    }

    // The fault knobs file: compose mounts deploy/pipelens/, Kubernetes a ConfigMap.
    let file = env
        .get("PIPELENS_FAULTS_FILE")
        .expect("PIPELENS_FAULTS_FILE");
    let (dir, file_name) = file.rsplit_once('/').expect("an absolute path");
    let mount = ctr["volumeMounts"]
        .as_sequence()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"].as_str() == Some(dir)));
    let volume = mount.and_then(|m| {
        pod_spec(deployment)["volumes"]
            .as_sequence()?
            .iter()
            .find(|v| v["name"] == m["name"])
    });
    match volume.and_then(|v| v["configMap"]["name"].as_str()) {
        None => problems.push(format!("{dir} is not a mounted ConfigMap")),
        Some(name) => {
            let config_map = find(&objects, "ConfigMap", name);
            let ours: Option<Json> = config_map["data"][file_name]
                .as_str()
                .and_then(|t| serde_json::from_str(t).ok());
            let compose_mount = compose["volumes"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(yaml_str)
                .find_map(|v| {
                    let mut parts = v.split(':');
                    let host = parts.next()?;
                    (parts.next()? == dir).then(|| host.trim_start_matches("./").to_owned())
                })
                .expect("compose mounts the fault knobs directory");
            let theirs: Json =
                serde_json::from_str(&read(Path::new(&compose_mount).join(file_name)))
                    .expect("the compose fault knobs file is JSON");
            if ours.as_ref() != Some(&theirs) {
                problems.push(format!(
                    "ConfigMap {name} {file_name} is {ours:?}, compose mounts {theirs}"
                ));
            }
        }
    }
    memory_matches("pipelens", &compose, ctr, &mut problems);
    assert_no_problems(APP_SERVICE, &problems);
}

fn memory_matches(what: &str, compose: &Yaml, container: &Yaml, problems: &mut Vec<String>) {
    let theirs = yaml_str(&compose["mem_limit"]).and_then(|m| compose_memory(&m));
    let ours =
        yaml_str(&container["resources"]["limits"]["memory"]).and_then(|m| kubernetes_memory(&m));
    if theirs.is_none() || ours != theirs {
        problems.push(format!(
            "{what}: memory limit {:?}, compose's mem_limit {:?}",
            container["resources"]["limits"]["memory"], compose["mem_limit"]
        ));
    }
}

#[test]
fn the_load_generator_runs_what_compose_runs() {
    let compose = compose_service("loadgen");
    let objects = manifest_objects(APP_LOADGEN);
    let deployment = find(&objects, "Deployment", "pipelens-loadgen");
    let ctr = container(deployment, "loadgen");
    let mut problems = Vec::new();
    let image = format!("pipelens:{}", env!("CARGO_PKG_VERSION"));
    if ctr["image"].as_str() != Some(image.as_str()) {
        problems.push(format!("image is {:?}, not {image:?}", ctr["image"]));
    }
    let args: Vec<String> = ctr["args"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(yaml_str)
        .collect();
    let theirs = compose_command(&compose);
    if args != theirs {
        problems.push(format!(
            "args {args:?}, compose runs (with its defaults) {theirs:?}"
        ));
    }
    let env = container_env(ctr);
    let theirs = compose_environment(&compose);
    if env != theirs {
        problems.push(format!("environment {env:?}, compose's {theirs:?}"));
    }
    memory_matches("loadgen", &compose, ctr, &mut problems);
    assert_no_problems(APP_LOADGEN, &problems);
}

/// Every container of the app: non-root, read-only root, no privilege
/// escalation, no capabilities, seccomp, requests and limits (compose's
/// read_only, cap_drop ALL, no-new-privileges and mem_limit).
#[test]
fn every_pod_is_hardened_and_bounded() {
    let mut problems = Vec::new();
    let mut deployments = 0;
    let mut stateful_sets = 0;
    let mut jobs = 0;
    for rel in [
        APP_SERVICE,
        APP_LOADGEN,
        APP_COLLECTOR,
        APP_MLSERVER,
        APP_POSTGRES,
        BATCH_JOB,
    ] {
        for deployment in manifest_objects(rel).iter().filter(|o| {
            matches!(
                o["kind"].as_str(),
                Some("Deployment" | "StatefulSet" | "Job")
            )
        }) {
            match deployment["kind"].as_str() {
                Some("Job") => jobs += 1,
                Some("StatefulSet") => stateful_sets += 1,
                _ => deployments += 1,
            }
            let name = deployment["metadata"]["name"].as_str().unwrap_or("?");
            let pod = pod_spec(deployment);
            if pod["automountServiceAccountToken"].as_bool() != Some(false) {
                problems.push(format!(
                    "{name}: mounts a service account token it does not use"
                ));
            }
            for c in pod["containers"].as_sequence().into_iter().flatten() {
                let at = format!("{name}/{}", c["name"].as_str().unwrap_or("?"));
                let sc = &c["securityContext"];
                let non_root = sc["runAsNonRoot"]
                    .as_bool()
                    .or(pod["securityContext"]["runAsNonRoot"].as_bool());
                let seccomp = sc["seccompProfile"]["type"]
                    .as_str()
                    .or(pod["securityContext"]["seccompProfile"]["type"].as_str());
                let checks = [
                    ("runAsNonRoot: true", non_root == Some(true)),
                    (
                        "readOnlyRootFilesystem: true",
                        sc["readOnlyRootFilesystem"].as_bool() == Some(true),
                    ),
                    (
                        "allowPrivilegeEscalation: false",
                        sc["allowPrivilegeEscalation"].as_bool() == Some(false),
                    ),
                    (
                        "capabilities.drop: [ALL]",
                        sc["capabilities"]["drop"]
                            .as_sequence()
                            .is_some_and(|d| d.iter().any(|x| x.as_str() == Some("ALL"))),
                    ),
                    (
                        "seccompProfile RuntimeDefault",
                        seccomp == Some("RuntimeDefault"),
                    ),
                ];
                for (what, ok) in checks {
                    if !ok {
                        problems.push(format!("{at}: no {what}"));
                    }
                }
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        if yaml_str(&c["resources"][bound][resource]).is_none() {
                            problems.push(format!("{at}: no resources.{bound}.{resource}"));
                        }
                    }
                }
            }
        }
    }
    assert_eq!(
        deployments, 4,
        "the service, the load generator, the collector and MLServer"
    );
    // The run store's memory bound is compose's, as for the other services.
    let postgres = manifest_objects(APP_POSTGRES);
    let stateful_set = find(&postgres, "StatefulSet", "pipelens-postgres");
    memory_matches(
        "postgres",
        &compose_service("postgres"),
        container(stateful_set, "postgres"),
        &mut problems,
    );
    assert_eq!(stateful_sets, 1, "the run store's Postgres");
    assert_eq!(jobs, 1, "the batch Job");
    assert_no_problems("pod hardening", &problems);
}

#[test]
fn the_batch_job_runs_one_shard_per_index_and_pushes_to_the_collector() {
    let objects = manifest_objects(BATCH_JOB);
    let job = find(&objects, "Job", "pipelens-batch");
    let spec = &job["spec"];
    let shards = spec["completions"].as_u64().expect("completions");
    let c = container(job, "batch");
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| *a == name)
            .and_then(|i| args.get(i + 1).copied())
    };
    let env = container_env(c);
    let collector = manifest_objects(APP_COLLECTOR);
    let collector_service = find(&collector, "Service", "otel-collector");
    let http_port = service_port(collector_service, "otlp-http").map(|(p, _)| p);
    let mut problems = Vec::new();
    for (what, ok) in [
        (
            "completionMode Indexed",
            spec["completionMode"].as_str() == Some("Indexed"),
        ),
        (
            "parallelism = completions",
            spec["parallelism"].as_u64() == Some(shards),
        ),
        ("pipelens run", args.first() == Some(&"run")),
        (
            "--shards = completions",
            flag("--shards").and_then(|n| n.parse().ok()) == Some(shards),
        ),
        (
            "a --batch-id shared by the shards",
            flag("--batch-id") == Some("$(BATCH_ID)"),
        ),
        (
            "a result file per shard",
            flag("--output").is_some_and(|o| o.contains("$(SHARD_INDEX)")),
        ),
        (
            "metrics pushed over OTLP",
            env.get("OTEL_METRICS_EXPORTER").map(String::as_str) == Some("otlp"),
        ),
        (
            "to the collector's OTLP/HTTP port",
            http_port.is_some_and(|p| {
                env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
                    .map(String::as_str)
                    == Some(format!("http://otel-collector:{p}/v1/metrics").as_str())
            }),
        ),
        (
            "an instance per shard",
            env.get("OTEL_RESOURCE_ATTRIBUTES")
                .is_some_and(|a| a.contains("service.instance.id=$(POD_NAME)")),
        ),
    ] {
        if !ok {
            problems.push(format!("{BATCH_JOB}: no {what}"));
        }
    }
    assert_no_problems("the batch Job", &problems);
}

#[test]
fn the_collector_receives_what_the_service_sends_and_forwards_it() {
    let objects = manifest_objects(APP_COLLECTOR);
    let service = find(&objects, "Service", "otel-collector");
    let deployment = find(&objects, "Deployment", "otel-collector");
    let ctr = container(deployment, "otel-collector");
    let config_map = find(&objects, "ConfigMap", "otel-collector");
    let config: Yaml = serde_yaml_ng::from_str(
        config_map["data"]["config.yaml"]
            .as_str()
            .expect("config.yaml"),
    )
    .expect("the collector config is YAML");
    let mut problems = Vec::new();
    for (port_name, protocol) in [("otlp-grpc", "grpc"), ("otlp-http", "http")] {
        let Some((_, target)) = service_port(service, port_name) else {
            problems.push(format!("the Service has no port {port_name}"));
            continue;
        };
        let endpoint = config["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
            .as_str()
            .unwrap_or("");
        match named_port(ctr, &target) {
            Some(port) if endpoint.ends_with(&format!(":{port}")) => {}
            port => problems.push(format!(
                "Service port {port_name} -> container port {target} ({port:?}), but the OTLP {protocol} receiver listens on {endpoint:?}"
            )),
        }
    }
    let env = container_env(ctr);
    for (pipeline, variable) in [
        ("traces", "TRACES_OTLP_ENDPOINT"),
        ("logs", "LOGS_OTLP_ENDPOINT"),
    ] {
        let p = &config["service"]["pipelines"][pipeline];
        if !p["receivers"]
            .as_sequence()
            .is_some_and(|r| r.iter().any(|x| x.as_str() == Some("otlp")))
        {
            problems.push(format!("the {pipeline} pipeline does not receive OTLP"));
        }
        let exporters: Vec<String> = p["exporters"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(yaml_str)
            .collect();
        let forwards = exporters.iter().any(|e| {
            config["exporters"][e.as_str()]["endpoint"].as_str()
                == Some(format!("${{env:{variable}}}").as_str())
        });
        if !forwards || !env.contains_key(variable) {
            problems.push(format!("the {pipeline} pipeline does not export to ${{env:{variable}}} set on the Deployment"));
        }
    }
    if !env
        .get("LOGS_OTLP_ENDPOINT")
        .is_some_and(|e| e.ends_with("/otlp"))
    {
        problems.push("LOGS_OTLP_ENDPOINT is not a Loki OTLP base URL (…/otlp)".to_owned());
    }
    assert_no_problems(APP_COLLECTOR, &problems);
}

/// MLServer runs as compose runs it: the image of deploy/mlserver, listening
/// on the ports of its settings.json behind a Service named as compose's
/// service (which pipelens' PIPELENS_SENTIMENT_MODEL_SERVER names), its spans
/// to the collector's OTLP gRPC port, its metrics scraped by a ServiceMonitor.
#[test]
fn mlserver_runs_what_compose_runs() {
    let compose = compose_service("mlserver");
    let settings: Json = serde_json::from_str(&read("deploy/mlserver/settings.json")).unwrap();
    let objects = manifest_objects(APP_MLSERVER);
    let deployment = find(&objects, "Deployment", "mlserver");
    let service = find(&objects, "Service", "mlserver");
    let ctr = container(deployment, "mlserver");
    let env = container_env(ctr);
    let mut problems = Vec::new();

    let image = format!("pipelens-mlserver:{}", env!("CARGO_PKG_VERSION"));
    if ctr["image"].as_str() != Some(image.as_str()) {
        problems.push(format!("image is {:?}, not {image:?}", ctr["image"]));
    }
    for (name, key) in [
        ("http", "http_port"),
        ("grpc", "grpc_port"),
        ("metrics", "metrics_port"),
    ] {
        let want = settings[key].as_u64();
        if named_port(ctr, name) != want {
            problems.push(format!(
                "container port `{name}` is {:?}, settings.json's {key} is {want:?}",
                named_port(ctr, name)
            ));
        }
        if service_port(service, name).map(|(_, target)| target) != Some(name.to_owned()) {
            problems.push(format!(
                "the Service's port `{name}` does not target the container's"
            ));
        }
    }
    let pipelens = container_env(container(
        find(&manifest_objects(APP_SERVICE), "Deployment", "pipelens"),
        "pipelens",
    ));
    let http = service_port(service, "http").map(|(p, _)| p);
    let want = format!("http://mlserver:{}", http.unwrap_or_default());
    if pipelens.get("PIPELENS_SENTIMENT_MODEL_SERVER") != Some(&want) {
        problems.push(format!(
            "pipelens' PIPELENS_SENTIMENT_MODEL_SERVER is {:?}, not the Service's {want:?}",
            pipelens.get("PIPELENS_SENTIMENT_MODEL_SERVER")
        ));
    }
    // Spans: compose sends them to Jaeger's OTLP gRPC port; here the
    // collector's, as for pipelens.
    let collector_objects = manifest_objects(APP_COLLECTOR);
    let collector = find(&collector_objects, "Service", "otel-collector");
    let grpc = collector["spec"]["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["port"].as_u64() == Some(4317))
        .and_then(|p| p["port"].as_u64());
    let tracing = env
        .get("MLSERVER_TRACING_SERVER")
        .cloned()
        .unwrap_or_default();
    if grpc.is_none() || tracing != format!("otel-collector:{}", grpc.unwrap_or_default()) {
        problems.push(format!(
            "MLSERVER_TRACING_SERVER is {tracing:?}, not the collector's OTLP gRPC port {grpc:?}"
        ));
    }
    if !compose_environment(&compose).contains_key("MLSERVER_TRACING_SERVER") {
        problems.push("compose's mlserver sets no MLSERVER_TRACING_SERVER".to_owned());
    }
    // The image keeps its metrics files under /tmp: writable here.
    let dockerfile = read("deploy/mlserver/Dockerfile");
    if !dockerfile.contains("ENV MLSERVER_METRICS_DIR=/tmp/") {
        problems.push(
            "deploy/mlserver/Dockerfile does not keep MLSERVER_METRICS_DIR under /tmp".to_owned(),
        );
    }
    let mounts_tmp = ctr["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|m| m["mountPath"].as_str() == Some("/tmp"));
    if !mounts_tmp {
        problems.push("mlserver mounts no writable /tmp on its read-only root".to_owned());
    }
    // Scraped, on the metrics port, as compose's job mlserver.
    let monitors = manifest_objects(SERVICE_MONITORS);
    let monitor = find(&monitors, "ServiceMonitor", "mlserver");
    if !labels_select(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"],
    ) {
        problems
            .push("the ServiceMonitor mlserver does not select the Service mlserver".to_owned());
    }
    let ports: Vec<&str> = monitor["spec"]["endpoints"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|e| e["port"].as_str())
        .collect();
    if ports != ["metrics"] {
        problems.push(format!(
            "the ServiceMonitor mlserver scrapes {ports:?}, not [\"metrics\"]"
        ));
    }
    assert_no_problems(APP_MLSERVER, &problems);
}

#[test]
fn prometheus_scrapes_the_service_as_compose_does() {
    let prometheus = yaml_file("prometheus/prometheus.yml");
    let job = prometheus["scrape_configs"]
        .as_sequence()
        .and_then(|jobs| {
            jobs.iter()
                .find(|j| j["job_name"].as_str() == Some("pipelens"))
        })
        .expect("prometheus.yml scrapes job pipelens");
    let interval = job["scrape_interval"]
        .as_str()
        .or(prometheus["global"]["scrape_interval"].as_str())
        .unwrap_or("1m");
    let path = job["metrics_path"].as_str().unwrap_or("/metrics");

    let monitors = manifest_objects(SERVICE_MONITORS);
    let monitor = find(&monitors, "ServiceMonitor", "pipelens");
    let app = manifest_objects(APP_SERVICE);
    let service = find(&app, "Service", "pipelens");
    let mut problems = Vec::new();
    // The operator's job label is the Service's name unless jobLabel says otherwise.
    if !monitor["spec"]["jobLabel"].is_null() {
        problems.push(
            "the ServiceMonitor sets jobLabel: the rules need job=\"pipelens\", the Service's name"
                .to_owned(),
        );
    }
    if !labels_select(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"],
    ) {
        problems.push("the ServiceMonitor does not select the Service pipelens".to_owned());
    }
    let endpoints = monitor["spec"]["endpoints"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    if endpoints.len() != 1 {
        problems.push(format!(
            "{} endpoints, compose scrapes one",
            endpoints.len()
        ));
    }
    for endpoint in &endpoints {
        let port = endpoint["port"].as_str().unwrap_or("");
        if service_port(service, port).is_none() {
            problems.push(format!(
                "endpoint port {port:?} is not a port of the Service"
            ));
        }
        if endpoint["path"].as_str().unwrap_or("/metrics") != path {
            problems.push(format!(
                "endpoint path {:?}, compose scrapes {path}",
                endpoint["path"]
            ));
        }
        if endpoint["interval"].as_str() != Some(interval) {
            problems.push(format!(
                "endpoint interval {:?}, compose scrapes every {interval}",
                endpoint["interval"]
            ));
        }
    }
    let (label, value) = RELEASE_LABEL;
    for monitor in &monitors {
        if monitor["metadata"]["labels"][label].as_str() != Some(value) {
            problems.push(format!(
                "ServiceMonitor {:?} has no label {label}: {value}",
                monitor["metadata"]["name"]
            ));
        }
    }
    assert_no_problems(SERVICE_MONITORS, &problems);
}

/// `--enable-feature` values of an argument list (repeated or comma-separated).
fn enabled_features(args: &[String]) -> BTreeSet<String> {
    let mut features = BTreeSet::new();
    for (i, a) in args.iter().enumerate() {
        let value = match a.trim_start_matches('-').split_once('=') {
            Some(("enable-feature", v)) => Some(v.to_owned()),
            None if a.starts_with('-') && a.trim_start_matches('-') == "enable-feature" => {
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
fn exemplars_are_stored_and_linked_to_traces_as_in_compose() {
    let values = yaml_file(HELM_VALUES);
    let mut problems = Vec::new();

    // Prometheus: compose's feature flags, as prometheusSpec.enableFeatures.
    let compose_features = enabled_features(&compose_command(&compose_service("prometheus")));
    let ours: BTreeSet<String> = values["prometheus"]["prometheusSpec"]["enableFeatures"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(yaml_str)
        .collect();
    if !compose_features.contains("exemplar-storage") {
        problems.push("compose's prometheus runs without --enable-feature=exemplar-storage".into());
    }
    for feature in compose_features.difference(&ours) {
        problems.push(format!(
            "{HELM_VALUES}: prometheus.prometheusSpec.enableFeatures lacks {feature:?}, which \
             compose's prometheus runs with"
        ));
    }

    // Grafana: the chart's Prometheus data source links exemplars where
    // compose's does.
    let compose_datasources: Yaml = yaml_file("grafana/provisioning/datasources/datasources.yml");
    let compose_links: Vec<(String, String)> = compose_datasources["datasources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|d| yaml_str(&d["uid"]).as_deref() == Some(CHART_PROMETHEUS_UID))
        .flat_map(|d| {
            d["jsonData"]["exemplarTraceIdDestinations"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|l| Some((yaml_str(&l["name"])?, yaml_str(&l["datasourceUid"])?)))
        .collect();
    if compose_links.is_empty() {
        problems
            .push("compose's Prometheus data source has no exemplarTraceIdDestinations".to_owned());
    }
    let link = &values["grafana"]["sidecar"]["datasources"]["exemplarTraceIdDestinations"];
    let ours = (
        yaml_str(&link["traceIdLabelName"]).unwrap_or_default(),
        yaml_str(&link["datasourceUid"]).unwrap_or_default(),
    );
    if !compose_links.contains(&ours) {
        problems.push(format!(
            "{HELM_VALUES}: grafana.sidecar.datasources.exemplarTraceIdDestinations \
             (traceIdLabelName, datasourceUid) is {ours:?}, compose links {compose_links:?}"
        ));
    }
    // The destination is one of the data sources shipped for the chart's
    // Grafana.
    let config_map = &manifest_objects(DATASOURCES)[0];
    let provisioning: Yaml = config_map["data"]
        .as_mapping()
        .and_then(|d| d.values().next())
        .and_then(Yaml::as_str)
        .and_then(|t| serde_yaml_ng::from_str(t).ok())
        .expect("the data source ConfigMap holds a provisioning file");
    let shipped: BTreeSet<String> = provisioning["datasources"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|d| yaml_str(&d["uid"]))
        .collect();
    if !shipped.contains(&ours.1) {
        problems.push(format!(
            "exemplars link to data source {:?}, which {DATASOURCES} does not provide ({shipped:?})",
            ours.1
        ));
    }

    // The ServiceMonitor must not ask for a format without exemplars first.
    let monitors = manifest_objects(SERVICE_MONITORS);
    let monitor = find(&monitors, "ServiceMonitor", "pipelens");
    if let Some(first) = monitor["spec"]["scrapeProtocols"]
        .as_sequence()
        .and_then(|p| p.first())
        .and_then(yaml_str)
    {
        if !first.starts_with("OpenMetricsText") {
            problems.push(format!(
                "{SERVICE_MONITORS}: scrapeProtocols prefers {first}, which carries no exemplars"
            ));
        }
    }
    assert_no_problems("exemplars in Kubernetes", &problems);
}

#[test]
fn compose_defaults_and_memory_units_are_read_as_compose_does() {
    assert_eq!(compose_default("${LOADGEN_RPS:-5}"), "5");
    assert_eq!(compose_default("${X-a}b"), "ab");
    assert_eq!(compose_default("${PIPELENS_FAULTS:-}"), "");
    assert_eq!(compose_default("${UNSET}x"), "x");
    assert_eq!(compose_default("$${a} and $$b"), "${a} and $b");
    assert_eq!(compose_memory("256m"), Some(256 << 20));
    assert_eq!(compose_memory("1g"), Some(1 << 30));
    assert_eq!(compose_memory("lots"), None);
    assert_eq!(kubernetes_memory("256Mi"), Some(256 << 20));
    assert_eq!(kubernetes_memory("1G"), Some(1_000_000_000));
    // Kubernetes' "m" is milli: not a memory size anyone means.
    assert_eq!(kubernetes_memory("256m"), None);
    assert_eq!(dns_name("Pipelens_Overview v2"), "pipelens-overview-v2");
}

#[test]
fn the_charts_prometheus_promotes_what_composes_does() {
    let strings = |v: &Yaml| -> Vec<String> {
        v.as_sequence()
            .into_iter()
            .flatten()
            .filter_map(yaml_str)
            .collect()
    };
    let compose_side =
        strings(&yaml_file("prometheus/prometheus.yml")["otlp"]["promote_resource_attributes"]);
    let chart_side = strings(
        &yaml_file(HELM_VALUES)["prometheus"]["prometheusSpec"]["otlp"]
            ["promoteResourceAttributes"],
    );
    assert!(
        compose_side.iter().any(|a| a == "batch_id"),
        "prometheus.yml does not promote batch_id: {compose_side:?}"
    );
    assert_eq!(
        chart_side, compose_side,
        "{HELM_VALUES}: prometheus.prometheusSpec.otlp.promoteResourceAttributes"
    );
    assert_eq!(
        yaml_file(HELM_VALUES)["prometheus"]["prometheusSpec"]["enableOTLPReceiver"].as_bool(),
        Some(true)
    );
}
