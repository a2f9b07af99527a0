//! The resource language that jobs and taskers share (SPEC §7).
//!
//! A request is an expression over terms: `name` (an attribute), `name#N` (at least N),
//! `name/N` (consumes N while running), combined with blanks or `&`/`AND` (and),
//! `|`/`OR` (or, binding less tightly), `!`/`NOT` and parentheses. This crate is pure:
//! it parses, prints and answers questions about an expression; it does no I/O.

use std::fmt;

pub mod offer;
pub use offer::{class_table_entry, with_defaults, Have, Ledger, Offer, OfferError, Take};

/// How a term uses its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `name`: an attribute; on a job, needs quantity 1 of it.
    Attribute,
    /// `name#N`: has (or needs at least) N of it.
    AtLeast(u64),
    /// `name/N`: offers (or consumes) N of it.
    Consumes(u64),
}

/// One term of a request, such as `CORES/2` or `Container:c1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Term {
    /// The resource's name, which may hold `:` (`License:spice`).
    pub name: String,
    /// How the term uses it.
    pub kind: Kind,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A single term.
    Term(Term),
    /// Negation: `!x` or `NOT x`.
    Not(Box<Expr>),
    /// Conjunction of two or more expressions.
    And(Vec<Expr>),
    /// Disjunction of two or more expressions.
    Or(Vec<Expr>),
}

/// Why a request could not be parsed; `at` is a 0-based character offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The request holds no term at all.
    #[error("empty resource request")]
    Empty,
    /// A character that the language does not use.
    #[error("resource request {input:?}: unexpected {found:?} at column {col}")]
    Unexpected {
        /// The whole request.
        input: String,
        /// What was found.
        found: String,
        /// 1-based column.
        col: usize,
    },
    /// `name#` or `name/` without a number after it.
    #[error(
        "resource request {input:?}: {term:?} needs a whole number after {sep:?} (e.g. {example})"
    )]
    BadQuantity {
        /// The whole request.
        input: String,
        /// The term as written.
        term: String,
        /// `#` or `/`.
        sep: char,
        /// A corrected example.
        example: String,
    },
    /// An opening parenthesis without its closing one, or the reverse.
    #[error("resource request {input:?}: unbalanced parenthesis at column {col}")]
    Unbalanced {
        /// The whole request.
        input: String,
        /// 1-based column.
        col: usize,
    },
    /// An operator with nothing on one side.
    #[error("resource request {input:?}: {op:?} at column {col} has nothing after it")]
    Dangling {
        /// The whole request.
        input: String,
        /// The operator.
        op: String,
        /// 1-based column.
        col: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Term(Term),
    And,
    Or,
    Not,
    Open,
    Close,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-' | '@' | '+')
}

fn tokenize(input: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '&' => {
                out.push((Tok::And, col));
                i += 1;
            }
            '|' => {
                out.push((Tok::Or, col));
                i += 1;
            }
            '!' => {
                out.push((Tok::Not, col));
                i += 1;
            }
            '(' => {
                out.push((Tok::Open, col));
                i += 1;
            }
            ')' => {
                out.push((Tok::Close, col));
                i += 1;
            }
            c if is_name_char(c) => {
                let start = i;
                while i < chars.len() && is_name_char(chars[i]) {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                let kind = if i < chars.len() && (chars[i] == '#' || chars[i] == '/') {
                    let sep = chars[i];
                    i += 1;
                    let nstart = i;
                    while i < chars.len() && chars[i].is_ascii_digit() {
                        i += 1;
                    }
                    let digits: String = chars[nstart..i].iter().collect();
                    let n = digits
                        .parse::<u64>()
                        .ok()
                        .filter(|_| i >= chars.len() || !is_name_char(chars[i]) || chars[i] == ':');
                    match n {
                        Some(n) if sep == '#' => Kind::AtLeast(n),
                        Some(n) => Kind::Consumes(n),
                        None => {
                            while i < chars.len() && is_name_char(chars[i]) {
                                i += 1;
                            }
                            return Err(ParseError::BadQuantity {
                                input: input.to_string(),
                                term: chars[start..i].iter().collect(),
                                sep,
                                example: format!("{name}{sep}1"),
                            });
                        }
                    }
                } else {
                    Kind::Attribute
                };
                let tok = match (name.as_str(), kind) {
                    ("AND", Kind::Attribute) => Tok::And,
                    ("OR", Kind::Attribute) => Tok::Or,
                    ("NOT", Kind::Attribute) => Tok::Not,
                    _ => Tok::Term(Term { name, kind }),
                };
                out.push((tok, col));
            }
            other => {
                return Err(ParseError::Unexpected {
                    input: input.to_string(),
                    found: other.to_string(),
                    col,
                })
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    input: &'a str,
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn col(&self) -> usize {
        self.toks
            .get(self.pos)
            .map(|(_, c)| *c)
            .unwrap_or(self.input.chars().count() + 1)
    }

    // `a (b c)` is `a b c` and `a | (b | c)` is `a | b | c`: both operators are
    // associative, so nested ones are flattened and one expression has one form.
    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut alts = Vec::new();
        push_flat(&mut alts, self.and()?, false);
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            push_flat(&mut alts, self.and()?, false);
        }
        Ok(if alts.len() == 1 {
            alts.remove(0)
        } else {
            Expr::Or(alts)
        })
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut all = Vec::new();
        push_flat(&mut all, self.unary()?, true);
        loop {
            match self.peek() {
                Some(Tok::And) => {
                    self.pos += 1;
                    push_flat(&mut all, self.unary()?, true);
                }
                Some(Tok::Term(_)) | Some(Tok::Not) | Some(Tok::Open) => {
                    push_flat(&mut all, self.unary()?, true)
                }
                _ => break,
            }
        }
        Ok(if all.len() == 1 {
            all.remove(0)
        } else {
            Expr::And(all)
        })
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let col = self.col();
        match self.toks.get(self.pos).cloned() {
            Some((Tok::Not, _)) => {
                self.pos += 1;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            Some((Tok::Open, _)) => {
                self.pos += 1;
                let inner = self.or()?;
                if self.peek() != Some(&Tok::Close) {
                    return Err(ParseError::Unbalanced {
                        input: self.input.to_string(),
                        col,
                    });
                }
                self.pos += 1;
                Ok(inner)
            }
            Some((Tok::Term(t), _)) => {
                self.pos += 1;
                Ok(Expr::Term(t))
            }
            Some((Tok::Close, c)) => Err(ParseError::Unbalanced {
                input: self.input.to_string(),
                col: c,
            }),
            Some((tok, c)) => Err(ParseError::Unexpected {
                input: self.input.to_string(),
                found: tok_text(&tok).to_string(),
                col: c,
            }),
            None => {
                let (op, c) = self
                    .pos
                    .checked_sub(1)
                    .and_then(|p| self.toks.get(p))
                    .map(|(t, c)| (tok_text(t).to_string(), *c))
                    .unwrap_or_default();
                Err(ParseError::Dangling {
                    input: self.input.to_string(),
                    op,
                    col: c,
                })
            }
        }
    }
}

fn push_flat(into: &mut Vec<Expr>, e: Expr, and: bool) {
    match e {
        Expr::And(v) if and => into.extend(v),
        Expr::Or(v) if !and => into.extend(v),
        other => into.push(other),
    }
}

fn tok_text(t: &Tok) -> &'static str {
    match t {
        Tok::And => "&",
        Tok::Or => "|",
        Tok::Not => "!",
        Tok::Open => "(",
        Tok::Close => ")",
        Tok::Term(_) => "term",
    }
}

/// Parses a resource request such as `CORES/2 RAM/4000 (Container:c1 | Container:c2)`.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    let toks = tokenize(input)?;
    if toks.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut p = Parser {
        input,
        toks,
        pos: 0,
    };
    let e = p.or()?;
    if let Some((_, col)) = p.toks.get(p.pos) {
        return Err(ParseError::Unbalanced {
            input: input.to_string(),
            col: *col,
        });
    }
    Ok(e)
}

impl Expr {
    /// The terms that every alternative of the request needs: the top-level conjunction.
    /// Terms under `|` or `!` are not included.
    pub fn required_terms(&self) -> Vec<&Term> {
        match self {
            Expr::Term(t) => vec![t],
            Expr::And(all) => all.iter().flat_map(|e| e.required_terms()).collect(),
            Expr::Not(_) | Expr::Or(_) => Vec::new(),
        }
    }

    /// The quantity of `name` the request asks for at top level, in any of its forms
    /// (`name/N`, `name#N`; a bare attribute counts as 1).
    pub fn quantity(&self, name: &str) -> Option<u64> {
        self.required_terms()
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| match t.kind {
                Kind::Attribute => 1,
                Kind::AtLeast(n) | Kind::Consumes(n) => n,
            })
    }

    /// Every term the expression mentions, wherever it stands.
    pub fn terms(&self) -> Vec<&Term> {
        match self {
            Expr::Term(t) => vec![t],
            Expr::Not(e) => e.terms(),
            Expr::And(v) | Expr::Or(v) => v.iter().flat_map(|e| e.terms()).collect(),
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Attribute => write!(f, "{}", self.name),
            Kind::AtLeast(n) => write!(f, "{}#{n}", self.name),
            Kind::Consumes(n) => write!(f, "{}/{n}", self.name),
        }
    }
}

impl fmt::Display for Expr {
    /// Prints the expression so that parsing it again gives the same expression.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn inner(e: &Expr, f: &mut fmt::Formatter<'_>, ctx: u8) -> fmt::Result {
            // ctx: 0 top/or-operand, 1 and-operand, 2 not-operand
            match e {
                Expr::Term(t) => write!(f, "{t}"),
                Expr::Not(x) => {
                    write!(f, "!")?;
                    inner(x, f, 2)
                }
                Expr::And(v) => {
                    if ctx >= 2 {
                        write!(f, "(")?;
                    }
                    for (i, x) in v.iter().enumerate() {
                        if i > 0 {
                            write!(f, " ")?;
                        }
                        inner(x, f, 1)?;
                    }
                    if ctx >= 2 {
                        write!(f, ")")?;
                    }
                    Ok(())
                }
                Expr::Or(v) => {
                    if ctx >= 1 {
                        write!(f, "(")?;
                    }
                    for (i, x) in v.iter().enumerate() {
                        if i > 0 {
                            write!(f, " | ")?;
                        }
                        inner(x, f, 0)?;
                    }
                    if ctx >= 1 {
                        write!(f, ")")?;
                    }
                    Ok(())
                }
            }
        }
        inner(self, f, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, kind: Kind) -> Expr {
        Expr::Term(Term {
            name: name.into(),
            kind,
        })
    }

    #[test]
    fn parses_table() {
        use Kind::*;
        let cases: Vec<(&str, Expr)> = vec![
            ("CORES/2", t("CORES", Consumes(2))),
            ("Container:c1", t("Container:c1", Attribute)),
            ("RAMTOTAL#800", t("RAMTOTAL", AtLeast(800))),
            (
                "CORES/2 RAM/4000",
                Expr::And(vec![t("CORES", Consumes(2)), t("RAM", Consumes(4000))]),
            ),
            (
                "a & b AND c",
                Expr::And(vec![
                    t("a", Attribute),
                    t("b", Attribute),
                    t("c", Attribute),
                ]),
            ),
            (
                "a b | c",
                Expr::Or(vec![
                    Expr::And(vec![t("a", Attribute), t("b", Attribute)]),
                    t("c", Attribute),
                ]),
            ),
            (
                "a (b OR c)",
                Expr::And(vec![
                    t("a", Attribute),
                    Expr::Or(vec![t("b", Attribute), t("c", Attribute)]),
                ]),
            ),
            ("!x", Expr::Not(Box::new(t("x", Attribute)))),
            ("NOT x", Expr::Not(Box::new(t("x", Attribute)))),
            ("TMP#100", t("TMP", AtLeast(100))),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap(), want, "input {input:?}");
        }
    }

    #[test]
    fn errors_table() {
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty resource request"),
            ("   ", "empty resource request"),
            ("CORES/", "needs a whole number after '/' (e.g. CORES/1)"),
            ("RAM#x", "needs a whole number after '#'"),
            ("a $b", "unexpected \"$\" at column 3"),
            ("(a b", "unbalanced parenthesis at column 1"),
            ("a b)", "unbalanced parenthesis at column 4"),
            ("a &", "\"&\" at column 3 has nothing after it"),
            ("a | | b", "unexpected \"|\" at column 5"),
        ];
        for (input, want) in cases {
            let err = parse(input).unwrap_err().to_string();
            assert!(err.contains(want), "input {input:?}: got {err:?}");
        }
    }

    #[test]
    fn quantities_come_from_the_top_level_only() {
        let e = parse("CORES/2 RAM/4000 TMP#100 (Container:a | Container:b) !GPU").unwrap();
        assert_eq!(e.quantity("CORES"), Some(2));
        assert_eq!(e.quantity("RAM"), Some(4000));
        assert_eq!(e.quantity("TMP"), Some(100));
        assert_eq!(e.quantity("Container:a"), None);
        assert_eq!(e.quantity("GPU"), None);
        assert_eq!(
            parse("Container:c1").unwrap().quantity("Container:c1"),
            Some(1)
        );
    }

    #[test]
    fn prints_what_it_parsed() {
        for input in [
            "a b | c",
            "a (b | c)",
            "!(a b)",
            "!a",
            "CORES/2 RAM#10 | x:y",
        ] {
            let e = parse(input).unwrap();
            assert_eq!(parse(&e.to_string()).unwrap(), e, "{input:?} printed {e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..Default::default()
        })]
        #[test]
        fn never_panics(s in "[a-zA-Z0-9:#/!&|() \\t$]{0,40}") {
            if let Ok(e) = parse(&s) {
                proptest::prop_assert_eq!(parse(&e.to_string()).unwrap(), e);
            }
        }
    }
}
