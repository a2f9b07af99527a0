//! The tasker definitions in the SWD: `SWD/taskers.tcl`, in the syntax of Accelerator's
//! file of that name, read line by line rather than run as Tcl.
//!
//! ```text
//! # comments, and Tcl words: "..." and {...} group, \ joins lines
//! vtk_tasker_set_defaults -resources "@STD@ License:spice/2"
//! vtk_tasker_define apple  -resources "@STD@ big_memory" -CPUS 2
//! vtk_tasker_define orange -name orange-gpu -resources "GPU/4" -capacity 8
//! ```
//!
//! `vtk_tasker_set_default(s)` sets what the `vtk_tasker_define` lines after it start
//! from; a define's own options replace those. The options berth uses:
//!
//! | option | meaning in berth |
//! |---|---|
//! | `-resources STR` | added to the tasker's resources (`@STD@` and the `@NAME@` of a built-in resource stand for what every tasker offers anyway) |
//! | `-CPUS N` | `-cpus N` and `-capacity N` |
//! | `-cpus N` | offers `CORES/N` |
//! | `-capacity N` | N job slots (unless the tasker is given `--slots`) |
//! | `-name NAME` | the tasker's name, when it is not the host's |
//!
//! Accelerator's options that mean nothing to berth (`-capabilities`, `-coeff`,
//! `-executable`, `-expiredate`, `-host`, `-maxidle`, `-maxload`, `-rshcmd`,
//! `-vovtaskerroot`) are accepted and ignored. Anything else, a `foreach` or `set`, a `$`
//! or `[...]`, or a resource procedure such as `VovResources::Standard`, is an error
//! naming the file and line: berth does not run Tcl, and a definition it only half
//! understood would offer the wrong resources.

use std::collections::HashMap;
use std::path::Path;

/// The file's name in the SWD.
pub const FILE: &str = "taskers.tcl";

/// What the definitions say of one tasker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definition {
    /// Resources to add, in the resource language.
    pub resources: String,
    /// Job slots (`-capacity`, `-CPUS`).
    pub slots: Option<u32>,
    /// The line that defines it.
    pub line: usize,
}

/// The options a line may give, before they are merged.
#[derive(Debug, Clone, Default)]
struct Options {
    resources: Option<String>,
    cpus: Option<u32>,
    capacity: Option<u32>,
    name: Option<String>,
}

impl Options {
    fn over(&self, defaults: &Options) -> Options {
        Options {
            resources: self
                .resources
                .clone()
                .or_else(|| defaults.resources.clone()),
            cpus: self.cpus.or(defaults.cpus),
            capacity: self.capacity.or(defaults.capacity),
            name: self.name.clone(),
        }
    }
}

const IGNORED: &[&str] = &[
    "-capabilities",
    "-coeff",
    "-executable",
    "-expiredate",
    "-host",
    "-maxidle",
    "-maxload",
    "-rshcmd",
    "-vovtaskerroot",
];

/// The `@NAME@` macros of Accelerator's resource strings that stand for resources every
/// berth tasker offers.
const BUILT_IN_MACROS: &[&str] = &[
    "@STD@",
    "@RAMTOTAL@",
    "@RAM@",
    "@CORES@",
    "@SLOTS@",
    "@TMP@",
    "@HOST@",
    "@ARCH@",
    "@OS@",
    "@SWAPFREE@",
    "@SWAPTOTAL@",
];

/// Parses `text` (from `path`, for the messages). Every error is `PATH:LINE: message`.
pub fn parse(path: &Path, text: &str) -> Result<HashMap<String, Definition>, Vec<String>> {
    let at = |line: usize, msg: String| format!("{}:{line}: {msg}", path.display());
    let (commands, syntax) = berth_container::words::split(text);
    let mut errors: Vec<String> = syntax
        .iter()
        .map(|e| at(e.line, e.message.clone()))
        .collect();
    let mut defaults = Options::default();
    let mut out: HashMap<String, Definition> = HashMap::new();
    for c in &commands {
        let line = c.line();
        let words: Vec<&str> = c.words.iter().map(|w| w.text.as_str()).collect();
        let known = matches!(
            words[0],
            "vtk_tasker_set_default" | "vtk_tasker_set_defaults" | "vtk_tasker_define"
        );
        if let Some(w) = words
            .iter()
            .find(|w| known && (w.contains('$') || w.contains('[')))
        {
            errors.push(at(
                line,
                format!(
                    "{w:?}: berth reads this file line by line and does not substitute $ or [...]; write the value out"
                ),
            ));
            continue;
        }
        match words[0] {
            "vtk_tasker_set_default" | "vtk_tasker_set_defaults" => {
                match options(&words[1..]) {
                    Ok(o) if o.name.is_some() => {
                        errors.push(at(line, "-name cannot be a default".into()))
                    }
                    Ok(o) => defaults = o.over(&defaults),
                    Err(e) => errors.push(at(line, e)),
                }
            }
            "vtk_tasker_define" => {
                let Some(host) = words.get(1).filter(|h| !h.starts_with('-')) else {
                    errors.push(at(
                        line,
                        "vtk_tasker_define needs a host name first: vtk_tasker_define HOST ?OPTIONS?"
                            .into(),
                    ));
                    continue;
                };
                let o = match options(&words[2..]) {
                    Ok(o) => o.over(&defaults),
                    Err(e) => {
                        errors.push(at(line, e));
                        continue;
                    }
                };
                let name = o.name.clone().unwrap_or_else(|| host.to_string());
                let mut res: Vec<String> = Vec::new();
                if let Some(r) = &o.resources {
                    match resources(r) {
                        Ok(r) => res.push(r),
                        Err(e) => {
                            errors.push(at(line, e));
                            continue;
                        }
                    }
                }
                if let Some(n) = o.cpus {
                    res.push(format!("CORES/{n}"));
                }
                let d = Definition {
                    resources: res.join(" ").trim().to_string(),
                    slots: o.capacity,
                    line,
                };
                if let Some(first) = out.get(&name) {
                    errors.push(at(
                        line,
                        format!("tasker {name:?} is defined already, on line {}", first.line),
                    ));
                    continue;
                }
                out.insert(name, d);
            }
            other => errors.push(at(
                line,
                format!(
                    "{other:?}: berth knows only vtk_tasker_define and vtk_tasker_set_defaults here, one tasker per line (it does not run Tcl such as foreach or set)"
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn options(words: &[&str]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    while i < words.len() {
        let opt = words[i];
        let value = words.get(i + 1).copied();
        let number = |v: Option<&str>| -> Result<u32, String> {
            v.and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| format!("{opt} needs a whole number, not {:?}", v.unwrap_or("")))
        };
        match opt {
            "-resources" => {
                o.resources = Some(value.ok_or("-resources needs a value")?.to_string())
            }
            "-CPUS" => {
                let n = number(value)?;
                o.cpus = Some(n);
                o.capacity = Some(n);
            }
            "-cpus" => o.cpus = Some(number(value)?),
            "-capacity" => o.capacity = Some(number(value)?),
            "-name" => o.name = Some(value.ok_or("-name needs a value")?.to_string()),
            _ if IGNORED.contains(&opt) => {
                value.ok_or(format!("{opt} needs a value"))?;
            }
            _ => {
                return Err(format!(
                    "unknown option {opt:?}; berth uses -resources, -CPUS, -cpus, -capacity and -name (and ignores {})",
                    IGNORED.join(" ")
                ))
            }
        }
        i += 2;
    }
    Ok(o)
}

/// A `-resources` value in the resource language: the macros of built-in resources
/// dropped, anything else checked by the resource parser.
fn resources(r: &str) -> Result<String, String> {
    let mut kept = Vec::new();
    for t in r.split_whitespace() {
        if BUILT_IN_MACROS.contains(&t) {
            continue;
        }
        if t.starts_with('@') {
            return Err(format!(
                "{t}: not a macro berth knows (it knows {})",
                BUILT_IN_MACROS.join(" ")
            ));
        }
        if t.contains("::") {
            return Err(format!(
                "{t}: a resource procedure; berth does not run them, so list the resources it gives instead"
            ));
        }
        kept.push(t);
    }
    let s = kept.join(" ");
    berth_resources::Offer::parse(&s).map_err(|e| format!("-resources: {e}"))?;
    Ok(s)
}

/// Reads `SWD/taskers.tcl` if there is one, and the definition of `name` in it.
pub fn read(path: &Path, name: &str) -> Result<Option<Definition>, Vec<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(path, &text).map(|mut m| m.remove(name)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(vec![format!("{}: {e}", path.display())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<HashMap<String, Definition>, Vec<String>> {
        parse(Path::new("SWD/taskers.tcl"), text)
    }

    #[test]
    fn accelerators_examples_read_as_they_mean() {
        let m = p(r#"
# Fragment of taskers.tcl file
vtk_tasker_define apple  -resources "@STD@ big_memory" -CPUS 2
vtk_tasker_define orange -resources "@STD@ big_memory" -CPUS 2
vtk_tasker_define pear   -resources "@STD@ big_memory" -CPUS 4 -coeff 2.0
"#)
        .unwrap();
        assert_eq!(
            m["apple"],
            Definition {
                resources: "big_memory CORES/2".into(),
                slots: Some(2),
                line: 3
            }
        );
        assert_eq!(m["pear"].resources, "big_memory CORES/4");
        assert_eq!(m["pear"].slots, Some(4));
    }

    #[test]
    fn defaults_apply_to_the_defines_after_them_and_a_define_overrides() {
        let m = p(r#"
vtk_tasker_define early
vtk_tasker_set_defaults -resources "License:spice/2" -capacity 8
vtk_tasker_define a
vtk_tasker_define b -resources {GPU/4 Container:docker} -cpus 16 \
    -name b-gpu
"#)
        .unwrap();
        assert_eq!(
            m["early"],
            Definition {
                resources: "".into(),
                slots: None,
                line: 2
            }
        );
        assert_eq!(m["a"].resources, "License:spice/2");
        assert_eq!(m["a"].slots, Some(8));
        assert_eq!(m["b-gpu"].resources, "GPU/4 Container:docker CORES/16");
        assert_eq!(m["b-gpu"].slots, Some(8));
        assert!(!m.contains_key("b"));
    }

    #[test]
    fn what_berth_cannot_honour_is_an_error_with_its_line() {
        let cases = [
            (
                "foreach host {a b} {\n vtk_tasker_define $host\n}",
                "SWD/taskers.tcl:1: \"foreach\": berth knows only",
            ),
            (
                "vtk_tasker_define a -resources \"VovResources::Standard\"",
                "SWD/taskers.tcl:1: VovResources::Standard: a resource procedure",
            ),
            (
                "\n\nvtk_tasker_define a -failover",
                "SWD/taskers.tcl:3: unknown option \"-failover\"",
            ),
            (
                "vtk_tasker_define a -CPUS two",
                "SWD/taskers.tcl:1: -CPUS needs a whole number, not \"two\"",
            ),
            (
                "vtk_tasker_define -CPUS 2",
                "SWD/taskers.tcl:1: vtk_tasker_define needs a host name",
            ),
            (
                "vtk_tasker_define a -resources \"@FOO@\"",
                "SWD/taskers.tcl:1: @FOO@: not a macro",
            ),
            (
                "vtk_tasker_define a -resources \"x/\"",
                "SWD/taskers.tcl:1: -resources: ",
            ),
            (
                "vtk_tasker_define a\nvtk_tasker_define a",
                "SWD/taskers.tcl:2: tasker \"a\" is defined already, on line 1",
            ),
            (
                "vtk_tasker_define a -resources",
                "SWD/taskers.tcl:1: -resources needs a value",
            ),
            (
                "vtk_tasker_define a -name",
                "SWD/taskers.tcl:1: -name needs a value",
            ),
            (
                "vtk_tasker_set_defaults -name x",
                "SWD/taskers.tcl:1: -name cannot be a default",
            ),
            (
                "vtk_tasker_define a -resources \"[exec hostname]\"",
                "SWD/taskers.tcl:1: \"[exec hostname]\": berth reads",
            ),
            (
                "vtk_tasker_define a -resources \"unclosed",
                "SWD/taskers.tcl:1: ",
            ),
        ];
        for (text, want) in cases {
            let errs = p(text).unwrap_err();
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{text:?}: {errs:?}"
            );
        }
    }

    #[test]
    fn a_missing_file_defines_nothing() {
        assert_eq!(read(Path::new("/no/such/taskers.tcl"), "a"), Ok(None));
    }
}
