//! Redaction: every granted value, and its base64 (standard, URL-safe, with
//! and without padding) and URL-encoded forms, becomes `[redacted:NAME]` —
//! in strings, and in streams where a value may be split across writes.

use std::io::Write;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;

use super::Lease;

/// Forms shorter than this are not searched for (they would match noise).
const MIN_FORM: usize = 3;

/// Finds granted values in any of their forms.
#[derive(Clone)]
pub struct Redactor {
    ac: Option<AhoCorasick>,
    markers: Vec<String>,
    longest: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The automaton holds the values: never print it.
        write!(f, "Redactor({} forms)", self.markers.len())
    }
}

impl Redactor {
    /// Every string inside `v`, redacted in place.
    pub fn redact_json(&self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::String(s) => *s = self.redact(s),
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_json(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.redact_json(x)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// For the task's leases; with none, it changes nothing.
    pub fn new<L: std::borrow::Borrow<Lease>>(leases: &[L]) -> Self {
        let mut forms: Vec<(Vec<u8>, String)> = Vec::new();
        for l in leases {
            let l = l.borrow();
            let v = l.secret.expose().as_bytes();
            let marker = format!("[redacted:{}]", l.name);
            let b64 = [
                base64::engine::general_purpose::STANDARD.encode(v),
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(v),
                base64::engine::general_purpose::URL_SAFE.encode(v),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v),
            ];
            let url =
                percent_encoding::percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string();
            let mut all = vec![v.to_vec(), url.into_bytes()];
            all.extend(b64.into_iter().map(String::into_bytes));
            for f in all {
                if f.len() >= MIN_FORM && !forms.iter().any(|(x, _)| *x == f) {
                    forms.push((f, marker.clone()));
                }
            }
        }
        let longest = forms.iter().map(|(f, _)| f.len()).max().unwrap_or(0);
        let ac = (!forms.is_empty())
            .then(|| {
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(forms.iter().map(|(f, _)| f))
                    .ok()
            })
            .flatten();
        Self {
            ac,
            markers: forms.into_iter().map(|(_, m)| m).collect(),
            longest,
        }
    }

    /// Whether there is anything to redact.
    pub fn is_empty(&self) -> bool {
        self.ac.is_none()
    }

    /// The grants (by marker name) whose values appear in `bytes`.
    pub fn names_in(&self, bytes: &[u8]) -> Vec<String> {
        let Some(ac) = &self.ac else {
            return Vec::new();
        };
        let mut names: Vec<String> = Vec::new();
        for m in ac.find_iter(bytes) {
            let marker = &self.markers[m.pattern().as_usize()];
            let name = marker
                .trim_start_matches("[redacted:")
                .trim_end_matches(']')
                .to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
        }
        names
    }

    /// `s` with every form replaced.
    pub fn redact(&self, s: &str) -> String {
        match &self.ac {
            None => s.to_owned(),
            Some(ac) => {
                let mut out = String::with_capacity(s.len());
                let mut at = 0;
                for m in ac.find_iter(s) {
                    out.push_str(&s[at..m.start()]);
                    out.push_str(&self.markers[m.pattern().as_usize()]);
                    at = m.end();
                }
                out.push_str(&s[at..]);
                out
            }
        }
    }

    /// Replaces forms in `buf[..]`, writing to `w`; returns how many bytes
    /// of `buf` were consumed. With `end`, everything is; otherwise the last
    /// bytes that could begin a form stay for the next call.
    fn pass(&self, buf: &[u8], end: bool, w: &mut dyn Write) -> std::io::Result<usize> {
        let Some(ac) = &self.ac else {
            w.write_all(buf)?;
            return Ok(buf.len());
        };
        let safe = if end {
            buf.len()
        } else {
            buf.len().saturating_sub(self.longest.saturating_sub(1))
        };
        let mut at = 0;
        for m in ac.find_iter(buf) {
            if m.start() >= safe {
                break;
            }
            w.write_all(&buf[at..m.start()])?;
            w.write_all(self.markers[m.pattern().as_usize()].as_bytes())?;
            at = m.end();
        }
        let upto = at.max(safe);
        w.write_all(&buf[at..upto])?;
        Ok(upto)
    }
}

/// A stream with granted values redacted, also when one is split across
/// writes: up to (longest form − 1) bytes are held back until more output
/// shows they are not the start of a value, and written when the writer
/// is dropped.
pub struct RedactWriter<W: Write> {
    inner: W,
    redactor: Redactor,
    pending: Vec<u8>,
}

impl<W: Write> RedactWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, redactor: Redactor) -> Self {
        Self {
            inner,
            redactor,
            pending: Vec::new(),
        }
    }
}

impl<W: Write> Write for RedactWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        let used = self.redactor.pass(&self.pending, false, &mut self.inner)?;
        self.pending.drain(..used);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Held-back bytes stay held: releasing them here would let a value
        // split across two writes through.
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactWriter<W> {
    fn drop(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let _ = self.redactor.pass(&pending, true, &mut self.inner);
        let _ = self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Secret;
    use crate::profile::Delivery;

    fn red(v: &str) -> Redactor {
        Redactor::new(&[Lease {
            name: "gh".into(),
            secret: Secret::new(v.into()),
            deliver: Delivery::Env("GH_TOKEN".into()),
            to: Vec::new(),
            placeholder: None,
            expires: None,
            ttl: None,
        }])
    }

    #[test]
    fn strings_lose_every_form() {
        let r = red("s3cr3t/val+ue");
        let b64 = base64::engine::general_purpose::STANDARD.encode("s3cr3t/val+ue");
        let text = format!("a s3cr3t/val+ue b {b64} c s3cr3t%2Fval%2Bue d");
        assert_eq!(
            r.redact(&text),
            "a [redacted:gh] b [redacted:gh] c [redacted:gh] d"
        );
    }

    #[test]
    fn streams_catch_values_split_across_writes() {
        let r = red("TOPSECRETVALUE");
        for split in 1..14 {
            let mut out = Vec::new();
            {
                let mut w = RedactWriter::new(&mut out, r.clone());
                let s = b"before TOPSECRETVALUE after";
                w.write_all(&s[..7 + split]).unwrap();
                w.flush().unwrap();
                w.write_all(&s[7 + split..]).unwrap();
            }
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "before [redacted:gh] after",
                "split at {split}"
            );
        }
        // One byte at a time.
        let mut out = Vec::new();
        {
            let mut w = RedactWriter::new(&mut out, r.clone());
            for b in b"xTOPSECRETVALUEyTOPSECRETVALUE" {
                w.write_all(&[*b]).unwrap();
            }
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "x[redacted:gh]y[redacted:gh]"
        );
    }

    #[test]
    fn without_grants_nothing_changes_or_waits() {
        let r = Redactor::new::<Lease>(&[]);
        let mut out = Vec::new();
        let mut w = RedactWriter::new(&mut out, r);
        w.write_all(b"abc").unwrap();
        assert!(w.pending.is_empty());
    }
}
