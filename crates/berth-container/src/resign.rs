//! `berth container sign NAME`: new signatures written in place, keeping every other byte
//! of the file (comments, layout, quoting) as it was.

use crate::config::{Config, HookType};
use crate::sign::{self, Key};
use std::io;
use std::path::PathBuf;

/// One signature that changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The directive's line.
    pub line: usize,
    /// The hook's type.
    pub kind: HookType,
    /// The hook's path.
    pub path: PathBuf,
    /// The signature before.
    pub old: String,
    /// The signature after.
    pub new: String,
}

/// The text of `cfg`'s file (`src`) with every hook signed anew, and what changed.
/// A hook that cannot be read is an error, and nothing is rewritten.
pub fn resign(
    cfg: &Config,
    src: &str,
    key: Option<&Key>,
) -> Result<(String, Vec<Change>), (PathBuf, io::Error)> {
    let mut changes = Vec::new();
    let mut spans = Vec::new();
    for h in &cfg.hooks {
        let new = sign::sign_file(&h.path, key).map_err(|e| (h.path.clone(), e))?;
        if new != h.signature {
            changes.push(Change {
                line: h.line,
                kind: h.kind,
                path: h.path.clone(),
                old: h.signature.clone(),
                new: new.clone(),
            });
            spans.push((h.signature_span.clone(), new));
        }
    }
    spans.sort_by_key(|(s, _)| std::cmp::Reverse(s.start));
    let mut out = src.to_string();
    for (span, new) in spans {
        out.replace_range(span, &new);
    }
    changes.sort_by_key(|c| c.line);
    Ok((out, changes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn keeps_layout_and_comments() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a.sh");
        let b = tmp.path().join("b.sh");
        std::fs::write(&a, "#!/bin/sh\necho a\n").unwrap();
        std::fs::write(&b, "#!/bin/sh\necho b\n").unwrap();
        let sig_b = sign::sign_file(&b, None).unwrap();
        let src = format!(
            "# my hooks\ncontainerHook setup  root {}   \"12345\"  ;# old\ncontainerHook enter user {{{}}} {sig_b}\n\n# end\n",
            a.display(),
            b.display()
        );
        let cfg = parse("c", &tmp.path().join("c.cfg"), &src).unwrap();
        let (out, changes) = resign(&cfg, &src, None).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].line, 2);
        assert_eq!(changes[0].old, "12345");
        let sig_a = sign::sign_file(&a, None).unwrap();
        assert_eq!(out, src.replace("\"12345\"", &sig_a));
        // idempotent
        let cfg2 = parse("c", &tmp.path().join("c.cfg"), &out).unwrap();
        let (out2, changes2) = resign(&cfg2, &out, None).unwrap();
        assert!(changes2.is_empty());
        assert_eq!(out2, out);
    }
}
