//! Variable substitution in compose values (`${TAG}`, `${PORT:-8080}`), as compose does it
//! before it reads a file: the values the project would run with are the ones imported.

use std::collections::BTreeMap;

use super::ComposeError;
use super::node::{Node, Value};
use crate::yamldoc::Diagnostic;

/// Substitutes every string value of the tree (not the keys). Returns a note for each
/// variable that was not set and became a blank string, as compose does (it warns too): the
/// imported value is probably not the one meant.
///
/// # Errors
/// A malformed reference (`${`, `$1`) or a `${VAR:?message}` whose variable is not set: at
/// its value.
pub(super) fn tree(
    root: &mut Node,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Diagnostic>, ComposeError> {
    let mut unset = Vec::new();
    root.walk_mut(&mut |node| {
        if let Value::Str(text) = &node.value
            && text.contains('$')
        {
            let mut missing = Vec::new();
            let out = substitute(text, env, &mut missing).map_err(|why| node.error(why))?;
            unset.extend(missing.into_iter().map(|name| {
                node.at.diagnostic(format!(
                    "variable {name} is not set: a blank string is used, as compose does"
                ))
            }));
            node.value = Value::Str(out);
        }
        Ok(())
    })?;
    Ok(unset)
}

fn is_name_start(c: char) -> bool {
    c == '_' || c.is_ascii_alphabetic()
}

fn is_name_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}

/// One string: `$$` is a literal `$`; `$NAME` and `${NAME}` the variable (blank if unset);
/// `${NAME:-default}` / `${NAME-default}` the default when unset or empty / unset;
/// `${NAME:+other}` / `${NAME+other}` the other text when set and not empty / set;
/// `${NAME:?message}` / `${NAME?message}` an error when unset or empty / unset.
pub(super) fn substitute(
    text: &str,
    env: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let invalid = || {
            format!(
                "invalid interpolation in \"{text}\": write `$$` for a literal `$`, `${{NAME}}` or `$NAME` for a variable"
            )
        };
        match after.chars().next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let end = after.find('}').ok_or_else(invalid)?;
                let inner = &after[1..end];
                out.push_str(&braced(inner, env, unset).ok_or_else(invalid)??);
                rest = &after[end + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
                out.push_str(&lookup(&after[..len], env, unset));
                rest = &after[len..];
            }
            _ => return Err(invalid()),
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn lookup(name: &str, env: &BTreeMap<String, String>, unset: &mut Vec<String>) -> String {
    match env.get(name) {
        Some(value) => value.clone(),
        None => {
            unset.push(name.to_string());
            String::new()
        }
    }
}

/// The inside of `${...}`: `None` when it is malformed, `Some(Err)` for a `?` that fired.
fn braced(
    inner: &str,
    env: &BTreeMap<String, String>,
    unset: &mut Vec<String>,
) -> Option<Result<String, String>> {
    let mut chars = inner.chars();
    if !chars.next().is_some_and(is_name_start) {
        return None;
    }
    let len = inner.find(|c| !is_name_char(c)).unwrap_or(inner.len());
    let (name, op) = inner.split_at(len);
    let value = env.get(name);
    let (colon, op) = match op.strip_prefix(':') {
        Some(op) => (true, op),
        None => (false, op),
    };
    // With a colon, an empty value counts as unset.
    let set = value.is_some_and(|v| !(colon && v.is_empty()));
    let Some(kind) = op.chars().next() else {
        return if colon {
            None
        } else {
            Some(Ok(lookup(name, env, unset)))
        };
    };
    let word = &op[1..];
    Some(Ok(match kind {
        '-' if set => value.cloned().unwrap_or_default(),
        '-' => word.to_string(),
        '+' if set => word.to_string(),
        '+' => String::new(),
        '?' if set => value.cloned().unwrap_or_default(),
        '?' => {
            let why = if word.is_empty() {
                "it is required"
            } else {
                word
            };
            return Some(Err(format!(
                "variable {name} is not set{}: {why}",
                if colon { " or empty" } else { "" }
            )));
        }
        _ => return None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("TAG", "1.2"), ("EMPTY", ""), ("PORT", "8080")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sub(text: &str) -> Result<String, String> {
        substitute(text, &env(), &mut Vec::new())
    }

    #[test]
    fn variables_defaults_and_escapes_are_substituted_as_compose_does() {
        assert_eq!(sub("img:${TAG}").unwrap(), "img:1.2");
        assert_eq!(sub("img:$TAG-x").unwrap(), "img:1.2-x");
        assert_eq!(sub("$$HOME and $${TAG}").unwrap(), "$HOME and ${TAG}");
        assert_eq!(sub("${NOPE:-80}:${PORT:-1}").unwrap(), "80:8080");
        assert_eq!(sub("${EMPTY:-d}|${EMPTY-d}").unwrap(), "d|");
        assert_eq!(
            sub("${PORT:+on}|${NOPE+on}|${EMPTY+set}").unwrap(),
            "on||set"
        );
        assert_eq!(sub("${PORT:?needed}").unwrap(), "8080");
        assert_eq!(sub("no dollar").unwrap(), "no dollar");
    }

    #[test]
    fn unset_variables_are_blank_and_reported() {
        let mut unset = Vec::new();
        assert_eq!(
            substitute("a${NOPE}b$ALSO", &env(), &mut unset).unwrap(),
            "ab"
        );
        assert_eq!(unset, ["NOPE", "ALSO"]);
    }

    #[test]
    fn malformed_references_and_required_variables_are_errors() {
        for bad in [
            "a$", "${", "${TAG", "$1", "${1A}", "${TAG:}", "${TAG!x}", "a $ b",
        ] {
            let err = sub(bad).unwrap_err();
            assert!(err.starts_with("invalid interpolation"), "{bad}: {err}");
        }
        assert_eq!(
            sub("${NOPE:?set NOPE to the tag}").unwrap_err(),
            "variable NOPE is not set or empty: set NOPE to the tag"
        );
        assert_eq!(
            sub("${NOPE?}").unwrap_err(),
            "variable NOPE is not set: it is required"
        );
    }
}
