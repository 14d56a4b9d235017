//! Just enough PromQL reading for the two things the operator needs before Prometheus
//! judges a query: a sanity check of its brackets and strings when a manifest is loaded
//! ([`check_balanced`]), and its vector selectors when a check sees nothing
//! ([`selectors`]).
//!
//! Not a parser: the live Prometheus is the judge of PromQL, and its grammar changes
//! between versions. Both readers share one lexer, so that they agree on what a string, a
//! comment or a number is.

/// What the lexer tells apart. Everything else is [`Token::Other`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    /// `(`, `{` or `[`.
    Open(char),
    /// `)`, `}` or `]`.
    Close(char),
    /// `"..."`, `'...'` (with `\` escapes) or `` `...` `` (raw); `closed` is false when the
    /// text ends first.
    Str {
        quote: char,
        closed: bool,
    },
    /// `#` to the end of its line, the newline included.
    Comment,
    /// Digits, or `.` and a digit, then letters, digits and dots: `0.5`, `1e3`, `5m`.
    Number,
    /// A metric, label, function or keyword name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    Ident,
    /// One whitespace character.
    Space,
    Other(char),
}

/// One token and where it is: `start..end` are character (not byte) indices into the
/// expression, so that messages can count characters as a reader does.
#[derive(Debug, Clone, Copy)]
struct Lexeme {
    token: Token,
    start: usize,
    end: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Cuts `chars` into tokens; never fails (an unterminated string is a token too).
fn lex(chars: &[char]) -> Vec<Lexeme> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let c = chars[i];
        i += 1;
        let token = match c {
            '(' | '{' | '[' => Token::Open(c),
            ')' | '}' | ']' => Token::Close(c),
            '"' | '\'' | '`' => {
                let mut closed = false;
                while i < chars.len() {
                    match chars[i] {
                        '\\' if c != '`' => i += 2,
                        s if s == c => {
                            i += 1;
                            closed = true;
                            break;
                        }
                        _ => i += 1,
                    }
                }
                i = i.min(chars.len());
                Token::Str { quote: c, closed }
            }
            '#' => {
                while i < chars.len() {
                    i += 1;
                    if chars[i - 1] == '\n' {
                        break;
                    }
                }
                Token::Comment
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i).is_some_and(|d| d.is_ascii_digit())) =>
            {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
                Token::Number
            }
            c if is_ident_start(c) => {
                while i < chars.len() && is_ident(chars[i]) {
                    i += 1;
                }
                Token::Ident
            }
            c if c.is_whitespace() => Token::Space,
            c => Token::Other(c),
        };
        out.push(Lexeme {
            token,
            start,
            end: i,
        });
    }
    out
}

/// Checks that every `(`, `{` and `[` of `expr` is closed by its own kind of bracket, in
/// order, and that every string (`"..."`, `'...'` with `\` escapes, `` `...` `` raw) ends.
/// Brackets inside strings and `#` comments do not count.
///
/// This only catches the typos that would otherwise surface as an opaque "parse error"
/// much later, and points at where they are. Positions in the message are 1-based
/// character offsets into `expr`.
pub fn check_balanced(expr: &str) -> Result<(), String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut open: Vec<(char, usize)> = Vec::new();
    for lexeme in lex(&chars) {
        let at = lexeme.start + 1;
        match lexeme.token {
            Token::Open(c) => open.push((c, at)),
            Token::Close(c) => {
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
            Token::Str {
                quote,
                closed: false,
            } => {
                return Err(format!(
                    "unterminated string: the {quote} at character {at} is never closed"
                ));
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

/// The vector selectors of an expression, in order, without duplicates:
/// `rate(http_requests_total{job="x"}[5m]) > 0` → `["http_requests_total{job=\"x\"}"]`.
///
/// So the controller can tell "nothing is wrong" from "this query can never see anything"
/// (a misspelled metric or label value). Strings, label matchers, durations, numbers,
/// comments, function names and keywords are skipped; the rest is kept.
pub fn selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let tokens = lex(&chars);
    // The text from the `{` at token `open` to its `}` (or to the end), and the index of
    // the token after it. The first `}` outside a string closes: matchers do not nest.
    let matchers = |open: usize| -> (String, usize) {
        let close = (open + 1..tokens.len()).find(|&k| tokens[k].token == Token::Close('}'));
        let end = close.map_or(chars.len(), |k| tokens[k].end);
        let text = chars[tokens[open].start..end].iter().collect();
        (text, close.map_or(tokens.len(), |k| k + 1))
    };
    let mut found: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !found.contains(&s) {
            found.push(s);
        }
    };
    // Inside `by (...)`/`on (...)` label lists, identifiers are labels, not metrics.
    let mut label_list_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut previous_word = String::new();
    let mut k = 0;
    while k < tokens.len() {
        let lexeme = tokens[k];
        k += 1;
        match lexeme.token {
            Token::Str { .. } | Token::Number | Token::Space | Token::Comment => {}
            Token::Open('[') => {
                // Range or subquery duration: skip to the closing bracket.
                while k < tokens.len() && tokens[k].token != Token::Close(']') {
                    k += 1;
                }
                k += 1;
            }
            Token::Open('(') => {
                depth += 1;
                if matches!(
                    previous_word.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    label_list_depth = Some(depth);
                }
                previous_word.clear();
            }
            Token::Close(')') => {
                if label_list_depth == Some(depth) {
                    label_list_depth = None;
                }
                depth = depth.saturating_sub(1);
                previous_word.clear();
            }
            Token::Open(_) => {
                // A selector with no metric name: `{__name__="x", job="y"}`.
                let (text, next) = matchers(k - 1);
                push(text);
                k = next;
            }
            Token::Ident => {
                let word: String = chars[lexeme.start..lexeme.end].iter().collect();
                let next = (k..tokens.len()).find(|&j| tokens[j].token != Token::Space);
                let next_token = next.map(|j| tokens[j].token);
                let is_call = next_token == Some(Token::Open('('));
                let keyword = KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
                if label_list_depth.is_none() && !is_call && !keyword {
                    match next {
                        Some(j) if next_token == Some(Token::Open('{')) => {
                            let (text, after) = matchers(j);
                            push(format!("{word}{text}"));
                            k = after;
                        }
                        _ => push(word.clone()),
                    }
                }
                previous_word = word.to_ascii_lowercase();
            }
            Token::Close(_) | Token::Other(_) => previous_word.clear(),
        }
    }
    found
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

    #[test]
    fn comments_hold_no_selectors() {
        assert_eq!(selectors("up == 0 # was: down_total > 0\n"), vec!["up"]);
    }
}
