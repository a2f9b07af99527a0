//! What a tasker offers, and whether (and with what) a job's request is satisfied.
//!
//! On a tasker: `name` is an attribute (unlimited), `name#N` has N of it, `name/N` offers N
//! consumed by running jobs; `!name` is not allowed. On a job: `name` needs the resource
//! (and consumes 1 of a consumable), `name#N` needs at least N (compared with the tasker's
//! quantity, nothing consumed), `name/N` consumes N while the job runs.

use crate::{Expr, Kind, Term, CONTAINER};
use std::collections::BTreeMap;
use std::fmt;

/// How much of a resource a tasker has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Have {
    /// An attribute: present, without limit.
    Attribute,
    /// `name#N`: a quantity, not consumed.
    Count(u64),
    /// `name/N`: N to share among running jobs.
    Pool(u64),
}

/// A tasker's resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offer {
    items: BTreeMap<String, Have>,
}

/// Why an offer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The text is not in the resource language.
    #[error(transparent)]
    Parse(#[from] crate::ParseError),
    /// A tasker's resources are a plain list: no `!`, `|` or parentheses.
    #[error("tasker resources {input:?}: {what} is not allowed on a tasker; list terms such as CORES/8 RAM/64000 License:spice#4")]
    NotAList {
        /// The whole text.
        input: String,
        /// What was found.
        what: &'static str,
    },
}

impl Offer {
    /// Parses a tasker's resource list, such as `CORES/8 RAM/64000 GPU#2 Container:c1`.
    /// A name given twice keeps the last value, so that later sources override earlier.
    pub fn parse(input: &str) -> Result<Offer, OfferError> {
        let mut o = Offer::default();
        if input.trim().is_empty() {
            return Ok(o);
        }
        o.add_expr(input, &crate::parse(input)?)?;
        Ok(o)
    }

    fn add_expr(&mut self, input: &str, e: &Expr) -> Result<(), OfferError> {
        match e {
            Expr::Term(t) => {
                self.set(t);
                Ok(())
            }
            Expr::And(v) => v.iter().try_for_each(|x| self.add_expr(input, x)),
            Expr::Not(_) => Err(OfferError::NotAList {
                input: input.to_string(),
                what: "`!`",
            }),
            Expr::Or(_) => Err(OfferError::NotAList {
                input: input.to_string(),
                what: "`|`",
            }),
        }
    }

    /// Sets one term, replacing what the offer had under that name.
    pub fn set(&mut self, t: &Term) {
        let have = match t.kind {
            Kind::Attribute => Have::Attribute,
            Kind::AtLeast(n) => Have::Count(n),
            Kind::Consumes(n) => Have::Pool(n),
        };
        self.items.insert(t.name.clone(), have);
    }

    /// Adds every term of `other`, replacing what this offer had under the same names.
    pub fn merge(&mut self, other: &Offer) {
        for (k, v) in &other.items {
            self.items.insert(k.clone(), *v);
        }
    }

    /// Takes `name` out of the offer.
    pub fn remove(&mut self, name: &str) {
        self.items.remove(name);
    }

    /// What the tasker has of `name`.
    pub fn get(&self, name: &str) -> Option<Have> {
        self.items.get(name).copied()
    }

    /// Every resource, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Have)> {
        self.items.iter().map(|(k, v)| (k.as_str(), *v))
    }
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            match v {
                Have::Attribute => write!(f, "{k}")?,
                Have::Count(n) => write!(f, "{k}#{n}")?,
                Have::Pool(n) => write!(f, "{k}/{n}")?,
            }
        }
        Ok(())
    }
}

/// What a job takes from a tasker's pools while it runs: name → amount; and the
/// container configuration the match chose (`Container:NAME` satisfied, not under `!`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Take(pub BTreeMap<String, u64>, pub Option<String>);

impl Take {
    /// The configuration the job runs in on this tasker, if the match went through a
    /// `Container:NAME` term: the job runs in exactly that one.
    pub fn container(&self) -> Option<&str> {
        self.1.as_deref()
    }

    fn add(&mut self, name: &str, n: u64) {
        if n > 0 {
            *self.0.entry(name.to_string()).or_insert(0) += n;
        }
    }

    fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }
}

/// A tasker's offer and what its running jobs hold: the state a match is made against.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// What the tasker offers.
    pub offer: Offer,
    used: BTreeMap<String, u64>,
}

impl Ledger {
    /// A ledger with nothing in use.
    pub fn new(offer: Offer) -> Ledger {
        Ledger {
            offer,
            used: BTreeMap::new(),
        }
    }

    /// How much of a pool is free (None for what is not a pool).
    pub fn free(&self, name: &str) -> Option<u64> {
        match self.offer.get(name)? {
            Have::Pool(total) => {
                Some(total.saturating_sub(self.used.get(name).copied().unwrap_or(0)))
            }
            _ => None,
        }
    }

    /// How much of a pool is in use.
    pub fn used(&self, name: &str) -> u64 {
        self.used.get(name).copied().unwrap_or(0)
    }

    /// What the request would take, if it fits now.
    pub fn fits(&self, request: &Expr) -> Option<Take> {
        let mut take = Take::default();
        eval(request, self, &mut take, false).then_some(take)
    }

    /// Whether the request could ever fit this tasker, with nothing else running.
    pub fn could_fit(&self, request: &Expr) -> bool {
        let empty = Ledger::new(self.offer.clone());
        empty.fits(request).is_some()
    }

    /// Takes what a match said, when the job starts. Fails, taking nothing, if it no
    /// longer fits (a pool shrank).
    pub fn take(&mut self, take: &Take) -> bool {
        if take
            .0
            .iter()
            .any(|(k, n)| self.free(k).is_some_and(|f| f < *n))
        {
            return false;
        }
        for (k, n) in &take.0 {
            if self.free(k).is_some() {
                *self.used.entry(k.clone()).or_insert(0) += n;
            }
        }
        true
    }

    /// Gives back what a job took, when it ends.
    pub fn give_back(&mut self, take: &Take) {
        for (k, n) in &take.0 {
            if let Some(u) = self.used.get_mut(k) {
                *u = u.saturating_sub(*n);
                if *u == 0 {
                    self.used.remove(k);
                }
            }
        }
    }
}

/// Evaluates a request; on success `take` holds what it consumes. `negated` turns off
/// consumption: what a `!` tests is not taken.
fn eval(e: &Expr, l: &Ledger, take: &mut Take, negated: bool) -> bool {
    match e {
        Expr::Term(t) => term(t, l, take, negated),
        Expr::Not(x) => {
            let mut scratch = Take::default();
            !eval(x, l, &mut scratch, true)
        }
        Expr::And(v) => {
            let before = take.clone();
            if v.iter().all(|x| eval(x, l, take, negated)) {
                true
            } else {
                *take = before;
                false
            }
        }
        Expr::Or(v) => v.iter().any(|x| {
            let before = take.clone();
            if eval(x, l, take, negated) {
                true
            } else {
                *take = before;
                false
            }
        }),
    }
}

fn term(t: &Term, l: &Ledger, take: &mut Take, negated: bool) -> bool {
    let Some(have) = l.offer.get(&t.name) else {
        return false;
    };
    let (need, consume) = match t.kind {
        Kind::Attribute => (1, true),
        Kind::AtLeast(n) => (n, false),
        Kind::Consumes(n) => (n, true),
    };
    if !negated {
        if let Some(c) = t.name.strip_prefix(CONTAINER) {
            take.1 = Some(c.to_string());
        }
    }
    match have {
        Have::Attribute => true,
        Have::Count(c) => c >= need,
        Have::Pool(total) => {
            if !consume || negated {
                return total >= need;
            }
            let free = total.saturating_sub(l.used(&t.name) + take.get(&t.name));
            if free >= need {
                take.add(&t.name, need);
                true
            } else {
                false
            }
        }
    }
}

/// The resources `SWD/taskerClass.table` gives tasker `name`: its own line
/// (`NAME: RESOURCES`), else the `(default): RESOURCES` line. Other lines are ignored.
pub fn class_table_entry<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let mut default = None;
    for line in text.lines() {
        let Some((who, res)) = line.split_once(':') else {
            continue;
        };
        let who = who.trim();
        if who == name {
            return Some(res.trim());
        }
        if who == "(default)" {
            default = Some(res.trim());
        }
    }
    default
}

/// Adds `CORES/1` and `SLOTS/1` to a job's request unless it names them itself.
pub fn with_defaults(request: Option<Expr>) -> Expr {
    let mut extra = Vec::new();
    let names: Vec<String> = request
        .as_ref()
        .map(|r| r.terms().into_iter().map(|t| t.name.clone()).collect())
        .unwrap_or_default();
    for d in ["CORES", "SLOTS"] {
        if !names.iter().any(|n| n == d) {
            extra.push(Expr::Term(Term {
                name: d.to_string(),
                kind: Kind::Consumes(1),
            }));
        }
    }
    match request {
        None => Expr::And(extra),
        Some(r) if extra.is_empty() => r,
        Some(Expr::And(mut v)) => {
            v.extend(extra);
            Expr::And(v)
        }
        Some(r) => {
            let mut v = vec![r];
            v.extend(extra);
            Expr::And(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn ledger(s: &str) -> Ledger {
        Ledger::new(Offer::parse(s).unwrap())
    }

    #[test]
    fn offers_table() {
        let o = Offer::parse("CORES/8 RAM/64000 RAMTOTAL#64000 GPU#2 Container:c1 ARCH:linux64")
            .unwrap();
        assert_eq!(o.get("CORES"), Some(Have::Pool(8)));
        assert_eq!(o.get("GPU"), Some(Have::Count(2)));
        assert_eq!(o.get("Container:c1"), Some(Have::Attribute));
        assert_eq!(o.get("nope"), None);
        assert_eq!(Offer::parse(&o.to_string()).unwrap(), o);
        assert!(Offer::parse("!x")
            .unwrap_err()
            .to_string()
            .contains("`!` is not allowed on a tasker"));
        assert!(Offer::parse("a | b")
            .unwrap_err()
            .to_string()
            .contains("`|` is not allowed"));
        let mut a = Offer::parse("CORES/8 X").unwrap();
        a.merge(&Offer::parse("CORES/4").unwrap());
        assert_eq!(a.get("CORES"), Some(Have::Pool(4)));
        assert_eq!(a.get("X"), Some(Have::Attribute));
    }

    #[test]
    fn matching_table() {
        let l = ledger("CORES/8 RAM/1000 GPU#2 Container:c1 License:spice/1");
        type Want = Option<Vec<(&'static str, u64)>>;
        let cases: Vec<(&str, Want)> = vec![
            ("CORES/2", Some(vec![("CORES", 2)])),
            ("CORES/9", None),
            ("CORES/2 RAM/500", Some(vec![("CORES", 2), ("RAM", 500)])),
            ("Container:c1", Some(vec![])),
            ("Container:c2", None),
            ("GPU#2", Some(vec![])),
            ("GPU#3", None),
            ("GPU", Some(vec![])),
            ("License:spice", Some(vec![("License:spice", 1)])),
            ("!Container:c1", None),
            ("!Container:c2", Some(vec![])),
            ("NOT GPU#3", Some(vec![])),
            ("Container:c2 | Container:c1", Some(vec![])),
            (
                "(CORES/9 | CORES/3) RAM/10",
                Some(vec![("CORES", 3), ("RAM", 10)]),
            ),
            ("CORES/5 CORES/5", None),
            ("CORES/4 CORES/4", Some(vec![("CORES", 8)])),
            ("RAM#1000", Some(vec![])),
            ("RAM#1001", None),
            ("!RAM/500", None),
        ];
        for (req, want) in cases {
            let got = l.fits(&parse(req).unwrap());
            let want: Option<BTreeMap<String, u64>> =
                want.map(|v| v.into_iter().map(|(k, n)| (k.to_string(), n)).collect());
            assert_eq!(got.map(|t| t.0), want, "{req}");
        }
        // The container a match went through, never one under `!`.
        let container = |req: &str| l.fits(&parse(req).unwrap()).map(|t| t.1);
        assert_eq!(container("Container:c1"), Some(Some("c1".into())));
        assert_eq!(
            container("Container:c2 | Container:c1"),
            Some(Some("c1".into()))
        );
        assert_eq!(container("!Container:c2"), Some(None));
        assert_eq!(container("CORES/9 Container:c1 | GPU"), Some(None));
    }

    #[test]
    fn taking_and_giving_back() {
        let mut l = ledger("CORES/4 SLOTS/4");
        let job = with_defaults(Some(parse("CORES/3").unwrap()));
        let t = l.fits(&job).unwrap();
        assert!(l.take(&t));
        assert_eq!(l.free("CORES"), Some(1));
        assert_eq!(l.free("SLOTS"), Some(3));
        assert!(l.fits(&job).is_none());
        assert!(l.could_fit(&job));
        l.give_back(&t);
        assert_eq!(l.free("CORES"), Some(4));
        assert!(!l.could_fit(&parse("CORES/5").unwrap()));
    }

    #[test]
    fn class_table_lines() {
        let t = "# a comment\nnonsense\n(default): CORES/2\nt1: GPU#1 Container:c1\n";
        assert_eq!(class_table_entry(t, "t1"), Some("GPU#1 Container:c1"));
        assert_eq!(class_table_entry(t, "t2"), Some("CORES/2"));
        assert_eq!(class_table_entry("t1: X", "t2"), None);
    }

    #[test]
    fn defaults_table() {
        let s = |r: Option<&str>| with_defaults(r.map(|x| parse(x).unwrap())).to_string();
        assert_eq!(s(None), "CORES/1 SLOTS/1");
        assert_eq!(s(Some("RAM/10")), "RAM/10 CORES/1 SLOTS/1");
        assert_eq!(s(Some("CORES/4")), "CORES/4 SLOTS/1");
        assert_eq!(s(Some("a | b")), "(a | b) CORES/1 SLOTS/1");
        assert_eq!(s(Some("CORES/2 SLOTS/2")), "CORES/2 SLOTS/2");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 500,
            failure_persistence: None,
            ..Default::default()
        })]
        /// However jobs are matched, taken and given back, no pool ever gives out more than
        /// the tasker has, and giving everything back frees everything.
        #[test]
        fn never_gives_out_more_than_it_has(
            pools in proptest::collection::vec(0u64..6, 3),
            jobs in proptest::collection::vec(
                (proptest::collection::vec(0u64..4, 3), proptest::bool::ANY, proptest::bool::ANY), 1..40),
        ) {
            let names = ["A", "B", "C"];
            let offer = names.iter().zip(&pools).map(|(n, p)| format!("{n}/{p}")).collect::<Vec<_>>().join(" ");
            let mut l = ledger(&offer);
            let mut running: Vec<Take> = Vec::new();
            for (amounts, or_form, release) in jobs {
                let terms: Vec<String> = names.iter().zip(&amounts).map(|(n, a)| format!("{n}/{a}")).collect();
                let req = if or_form { format!("({}) | {}", terms.join(" "), terms[0]) } else { terms.join(" & ") };
                if let Some(t) = l.fits(&parse(&req).unwrap()) {
                    proptest::prop_assert!(l.take(&t));
                    running.push(t);
                }
                for (n, p) in names.iter().zip(&pools) {
                    proptest::prop_assert!(l.used(n) <= *p, "{} uses {} of {}", n, l.used(n), p);
                    let held: u64 = running.iter().map(|t| t.get(n)).sum();
                    proptest::prop_assert_eq!(held, l.used(n));
                }
                if release && !running.is_empty() {
                    let t = running.remove(0);
                    l.give_back(&t);
                }
            }
            for t in running.drain(..) {
                l.give_back(&t);
            }
            for (n, p) in names.iter().zip(&pools) {
                proptest::prop_assert_eq!(l.free(n), Some(*p));
            }
        }
    }
}
