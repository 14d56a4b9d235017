//! Just enough PromQL reading to find a query's vector selectors (`metric{labels}`), so the
//! controller can tell "nothing is wrong" from "this query can never see anything" (a
//! misspelled metric or label value). Not a parser: it skips strings, label matchers,
//! durations, numbers, function names and keywords, and keeps the rest.

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
    // Aggregations, which may be followed by `by (...)` rather than `(`.
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
];

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Skips a quoted string starting at `i` (the quote); returns the index after it.
fn skip_string(chars: &[char], mut i: usize) -> usize {
    let quote = chars[i];
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote != '`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index of the brace closing the one at `i`, skipping strings inside.
fn close_brace(chars: &[char], mut i: usize) -> usize {
    i += 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            '}' => return i,
            _ => i += 1,
        }
    }
    i
}

/// The vector selectors of an expression, in order, without duplicates:
/// `rate(http_requests_total{job="x"}[5m]) > 0` → `["http_requests_total{job=\"x\"}"]`.
pub fn selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut found: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !found.contains(&s) {
            found.push(s);
        }
    };
    let mut i = 0;
    // Inside `by (...)`/`on (...)` label lists, identifiers are labels, not metrics.
    let mut label_list_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut previous_word = String::new();
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '[' => {
                // Range or subquery duration: skip to the closing bracket.
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                i += 1;
            }
            '(' => {
                depth += 1;
                if matches!(
                    previous_word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    label_list_depth = Some(depth);
                }
                previous_word.clear();
                i += 1;
            }
            ')' => {
                if label_list_depth == Some(depth) {
                    label_list_depth = None;
                }
                depth = depth.saturating_sub(1);
                previous_word.clear();
                i += 1;
            }
            '{' => {
                // A selector with no metric name: `{__name__="x", job="y"}`.
                let end = close_brace(&chars, i);
                push(chars[i..=end.min(chars.len() - 1)].iter().collect());
                i = end + 1;
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit())) =>
            {
                // Numbers, including 1e3 and durations like 5m after `offset`.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                let start = i;
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let next = chars.get(j).copied();
                let is_call = next == Some('(');
                let keyword = KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
                if label_list_depth.is_some() || is_call || keyword {
                    previous_word = word.to_ascii_lowercase();
                    continue;
                }
                if next == Some('{') {
                    let end = close_brace(&chars, j);
                    let matchers: String = chars[j..=end.min(chars.len() - 1)].iter().collect();
                    push(format!("{word}{matchers}"));
                    i = end + 1;
                } else {
                    push(word.clone());
                }
                previous_word = word.to_ascii_lowercase();
            }
            _ => {
                if !c.is_whitespace() {
                    previous_word.clear();
                }
                i += 1;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::selectors;

    #[test]
    fn alert_expression_yields_its_metric_with_matchers() {
        assert_eq!(
            selectors(
                r#"pd_regions_status{type=~"miss-peer-region-count|miss_peer_region_count"} > 0"#
            ),
            vec![r#"pd_regions_status{type=~"miss-peer-region-count|miss_peer_region_count"}"#]
        );
    }

    #[test]
    fn functions_ranges_keywords_and_numbers_are_skipped() {
        assert_eq!(
            selectors(
                r#"sum by (instance) (rate(etcd_server_proposals_failed_total{job="etcd"}[5m] offset 1m)) > 0.5"#
            ),
            vec![r#"etcd_server_proposals_failed_total{job="etcd"}"#]
        );
    }

    #[test]
    fn binary_expressions_yield_both_sides_once() {
        assert_eq!(
            selectors(
                r#"tikv_store_size_bytes{type="used"} / ignoring(type) tikv_store_size_bytes{type="capacity"} > 0.8"#
            ),
            vec![
                r#"tikv_store_size_bytes{type="used"}"#,
                r#"tikv_store_size_bytes{type="capacity"}"#
            ]
        );
        assert_eq!(selectors("up == 0 or up == 0"), vec!["up"]);
    }

    #[test]
    fn strings_with_braces_and_bare_matchers_are_handled() {
        assert_eq!(
            selectors(r#"{__name__="up", job="a}b"} == 0"#),
            vec![r#"{__name__="up", job="a}b"}"#]
        );
        assert_eq!(selectors("1 + 2"), Vec::<String>::new());
    }

    #[test]
    fn on_and_group_left_label_lists_are_not_metrics() {
        assert_eq!(
            selectors("a * on(instance, job) group_left(version) b"),
            vec!["a", "b"]
        );
    }
}
