//! PromQL read offline, by the `promql-parser` crate (this module is its one user): whether
//! a query parses, when a manifest or a drill is loaded ([`check`]), and its vector
//! selectors, when a check sees nothing ([`selectors`]).
//!
//! The parser follows Prometheus's own grammar and type rules (a range vector where a
//! function wants one, known functions and their arity), so a bad query is refused with no
//! Prometheus running. The live Prometheus is still asked when it answers
//! (`health::check_queries`): it is the judge of what its own version supports.

use std::borrow::Cow;
use std::sync::Once;

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{self, Expr, Function};
use promql_parser::util::{ExprVisitor, walk_expr};

/// What `promql-parser` says when its grammar refuses a query without saying why.
const UNEXPLAINED: &str = "invalid promql query";

/// Checks that `expr` is a PromQL expression: its brackets, strings, operators, functions
/// and their argument types.
///
/// # Errors
/// The parser's reason, e.g. `unclosed left parenthesis`, `unterminated quoted string "`,
/// `expected type range vector in call to function "rate", got vector`.
pub fn check(expr: &str) -> Result<(), String> {
    parse(expr).map(drop).map_err(|reason| {
        if reason == UNEXPLAINED {
            "a syntax error (the parser names no reason: look for a misplaced operator, keyword, comma or label list)".to_string()
        } else {
            reason
        }
    })
}

/// `promql-parser`'s parse, with raw strings read as Prometheus reads them, and Prometheus
/// 2's functions that the crate (which follows Prometheus 3) no longer knows.
fn parse(expr: &str) -> Result<Expr, String> {
    static PROMETHEUS_2: Once = Once::new();
    PROMETHEUS_2.call_once(|| {
        // `holt_winters` (Prometheus 2.x, Debian's 2.42 among them) became
        // `double_exponential_smoothing` in 3.0; a cluster's own Prometheus still judges it.
        let holt_winters = Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        // Fails only for a name the crate has built in, which holt_winters is not.
        let _ = parser::register_extra_functions(vec![holt_winters]);
    });
    parser::parse(&raw_strings_quoted(expr))
}

/// `expr` with each `` `raw` `` string written as the `"..."` string that means the same.
///
/// Prometheus processes no escapes in backticks (`` `.*\d+` `` is a regex, `` `a\` `` ends
/// at its second backtick); `promql-parser` 0.11 reads them as in `"..."`, refusing both.
/// Quotes and comments are skipped as the parser's lexer skips them, so a backtick inside
/// them is left alone. An unterminated raw string is left for the parser to report.
fn raw_strings_quoted(expr: &str) -> Cow<'_, str> {
    if !expr.contains('`') || !expr.contains('\\') {
        return Cow::Borrowed(expr);
    }
    let mut out = String::with_capacity(expr.len() + 8);
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                out.push(c);
                while let Some(d) = chars.next() {
                    out.push(d);
                    if d == '\\' {
                        out.extend(chars.next());
                    } else if d == c {
                        break;
                    }
                }
            }
            '#' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '`' => {
                let rest = chars.as_str();
                let Some(end) = rest.find('`') else {
                    out.push(c);
                    out.push_str(rest);
                    break;
                };
                out.push('"');
                for d in rest[..end].chars() {
                    match d {
                        '\\' => out.push_str("\\\\"),
                        '"' => out.push_str("\\\""),
                        '\n' => out.push_str("\\n"),
                        d => out.push(d),
                    }
                }
                out.push('"');
                chars = rest[end + 1..].chars();
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// [`check`]'s verdict as a diagnostic's message: `invalid PromQL "QUERY": REASON`, the
/// query on one line (a `>-` or `|` block spans several). `None` when it parses.
pub fn refusal(expr: &str) -> Option<String> {
    let why = check(expr).err()?;
    let shown = expr.split_whitespace().collect::<Vec<_>>().join(" ");
    Some(format!("invalid PromQL \"{shown}\": {why}"))
}

/// The vector selectors of an expression, in order, without duplicates, without their
/// `offset` and `@`: `rate(http_requests_total{job="x"}[5m] offset 1m) > 0` →
/// `["http_requests_total{job=\"x\"}"]`. Matchers are written as the parser prints them
/// (sorted, comma-separated). Empty for an expression that does not parse.
///
/// So the controller can tell "nothing is wrong" from "this query can never see anything"
/// (a misspelled metric or label value): each is asked as `count(selector)`.
pub fn selectors(expr: &str) -> Vec<String> {
    struct Collect(Vec<String>);
    impl ExprVisitor for Collect {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
            let selector = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &ms.vs,
                _ => return Ok(true),
            };
            let mut bare = selector.clone();
            bare.offset = None;
            bare.at = None;
            let text = bare.to_string();
            if !self.0.contains(&text) {
                self.0.push(text);
            }
            Ok(true)
        }
    }
    let Ok(parsed) = parse(expr) else {
        return Vec::new();
    };
    let mut found = Collect(Vec::new());
    match walk_expr(&mut found, &parsed) {
        Ok(_) => found.0,
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reason `expr` is refused; panics if it is not.
    fn refused(expr: &str) -> String {
        match check(expr) {
            Ok(()) => panic!("{expr:?} was accepted"),
            Err(why) => why,
        }
    }

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
            "max(pd_tso_role{job=\"pd\"})\nor on() (max(up{job=\"pd\"}) * 0)",
            "up{job=\"tikv\"} == 0\nand on() (count(up{job=\"tikv\"} == 0) == 1)",
            // Prometheus 2's name, as well as 3's.
            "holt_winters(up[10m], 0.5, 0.5) < 0",
            "double_exponential_smoothing(up[10m], 0.5, 0.5) < 0",
        ] {
            assert_eq!(check(expr), Ok(()), "{expr}");
        }
    }

    #[test]
    fn raw_strings_take_no_escapes_as_in_prometheus() {
        for expr in [
            "up{instance=~`.*\\d+`}",
            "count(up{job=`raw\\`})",
            "up{job=`a\"b`} # `\\x\n",
            "up{job=\"`\\\\\"} or up{job='\\'`'}",
        ] {
            assert_eq!(check(expr), Ok(()), "{expr}");
        }
        assert_eq!(
            selectors("up{job=`a\\b`}"),
            vec![r#"up{job="a\\b"}"#],
            "the same value, double-quoted"
        );
        assert_eq!(
            raw_strings_quoted("x{a=`\\d`} # `\\`\n"),
            "x{a=\"\\\\d\"} # `\\`\n"
        );
        assert!(refused("up{job=`a\\b}").contains("unterminated"));
    }

    /// Every query the hand-written bracket check refused before this parser, still refused.
    #[test]
    fn unclosed_brackets_are_refused() {
        assert_eq!(refused("sum(rate(x[5m])"), "unclosed left parenthesis");
        assert_eq!(
            refused("up{job=\"pd\""),
            "unexpected end of input inside braces"
        );
    }

    #[test]
    fn stray_closing_bracket_is_refused() {
        assert_eq!(refused("up) > 0"), "unexpected right parenthesis ')'");
    }

    #[test]
    fn mismatched_brackets_are_refused() {
        assert_eq!(
            refused("rate(x[5m)]"),
            "unexpected character inside brackets: ')'"
        );
    }

    #[test]
    fn unterminated_strings_are_refused() {
        for expr in ["up{job=\"pd}", "up{job='pd\\'}", "up{job=`pd}"] {
            let why = refused(expr);
            assert!(why.contains("unterminated quoted string"), "{expr}: {why}");
        }
    }

    #[test]
    fn brackets_in_strings_and_comments_do_not_count() {
        assert_eq!(check("up{x=\"((\"}"), Ok(()));
        assert_eq!(check("up # )\n"), Ok(()));
        // A comment runs to the end of its line only.
        assert_eq!(refused("up # x\n)"), "unexpected right parenthesis ')'");
    }

    /// What the bracket check let through and only a live Prometheus refused.
    #[test]
    fn grammar_and_type_errors_are_refused_offline() {
        assert_eq!(
            refused("rate(up)"),
            "expected type matrix in call to function 'rate', got vector"
        );
        assert!(refused("up ==").contains("syntax error"));
        assert!(refused("sum some_metric by (instance)").contains("syntax error"));
        assert_eq!(refused("rat(up[5m])"), "unknown function with name 'rat'");
        assert!(!refused("up{job=~\"(\"}").is_empty(), "a bad regex");
        assert!(!refused("up{job=\"a\"} offset").is_empty());
        assert_eq!(
            refused("holt_winters(up, 0.5, 0.5)"),
            "expected type matrix in call to function 'holt_winters', got vector"
        );
    }

    #[test]
    fn a_refusal_names_the_query_on_one_line_and_the_reason() {
        assert_eq!(refusal("up == 0"), None);
        assert_eq!(
            refusal("sum(\n  up\n"),
            Some("invalid PromQL \"sum( up\": unclosed left parenthesis".into())
        );
    }

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
            vec![r#"{__name__="up",job="a}b"}"#]
        );
        assert_eq!(selectors("1 + 2"), Vec::<String>::new());
        assert_eq!(selectors("up{"), Vec::<String>::new(), "does not parse");
    }

    #[test]
    fn on_and_group_left_label_lists_are_not_metrics() {
        assert_eq!(
            selectors("a * on(instance, job) group_left(version) b"),
            vec!["a", "b"]
        );
    }

    #[test]
    fn comments_and_subqueries() {
        assert_eq!(selectors("up == 0 # was: down_total > 0\n"), vec!["up"]);
        assert_eq!(
            selectors("max_over_time(rate(x_total[1m])[5m:30s] @ 100)"),
            vec!["x_total"]
        );
    }
}
