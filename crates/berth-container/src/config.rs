//! The directives of a named container configuration, `SWD/containers/NAME.cfg` (SPEC §2).

use crate::words::{self, Command, Word};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The four moments of a container job's life.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum HookType {
    /// Creates the container; must exit 0.
    Setup,
    /// Runs the job inside it, and lasts as long as the job.
    Enter,
    /// Runs after the job, whatever happened.
    Cleanup,
    /// Removes the container, whatever happened.
    Teardown,
    /// Runs a command in a running job's container (`berth exec`); optional, never part
    /// of the life cycle.
    Exec,
}

impl HookType {
    /// All types, in the order of the life cycle.
    pub const ALL: [HookType; 5] = [
        HookType::Setup,
        HookType::Enter,
        HookType::Cleanup,
        HookType::Teardown,
        HookType::Exec,
    ];

    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            HookType::Setup => "setup",
            HookType::Enter => "enter",
            HookType::Cleanup => "cleanup",
            HookType::Teardown => "teardown",
            HookType::Exec => "exec",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        HookType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for HookType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whom a hook runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privilege {
    /// The job's owner, with the job's environment.
    User,
    /// Root, with a cleaned environment.
    Root,
}

impl Privilege {
    /// The name used in configuration files.
    pub fn as_str(self) -> &'static str {
        match self {
            Privilege::User => "user",
            Privilege::Root => "root",
        }
    }
}

/// One `containerHook` directive.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hook {
    /// setup, enter, cleanup, teardown or exec.
    pub kind: HookType,
    /// user or root.
    pub privilege: Privilege,
    /// The hook program, an absolute path.
    pub path: PathBuf,
    /// The signature as written in the file.
    pub signature: String,
    /// The line of the directive.
    pub line: usize,
    /// Where the signature stands in the file, so that it can be rewritten in place.
    #[serde(skip)]
    pub signature_span: Range<usize>,
}

/// The resources a `containerLimit` can bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum LimitKind {
    /// Cores, a number.
    #[serde(rename = "CORES")]
    Cores,
    /// Memory in MB.
    #[serde(rename = "RAM")]
    Ram,
    /// Temporary space in MB.
    #[serde(rename = "TMP")]
    Tmp,
}

impl LimitKind {
    /// All kinds.
    pub const ALL: [LimitKind; 3] = [LimitKind::Cores, LimitKind::Ram, LimitKind::Tmp];

    /// The resource name, as in `CORES/2`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Cores => "CORES",
            LimitKind::Ram => "RAM",
            LimitKind::Tmp => "TMP",
        }
    }
}

/// One `containerLimit` directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limit {
    /// Applies when the job requests none.
    pub default: u64,
    /// A job that requests more is refused.
    pub max: Option<u64>,
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// NAME, the file name without `.cfg`.
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// The hooks, in life-cycle order; exactly one is `enter`.
    pub hooks: Vec<Hook>,
    /// `containerHooksRunDir`, when set.
    pub run_dir: Option<PathBuf>,
    /// `containerLimit` per kind.
    pub limits: Vec<(LimitKind, Limit)>,
    /// `containerHookTimeout` per type (setup, cleanup, teardown), else the default.
    pub timeouts: Vec<(HookType, Duration)>,
    /// `containerKillGrace`.
    pub kill_grace: Duration,
}

/// How long setup, cleanup and teardown may run when the file does not say.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Between SIGTERM and SIGKILL when the file does not say.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

impl Config {
    /// The hook of a type, if the configuration has one.
    pub fn hook(&self, kind: HookType) -> Option<&Hook> {
        self.hooks.iter().find(|h| h.kind == kind)
    }

    /// The `containerLimit` for a kind.
    pub fn limit(&self, kind: LimitKind) -> Option<Limit> {
        self.limits
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, l)| *l)
    }

    /// How long a hook of this type may run; `None` for enter, which lasts as the job.
    pub fn timeout(&self, kind: HookType) -> Option<Duration> {
        if matches!(kind, HookType::Enter | HookType::Exec) {
            return None;
        }
        Some(
            self.timeouts
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, d)| *d)
                .unwrap_or(DEFAULT_HOOK_TIMEOUT),
        )
    }

    /// Whether any hook runs as root.
    pub fn has_root_hook(&self) -> bool {
        self.hooks.iter().any(|h| h.privilege == Privilege::Root)
    }
}

/// One error in a configuration file, printed `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line; 0 for the file as a whole.
    pub line: usize,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
        }
    }
}

/// Every error of one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Whether NAME is a valid configuration name: `[A-Za-z0-9_][A-Za-z0-9_.-]*`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        _ => return false,
    }
    name.len() <= 200 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Why a name was refused, with what would be accepted.
pub fn name_error(name: &str) -> String {
    format!(
        "container name {name:?} is not valid: a name is made of letters, digits, '_', '.' \
         and '-', does not start with '.' or '-', and holds no '/'"
    )
}

const DIRECTIVES: [&str; 5] = [
    "containerHook",
    "containerHooksRunDir",
    "containerLimit",
    "containerHookTimeout",
    "containerKillGrace",
];

/// Parses the text of `NAME.cfg`. `file` is used in error messages only.
pub fn parse(name: &str, file: &Path, src: &str) -> Result<Config, ConfigErrors> {
    let mut errs = Vec::new();
    let err = |errs: &mut Vec<ConfigError>, line: usize, message: String| {
        errs.push(ConfigError {
            file: file.to_path_buf(),
            line,
            message,
        })
    };
    if !valid_name(name) {
        err(&mut errs, 0, name_error(name));
    }
    let (cmds, syntax) = words::split(src);
    for s in syntax {
        err(&mut errs, s.line, s.message);
    }
    let mut cfg = Config {
        name: name.to_string(),
        path: file.to_path_buf(),
        hooks: Vec::new(),
        run_dir: None,
        limits: Vec::new(),
        timeouts: Vec::new(),
        kill_grace: DEFAULT_KILL_GRACE,
    };
    let mut seen_hook: Vec<(HookType, usize)> = Vec::new();
    let mut seen_limit: Vec<(LimitKind, usize)> = Vec::new();
    let mut seen_timeout: Vec<(HookType, usize)> = Vec::new();
    let mut run_dir_line = None;
    let mut grace_line = None;

    for cmd in &cmds {
        let line = cmd.line();
        let directive = cmd.words[0].text.as_str();
        let args = &cmd.words[1..];
        let res = match directive {
            "containerHook" => hook(cmd, &mut seen_hook).map(|h| cfg.hooks.push(h)),
            "containerHooksRunDir" => once(&mut run_dir_line, line, directive).and_then(|_| {
                arity(args, 1, 1, directive, "PATH")?;
                cfg.run_dir = Some(absolute(&args[0], "containerHooksRunDir PATH")?);
                Ok(())
            }),
            "containerLimit" => limit(args, line, &mut seen_limit).map(|l| cfg.limits.push(l)),
            "containerHookTimeout" => {
                timeout(args, line, &mut seen_timeout).map(|t| cfg.timeouts.push(t))
            }
            "containerKillGrace" => once(&mut grace_line, line, directive).and_then(|_| {
                arity(args, 1, 1, directive, "SECONDS")?;
                cfg.kill_grace = Duration::from_secs(seconds(&args[0], "containerKillGrace")?);
                Ok(())
            }),
            other => Err(unknown_directive(other)),
        };
        if let Err(m) = res {
            err(&mut errs, line, m);
        }
    }

    let enters = cfg
        .hooks
        .iter()
        .filter(|h| h.kind == HookType::Enter)
        .count();
    if enters == 0 {
        err(
            &mut errs,
            0,
            "no enter hook: a configuration needs exactly one \
             `containerHook enter user|root PATH SIGNATURE`"
                .to_string(),
        );
    }
    if errs.is_empty() {
        cfg.hooks.sort_by_key(|h| h.kind);
        Ok(cfg)
    } else {
        errs.sort_by_key(|e| e.line);
        Err(ConfigErrors(errs))
    }
}

fn unknown_directive(word: &str) -> String {
    let lower = word.to_ascii_lowercase();
    match DIRECTIVES.iter().find(|d| d.to_ascii_lowercase() == lower) {
        Some(d) => format!("unknown directive {word:?}; did you mean {d:?}?"),
        None => format!(
            "unknown directive {word:?}; expected one of {}",
            DIRECTIVES.join(", ")
        ),
    }
}

fn once(seen: &mut Option<usize>, line: usize, directive: &str) -> Result<(), String> {
    if let Some(first) = *seen {
        return Err(format!(
            "duplicate {directive} (first given on line {first})"
        ));
    }
    *seen = Some(line);
    Ok(())
}

fn arity(
    args: &[Word],
    min: usize,
    max: usize,
    directive: &str,
    usage: &str,
) -> Result<(), String> {
    if args.len() < min {
        return Err(format!("{directive} needs {usage}"));
    }
    if args.len() > max {
        return Err(format!(
            "{directive} takes {usage}; extra word {:?}",
            args[max].text
        ));
    }
    Ok(())
}

fn absolute(w: &Word, what: &str) -> Result<PathBuf, String> {
    if w.text.is_empty() {
        return Err(format!("{what}: the path is empty"));
    }
    if !w.text.starts_with('/') {
        return Err(format!(
            "{what}: {:?} is a relative path; write the absolute path",
            w.text
        ));
    }
    if w.text.contains('\0') || w.text.contains('\n') {
        return Err(format!("{what}: {:?} holds a control character", w.text));
    }
    Ok(PathBuf::from(&w.text))
}

fn seconds(w: &Word, what: &str) -> Result<u64, String> {
    match w.text.parse::<u64>() {
        Ok(n) if n <= 30 * 24 * 3600 => Ok(n),
        Ok(_) => Err(format!("{what}: {} seconds is more than 30 days", w.text)),
        Err(_) => Err(format!(
            "{what}: {:?} is not a whole number of seconds",
            w.text
        )),
    }
}

fn hook(cmd: &Command, seen: &mut Vec<(HookType, usize)>) -> Result<Hook, String> {
    const USAGE: &str = "TYPE PRIVILEGE PATH SIGNATURE";
    let args = &cmd.words[1..];
    if args.is_empty() {
        return Err(format!("containerHook needs {USAGE}"));
    }
    let kind = HookType::parse(&args[0].text).ok_or_else(|| {
        format!(
            "containerHook: unknown hook type {:?}; expected setup, enter, cleanup, teardown or exec",
            args[0].text
        )
    })?;
    let privilege = match args.get(1).map(|w| w.text.as_str()) {
        Some("user") => Privilege::User,
        Some("root") => Privilege::Root,
        Some(other) => {
            return Err(format!(
                "containerHook {kind}: unknown privilege {other:?}; expected user or root"
            ))
        }
        None => {
            return Err(format!(
                "containerHook {kind}: needs PRIVILEGE PATH SIGNATURE"
            ))
        }
    };
    let path = match args.get(2) {
        Some(w) => absolute(w, &format!("containerHook {kind}"))?,
        None => return Err(format!("containerHook {kind}: needs PATH SIGNATURE")),
    };
    let sig = match args.get(3) {
        Some(w) if !w.text.is_empty() => w,
        _ => {
            return Err(format!(
                "containerHook {kind} {}: missing SIGNATURE; run: berth signfile {}",
                path.display(),
                path.display()
            ))
        }
    };
    if let Some(extra) = args.get(4) {
        return Err(format!(
            "containerHook takes {USAGE}; extra word {:?}",
            extra.text
        ));
    }
    if let Some((_, first)) = seen.iter().find(|(k, _)| *k == kind) {
        return Err(if kind == HookType::Enter {
            format!("a second enter hook (the first is on line {first}); a configuration has exactly one")
        } else {
            format!(
                "duplicate {kind} hook (the first is on line {first}); at most one of each type"
            )
        });
    }
    seen.push((kind, cmd.line()));
    Ok(Hook {
        kind,
        privilege,
        path,
        signature: sig.text.clone(),
        line: cmd.line(),
        signature_span: sig.span.clone(),
    })
}

fn limit(
    args: &[Word],
    line: usize,
    seen: &mut Vec<(LimitKind, usize)>,
) -> Result<(LimitKind, Limit), String> {
    arity(args, 2, 3, "containerLimit", "KIND DEFAULT [MAX]")?;
    let kind = LimitKind::ALL
        .into_iter()
        .find(|k| k.as_str() == args[0].text)
        .ok_or_else(|| {
            format!(
                "containerLimit: unknown kind {:?}; expected CORES, RAM or TMP",
                args[0].text
            )
        })?;
    let num = |w: &Word, what: &str| -> Result<u64, String> {
        w.text
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!(
                    "containerLimit {}: {what} {:?} is not a positive whole number{}",
                    kind.as_str(),
                    w.text,
                    if kind == LimitKind::Cores {
                        ""
                    } else {
                        " of MB"
                    }
                )
            })
    };
    let default = num(&args[1], "DEFAULT")?;
    let max = args.get(2).map(|w| num(w, "MAX")).transpose()?;
    if let Some(max) = max {
        if default > max {
            return Err(format!(
                "containerLimit {}: DEFAULT {default} is above MAX {max}",
                kind.as_str()
            ));
        }
    }
    if let Some((_, first)) = seen.iter().find(|(k, _)| *k == kind) {
        return Err(format!(
            "duplicate containerLimit {} (first given on line {first})",
            kind.as_str()
        ));
    }
    seen.push((kind, line));
    Ok((kind, Limit { default, max }))
}

fn timeout(
    args: &[Word],
    line: usize,
    seen: &mut Vec<(HookType, usize)>,
) -> Result<(HookType, Duration), String> {
    arity(args, 2, 2, "containerHookTimeout", "TYPE SECONDS")?;
    let kind =
        match HookType::parse(&args[0].text) {
            Some(HookType::Enter) => {
                return Err(
                    "containerHookTimeout enter: enter lasts as long as the job and has no timeout"
                        .to_string(),
                )
            }
            Some(HookType::Exec) => return Err(
                "containerHookTimeout exec: exec lasts as long as the command berth exec runs, \
                 and has no timeout"
                    .to_string(),
            ),
            Some(k) => k,
            None => {
                return Err(format!(
                "containerHookTimeout: unknown hook type {:?}; expected setup, cleanup or teardown",
                args[0].text
            ))
            }
        };
    let secs = seconds(&args[1], &format!("containerHookTimeout {kind}"))?;
    if secs == 0 {
        return Err(format!(
            "containerHookTimeout {kind}: the timeout must be at least 1 second"
        ));
    }
    if let Some((_, first)) = seen.iter().find(|(k, _)| *k == kind) {
        return Err(format!(
            "duplicate containerHookTimeout {kind} (first given on line {first})"
        ));
    }
    seen.push((kind, line));
    Ok((kind, Duration::from_secs(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn p(src: &str) -> Result<Config, ConfigErrors> {
        parse("c1", Path::new("/swd/containers/c1.cfg"), src)
    }

    fn enter() -> String {
        format!("containerHook enter root /opt/h/enter.sh {SIG}\n")
    }

    #[test]
    fn accepts_table() {
        type Check = Box<dyn Fn(&Config)>;
        let cases: Vec<(String, Check)> = vec![
            (
                enter(),
                Box::new(|c| {
                    assert_eq!(c.hooks.len(), 1);
                    assert_eq!(c.hooks[0].privilege, Privilege::Root);
                    assert_eq!(c.kill_grace, DEFAULT_KILL_GRACE);
                    assert_eq!(c.timeout(HookType::Setup), Some(DEFAULT_HOOK_TIMEOUT));
                    assert_eq!(c.timeout(HookType::Enter), None);
                }),
            ),
            (
                format!("containerHook enter user \"/opt/my hooks/enter.sh\" {SIG}"),
                Box::new(|c| assert_eq!(c.hooks[0].path, Path::new("/opt/my hooks/enter.sh"))),
            ),
            (
                format!("containerHook enter user {{/opt/b r/e.sh}} {SIG}"),
                Box::new(|c| assert_eq!(c.hooks[0].path, Path::new("/opt/b r/e.sh"))),
            ),
            (
                format!("containerHook \\\n  enter user \\\n  /e.sh \\\n  {SIG}"),
                Box::new(|c| {
                    assert_eq!(c.hooks[0].path, Path::new("/e.sh"));
                    assert_eq!(c.hooks[0].line, 1);
                }),
            ),
            (
                format!(
                    "# hooks\n\ncontainerHook teardown root /t.sh {SIG}; containerHook setup root /s.sh {SIG}\n{}",
                    enter()
                ),
                Box::new(|c| {
                    let kinds: Vec<_> = c.hooks.iter().map(|h| h.kind).collect();
                    assert_eq!(kinds, [HookType::Setup, HookType::Enter, HookType::Teardown]);
                    assert_eq!(c.hooks[0].line, 3);
                }),
            ),
            (
                format!(
                    "{}containerHooksRunDir /var/run/x\ncontainerLimit CORES 1 8\ncontainerLimit RAM 1000\n\
                     containerHookTimeout setup 20\ncontainerKillGrace 3\n",
                    enter()
                ),
                Box::new(|c| {
                    assert_eq!(c.run_dir.as_deref(), Some(Path::new("/var/run/x")));
                    assert_eq!(c.limit(LimitKind::Cores), Some(Limit { default: 1, max: Some(8) }));
                    assert_eq!(c.limit(LimitKind::Ram), Some(Limit { default: 1000, max: None }));
                    assert_eq!(c.limit(LimitKind::Tmp), None);
                    assert_eq!(c.timeout(HookType::Setup), Some(Duration::from_secs(20)));
                    assert_eq!(c.timeout(HookType::Cleanup), Some(DEFAULT_HOOK_TIMEOUT));
                    assert_eq!(c.kill_grace, Duration::from_secs(3));
                }),
            ),
        ];
        for (src, check) in cases {
            match p(&src) {
                Ok(c) => check(&c),
                Err(e) => panic!("{src:?}: {e}"),
            }
        }
    }

    #[test]
    fn refuses_table() {
        let e = enter();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "/swd/containers/c1.cfg: no enter hook"),
            ("# only a comment\n".into(), "/swd/containers/c1.cfg: no enter hook"),
            (
                format!("{e}containerHook enter user /e2 {SIG}"),
                "c1.cfg:2: a second enter hook (the first is on line 1)",
            ),
            (
                format!("{e}containerHook setup root /a {SIG}\ncontainerHook setup root /b {SIG}"),
                "c1.cfg:3: duplicate setup hook (the first is on line 2)",
            ),
            (
                format!("containerHook enter root relative/e.sh {SIG}"),
                "c1.cfg:1: containerHook enter: \"relative/e.sh\" is a relative path; write the absolute path",
            ),
            (
                format!("containerHook start root /e {SIG}"),
                "c1.cfg:1: containerHook: unknown hook type \"start\"",
            ),
            (
                format!("containerHook enter admin /e {SIG}"),
                "c1.cfg:1: containerHook enter: unknown privilege \"admin\"; expected user or root",
            ),
            (
                "containerHook enter root /opt/e.sh".into(),
                "c1.cfg:1: containerHook enter /opt/e.sh: missing SIGNATURE; run: berth signfile /opt/e.sh",
            ),
            (
                format!("containerHook enter root /e {SIG} extra"),
                "extra word \"extra\"",
            ),
            (
                format!("{e}containerhook setup root /s {SIG}"),
                "c1.cfg:2: unknown directive \"containerhook\"; did you mean \"containerHook\"?",
            ),
            (format!("{e}frobnicate 1"), "c1.cfg:2: unknown directive \"frobnicate\""),
            (
                format!("{e}containerHooksRunDir /a\ncontainerHooksRunDir /b"),
                "c1.cfg:3: duplicate containerHooksRunDir (first given on line 2)",
            ),
            (format!("{e}containerHooksRunDir rel"), "relative path"),
            (
                format!("{e}containerLimit GPU 1"),
                "c1.cfg:2: containerLimit: unknown kind \"GPU\"; expected CORES, RAM or TMP",
            ),
            (format!("{e}containerLimit RAM lots"), "DEFAULT \"lots\" is not a positive whole number of MB"),
            (format!("{e}containerLimit CORES 4 2"), "DEFAULT 4 is above MAX 2"),
            (
                format!("{e}containerLimit RAM 1\ncontainerLimit RAM 2"),
                "c1.cfg:3: duplicate containerLimit RAM (first given on line 2)",
            ),
            (format!("{e}containerHookTimeout enter 5"), "enter lasts as long as the job"),
            (format!("{e}containerHookTimeout setup 0"), "at least 1 second"),
            (format!("{e}containerHookTimeout setup soon"), "is not a whole number of seconds"),
            (format!("{e}containerKillGrace 1\ncontainerKillGrace 2"), "duplicate containerKillGrace"),
            (format!("{e}containerHook setup root \"/s {SIG}"), "c1.cfg:2: missing closing quote"),
        ];
        for (src, want) in cases {
            let err = p(&src).expect_err(&src).to_string();
            assert!(err.contains(want), "{src:?}\n  got:  {err}\n  want: {want}");
        }
    }

    #[test]
    fn reports_every_error() {
        let err = p("frob\ncontainerHook enter root rel x\ncontainerLimit X 1").unwrap_err();
        let lines: Vec<usize> = err.0.iter().map(|e| e.line).collect();
        assert_eq!(lines, [0, 1, 2, 3], "{err}");
    }

    #[test]
    fn names_table() {
        for ok in ["c1", "docker", "my_ctr.v2", "_x", "0-a", "A.b-c_d"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", ".hidden", "-x", "a b", "a\0", "ü",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let err = parse("../x", Path::new("/x.cfg"), &enter())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("container name \"../x\" is not valid"),
            "{err}"
        );
    }

    #[test]
    fn signature_span_is_the_word_as_written() {
        let src = format!("containerHook enter root /e \"{SIG}\" ");
        let c = p(&src).unwrap();
        assert_eq!(
            &src[c.hooks[0].signature_span.clone()],
            format!("\"{SIG}\"")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..Default::default()
        })]
        #[test]
        fn random_text_never_panics(s in "(?s).{0,200}") {
            let _ = p(&s);
        }

        #[test]
        fn mutated_config_never_panics(
            cut in 0usize..400,
            insert in "[ \\t\\n;{}\"\\\\#a-z/0-9]{0,6}",
        ) {
            let base = format!(
                "# c\ncontainerHook setup root /s.sh {SIG}\ncontainerHook enter user \"/e f.sh\" {SIG}\n\
                 containerHook teardown root {{/t.sh}} {SIG}\ncontainerLimit RAM 100 200\n\
                 containerHookTimeout setup 5; containerKillGrace 2\n"
            );
            let mut at = cut.min(base.len());
            while !base.is_char_boundary(at) { at -= 1; }
            let mutated = format!("{}{}{}", &base[..at], insert, &base[at..]);
            let _ = p(&mutated);
        }
    }
}
