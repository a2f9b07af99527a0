//! Splits configuration text into commands of Tcl-like words (SPEC §2).
//!
//! Words are separated by blanks; `"..."` groups words (with `\"`, `\\`, `\n`, `\t`
//! escapes); `{...}` groups words literally and nests; a backslash-newline joins lines;
//! `#` as the first word of a command starts a comment; `;` or a newline ends a command.
//! There is no `$` or `[...]` substitution: those characters are taken literally.

use std::ops::Range;

/// One word of a command, with where it stands in the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    /// The word after quoting and escapes are resolved.
    pub text: String,
    /// 1-based line on which the word starts.
    pub line: usize,
    /// Byte range of the word as written, quotes included.
    pub span: Range<usize>,
}

/// One command: its words, the first being the directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command's words, never empty.
    pub words: Vec<Word>,
}

impl Command {
    /// The line the command starts on.
    pub fn line(&self) -> usize {
        self.words[0].line
    }
}

/// A syntax error at a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong, lowercase.
    pub message: String,
}

/// Splits `src` into commands. On a syntax error the rest of that command is skipped and
/// splitting goes on from the next line, so that every error in a file is reported.
pub fn split(src: &str) -> (Vec<Command>, Vec<SyntaxError>) {
    let b = src.as_bytes();
    let mut cmds = Vec::new();
    let mut errs = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut i = 0;
    let mut line = 1;

    let finish = |words: &mut Vec<Word>, cmds: &mut Vec<Command>| {
        if !words.is_empty() {
            cmds.push(Command {
                words: std::mem::take(words),
            });
        }
    };

    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' | b'\r' => i += 1,
            b'\\' if b.get(i + 1) == Some(&b'\n') => {
                i += 2;
                line += 1;
            }
            b'\n' => {
                finish(&mut words, &mut cmds);
                i += 1;
                line += 1;
            }
            b';' => {
                finish(&mut words, &mut cmds);
                i += 1;
            }
            b'#' if words.is_empty() => {
                // A comment runs to the end of the line; a backslash-newline continues it,
                // as in Tcl.
                while i < b.len() && b[i] != b'\n' {
                    if b[i] == b'\\' && b.get(i + 1) == Some(&b'\n') {
                        i += 1;
                        line += 1;
                    }
                    i += 1;
                }
            }
            _ => {
                let start = i;
                let start_line = line;
                let res = match c {
                    b'"' => quoted(b, &mut i, &mut line),
                    b'{' => braced(b, &mut i, &mut line),
                    _ => Ok(bare(b, &mut i, &mut line)),
                };
                let res = res.and_then(|text| {
                    // Tcl requires a blank or the end of the command after a closing
                    // quote or brace.
                    match b.get(i) {
                        None | Some(b' ' | b'\t' | b'\r' | b'\n' | b';') => Ok(text),
                        Some(b'\\') if b.get(i + 1) == Some(&b'\n') => Ok(text),
                        Some(&other) if c == b'"' || c == b'{' => Err(format!(
                            "extra character {:?} after closing {}",
                            other as char,
                            if c == b'"' { "quote" } else { "brace" }
                        )),
                        Some(_) => Ok(text),
                    }
                });
                match res {
                    Ok(text) => words.push(Word {
                        text,
                        line: start_line,
                        span: start..i,
                    }),
                    Err(message) => {
                        errs.push(SyntaxError {
                            line: start_line,
                            message,
                        });
                        words.clear();
                        while i < b.len() && b[i] != b'\n' {
                            i += 1;
                        }
                    }
                }
            }
        }
    }
    finish(&mut words, &mut cmds);
    (cmds, errs)
}

fn escape(b: &[u8], i: &mut usize, out: &mut Vec<u8>, line: &mut usize) {
    // b[*i] is the backslash
    match b.get(*i + 1) {
        Some(b'n') => out.push(b'\n'),
        Some(b't') => out.push(b'\t'),
        Some(b'\n') => {
            // backslash-newline and the blanks after it become one space
            *line += 1;
            *i += 2;
            while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
                *i += 1;
            }
            out.push(b' ');
            return;
        }
        Some(&other) => out.push(other),
        None => out.push(b'\\'),
    }
    *i += 2;
}

fn bare(b: &[u8], i: &mut usize, line: &mut usize) -> String {
    let mut out = Vec::new();
    while *i < b.len() {
        match b[*i] {
            b' ' | b'\t' | b'\r' | b'\n' | b';' => break,
            b'\\' if b.get(*i + 1) == Some(&b'\n') => break,
            b'\\' => escape(b, i, &mut out, line),
            other => {
                out.push(other);
                *i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn quoted(b: &[u8], i: &mut usize, line: &mut usize) -> Result<String, String> {
    let open_line = *line;
    *i += 1;
    let mut out = Vec::new();
    while *i < b.len() {
        match b[*i] {
            b'"' => {
                *i += 1;
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            b'\\' => escape(b, i, &mut out, line),
            b'\n' => {
                *line += 1;
                out.push(b'\n');
                *i += 1;
            }
            other => {
                out.push(other);
                *i += 1;
            }
        }
    }
    Err(format!(
        "missing closing quote for the quote opened on line {open_line}"
    ))
}

fn braced(b: &[u8], i: &mut usize, line: &mut usize) -> Result<String, String> {
    let open_line = *line;
    *i += 1;
    let start = *i;
    let mut depth = 1;
    while *i < b.len() {
        match b[*i] {
            b'\\' if *i + 1 < b.len() => {
                if b[*i + 1] == b'\n' {
                    *line += 1;
                }
                *i += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    let text = String::from_utf8_lossy(&b[start..*i]).into_owned();
                    *i += 1;
                    return Ok(text);
                }
            }
            b'\n' => *line += 1,
            _ => {}
        }
        *i += 1;
    }
    Err(format!(
        "missing closing brace for the brace opened on line {open_line}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(src: &str) -> Vec<Vec<String>> {
        let (cmds, errs) = split(src);
        assert!(errs.is_empty(), "{src:?}: {errs:?}");
        cmds.into_iter()
            .map(|c| c.words.into_iter().map(|w| w.text).collect())
            .collect()
    }

    #[test]
    fn words_table() {
        let cases: Vec<(&str, Vec<Vec<&str>>)> = vec![
            ("a b c", vec![vec!["a", "b", "c"]]),
            ("  a\t b  ", vec![vec!["a", "b"]]),
            ("a \"b c\" d", vec![vec!["a", "b c", "d"]]),
            (r#"a "x\"y\\z\n\t""#, vec![vec!["a", "x\"y\\z\n\t"]]),
            ("a {b c} d", vec![vec!["a", "b c", "d"]]),
            ("a {b {c} \"d} e", vec![vec!["a", "b {c} \"d", "e"]]),
            ("a \\\n   b", vec![vec!["a", "b"]]),
            ("a; b c ;d", vec![vec!["a"], vec!["b", "c"], vec!["d"]]),
            ("# comment\na", vec![vec!["a"]]),
            (
                "a # not a comment",
                vec![vec!["a", "#", "not", "a", "comment"]],
            ),
            ("a; # comment after ;", vec![vec!["a"]]),
            ("\n\n  \n", vec![]),
            ("# c \\\n continued\nb", vec![vec!["b"]]),
            ("a \"x \\\n  y\"", vec![vec!["a", "x  y"]]),
            ("a \"\"", vec![vec!["a", ""]]),
            ("a\r\nb\r\n", vec![vec!["a"], vec!["b"]]),
            ("a $x [y]", vec![vec!["a", "$x", "[y]"]]),
        ];
        for (src, want) in cases {
            assert_eq!(texts(src), want, "{src:?}");
        }
    }

    #[test]
    fn lines_and_spans() {
        let src = "a\n\nb \"c d\" \\\n e\nf";
        let (cmds, _) = split(src);
        assert_eq!(cmds[0].line(), 1);
        assert_eq!(cmds[1].line(), 3);
        assert_eq!(cmds[1].words[2].line, 4);
        assert_eq!(&src[cmds[1].words[1].span.clone()], "\"c d\"");
        assert_eq!(cmds[2].line(), 5);
    }

    #[test]
    fn errors_table() {
        let cases: Vec<(&str, usize, &str)> = vec![
            (
                "a \"b",
                1,
                "missing closing quote for the quote opened on line 1",
            ),
            (
                "x\na {b\nc",
                2,
                "missing closing brace for the brace opened on line 2",
            ),
            ("a \"b\"c", 1, "extra character 'c' after closing quote"),
            ("a {b}c", 1, "extra character 'c' after closing brace"),
        ];
        for (src, line, msg) in cases {
            let (_, errs) = split(src);
            assert_eq!(errs.len(), 1, "{src:?}: {errs:?}");
            assert_eq!(errs[0].line, line, "{src:?}");
            assert_eq!(errs[0].message, msg, "{src:?}");
        }
    }

    #[test]
    fn goes_on_after_an_error() {
        let (cmds, errs) = split("a \"b\"c\nd e");
        assert_eq!(errs.len(), 1);
        assert_eq!(cmds.len(), 1);
        assert_eq!(cmds[0].words[0].text, "d");
    }
}
