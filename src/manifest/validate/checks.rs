//! `spec.prometheus` and `spec.checks`: what can be wrong while every container runs.
//!
//! Every query is parsed here (`crate::promql`), offline: a bad one is refused at its line
//! whether or not Prometheus answers; and some Prometheus must be known to ask.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::super::raw;
use super::super::{
    Blame, Check, HttpProbe, JsonTest, Policy, Probe, PrometheusSpec, Remediation, Service,
    Severity,
};
use super::{PROMETHEUS_URL_VAR, Validator, dns_label};
use crate::promql;

impl Validator<'_, '_> {
    /// `spec.prometheus`, with the URL from the environment when the manifest has none.
    /// `queries` says whether some check needs the URL; the flag returned says whether a
    /// problem with the URL was already reported (so that checks do not repeat it).
    pub(super) fn prometheus(
        &mut self,
        raw: raw::Prometheus,
        queries: bool,
    ) -> (PrometheusSpec, bool) {
        let mut spec = PrometheusSpec::default();
        let mut reported = false;
        let field = "spec.prometheus.url";
        match raw.url {
            Some(url) => match http_url(&url) {
                Ok(()) => spec.url = Some(url),
                Err(why) => {
                    self.error(field, format!("invalid url \"{url}\": {why}"));
                    reported = true;
                }
            },
            None => {
                if let Some(url) = &self.src.env.prometheus_url {
                    match http_url(url) {
                        Ok(()) => spec.url = Some(url.clone()),
                        // Only a problem for manifests that query Prometheus.
                        Err(why) if queries => {
                            self.error(
                                field,
                                format!(
                                    "not set, and ${PROMETHEUS_URL_VAR} \"{url}\" cannot be used instead: {why} (fix the variable or set spec.prometheus.url)"
                                ),
                            );
                            reported = true;
                        }
                        Err(_) => {}
                    }
                }
            }
        }
        if let Some(d) = self.positive_duration("spec.prometheus.interval", raw.interval) {
            spec.interval = d;
        }
        if let Some(d) = self.positive_duration("spec.prometheus.timeout", raw.timeout) {
            spec.timeout = d;
        }
        (spec, reported)
    }

    /// `spec.checks`, names unique within the cluster. A check without a usable probe is
    /// reported and left out.
    pub(super) fn checks(
        &mut self,
        raw: Vec<raw::Check>,
        prometheus: &PrometheusSpec,
        url_reported: bool,
        services: &[Service],
    ) -> Vec<Check> {
        let mut checks = Vec::with_capacity(raw.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        // A URL problem already reported at spec.prometheus.url is not repeated at each query.
        let url_known = prometheus.url.is_some() || url_reported;
        for (i, raw) in raw.into_iter().enumerate() {
            let path = format!("spec.checks[{i}]");
            let name_field = format!("{path}.name");
            match names.get(&raw.name) {
                Some(&first) => {
                    let line = self
                        .src
                        .lines
                        .line_of(&format!("spec.checks[{first}].name"));
                    self.error(
                        &name_field,
                        format!(
                            "duplicate check name \"{}\" (already declared at line {line})",
                            raw.name
                        ),
                    );
                }
                None => {
                    names.insert(raw.name.clone(), i);
                }
            }
            if let Some(check) = self.check(&path, raw, prometheus, url_known, services) {
                checks.push(check);
            }
        }
        checks
    }

    fn check(
        &mut self,
        path: &str,
        raw: raw::Check,
        prometheus: &PrometheusSpec,
        url_known: bool,
        services: &[Service],
    ) -> Option<Check> {
        if let Err(why) = dns_label(&raw.name) {
            self.error(
                &format!("{path}.name"),
                format!("invalid check name \"{}\": {why}", raw.name),
            );
        }

        let given: Vec<&str> = [
            ("expr", raw.expr.is_some()),
            ("healthy", raw.healthy.is_some()),
            ("http", raw.http.is_some()),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        let is_http = given == ["http"];
        let probe = match given.as_slice() {
            [] => {
                self.error(
                    path,
                    format!(
                        "check \"{}\" has no probe: set exactly one of expr (a query whose every series is a failure), healthy (a query whose series with value 0 are failures) or http (a GET from the controller)",
                        raw.name
                    ),
                );
                None
            }
            [_] => {
                if let Some(expr) = raw.expr {
                    self.query(&format!("{path}.expr"), &expr, url_known)
                        .map(|expr| Probe::Alert { expr })
                } else if let Some(expr) = raw.healthy {
                    self.query(&format!("{path}.healthy"), &expr, url_known)
                        .map(|expr| Probe::Healthy { expr })
                } else {
                    raw.http
                        .and_then(|h| self.http_probe(&format!("{path}.http"), h, prometheus))
                        .map(Probe::Http)
                }
            }
            [first, second, ..] => {
                self.error(
                    &format!("{path}.{second}"),
                    format!(
                        "{first} and {second} cannot be used together: a check has exactly one of expr, healthy or http (split it into two checks)"
                    ),
                );
                None
            }
        };

        let for_field = format!("{path}.for");
        let for_duration = raw
            .for_duration
            .and_then(|d| self.duration(&for_field, d))
            .unwrap_or(Duration::ZERO);

        let severity = match raw.severity.as_deref() {
            None | Some("warning") => Severity::Warning,
            Some("critical") => Severity::Critical,
            Some("info") => Severity::Info,
            Some(other) => {
                self.error(
                    &format!("{path}.severity"),
                    format!("invalid severity \"{other}\": expected critical, warning or info"),
                );
                Severity::Warning
            }
        };

        let blame = self.blame(
            path,
            raw.service,
            raw.service_label,
            raw.services,
            is_http,
            services,
        );

        let remediation = match raw.remediation {
            None => check_remediation_default(),
            Some(r) => self.remediation(
                &format!("{path}.remediation"),
                r,
                check_remediation_default(),
            ),
        };
        if remediation.policy == Policy::Restart && blame == Blame::Cluster {
            self.error(
                &format!("{path}.remediation.policy"),
                "a cluster-level check cannot restart anything; set service or serviceLabel, or use policy observe".into(),
            );
        }
        if remediation.policy == Policy::Agent && blame == Blame::Cluster {
            self.error(
                &format!("{path}.remediation.policy"),
                "a cluster-level check cannot page the agent yet (a session works on one service); set service or serviceLabel, or use policy observe".into(),
            );
        }

        Some(Check {
            name: raw.name,
            probe: probe?,
            for_duration,
            severity,
            blame,
            remediation,
        })
    }

    /// `expr` / `healthy`: non-empty, PromQL that parses, and a Prometheus to ask.
    fn query(&mut self, field: &str, expr: &str, url_known: bool) -> Option<String> {
        let expr = expr.trim();
        if expr.is_empty() {
            self.error(field, "the query is empty".into());
            return None;
        }
        if let Some(why) = promql::refusal(expr) {
            // The check is still declared (the manifest fails on this error alone): what
            // names it, such as a group's live checks, is not refused for it as well.
            self.error(field, why);
            return Some(expr.to_string());
        }
        if !url_known {
            self.error(
                field,
                format!(
                    "this check queries Prometheus, but no Prometheus URL is known: set spec.prometheus.url (e.g. http://127.0.0.1:9090) or the {PROMETHEUS_URL_VAR} environment variable, or use an http probe"
                ),
            );
        }
        Some(expr.to_string())
    }

    fn http_probe(
        &mut self,
        path: &str,
        raw: raw::HttpProbe,
        prometheus: &PrometheusSpec,
    ) -> Option<HttpProbe> {
        let url_ok = match http_url(&raw.url) {
            Ok(()) => true,
            Err(why) => {
                self.error(
                    &format!("{path}.url"),
                    format!("invalid url \"{}\": {why}", raw.url),
                );
                false
            }
        };
        let status = match raw.status {
            None => 200,
            Some(code) => match u16::try_from(code) {
                Ok(code) if (100..=599).contains(&code) => code,
                _ => {
                    self.error(
                        &format!("{path}.status"),
                        format!("invalid status {code}: expected an HTTP status code in 100..=599"),
                    );
                    200
                }
            },
        };
        let json = raw.json.and_then(|json| {
            if json.path.is_empty() || json.path.split('.').any(str::is_empty) {
                self.error(
                    &format!("{path}.json.path"),
                    format!(
                        "invalid path \"{}\": expected dot-separated keys and array indexes such as \"0.health\" or \"status.leader\"",
                        json.path
                    ),
                );
                return None;
            }
            Some(JsonTest {
                path: json.path,
                equals: json.equals,
            })
        });
        let timeout = self
            .positive_duration(&format!("{path}.timeout"), raw.timeout)
            .unwrap_or(prometheus.timeout);
        url_ok.then_some(HttpProbe {
            url: raw.url,
            status,
            json,
            timeout,
        })
    }

    /// `service`, `serviceLabel` and `services` to whom a failing check is held against.
    fn blame(
        &mut self,
        path: &str,
        service: Option<String>,
        label: Option<String>,
        map: Option<BTreeMap<String, String>>,
        is_http: bool,
        services: &[Service],
    ) -> Blame {
        let known = services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let is_service = |name: &str| services.iter().any(|s| s.name == name);
        if map.is_some() && label.is_none() {
            self.error(
                &format!("{path}.services"),
                "services maps values of serviceLabel to services, and needs serviceLabel (to blame one service, write service: NAME)".into(),
            );
        }
        match (service, label) {
            (Some(service), label) => {
                if label.is_some() {
                    self.error(
                        &format!("{path}.serviceLabel"),
                        "service and serviceLabel cannot be used together: service blames one service, serviceLabel blames each failing series by one of its labels".into(),
                    );
                }
                if !is_service(&service) {
                    self.error(
                        &format!("{path}.service"),
                        format!(
                            "unknown service \"{service}\" (services in this cluster: {known})"
                        ),
                    );
                }
                Blame::Service(service)
            }
            (None, Some(label)) => {
                let field = format!("{path}.serviceLabel");
                if !is_label_name(&label) {
                    self.error(
                        &field,
                        format!(
                            "invalid label name \"{label}\": must match [a-zA-Z_][a-zA-Z0-9_]*"
                        ),
                    );
                }
                if is_http {
                    self.error(
                        &field,
                        "serviceLabel needs a query (expr or healthy): an http probe has no series to map; use service to blame one service".into(),
                    );
                }
                let services_map = map.unwrap_or_default();
                for (value, service) in &services_map {
                    if !is_service(service) {
                        self.error(
                            &format!("{path}.services.{value}"),
                            format!(
                                "unknown service \"{service}\" (services in this cluster: {known})"
                            ),
                        );
                    }
                }
                Blame::Label {
                    label,
                    services: services_map,
                }
            }
            (None, None) => Blame::Cluster,
        }
    }
}

/// The remediation of a check when the manifest says nothing: as for services, but only
/// observing, so that a failing query alone never restarts anything.
fn check_remediation_default() -> Remediation {
    Remediation {
        policy: Policy::Observe,
        ..Remediation::default()
    }
}

/// An absolute `http://` or `https://` URL with a host, written without surrounding spaces.
fn http_url(text: &str) -> Result<(), String> {
    const EXPECTED: &str =
        "expected an absolute http:// or https:// URL such as http://127.0.0.1:9090";
    if text.is_empty() || text.trim() != text {
        return Err(format!("empty or padded with spaces ({EXPECTED})"));
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("{e} ({EXPECTED})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme \"{}\" is not http or https ({EXPECTED})",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host ({EXPECTED})"));
    }
    Ok(())
}

/// Prometheus's rule for label names.
fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::json;

    use super::super::super::testing::{
        assert_reported, diagnostics, line_of, load_text, load_text_with, manifest, service,
    };
    use super::super::super::{Cluster, ManifestError};
    use super::*;

    /// Cluster `demo` with services `etcd0` and `pd0`, then `extra` (YAML under `spec:`, at
    /// two spaces), then `checks` (list items at four spaces).
    fn with(extra: &str, checks: &str) -> String {
        manifest("demo", &(service("etcd0", "") + &service("pd0", "")))
            + extra
            + "  checks:\n"
            + checks
    }

    /// As [`with`], with a Prometheus URL in the manifest.
    fn checks(checks: &str) -> String {
        with("  prometheus: {url: \"http://127.0.0.1:9090\"}\n", checks)
    }

    fn cluster(text: &str) -> Cluster {
        let state = load_text(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        state.clusters[0].clone()
    }

    fn only_check(text: &str) -> Check {
        let c = cluster(text);
        assert_eq!(c.checks.len(), 1, "{:#?}", c.checks);
        c.checks[0].clone()
    }

    #[test]
    fn a_minimal_check_gets_the_defaults() {
        let c = cluster(&checks(
            "    - name: etcd-has-leader\n      expr: etcd_server_has_leader == 0\n",
        ));
        assert_eq!(
            c.prometheus,
            PrometheusSpec {
                url: Some("http://127.0.0.1:9090".into()),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(3),
            }
        );
        assert_eq!(
            c.checks,
            [Check {
                name: "etcd-has-leader".into(),
                probe: Probe::Alert {
                    expr: "etcd_server_has_leader == 0".into()
                },
                for_duration: Duration::ZERO,
                severity: Severity::Warning,
                blame: Blame::Cluster,
                remediation: Remediation {
                    policy: Policy::Observe,
                    ..Remediation::default()
                },
            }]
        );
        assert_eq!(c.check("etcd-has-leader"), Some(&c.checks[0]));
        assert_eq!(c.check("nope"), None);
    }

    #[test]
    fn no_checks_and_no_prometheus_is_fine() {
        let c = cluster(&manifest("demo", &service("web", "")));
        assert_eq!(c.prometheus, PrometheusSpec::default());
        assert!(c.checks.is_empty());
    }

    #[test]
    fn every_check_field_is_read() {
        let text = with(
            "  prometheus:\n    url: https://prom.example:9090/prefix\n    interval: 10s\n    timeout: 1500ms\n",
            "    - name: leader
      expr: |
        etcd_server_has_leader == 0
      for: 1m
      severity: critical
      service: etcd0
      remediation: {policy: restart, maxRestarts: 2}
    - name: up
      healthy: up{job=\"pd\"}
      serviceLabel: instance
      services: {\"127.0.0.1:23791\": etcd0, pd0:2379: pd0}
      severity: info
    - name: pd-health
      http:
        url: http://127.0.0.1:2379/pd/api/v1/health
        status: 204
        json: {path: \"0.health\", equals: true}
        timeout: 2s
      service: pd0
    - name: pd-members
      http:
        url: http://127.0.0.1:2379/pd/api/v1/members
",
        );
        let c = cluster(&text);
        assert_eq!(
            c.prometheus,
            PrometheusSpec {
                url: Some("https://prom.example:9090/prefix".into()),
                interval: Duration::from_secs(10),
                timeout: Duration::from_millis(1500),
            }
        );
        let leader = c.check("leader").expect("leader");
        assert_eq!(
            leader.probe,
            Probe::Alert {
                expr: "etcd_server_has_leader == 0".into()
            }
        );
        assert_eq!(leader.for_duration, Duration::from_secs(60));
        assert_eq!(leader.severity, Severity::Critical);
        assert_eq!(leader.blame, Blame::Service("etcd0".into()));
        assert_eq!(
            leader.remediation,
            Remediation {
                policy: Policy::Restart,
                max_restarts: 2,
                ..Remediation::default()
            }
        );

        let up = c.check("up").expect("up");
        assert_eq!(
            up.probe,
            Probe::Healthy {
                expr: "up{job=\"pd\"}".into()
            }
        );
        assert_eq!(up.severity, Severity::Info);
        assert_eq!(
            up.blame,
            Blame::Label {
                label: "instance".into(),
                services: BTreeMap::from([
                    ("127.0.0.1:23791".to_string(), "etcd0".to_string()),
                    ("pd0:2379".to_string(), "pd0".to_string()),
                ]),
            }
        );

        let health = c.check("pd-health").expect("pd-health");
        assert_eq!(
            health.probe,
            Probe::Http(HttpProbe {
                url: "http://127.0.0.1:2379/pd/api/v1/health".into(),
                status: 204,
                json: Some(JsonTest {
                    path: "0.health".into(),
                    equals: json!(true),
                }),
                timeout: Duration::from_secs(2),
            })
        );
        assert_eq!(health.blame, Blame::Service("pd0".into()));

        // The probe's timeout defaults to spec.prometheus.timeout.
        let members = c.check("pd-members").expect("pd-members");
        assert_eq!(
            members.probe,
            Probe::Http(HttpProbe {
                url: "http://127.0.0.1:2379/pd/api/v1/members".into(),
                status: 200,
                json: None,
                timeout: Duration::from_millis(1500),
            })
        );
    }

    #[test]
    fn json_equals_takes_any_yaml_value() {
        for (written, expected) in [
            ("\"ok\"", json!("ok")),
            ("3", json!(3)),
            ("1.5", json!(1.5)),
            ("null", json!(null)),
            ("[1, a]", json!([1, "a"])),
            ("{leader: {name: pd0}}", json!({"leader": {"name": "pd0"}})),
        ] {
            let text = checks(&format!(
                "    - name: h\n      http:\n        url: http://127.0.0.1:2379/x\n        json: {{path: a.b, equals: {written}}}\n"
            ));
            let Probe::Http(probe) = only_check(&text).probe else {
                panic!("not an http probe");
            };
            assert_eq!(probe.json.map(|j| j.equals), Some(expected), "{written}");
        }
    }

    #[test]
    fn blame_follows_service_and_service_label() {
        let text = checks(
            "    - name: a\n      expr: up == 0\n      service: pd0\n    - name: b\n      expr: up == 0\n      serviceLabel: instance\n    - name: c\n      expr: up == 0\n",
        );
        let c = cluster(&text);
        let blames: Vec<&Blame> = c.checks.iter().map(|c| &c.blame).collect();
        assert_eq!(
            blames,
            [
                &Blame::Service("pd0".into()),
                &Blame::Label {
                    label: "instance".into(),
                    services: BTreeMap::new()
                },
                &Blame::Cluster,
            ]
        );
    }

    #[test]
    fn prometheus_url_comes_from_the_environment_when_not_written() {
        let text = with("", "    - name: a\n      healthy: up\n");
        let state = load_text_with(&text, Some("http://10.0.0.1:9090")).expect("valid");
        assert_eq!(
            state.clusters[0].prometheus.url.as_deref(),
            Some("http://10.0.0.1:9090")
        );
        // The manifest wins over the environment.
        let text = checks("    - name: a\n      healthy: up\n");
        let state = load_text_with(&text, Some("http://10.0.0.1:9090")).expect("valid");
        assert_eq!(
            state.clusters[0].prometheus.url.as_deref(),
            Some("http://127.0.0.1:9090")
        );
        // Known even when no check needs it.
        let text = manifest("demo", &service("web", ""));
        let state = load_text_with(&text, Some(" http://10.0.0.1:9090 ")).expect("valid");
        assert_eq!(
            state.clusters[0].prometheus.url.as_deref(),
            Some("http://10.0.0.1:9090")
        );
    }

    #[test]
    fn query_without_any_prometheus_url_is_refused_at_the_query() {
        let text = with(
            "",
            "    - name: a\n      healthy: up\n    - name: b\n      expr: up == 0\n",
        );
        for env in [None, Some(""), Some("  ")] {
            let diags = match load_text_with(&text, env) {
                Err(ManifestError::Invalid(d)) => d,
                other => panic!("{env:?}: {other:?}"),
            };
            let hint = [
                "no Prometheus URL is known",
                "spec.prometheus.url",
                "PROMETHEUS_URL",
            ];
            assert_reported(
                &diags,
                line_of(&text, "healthy: up", 0),
                "spec.checks[0].healthy",
                &hint,
            );
            assert_reported(
                &diags,
                line_of(&text, "expr: up", 0),
                "spec.checks[1].expr",
                &hint,
            );
            assert_eq!(diags.len(), 2, "{diags:#?}");
        }
    }

    #[test]
    fn http_checks_need_no_prometheus() {
        let text = with(
            "",
            "    - name: h\n      http: {url: \"http://127.0.0.1:2379/health\"}\n",
        );
        let c = cluster(&text);
        assert_eq!(c.prometheus.url, None);
        assert_eq!(c.checks.len(), 1);
    }

    #[test]
    fn unusable_environment_url_is_reported_once_when_a_query_needs_it() {
        let text = with(
            "",
            "    - name: a\n      healthy: up\n    - name: b\n      expr: up == 0\n",
        );
        let diags = match load_text_with(&text, Some("localhost:9090")) {
            Err(ManifestError::Invalid(d)) => d,
            other => panic!("{other:?}"),
        };
        assert_reported(
            &diags,
            5,
            "spec.prometheus.url",
            &["$PROMETHEUS_URL \"localhost:9090\"", "http://"],
        );
        assert_eq!(diags.len(), 1, "{diags:#?}");
        // Without queries, an unusable variable is ignored.
        let text = manifest("demo", &service("web", ""));
        let state = load_text_with(&text, Some("localhost:9090")).expect("valid");
        assert_eq!(state.clusters[0].prometheus.url, None);
    }

    #[test]
    fn bad_prometheus_block_is_reported() {
        let text = with(
            "  prometheus:\n    url: ftp://prom:9090\n    interval: 0s\n    timeout: soon\n",
            "    - name: a\n      expr: up == 0\n",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "url:", 0),
            "spec.prometheus.url",
            &["\"ftp://prom:9090\"", "scheme \"ftp\""],
        );
        assert_reported(
            &diags,
            line_of(&text, "interval:", 0),
            "spec.prometheus.interval",
            &["longer than 0s"],
        );
        assert_reported(
            &diags,
            line_of(&text, "timeout:", 0),
            "spec.prometheus.timeout",
            &["\"soon\""],
        );
        // The bad URL is not reported again at the query.
        assert_eq!(diags.len(), 3, "{diags:#?}");
        for url in ["127.0.0.1:9090", "http://", "http://a b:9090", "/api"] {
            let text = with(&format!("  prometheus: {{url: \"{url}\"}}\n"), "");
            assert_reported(&diagnostics(&text), 11, "spec.prometheus.url", &[url]);
        }
    }

    #[test]
    fn check_without_or_with_two_probes_is_refused() {
        let text = checks(
            "    - name: none\n      for: 5s\n    - name: two\n      expr: up == 0\n      http: {url: \"http://a:1/\"}\n",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "name: none", 0),
            "spec.checks[0]",
            &["\"none\" has no probe", "expr", "healthy", "http"],
        );
        assert_reported(
            &diags,
            line_of(&text, "http: {url", 0),
            "spec.checks[1].http",
            &["expr and http cannot be used together"],
        );
        assert_eq!(diags.len(), 2, "{diags:#?}");
    }

    #[test]
    fn empty_and_bad_queries_are_refused_at_their_lines() {
        let text = checks(
            "    - name: a\n      expr: \"  \"\n    - name: b\n      healthy: sum(rate(x[5m])\n    - name: c\n      expr: up{job=\"pd}\n    - name: d\n      expr: >-\n        sum by (instance)\n        (rate(up)) > 0\n    - name: e\n      expr: up == 0\n",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "expr: \"  \"", 0),
            "spec.checks[0].expr",
            &["empty"],
        );
        assert_reported(
            &diags,
            line_of(&text, "healthy:", 0),
            "spec.checks[1].healthy",
            &[
                "invalid PromQL \"sum(rate(x[5m])\"",
                "unclosed left parenthesis",
            ],
        );
        assert_reported(
            &diags,
            line_of(&text, "expr: up{", 0),
            "spec.checks[2].expr",
            &["invalid PromQL", "unterminated quoted string"],
        );
        // A folded query is shown on one line, at its key's line.
        assert_reported(
            &diags,
            line_of(&text, "expr: >-", 0),
            "spec.checks[3].expr",
            &[
                "invalid PromQL \"sum by (instance) (rate(up)) > 0\"",
                "expected type matrix in call to function 'rate', got vector",
            ],
        );
        assert_eq!(diags.len(), 4, "{diags:#?}");
    }

    /// The check whose query does not parse is still declared: a group that names it among
    /// its live checks is not refused for it too (one error, where the user must act).
    #[test]
    fn a_check_with_a_bad_query_is_the_only_error_a_group_naming_it_gets() {
        let text = checks("    - name: a\n      expr: sum(up) by job\n")
            + "  groups:\n    - name: g\n      members: [etcd0]\n      live: {checks: [a]}\n";
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "expr: sum", 0),
            "spec.checks[0].expr",
            &["invalid PromQL \"sum(up) by job\""],
        );
        assert_eq!(diags.len(), 1, "{diags:#?}");
    }

    /// No Prometheus is asked while loading: a bad query is refused with none known at all.
    #[test]
    fn a_bad_query_is_refused_without_a_prometheus() {
        let text = with("", "    - name: a\n      expr: up ==\n");
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "expr: up ==", 0),
            "spec.checks[0].expr",
            &["invalid PromQL \"up ==\"", "syntax error"],
        );
    }

    #[test]
    fn bad_names_and_duplicates_are_refused() {
        let text = checks(
            "    - name: Leader\n      expr: up == 0\n    - name: a\n      expr: up == 0\n    - name: a\n      healthy: up\n",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "name: Leader", 0),
            "spec.checks[0].name",
            &["invalid check name \"Leader\"", "[a-z0-9]"],
        );
        let first = line_of(&text, "name: a", 0);
        assert_reported(
            &diags,
            line_of(&text, "name: a", 1),
            "spec.checks[2].name",
            &[
                "duplicate check name \"a\"",
                &format!("already declared at line {first}"),
            ],
        );
        assert_eq!(diags.len(), 2, "{diags:#?}");
    }

    #[test]
    fn bad_for_severity_and_remediation_are_refused() {
        let text = checks(
            "    - name: a\n      expr: up == 0\n      for: 10\n      severity: page\n      remediation:\n        policy: panic\n        window: 0s\n",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "for:", 0),
            "spec.checks[0].for",
            &["\"10s\""],
        );
        assert_reported(
            &diags,
            line_of(&text, "severity:", 0),
            "spec.checks[0].severity",
            &["\"page\"", "critical, warning or info"],
        );
        assert_reported(
            &diags,
            line_of(&text, "policy:", 0),
            "spec.checks[0].remediation.policy",
            &["\"panic\""],
        );
        assert_reported(
            &diags,
            line_of(&text, "window:", 0),
            "spec.checks[0].remediation.window",
            &["longer than 0s"],
        );
        assert_eq!(diags.len(), 4, "{diags:#?}");
    }

    #[test]
    fn zero_for_is_allowed() {
        let check = only_check(&checks(
            "    - name: a\n      expr: up == 0\n      for: 0s\n",
        ));
        assert_eq!(check.for_duration, Duration::ZERO);
    }

    #[test]
    fn blamed_services_must_exist() {
        let text = checks(
            "    - name: a\n      expr: up == 0\n      service: etcd9\n    - name: b\n      expr: up == 0\n      serviceLabel: instance\n      services:\n        \"127.0.0.1:23791\": etcd0\n        \"127.0.0.1:23792\": etcd9\n",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "service: etcd9", 0),
            "spec.checks[0].service",
            &["unknown service \"etcd9\"", "etcd0, pd0"],
        );
        assert_reported(
            &diags,
            line_of(&text, "23792", 0),
            "spec.checks[1].services.127.0.0.1:23792",
            &["unknown service \"etcd9\""],
        );
        assert_eq!(diags.len(), 2, "{diags:#?}");
    }

    #[test]
    fn conflicting_blame_fields_are_refused() {
        let text = checks(
            "    - name: a
      expr: up == 0
      service: etcd0
      serviceLabel: instance
    - name: b
      expr: up == 0
      serviceLabel: 1instance
    - name: c
      http: {url: \"http://127.0.0.1:2379/\"}
      serviceLabel: instance
    - name: d
      expr: up == 0
      services: {x: etcd0}
",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "serviceLabel: instance", 0),
            "spec.checks[0].serviceLabel",
            &["service and serviceLabel cannot be used together"],
        );
        assert_reported(
            &diags,
            line_of(&text, "serviceLabel: 1instance", 0),
            "spec.checks[1].serviceLabel",
            &["invalid label name \"1instance\"", "[a-zA-Z_][a-zA-Z0-9_]*"],
        );
        assert_reported(
            &diags,
            line_of(&text, "serviceLabel: instance", 1),
            "spec.checks[2].serviceLabel",
            &["an http probe has no series", "use service"],
        );
        assert_reported(
            &diags,
            line_of(&text, "services: {x", 0),
            "spec.checks[3].services",
            &["needs serviceLabel"],
        );
        assert_eq!(diags.len(), 4, "{diags:#?}");
    }

    #[test]
    fn the_agent_needs_a_service_to_work_on() {
        let text =
            checks("    - name: a\n      expr: up == 0\n      remediation: {policy: agent}\n");
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "remediation", 0),
            "spec.checks[0].remediation.policy",
            &["cannot page the agent yet", "set service or serviceLabel"],
        );
        let text = checks(
            "    - name: a\n      expr: up == 0\n      service: etcd0\n      remediation: {policy: agent}\n",
        );
        assert!(load_text(&text).is_ok(), "blamed on a service: fine");
    }

    #[test]
    fn restart_needs_something_to_restart() {
        let text =
            checks("    - name: a\n      expr: up == 0\n      remediation: {policy: restart}\n");
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "remediation", 0),
            "spec.checks[0].remediation.policy",
            &[
                "a cluster-level check cannot restart anything",
                "set service or serviceLabel, or use policy observe",
            ],
        );
        for blame in ["service: etcd0", "serviceLabel: instance"] {
            let text = checks(&format!(
                "    - name: a\n      expr: up == 0\n      {blame}\n      remediation: {{policy: restart}}\n"
            ));
            assert_eq!(
                only_check(&text).remediation.policy,
                Policy::Restart,
                "{blame}"
            );
        }
    }

    #[test]
    fn bad_http_probe_fields_are_refused() {
        let text = checks(
            "    - name: a
      http:
        url: pd0:2379/health
        status: 600
        json: {path: \"a..b\", equals: 1}
        timeout: 0s
    - name: b
      http: {url: \"http://a:1/\", status: -1, json: {path: \"\", equals: x}}
",
        );
        let diags = diagnostics(&text);
        assert_reported(
            &diags,
            line_of(&text, "url: pd0", 0),
            "spec.checks[0].http.url",
            &["invalid url \"pd0:2379/health\"", "http://"],
        );
        assert_reported(
            &diags,
            line_of(&text, "status: 600", 0),
            "spec.checks[0].http.status",
            &["invalid status 600", "100..=599"],
        );
        assert_reported(
            &diags,
            line_of(&text, "json:", 0),
            "spec.checks[0].http.json.path",
            &["invalid path \"a..b\"", "dot-separated"],
        );
        assert_reported(
            &diags,
            line_of(&text, "timeout: 0s", 0),
            "spec.checks[0].http.timeout",
            &["longer than 0s"],
        );
        assert_reported(
            &diags,
            line_of(&text, "status: -1", 0),
            "spec.checks[1].http.status",
            &["invalid status -1"],
        );
        assert_reported(
            &diags,
            line_of(&text, "status: -1", 0),
            "spec.checks[1].http.json.path",
            &["invalid path \"\""],
        );
        assert_eq!(diags.len(), 6, "{diags:#?}");
    }

    #[test]
    fn example_in_the_docs_is_valid() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/manifests.md");
        let docs = std::fs::read_to_string(docs).expect("docs/manifests.md");
        let section = docs
            .split_once("## Prometheus and checks")
            .map(|(_, rest)| rest)
            .expect("a Prometheus and checks section");
        let example = section
            .split_once("```yaml\n")
            .and_then(|(_, rest)| rest.split_once("```"))
            .map(|(yaml, _)| yaml)
            .expect("a YAML example");
        let c = cluster(example);
        assert_eq!(c.checks.len(), 4);
        let missing_peers = c.check("pd-missing-peers").expect("pd-missing-peers");
        assert_eq!(missing_peers.blame, Blame::Cluster);
        assert_eq!(missing_peers.remediation.policy, Policy::Observe);
    }

    #[test]
    fn unknown_fields_and_missing_equals_are_refused_by_the_schema() {
        let text = checks("    - name: a\n      expr: up == 0\n      labels: {x: y}\n");
        assert_reported(
            &diagnostics(&text),
            line_of(&text, "labels", 0),
            "spec.checks[0].labels",
            &["unknown field `labels`"],
        );
        let text = checks(
            "    - name: a\n      http:\n        url: http://a:1/\n        json: {path: a}\n",
        );
        let diags = diagnostics(&text);
        assert!(
            diags.iter().any(|d| d.field == "spec.checks[0].http.json"
                && d.message.contains("missing field `equals`")),
            "{diags:#?}"
        );
    }
}
