//! The manifest an import writes: plain data, and its YAML text with the comments that say
//! what was not carried over. Written by hand rather than serialized, because comments are
//! half of what a reader needs from it.

/// One `kind: Cluster` document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Manifest {
    /// Comment lines at the top of the file.
    pub header: Vec<String>,
    pub name: String,
    pub network: Network,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Network {
    pub name: String,
    pub external: bool,
    pub internal: bool,
    /// Comments above `network:`.
    pub comments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Service {
    pub name: String,
    /// Comments right under `- name:`: what compose said that the manifest does not.
    pub comments: Vec<String>,
    /// `adopt: {compose: ...}`: the controller takes over the container compose started
    /// for this service, found by its compose labels.
    pub adopt: Option<ComposeAdopt>,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    pub network_mode: Option<String>,
    /// DNS names on the network besides the service's name.
    pub aliases: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub healthcheck: Option<Healthcheck>,
    pub depends_on: Vec<String>,
    pub stop_timeout: Option<String>,
    pub stop_signal: Option<String>,
    pub resources: Resources,
    pub remediation: Remediation,
}

/// `adopt.compose`: compose's project, and its service when the manifest's name differs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComposeAdopt {
    pub project: String,
    pub service: Option<String>,
}

/// `resources`, as compose wrote them (`"0.5"`, `512m`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    pub cpus: Option<String>,
    pub memory: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub retries: Option<u32>,
    pub start_period: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Remediation {
    /// `restart` or `observe`.
    pub policy: &'static str,
    pub max_restarts: Option<u32>,
    /// The whole mapping as the compose file's `x-operator.remediation` writes it (flow
    /// YAML): the controller's own settings, carried over as they are.
    pub written: Option<String>,
}

impl Default for Remediation {
    fn default() -> Self {
        Remediation {
            policy: "observe",
            max_restarts: None,
            written: None,
        }
    }
}

impl Manifest {
    /// The YAML text: header comments, then the document.
    pub fn render(&self) -> String {
        let mut out = Out::default();
        for line in &self.header {
            out.comment(0, line);
        }
        out.line(0, "apiVersion: operator/v1");
        out.line(0, "kind: Cluster");
        out.line(0, "metadata:");
        out.line(2, &format!("name: {}", scalar(&self.name)));
        out.line(0, "spec:");
        for line in &self.network.comments {
            out.comment(2, line);
        }
        out.line(2, "network:");
        out.line(4, &format!("name: {}", scalar(&self.network.name)));
        out.line(4, &format!("external: {}", self.network.external));
        if self.network.internal {
            out.line(4, "internal: true");
        }
        if self.services.is_empty() {
            out.line(2, "services: []");
        } else {
            out.line(2, "services:");
        }
        for (i, service) in self.services.iter().enumerate() {
            if i > 0 {
                out.blank();
            }
            service.render(&mut out);
        }
        out.text
    }
}

impl Service {
    fn render(&self, out: &mut Out) {
        out.line(4, &format!("- name: {}", scalar(&self.name)));
        for line in &self.comments {
            out.comment(6, line);
        }
        if let Some(adopt) = &self.adopt {
            let service = adopt
                .service
                .as_deref()
                .map_or_else(String::new, |s| format!(", service: {}", flow_item(s)));
            out.line(
                6,
                &format!(
                    "adopt: {{compose: {{project: {}{service}}}}}",
                    flow_item(&adopt.project)
                ),
            );
        }
        out.line(6, &format!("image: {}", scalar(&self.image)));
        for (key, words) in [("command", &self.command), ("entrypoint", &self.entrypoint)] {
            match words.as_deref() {
                None => {}
                Some([]) => out.line(6, &format!("{key}: []")),
                Some(words) => out.list(6, key, words.iter().map(|w| scalar(w))),
            }
        }
        out.map(6, "env", &self.env);
        out.list(6, "ports", self.ports.iter().map(|p| scalar(p)));
        out.list(6, "volumes", self.volumes.iter().map(|v| scalar(v)));
        if let Some(mode) = &self.network_mode {
            out.line(6, &format!("networkMode: {}", scalar(mode)));
        }
        if !self.aliases.is_empty() {
            let names: Vec<String> = self.aliases.iter().map(|n| flow_item(n)).collect();
            out.line(6, &format!("aliases: [{}]", names.join(", ")));
        }
        out.map(6, "labels", &self.labels);
        if let Some(h) = &self.healthcheck {
            out.line(6, "healthcheck:");
            out.line(8, &format!("test: {}", flow(&h.test)));
            for (key, value) in [
                ("interval", &h.interval),
                ("timeout", &h.timeout),
                ("startPeriod", &h.start_period),
            ] {
                if let Some(value) = value {
                    out.line(8, &format!("{key}: {}", duration(value)));
                }
            }
            if let Some(retries) = h.retries {
                out.line(8, &format!("retries: {retries}"));
            }
        }
        if !self.depends_on.is_empty() {
            let names: Vec<String> = self.depends_on.iter().map(|n| flow_item(n)).collect();
            out.line(6, &format!("dependsOn: [{}]", names.join(", ")));
        }
        if let Some(timeout) = &self.stop_timeout {
            out.line(6, &format!("stopTimeout: {}", duration(timeout)));
        }
        if let Some(signal) = &self.stop_signal {
            out.line(6, &format!("stopSignal: {}", scalar(signal)));
        }
        let limits: Vec<String> = [
            ("cpus", &self.resources.cpus),
            ("memory", &self.resources.memory),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some(format!("{key}: {}", flow_item(value.as_ref()?))))
        .collect();
        if !limits.is_empty() {
            out.line(6, &format!("resources: {{{}}}", limits.join(", ")));
        }
        if let Some(written) = &self.remediation.written {
            out.line(6, &format!("remediation: {written}"));
            return;
        }
        out.line(6, "remediation:");
        out.line(8, &format!("policy: {}", self.remediation.policy));
        if let Some(max) = self.remediation.max_restarts {
            out.line(8, &format!("maxRestarts: {max}"));
        }
    }
}

#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn line(&mut self, indent: usize, text: &str) {
        self.text.extend(std::iter::repeat_n(' ', indent));
        self.text.push_str(text);
        self.text.push('\n');
    }

    fn blank(&mut self) {
        self.text.push('\n');
    }

    /// A comment; line breaks and other control characters in it (from the compose file's
    /// values) are shown escaped, so that they cannot end the comment.
    fn comment(&mut self, indent: usize, text: &str) {
        let clean: String = text
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect();
        if clean.is_empty() {
            self.line(indent, "#");
        } else {
            self.line(indent, &format!("# {clean}"));
        }
    }

    fn list(&mut self, indent: usize, key: &str, items: impl Iterator<Item = String>) {
        let mut items = items.peekable();
        if items.peek().is_none() {
            return;
        }
        self.line(indent, &format!("{key}:"));
        for item in items {
            self.line(indent + 2, &format!("- {item}"));
        }
    }

    fn map(&mut self, indent: usize, key: &str, entries: &[(String, String)]) {
        if entries.is_empty() {
            return;
        }
        self.line(indent, &format!("{key}:"));
        for (k, v) in entries {
            self.line(
                indent + 2,
                &format!("{}: {}", scalar(k), quoted_if_empty(v)),
            );
        }
    }
}

/// An empty value written as `""`: the manifest refuses an empty plain value.
fn quoted_if_empty(value: &str) -> String {
    if value.is_empty() {
        "\"\"".into()
    } else {
        scalar(value)
    }
}

/// A flow list of strings, each double-quoted (JSON's quoting is valid YAML).
fn flow(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| json_string(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// An item of a flow list (`[a, b]`): plain like [`scalar`], but never with a `,`.
pub(super) fn flow_item(s: &str) -> String {
    if is_plain(s) && !s.contains(',') {
        s.to_string()
    } else {
        json_string(s)
    }
}

/// A duration such as `10s` or `1m30s` is plain: YAML cannot take it for a number.
pub(super) fn duration(s: &str) -> String {
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let unit = rest[digits..]
            .find(|c: char| !c.is_ascii_lowercase())
            .map_or(rest.len(), |u| digits + u);
        if digits == 0
            || unit == digits
            || !matches!(&rest[digits..unit], "ns" | "us" | "ms" | "s" | "m" | "h")
        {
            return scalar(s);
        }
        rest = &rest[unit..];
        parts += 1;
    }
    if parts == 0 { scalar(s) } else { s.to_string() }
}

fn json_string(s: &str) -> String {
    // Serializing a string cannot fail; the fallback keeps this total all the same.
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{}\"", s.escape_default()))
}

/// A string as a YAML scalar: plain when YAML reads it back as this same string, else
/// double-quoted. Plain is kept to a safe alphabet, and anything YAML could take for a
/// number, a boolean or null (`8080`, `1.10`, `0x1F`, `true`, `no`, `~`) is quoted.
pub(super) fn scalar(s: &str) -> String {
    if is_plain(s) {
        s.to_string()
    } else {
        json_string(s)
    }
}

fn is_plain(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
    ];
    let Some(first) = s.chars().next() else {
        return false;
    };
    let safe = |c: char| c.is_ascii_alphanumeric() || "_./:=,@+%-".contains(c);
    let second = s.chars().nth(1);
    let numberish = first.is_ascii_digit()
        || matches!(first, '+' | '.')
        || (first == '-' && second.is_none_or(|c| c.is_ascii_digit() || c == '.'));
    s.chars().all(safe)
        && !numberish
        && !matches!(first, '@' | '%' | ',' | ':' | '=')
        && !s.ends_with(':')
        && !WORDS.contains(&s.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_plain_only_when_yaml_reads_them_back_unchanged() {
        for plain in [
            "pingcap/pd:v8.5.1",
            "--name=pd0",
            "tikv-pd0-data:/data",
            "/etc/x.yml:/y:ro",
            "Viewer",
            "-q",
            "a,b",
        ] {
            assert_eq!(scalar(plain), plain);
        }
        for quoted in [
            "",
            "true",
            "No",
            "~",
            "null",
            "8080",
            "1.10",
            "0x1F",
            "-1",
            ".5",
            "+1",
            "127.0.0.1:9090:9090",
            "a b",
            "a: b",
            "#x",
            "x#y",
            "a:",
            "*x",
            "&x",
            "!x",
            "'x'",
            "\"x\"",
            "[x]",
            "{x}",
            "|",
            ">",
            "-",
            "@x",
            "%x",
            "line\nbreak",
            "tab\t",
        ] {
            let written = scalar(quoted);
            assert!(written.starts_with('"'), "{quoted:?} -> {written}");
            let back: String = serde_json::from_str(&written).expect("JSON string");
            assert_eq!(back, quoted);
        }
    }

    #[test]
    fn durations_and_flow_items_are_plain_when_safe() {
        assert_eq!(duration("10s"), "10s");
        assert_eq!(duration("1m30s"), "1m30s");
        assert_eq!(duration("1.5s"), "1.5s");
        assert_eq!(duration("10"), "\"10\"");
        assert_eq!(duration("1e5"), "\"1e5\"");
        assert_eq!(duration("s"), "s");
        assert_eq!(flow_item("pd0"), "pd0");
        assert_eq!(flow_item("a,b"), "\"a,b\"");
        assert_eq!(flow_item("01"), "\"01\"");
    }

    #[test]
    fn a_manifest_renders_with_its_comments_where_they_belong() {
        let manifest = Manifest {
            header: vec!["Imported from compose.yaml.".into()],
            name: "demo".into(),
            network: Network {
                name: "demo_default".into(),
                external: true,
                internal: false,
                comments: vec!["compose's default network".into()],
            },
            services: vec![Service {
                name: "web".into(),
                comments: vec!["compose key deploy: not carried over\n(swarm only)".into()],
                image: "nginx:1.27".into(),
                command: Some(vec!["sh".into(), "-c".into(), "echo \"hi\"".into()]),
                env: vec![("A".into(), "1".into()), ("B".into(), String::new())],
                ports: vec!["8080:80".into()],
                healthcheck: Some(Healthcheck {
                    test: vec!["CMD".into(), "true".into()],
                    interval: Some("5s".into()),
                    retries: Some(3),
                    ..Healthcheck::default()
                }),
                depends_on: vec!["db".into()],
                ..Service::default()
            }],
        };
        let text = manifest.render();
        assert_eq!(
            text,
            r#"# Imported from compose.yaml.
apiVersion: operator/v1
kind: Cluster
metadata:
  name: demo
spec:
  # compose's default network
  network:
    name: demo_default
    external: true
  services:
    - name: web
      # compose key deploy: not carried over\n(swarm only)
      image: nginx:1.27
      command:
        - sh
        - -c
        - "echo \"hi\""
      env:
        A: "1"
        B: ""
      ports:
        - "8080:80"
      healthcheck:
        test: ["CMD", "true"]
        interval: 5s
        retries: 3
      dependsOn: [db]
      remediation:
        policy: observe
"#
        );
    }
}
