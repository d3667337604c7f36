//! wsprobe: a WASM guest that tries one thing and reports what happened, for
//! taskbox's tests of the WASM backend (each attempt is checked from outside
//! by the test). `wsprobe read PATH | write PATH TEXT | symlink TARGET LINK |
//! hardlink-write PATH TEXT | env NAME | alloc MIB | spin | flood BYTES |
//! list DIR`. Prints `ok ...` or `refused ...`; exits 0 or 1.

use std::io::Write as _;
use std::process::ExitCode;

fn report(r: Result<String, String>) -> ExitCode {
    match r {
        Ok(m) => {
            println!("ok {m}");
            ExitCode::SUCCESS
        }
        Err(m) => {
            println!("refused {m}");
            ExitCode::from(1)
        }
    }
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
unsafe extern "C" {
    /// WASI preview 1 `path_symlink` (std's wrapper is unstable).
    fn path_symlink(old: *const u8, old_len: usize, fd: u32, new: *const u8, new_len: usize) -> u16;
}

/// Creates `link` (in the working directory) pointing at `target`.
fn symlink(target: &str, link: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let dir = std::fs::File::open(".")?;
    // SAFETY: both pointers and lengths describe live string slices; the
    // descriptor is an open directory of this process.
    let rc = unsafe {
        path_symlink(target.as_ptr(), target.len(), dir.as_raw_fd() as u32, link.as_ptr(), link.len())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("errno {rc}")))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let e = |e: std::io::Error| e.to_string();
    report(match a.as_slice() {
        ["read", p] => std::fs::read_to_string(p).map(|s| format!("read {p}: {}", s.trim())).map_err(e),
        ["write", p, t] => std::fs::write(p, t).map(|()| format!("wrote {p}")).map_err(e),
        ["symlink", target, link] => symlink(target, link)
            .map(|()| format!("linked {link} -> {target}"))
            .map_err(e),
        ["env", name] => std::env::var(name).map(|v| format!("{name}={v}")).map_err(|x| x.to_string()),
        ["list", d] => std::fs::read_dir(d)
            .map(|rd| {
                let mut v: Vec<String> = rd.flatten().map(|x| x.file_name().to_string_lossy().into_owned()).collect();
                v.sort();
                format!("{d}: {}", v.join(" "))
            })
            .map_err(e),
        ["alloc", mib] => {
            let n: usize = mib.parse().unwrap_or(0);
            let mut keep: Vec<Vec<u8>> = Vec::new();
            for i in 0..n {
                let mut v = vec![0u8; 1 << 20];
                v[0] = i as u8;
                keep.push(v);
            }
            Ok(format!("allocated {} MiB", keep.len()))
        }
        ["spin"] => {
            let mut x: u64 = 0;
            loop {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                if x == 42 {
                    break Ok("never".into());
                }
            }
        }
        ["flood", bytes] => {
            let n: usize = bytes.parse().unwrap_or(0);
            let chunk = vec![b'x'; 65536];
            let mut out = std::io::stdout().lock();
            let mut sent = 0;
            while sent < n {
                if out.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            Ok(format!("flooded {sent}"))
        }
        _ => Err("usage: read|write|symlink|env|list|alloc|spin|flood".into()),
    })
}
