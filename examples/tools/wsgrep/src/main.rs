//! wsgrep: fixed-string search over files and directories, for taskbox's
//! WASM backend. `wsgrep [-i] PATTERN [PATH...]` prints `path:line:text` for
//! every matching line (default path `.`); exit 0 if anything matched, 1 if
//! not, 2 on error. It can read only the directories taskbox preopens.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::ExitCode;

struct Search {
    pattern: String,
    ignore_case: bool,
    matched: bool,
    errors: bool,
}

impl Search {
    fn file(&mut self, path: &Path, out: &mut impl std::io::Write) {
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("wsgrep: {}: {e}", path.display());
                self.errors = true;
                return;
            }
        };
        for (n, line) in BufReader::new(f).split(b'\n').enumerate() {
            let Ok(line) = line else { return };
            let text = String::from_utf8_lossy(&line);
            let hit = if self.ignore_case {
                text.to_lowercase().contains(&self.pattern)
            } else {
                text.contains(&self.pattern)
            };
            if hit {
                self.matched = true;
                let _ = writeln!(out, "{}:{}:{}", path.display(), n + 1, text);
            }
        }
    }

    fn walk(&mut self, path: &Path, out: &mut impl std::io::Write) {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("wsgrep: {}: {e}", path.display());
                self.errors = true;
                return;
            }
        };
        if meta.is_dir() {
            let mut entries: Vec<_> = match std::fs::read_dir(path) {
                Ok(rd) => rd.flatten().map(|e| e.path()).collect(),
                Err(e) => {
                    eprintln!("wsgrep: {}: {e}", path.display());
                    self.errors = true;
                    return;
                }
            };
            entries.sort();
            for e in entries {
                if e.file_name().is_some_and(|n| n == ".git") {
                    continue;
                }
                self.walk(&e, out);
            }
        } else if meta.is_file() {
            self.file(path, out);
        }
    }
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ignore_case = args.first().is_some_and(|a| a == "-i");
    if ignore_case {
        args.remove(0);
    }
    let Some(pattern) = args.first().cloned() else {
        eprintln!("usage: wsgrep [-i] PATTERN [PATH...]");
        return ExitCode::from(2);
    };
    let mut s = Search {
        pattern: if ignore_case { pattern.to_lowercase() } else { pattern },
        ignore_case,
        matched: false,
        errors: false,
    };
    let paths: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![".".to_owned()]
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for p in &paths {
        s.walk(Path::new(p), &mut out);
    }
    let _ = out.flush();
    if s.errors {
        ExitCode::from(2)
    } else if s.matched {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
