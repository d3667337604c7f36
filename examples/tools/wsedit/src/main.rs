//! wsedit: applies a JSON merge patch (RFC 7386) to a JSON file in place,
//! for taskbox's WASM backend. `wsedit FILE PATCH` where PATCH is JSON text
//! (or `@path` to read it from a file). The result is written to a sibling
//! temporary file and renamed over FILE, so a failed edit leaves it intact.

use std::process::ExitCode;

use serde_json::Value;

/// RFC 7386: objects merge key by key, `null` removes a key, anything else replaces.
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(&k);
                    } else {
                        merge(t.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

fn run(file: &str, patch: &str) -> Result<(), String> {
    let patch_text = match patch.strip_prefix('@') {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?,
        None => patch.to_owned(),
    };
    let patch: Value =
        serde_json::from_str(&patch_text).map_err(|e| format!("the patch is not JSON: {e}"))?;
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let mut doc: Value =
        serde_json::from_str(&text).map_err(|e| format!("{file} is not JSON: {e}"))?;
    merge(&mut doc, patch);
    let mut out = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    out.push('\n');
    let tmp = format!("{file}.wsedit-tmp");
    std::fs::write(&tmp, out).map_err(|e| format!("{tmp}: {e}"))?;
    std::fs::rename(&tmp, file).map_err(|e| format!("{file}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, patch] = args.as_slice() else {
        eprintln!("usage: wsedit FILE PATCH_JSON|@PATCH_FILE");
        return ExitCode::from(2);
    };
    match run(file, patch) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsedit: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7386_examples() {
        let mut t: Value = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut t, serde_json::json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, serde_json::json!({"a": "z", "c": {"d": "e"}}));
    }
}
