//! A cheap sanity check of PromQL text: balanced brackets and terminated strings.
//!
//! The manifest does not parse PromQL (the live Prometheus is the judge of that, and its
//! grammar changes between versions); this only catches the typos that would otherwise
//! surface as an opaque "parse error" much later, and points at where they are.

/// Checks that every `(`, `{` and `[` of `expr` is closed by its own kind of bracket, in
/// order, and that every string (`"..."`, `'...'` with `\` escapes, `` `...` `` raw) ends.
/// Brackets inside strings and `#` comments do not count.
///
/// Positions in the message are 1-based character offsets into `expr`.
pub(super) fn check_balanced(expr: &str) -> Result<(), String> {
    let mut open: Vec<(char, usize)> = Vec::new();
    let mut chars = expr.chars().enumerate();
    while let Some((i, c)) = chars.next() {
        let at = i + 1;
        match c {
            '(' | '{' | '[' => open.push((c, at)),
            ')' | '}' | ']' => {
                let wanted = opening(c);
                match open.pop() {
                    Some((o, _)) if o == wanted => {}
                    Some((o, o_at)) => {
                        return Err(format!(
                            "\"{c}\" at character {at} closes \"{o}\" opened at character {o_at} (expected \"{}\")",
                            closing(o)
                        ));
                    }
                    None => {
                        return Err(format!(
                            "\"{c}\" at character {at} has no matching \"{wanted}\""
                        ));
                    }
                }
            }
            '"' | '\'' | '`' => {
                let escapes = c != '`';
                let mut closed = false;
                while let Some((_, s)) = chars.next() {
                    if escapes && s == '\\' {
                        chars.next();
                    } else if s == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(format!(
                        "unterminated string: the {c} at character {at} is never closed"
                    ));
                }
            }
            '#' => {
                for (_, s) in chars.by_ref() {
                    if s == '\n' {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    match open.pop() {
        Some((o, at)) => Err(format!(
            "\"{o}\" at character {at} is never closed (expected \"{}\")",
            closing(o)
        )),
        None => Ok(()),
    }
}

fn opening(close: char) -> char {
    match close {
        ')' => '(',
        '}' => '{',
        _ => '[',
    }
}

fn closing(open: char) -> char {
    match open {
        '(' => ')',
        '{' => '}',
        _ => ']',
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_queries_pass() {
        for expr in [
            "up",
            "etcd_server_has_leader == 0",
            "sum by (instance) (rate(http_requests_total{job=\"pd\", code=~\"5..\"}[5m])) > 0",
            "pd_regions_status{type=~\"miss_peer_region_count|miss-peer-region-count\"} > 0",
            "max_over_time(up[1m:10s])",
            "label_replace(up, 'x', '$1', 'instance', '(.*):.*')",
            "count(up{job=`raw\\`}) # a comment with ( and \"\nor vector(0)",
            "up{name=\"a\\\"(b\"}",
        ] {
            assert_eq!(check_balanced(expr), Ok(()), "{expr}");
        }
    }

    #[test]
    fn unclosed_bracket_is_named_with_its_position() {
        let err = check_balanced("sum(rate(x[5m])").unwrap_err();
        assert_eq!(err, "\"(\" at character 4 is never closed (expected \")\")");
        let err = check_balanced("up{job=\"pd\"").unwrap_err();
        assert!(err.starts_with("\"{\" at character 3"), "{err}");
    }

    #[test]
    fn stray_closing_bracket_is_named() {
        let err = check_balanced("up) > 0").unwrap_err();
        assert_eq!(err, "\")\" at character 3 has no matching \"(\"");
    }

    #[test]
    fn mismatched_brackets_are_named() {
        let err = check_balanced("rate(x[5m)]").unwrap_err();
        assert_eq!(
            err,
            "\")\" at character 10 closes \"[\" opened at character 7 (expected \"]\")"
        );
    }

    #[test]
    fn unterminated_strings_are_found() {
        let err = check_balanced("up{job=\"pd}").unwrap_err();
        assert_eq!(
            err,
            "unterminated string: the \" at character 8 is never closed"
        );
        assert!(check_balanced("up{job='pd\\'}").is_err());
        assert!(check_balanced("up{job=`pd}").is_err());
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        assert_eq!(check_balanced("up{x=\"((\"}"), Ok(()));
        assert_eq!(check_balanced("up # )\n"), Ok(()));
        // A comment runs to the end of its line only.
        assert!(check_balanced("up # x\n)").is_err());
    }
}
