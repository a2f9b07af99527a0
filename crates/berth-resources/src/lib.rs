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
    /// Longer than [`MAX_LEN`].
    #[error(
        "resource request of {len} bytes: longer than the {max} accepted; ask for fewer resources"
    )]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Parentheses and negations nested deeper than [`MAX_DEPTH`].
    #[error(
        "resource request {input:?}: nested deeper than {max} levels at column {col}; write it with fewer parentheses or negations"
    )]
    TooDeep {
        /// The whole request.
        input: String,
        /// The limit.
        max: usize,
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

/// The prefix of the resource a tasker offers for each container configuration it runs.
pub const CONTAINER: &str = "Container:";

/// A request that would run one job in two containers at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the request needs both Container:{0} and Container:{1}; a job runs in one container (to let either do, write Container:{0} | Container:{1})")]
pub struct TwoContainers(pub String, pub String);

/// Where a request may run: see [`Expr::containers`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Containers {
    /// The configurations it may run in.
    pub names: std::collections::BTreeSet<String>,
    /// Whether an alternative needs no container.
    pub bare: bool,
}

/// The longest request accepted, in bytes: far above any real one (a request names a few
/// resources), and small enough that a hostile one costs the server nothing.
pub const MAX_LEN: usize = 8192;

/// The deepest nesting of parentheses and negations accepted.
pub const MAX_DEPTH: usize = 32;

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
    /// The column just past the end, counted once (counting it per term made parsing
    /// quadratic in the request's length).
    end_col: usize,
    /// How deep the parser is in parentheses and negations.
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn col(&self) -> usize {
        self.toks
            .get(self.pos)
            .map(|(_, c)| *c)
            .unwrap_or(self.end_col)
    }

    /// Goes one level deeper, or refuses past [`MAX_DEPTH`]: the parser recurses, and a
    /// hostile request must not overflow the server's stack.
    fn deeper(&mut self, col: usize) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ParseError::TooDeep {
                input: self.input.to_string(),
                max: MAX_DEPTH,
                col,
            });
        }
        Ok(())
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
                self.deeper(col)?;
                let e = Expr::Not(Box::new(self.unary()?));
                self.depth -= 1;
                Ok(e)
            }
            Some((Tok::Open, _)) => {
                self.pos += 1;
                self.deeper(col)?;
                let inner = self.or()?;
                self.depth -= 1;
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
///
/// Takes time linear in the request's length, and refuses one longer than [`MAX_LEN`] or
/// nested deeper than [`MAX_DEPTH`].
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    if input.len() > MAX_LEN {
        return Err(ParseError::TooLong {
            len: input.len(),
            max: MAX_LEN,
        });
    }
    let toks = tokenize(input)?;
    if toks.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut p = Parser {
        input,
        toks,
        pos: 0,
        end_col: input.chars().count() + 1,
        depth: 0,
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

    /// The quantity of `name` the request asks for at top level, in any of its forms: the
    /// sum of what it consumes (`name/N` twice takes both, as a tasker's ledger does), and
    /// at least the largest `name#N` (a bare attribute counts as 1).
    pub fn quantity(&self, name: &str) -> Option<u64> {
        let terms: Vec<&Term> = self
            .required_terms()
            .into_iter()
            .filter(|t| t.name == name)
            .collect();
        if terms.is_empty() {
            return None;
        }
        let consumed: u64 = terms
            .iter()
            .map(|t| match t.kind {
                Kind::Consumes(n) => n,
                Kind::Attribute => 1,
                Kind::AtLeast(_) => 0,
            })
            .fold(0u64, u64::saturating_add);
        let at_least = terms
            .iter()
            .map(|t| match t.kind {
                Kind::AtLeast(n) => n,
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        Some(consumed.max(at_least))
    }

    /// The container configurations the job may run in (`Container:NAME` terms not under
    /// `!`), several when alternatives name several, and whether an alternative needs
    /// none. An alternative that needs two at once is an error: a job runs in one.
    pub fn containers(&self) -> Result<Containers, TwoContainers> {
        use std::collections::BTreeSet;
        // The possible containers of each alternative: None for one that needs none.
        fn alts(e: &Expr) -> Result<BTreeSet<Option<&str>>, TwoContainers> {
            Ok(match e {
                Expr::Term(t) => BTreeSet::from([t.name.strip_prefix(CONTAINER)]),
                Expr::Not(_) => BTreeSet::from([None]),
                Expr::Or(v) => {
                    let mut out = BTreeSet::new();
                    for x in v {
                        out.extend(alts(x)?);
                    }
                    out
                }
                Expr::And(v) => {
                    let mut acc = BTreeSet::from([None]);
                    for x in v {
                        let mine = alts(x)?;
                        let mut next = BTreeSet::new();
                        for a in &acc {
                            for b in &mine {
                                next.insert(match (a, b) {
                                    (None, x) | (x, None) => *x,
                                    (Some(a), Some(b)) if a == b => Some(*a),
                                    (Some(a), Some(b)) => {
                                        return Err(TwoContainers(a.to_string(), b.to_string()))
                                    }
                                });
                            }
                        }
                        acc = next;
                    }
                    acc
                }
            })
        }
        let all = alts(self)?;
        Ok(Containers {
            bare: all.contains(&None),
            names: all.into_iter().flatten().map(str::to_string).collect(),
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

        /// Deep and long requests of every shape: an error or an expression, never a
        /// panic or a stack overflow (the test runs on a thread of the smallest stack the
        /// server gives a connection).
        #[test]
        fn deep_and_long_requests_are_refused_or_parsed(
            unit in "[a!(|)& ]{1,4}",
            n in 1usize..20_000,
            tail in "[a-z()!|]{0,8}",
        ) {
            let s = unit.repeat(n) + &tail;
            let r = std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || parse(&s).map(|e| e.to_string()))
                .unwrap()
                .join();
            proptest::prop_assert!(r.is_ok(), "the parser panicked or overflowed");
        }
    }

    #[test]
    fn quantities_add_up_as_a_ledger_takes_them() {
        let q = |r: &str, n: &str| parse(r).unwrap().quantity(n);
        assert_eq!(q("CORES/1 Container:c1 CORES/3", "CORES"), Some(4));
        assert_eq!(q("RAM#100 RAM/50", "RAM"), Some(100));
        assert_eq!(q("RAM#10 RAM/50", "RAM"), Some(50));
        assert_eq!(q("CORES/2 | CORES/9", "CORES"), None);
        assert_eq!(q("GPU", "GPU"), Some(1));
    }

    #[test]
    fn containers_table() {
        // The names, and "" where an alternative needs none.
        let cases: &[(&str, Result<&[&str], &str>)] = &[
            ("CORES/2", Ok(&[""])),
            ("Container:a", Ok(&["a"])),
            ("Container:a Container:a", Ok(&["a"])),
            ("Container:a | Container:b", Ok(&["a", "b"])),
            ("(Container:nope | Container:c1) GPU/1", Ok(&["c1", "nope"])),
            ("!Container:a", Ok(&[""])),
            ("Container:a | GPU", Ok(&["", "a"])),
            (
                "Container:a Container:b",
                Err("the request needs both Container:a and Container:b"),
            ),
            (
                "(Container:a | X) (Container:b | Y)",
                Err("the request needs both Container:a and Container:b"),
            ),
            ("(Container:a | X) !Container:b", Ok(&["", "a"])),
        ];
        for (input, want) in cases {
            let got = parse(input).unwrap().containers();
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    let mut names: Vec<String> = g.bare.then(String::new).into_iter().collect();
                    names.extend(g.names);
                    assert_eq!(names, *w, "{input}")
                }
                (Err(w), Err(g)) => assert!(g.to_string().starts_with(w), "{input}: {g}"),
                (w, g) => panic!("{input}: wanted {w:?}, got {g:?}"),
            }
        }
    }

    #[test]
    fn nesting_and_length_are_bounded_with_a_clear_error() {
        let deep = "(".repeat(4000) + "a" + &")".repeat(4000);
        let e = parse(&deep).unwrap_err().to_string();
        assert!(
            e.contains("nested deeper than 32 levels at column 33"),
            "{e}"
        );
        let nots = "!".repeat(50_000) + "a";
        assert!(matches!(parse(&nots), Err(ParseError::TooLong { .. })));
        let nots = "!".repeat(8000) + "a";
        assert!(matches!(parse(&nots), Err(ParseError::TooDeep { .. })));
        let ok = "(".repeat(32) + "a" + &")".repeat(32);
        assert_eq!(parse(&ok).unwrap().to_string(), "a");
        let long = "a ".repeat(5000);
        assert_eq!(
            parse(&long).unwrap_err().to_string(),
            "resource request of 10000 bytes: longer than the 8192 accepted; ask for fewer resources"
        );
    }

    /// The longest requests accepted, of the most terms, parse (the column of the end is
    /// counted once per request, not once per term as before, which made a request of
    /// 500 KB take 10 s; the length limit bounds what is left).
    #[test]
    fn the_longest_requests_of_the_most_terms_parse() {
        let long = "a ".repeat(MAX_LEN / 2 - 1);
        assert!(parse(&long).is_ok());
        let many_ors = "a|".repeat(MAX_LEN / 2 - 1) + "a";
        assert!(parse(&many_ors).is_ok());
    }
}
