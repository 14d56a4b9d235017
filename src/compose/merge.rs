//! Several compose files as one, later files overriding earlier ones, by compose's rules:
//! a service's single values (`image`, `command`) are replaced; `environment`, `labels`,
//! `depends_on` and `networks` are merged by key; `volumes` and `devices` by their target
//! path; `ports`, `expose`, `dns` and the other lists are appended; nested mappings
//! (`healthcheck`, `logging`, `deploy`) are merged key by key.

use std::convert::Infallible;

use super::ComposeError;
use super::node::{Node, Value};

/// Top-level sections whose entries are merged by name.
const SECTIONS: &[&str] = &["services", "networks", "volumes", "secrets", "configs"];

/// Service keys whose list and mapping forms are merged as mappings.
const KEYED: &[&str] = &[
    "environment",
    "labels",
    "depends_on",
    "networks",
    "extra_hosts",
];

/// Service keys whose lists are appended (a value written in both is kept once).
const APPENDED: &[&str] = &[
    "ports",
    "expose",
    "dns",
    "dns_search",
    "dns_opt",
    "env_file",
    "cap_add",
    "cap_drop",
    "external_links",
    "links",
    "tmpfs",
    "security_opt",
    "volumes_from",
    "group_add",
    "profiles",
    "secrets",
    "configs",
    "device_cgroup_rules",
];

/// Service keys whose list items are merged by the path they mount at.
const BY_TARGET: &[&str] = &["volumes", "devices"];

/// The files merged in order; the first one's key order leads.
///
/// # Errors
/// A section or service that is not a mapping, a list that is neither list nor mapping.
pub(super) fn files(mut files: Vec<Node>) -> Result<Node, ComposeError> {
    let mut merged = files.remove(0);
    check_sections(&merged)?;
    for over in files {
        check_sections(&over)?;
        merged = merge_top(merged, over)?;
    }
    Ok(merged)
}

fn check_sections(root: &Node) -> Result<(), ComposeError> {
    for &section in SECTIONS {
        if let Some(node) = root.get(section)
            && !matches!(node.value, Value::Map(_) | Value::Null)
        {
            return Err(node.expected("a mapping of names"));
        }
    }
    Ok(())
}

fn merge_top(base: Node, over: Node) -> Result<Node, ComposeError> {
    merge_entries(base, over, |key, b, o| match key {
        "services" => merge_entries(b, o, |_, b, o| merge_service(b, o)),
        _ if SECTIONS.contains(&key) => Ok(deep(b, o)),
        _ => Ok(o),
    })
}

/// Merges two mappings entry by entry, with `f` for the keys in both; when either is not a
/// mapping, `over` replaces `base` (unless it is empty).
fn merge_entries<E>(
    base: Node,
    over: Node,
    f: impl Fn(&str, Node, Node) -> Result<Node, E>,
) -> Result<Node, E> {
    let (mut entries, over_entries) = match (base.value, over.value) {
        (Value::Map(b), Value::Map(o)) => (b, o),
        (b, Value::Null) => {
            return Ok(Node {
                value: b,
                at: base.at,
            });
        }
        (_, o) => {
            return Ok(Node {
                value: o,
                at: over.at,
            });
        }
    };
    for (key, value) in over_entries {
        match entries.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let old = entries.remove(i).1;
                let new = f(&key, old, value)?;
                entries.insert(i, (key, new));
            }
            None => entries.push((key, value)),
        }
    }
    Ok(Node {
        value: Value::Map(entries),
        at: base.at,
    })
}

/// Mappings merged key by key at every depth; anything else replaced.
fn deep(base: Node, over: Node) -> Node {
    match merge_entries::<Infallible>(base, over, |_, b, o| Ok(deep(b, o))) {
        Ok(node) => node,
        Err(never) => match never {},
    }
}

fn merge_service(base: Node, over: Node) -> Result<Node, ComposeError> {
    if !matches!(over.value, Value::Map(_) | Value::Null) {
        return Err(over.expected("a service (a mapping)"));
    }
    merge_entries(base, over, |key, b, o| {
        if KEYED.contains(&key) {
            Ok(deep(keyed(b)?, keyed(o)?))
        } else if APPENDED.contains(&key) {
            appended(b, o)
        } else if BY_TARGET.contains(&key) {
            by_target(b, o)
        } else {
            Ok(deep(b, o))
        }
    })
}

/// A list of `KEY=VALUE` / `KEY` (or of names) as a mapping; a mapping as it is.
pub(super) fn keyed(node: Node) -> Result<Node, ComposeError> {
    let items = match &node.value {
        Value::Map(_) | Value::Null => return Ok(node),
        Value::Seq(items) => items,
        _ => return Err(node.expected("a list or a mapping")),
    };
    let mut entries: Vec<(String, Node)> = Vec::with_capacity(items.len());
    for item in items {
        let text = item.text("a `KEY=VALUE` string")?;
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k.to_string(), Value::Str(v.to_string())),
            None => (text.clone(), Value::Null),
        };
        let value = Node {
            value,
            at: item.at.clone(),
        };
        // Later items win, as with a mapping.
        match entries.iter().position(|(k, _)| *k == key) {
            Some(i) => entries[i].1 = value,
            None => entries.push((key, value)),
        }
    }
    Ok(Node {
        value: Value::Map(entries),
        at: node.at,
    })
}

/// A list (a single string counts as one item).
fn as_list(node: Node) -> Result<Vec<Node>, ComposeError> {
    match node.value {
        Value::Seq(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        Value::Str(_) | Value::Number(_) => Ok(vec![node]),
        _ => Err(node.expected("a list")),
    }
}

fn appended(base: Node, over: Node) -> Result<Node, ComposeError> {
    let at = base.at.clone();
    let mut items = as_list(base)?;
    for item in as_list(over)? {
        if !items.iter().any(|i| i.value == item.value) {
            items.push(item);
        }
    }
    Ok(Node {
        value: Value::Seq(items),
        at,
    })
}

fn by_target(base: Node, over: Node) -> Result<Node, ComposeError> {
    let at = base.at.clone();
    let mut items = as_list(base)?;
    for item in as_list(over)? {
        let target = mount_target(&item);
        match items
            .iter()
            .position(|i| target.is_some() && mount_target(i) == target)
        {
            Some(i) => items[i] = item,
            None => items.push(item),
        }
    }
    Ok(Node {
        value: Value::Seq(items),
        at,
    })
}

/// Where a volume or device item mounts: `src:target[:mode]`, `target`, or `{target: ...}`.
pub(super) fn mount_target(item: &Node) -> Option<String> {
    match &item.value {
        Value::Str(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(
                match parts.len() {
                    1 => parts[0],
                    _ => parts[1],
                }
                .to_string(),
            )
        }
        Value::Map(_) => item.get("target").and_then(Node::scalar),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::node::tests::parse;
    use super::*;

    fn service(root: &Node, name: &str) -> Node {
        root.get("services")
            .and_then(|s| s.get(name))
            .cloned()
            .expect(name)
    }

    fn texts(node: Option<&Node>) -> Vec<String> {
        node.map(|n| match &n.value {
            Value::Seq(items) => items.iter().filter_map(Node::scalar).collect(),
            Value::Map(entries) => entries
                .iter()
                .map(|(k, v)| format!("{k}={}", v.scalar().unwrap_or_default()))
                .collect(),
            _ => vec![n.scalar().unwrap_or_default()],
        })
        .unwrap_or_default()
    }

    #[test]
    fn later_files_override_by_compose_rules() {
        let base = parse(
            "services:
  web:
    image: web:1
    command: [serve]
    environment: [A=1, B=2]
    labels: {team: a}
    ports: [\"80:80\"]
    volumes: [\"data:/data\", \"./conf:/conf:ro\"]
    depends_on: [db]
    healthcheck: {test: [CMD, ok], interval: 5s}
  db:
    image: db:1
",
        );
        let over = parse(
            "services:
  web:
    image: web:2
    environment: {B: 3, C: 4}
    labels: [tier=front]
    ports: [\"80:80\", \"443:443\"]
    volumes: [\"other:/data\"]
    depends_on: {cache: {condition: service_started}}
    healthcheck: {interval: 10s}
  cache:
    image: cache:1
",
        );
        let merged = files(vec![base, over]).expect("merged");
        let web = service(&merged, "web");
        assert_eq!(texts(web.get("image")), ["web:2"]);
        assert_eq!(texts(web.get("command")), ["serve"]);
        assert_eq!(texts(web.get("environment")), ["A=1", "B=3", "C=4"]);
        assert_eq!(texts(web.get("labels")), ["team=a", "tier=front"]);
        assert_eq!(texts(web.get("ports")), ["80:80", "443:443"]);
        assert_eq!(
            texts(web.get("volumes")),
            ["other:/data", "./conf:/conf:ro"]
        );
        assert_eq!(texts(web.get("depends_on")), ["db=", "cache="]);
        let health = web.get("healthcheck").expect("healthcheck");
        assert_eq!(texts(health.get("test")), ["CMD", "ok"]);
        assert_eq!(texts(health.get("interval")), ["10s"]);
        let names: Vec<&str> = merged
            .get("services")
            .unwrap()
            .entries()
            .unwrap()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        assert_eq!(names, ["web", "db", "cache"]);
        // Values keep the file they came from: the override's line, not the base's.
        assert_eq!(web.get("image").map(|n| n.at.line), Some(3));
    }

    #[test]
    fn a_service_that_is_not_a_mapping_is_an_error_in_the_override() {
        let base = parse("services:\n  web: {image: a}\n");
        let over = parse("services:\n  web: [image]\n");
        let err = files(vec![base, over]).unwrap_err().to_string();
        assert!(
            err.starts_with("compose.yaml:2: services.web: expected a service"),
            "{err}"
        );
    }
}
