//! Unit tests: parsing, validation errors (file, line, column, field), merging.

use super::*;

fn src(name: &str, text: &str) -> Source {
    Source {
        name: name.into(),
        origin: Origin::File(format!("/p/{name}.toml").into()),
        text: text.into(),
        untrusted: false,
    }
}

fn base() -> Source {
    let (n, t) = BUILTINS[0];
    Source {
        name: n.into(),
        origin: Origin::Builtin(n.into()),
        text: t.into(),
        untrusted: false,
    }
}

/// Workspace `/w`, home `/h`, tmp `/tmp`.
fn vars() -> PathVars {
    PathVars {
        workspace: "/w".into(),
        home: "/h".into(),
        tmp: "/tmp".into(),
    }
}

fn err(text: &str) -> String {
    Profile::from_layers(&[base(), src("bad", &format!("extends = \"base\"\n{text}"))])
        .unwrap_err()
        .to_string()
}

#[test]
fn every_builtin_loads() {
    let cat = Catalog::new(None);
    for (name, _) in BUILTINS {
        let p = cat
            .load(name, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.name, *name);
        assert_eq!(p.digest().len(), 64);
    }
}

#[test]
fn every_file_in_sandbox_profiles_is_embedded() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox-profiles");
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e
            .unwrap()
            .path()
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            BUILTINS.iter().any(|(n, _)| *n == name),
            "{name}.toml is not embedded"
        );
    }
}

#[test]
fn unknown_key_names_file_line_column_field() {
    let e = err("[limits]\nwall = \"1m\"\nbogus = 3\n");
    assert!(
        e.starts_with("/p/bad.toml:4:1: field `limits.bogus`"),
        "{e}"
    );
    assert!(e.contains("unknown field `bogus`"), "{e}");
}

#[test]
fn wrong_type_is_located() {
    let e = err("[limits]\nprocesses = \"many\"\n");
    assert!(
        e.starts_with("/p/bad.toml:3:13: field `limits.processes`"),
        "{e}"
    );
}

#[test]
fn bad_duration_and_size_are_located_with_hints() {
    let e = err("[limits]\nwall = \"forever\"\n");
    assert!(
        e.starts_with("/p/bad.toml:3:8: field `limits.wall`: `forever` is not a duration"),
        "{e}"
    );
    let e = err("[limits]\nmemory = \"lots\"\n");
    assert!(
        e.starts_with("/p/bad.toml:3:10: field `limits.memory`: `lots` is not a size"),
        "{e}"
    );
    let e = err("[limits]\nwall = \"0s\"\n");
    assert!(e.contains("zero"), "{e}");
}

#[test]
fn relative_and_tilde_paths_are_refused() {
    let e = err("[filesystem]\nread = [\"src\"]\n");
    assert!(
        e.starts_with("/p/bad.toml:3:9: field `filesystem.read`: `src` is a relative path"),
        "{e}"
    );
    let e = err("[filesystem]\nwrite = [\"~/x\"]\n");
    assert!(e.contains("Hint: write `{home}`"), "{e}");
    let e = err("[filesystem]\nread = [\"{nope}/x\"]\n");
    assert!(e.contains("unknown variable `{nope}`"), "{e}");
    let e = err("[filesystem]\nread = [\"/a/../etc\"]\n");
    assert!(e.contains("contains `..`"), "{e}");
}

#[test]
fn a_deny_that_cannot_be_enforced_is_refused() {
    let e = err("[filesystem]\ndeny = [\"/usr\"]\n");
    assert!(
        e.contains("field `filesystem.deny`") && e.contains("contains the granted path `/usr`"),
        "{e}"
    );
    let e = err("[filesystem]\ndeny = [\"{workspace}\"]\n");
    assert!(e.contains("cannot be denied"), "{e}");
    // A grant under a parent's deny, absorbed by the parent's wider grant
    // (`/etc`), named at its own line and column.
    let e = err("[filesystem]\nread = [\"/etc/shadow\", \"/etc/letsencrypt/live/x\"]\n");
    assert!(
        e.contains("bad.toml:3:9: field `filesystem.read`")
            && e.contains("`/etc/shadow` lies under the deny `/etc/shadow`"),
        "{e}"
    );
    // The same in one layer, and for a write grant.
    let e = err("[filesystem]\nwrite = [\"/srv/app/keys\"]\ndeny = [\"/srv/app\"]\n");
    assert!(
        e.contains("field `filesystem.write`")
            && e.contains("`/srv/app/keys` lies under the deny `/srv/app`"),
        "{e}"
    );
}

#[test]
fn empty_sections_are_refused() {
    for s in [
        "limits",
        "filesystem",
        "network",
        "env",
        "require",
        "approval",
        "workspace",
        "credentials",
    ] {
        let e = err(&format!("[{s}]\n"));
        assert!(
            e.contains(&format!("field `{s}`")) && e.contains("is empty"),
            "{s}: {e}"
        );
        assert!(e.starts_with("/p/bad.toml:2:1"), "{s}: {e}");
    }
}

#[test]
fn grants_only_in_shared_change() {
    let e = err("[credentials]\ngrant = [{ name = \"gh\", from = \"env:GH\", as = \"env:GH\" }]\n");
    assert!(
        e.contains("credentials.grant") && e.contains("shared-change"),
        "{e}"
    );
}

#[test]
fn lists_grow_scalars_override_deny_accumulates() {
    let child = src(
        "child",
        "extends = \"base\"\n[filesystem]\nread = [\"/srv\"]\ndeny = [\"/srv/secret\"]\n[limits]\nwall = \"5m\"\n",
    );
    let p = Profile::from_layers(&[base(), child]).unwrap();
    assert!(
        p.fs.read.iter().any(|r| r.as_str() == "/usr")
            && p.fs.read.iter().any(|r| r.as_str() == "/srv")
    );
    assert!(
        p.fs.deny.iter().any(|d| d.as_str() == "{home}/.ssh"),
        "parent deny kept"
    );
    assert!(p.fs.deny.iter().any(|d| d.as_str() == "/srv/secret"));
    assert_eq!(p.limits.wall, Some(std::time::Duration::from_secs(300)));
    assert_eq!(p.chain, vec!["base", "child"]);
}

#[test]
fn widenings_are_marked_with_their_location() {
    let child = src(
        "wide",
        "extends = \"base\"\n[network]\nmode = \"host\"\n[limits]\nwall = \"10h\"\n[filesystem]\nwrite = [\"/srv\"]\n",
    );
    let p = Profile::from_layers(&[base(), child]).unwrap();
    let fields: Vec<&str> = p.widenings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["filesystem.write", "network.mode", "limits.wall"]
    );
    assert!(
        p.widenings[1].at.starts_with("/p/wide.toml:3:"),
        "{:?}",
        p.widenings
    );
    let text = explain(&p);
    assert!(
        text.contains("[WIDENS] network.mode: none -> host"),
        "{text}"
    );
    assert!(text.contains("THE HOST NETWORK"), "{text}");
}

#[test]
fn narrowing_is_not_a_widening() {
    let child = src(
        "narrow",
        "extends = \"base\"\n[limits]\nwall = \"1m\"\n[filesystem]\ndeny = [\"/etc/shadow\"]\n",
    );
    assert!(
        Profile::from_layers(&[base(), child])
            .unwrap()
            .widenings
            .is_empty()
    );
}

#[test]
fn the_disk_floor_widens_when_lowered_and_narrows_when_raised() {
    // A floor runs the other way from the other limits: less left free is
    // the wider grant.
    let lower = src("low", "extends = \"base\"\n[limits]\ndisk_free = \"0\"\n");
    let p = Profile::from_layers(&[base(), lower]).unwrap();
    let fields: Vec<&str> = p.widenings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["limits.disk_free"]);
    assert_eq!(p.limits.disk_free, Some(0));
    assert!(
        explain(&p).contains("disk left free none"),
        "{}",
        explain(&p)
    );
    let higher = src(
        "high",
        "extends = \"base\"\n[limits]\ndisk_free = \"8GiB\"\n",
    );
    let q = Profile::from_layers(&[base(), higher]).unwrap();
    assert!(q.widenings.is_empty(), "{:?}", q.widenings);
    assert!(
        explain(&q).contains("disk left free 8.0 GiB"),
        "{}",
        explain(&q)
    );
    let d = crate::profile::diff(&p, &q);
    assert!(d.contains("a lower floor of free disk space"), "{d}");
    // A zero cap, unlike a zero floor, is refused.
    let zero = src("zero", "extends = \"base\"\n[limits]\nmemory = \"0\"\n");
    let e = Profile::from_layers(&[base(), zero])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("limits.memory") && e.contains("zero size limit"),
        "{e}"
    );
    // The spec a backend gets has no floor for 0, and the floor otherwise.
    assert_eq!(p.resolve(&vars(), &[]).limits.disk_free, None);
    assert_eq!(q.resolve(&vars(), &[]).limits.disk_free, Some(8 << 30));
}

#[test]
fn an_untrusted_profile_may_only_narrow() {
    let mut child = src(
        "ws",
        "extends = \"base\"\n[filesystem]\nwrite = [\"/srv\"]\n",
    );
    child.untrusted = true;
    let e = Profile::from_layers(&[base(), child])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("may only narrow") && e.contains("filesystem.write"),
        "{e}"
    );
    let mut ok = src("ws", "extends = \"base\"\n[limits]\nwall = \"1m\"\n");
    ok.untrusted = true;
    Profile::from_layers(&[base(), ok]).unwrap();
}

#[test]
fn diff_shows_what_each_grants() {
    let cat = Catalog::new(None);
    let d = diff(
        &cat.load("readonly", None).unwrap(),
        &cat.load("explore", None).unwrap(),
    );
    assert!(
        d.contains("explore grants, readonly does not: a scratch tree of its own at {home}/.cache"),
        "{d}"
    );
    assert!(
        d.contains("explore grants, readonly does not: workspace overlay (vs readonly)"),
        "{d}"
    );
    assert!(!d.contains("readonly grants, explore does not"), "{d}");
}

#[test]
fn resolve_substitutes_and_scrubs_env() {
    let p = Catalog::new(None).load("explore", None).unwrap();
    let vars = vars();
    let s = p.resolve(
        &vars,
        &[
            ("PATH".into(), "/bin".into()),
            ("AWS_SECRET".into(), "x".into()),
        ],
    );
    assert!(s.fs.deny.contains(&"/h/.ssh".into()));
    assert!(s.fs.write.contains(&"/w".into()) && !s.fs.write.contains(&"/h/.cache".into()));
    assert_eq!(s.fs.scratch, vec![std::path::PathBuf::from("/h/.cache")]);
    assert!(s.fs.protect.contains(&"/w/.git/hooks".into()));
    assert_eq!(s.env.vars, vec![("PATH".to_owned(), "/bin".to_owned())]);
}

#[test]
fn a_scratch_tree_granted_as_the_hosts_is_the_hosts_and_that_widens() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("c.toml");
    std::fs::write(
        &f,
        "extends = \"explore\"\n[filesystem]\nwrite = [\"{home}/.cache\"]\nscratch = [\"{home}/.local/share/x\"]\n",
    )
    .unwrap();
    let p = Catalog::new(None).load(f.to_str().unwrap(), None).unwrap();
    let vars = vars();
    let s = p.resolve(&vars, &[]);
    assert!(s.fs.write.contains(&"/h/.cache".into()));
    assert_eq!(
        s.fs.scratch,
        vec![std::path::PathBuf::from("/h/.local/share/x")]
    );
    let e = explain(&p);
    assert!(e.contains("[WIDENS]") && e.contains("{home}/.cache"), "{e}");
    // A scratch tree under a deny would give nothing either.
    let e = err("[filesystem]\nscratch = [\"{home}/.ssh/x\"]\n");
    assert!(
        e.contains("filesystem.scratch") && e.contains("lies under the deny"),
        "{e}"
    );
}

#[test]
fn a_cache_tree_widens_only_what_was_not_readable_and_the_hosts_write_wins() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("c.toml");
    std::fs::write(
        &f,
        "extends = \"explore\"\n[filesystem]\ncache = [\"{home}/.cargo/registry\", \"{home}/.npm\", \"{home}/.m2\"]\nwrite = [\"{home}/.m2\"]\n",
    )
    .unwrap();
    let p = Catalog::new(None).load(f.to_str().unwrap(), None).unwrap();
    let cache: Vec<_> = p
        .widenings
        .iter()
        .filter(|w| w.field == "filesystem.cache")
        .map(|w| w.detail.as_str())
        .collect();
    // ~/.cargo is readable in base; ~/.npm and ~/.m2 are not.
    assert_eq!(cache, ["{home}/.npm", "{home}/.m2"], "{:?}", p.widenings);
    let vars = vars();
    let s = p.resolve(&vars, &[]);
    // A tree also granted as the host's is the host's.
    assert_eq!(
        s.fs.cache,
        vec![
            std::path::PathBuf::from("/h/.cargo/registry"),
            std::path::PathBuf::from("/h/.npm")
        ]
    );
    assert!(s.fs.write.contains(&"/h/.m2".into()));
    assert!(explain(&p).contains("caches, the host's read through a layer"));
    let e = err("[filesystem]\ncache = [\"{home}/.aws/cli\"]\n");
    assert!(
        e.contains("filesystem.cache") && e.contains("lies under the deny"),
        "{e}"
    );
    for (field, path) in [
        ("cache", "/proc/sys"),
        ("scratch", "/dev"),
        ("cache", "/sys/fs"),
        ("scratch", "/"),
    ] {
        let e = err(&format!("[filesystem]\n{field} = [\"{path}\"]\n"));
        assert!(
            e.contains(&format!("filesystem.{field}"))
                && e.contains("cannot be a tree of the task's own"),
            "{path}: {e}"
        );
    }
    // A name that merely starts like one is fine.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("ok.toml");
    std::fs::write(
        &f,
        "extends = \"explore\"\n[filesystem]\ncache = [\"/devcache\"]\n",
    )
    .unwrap();
    Catalog::new(None).load(f.to_str().unwrap(), None).unwrap();
}

#[test]
fn build_reads_the_package_caches_through_a_layer_and_writes_none_of_the_hosts() {
    let p = Catalog::new(None).load("build", None).unwrap();
    let vars = vars();
    let s = p.resolve(&vars, &[]);
    assert!(
        s.fs.cache.contains(&"/h/.cargo/registry".into()),
        "{:?}",
        s.fs
    );
    assert!(
        !s.fs.write.iter().any(|w| w.starts_with("/h")),
        "build writes the host's {:?}",
        s.fs.write
    );
}

#[test]
fn only_the_profiles_own_tmp_entries_are_marked_as_tmp() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("t.toml");
    std::fs::write(
        &f,
        "extends = \"readonly\"\n[filesystem]\nread = [\"/tmp/shared-cache\", \"/tmpfoo\"]\n",
    )
    .unwrap();
    let p = Catalog::new(None).load(f.to_str().unwrap(), None).unwrap();
    let vars = PathVars {
        workspace: "/tmp/checkout".into(),
        home: "/tmp/home".into(),
        tmp: "/tmp".into(),
    };
    let s = p.resolve(&vars, &[]);
    let mut tmp = s.fs.tmp.clone();
    tmp.sort();
    tmp.dedup();
    let want: Vec<std::path::PathBuf> = vec!["/tmp".into(), "/tmp/shared-cache".into()];
    assert_eq!(tmp, want);
    // The workspace and {home} paths lie in /tmp here but are not the task's /tmp.
    assert!(s.fs.read.contains(&"/tmp/checkout".into()));
    assert!(s.fs.read.contains(&"/tmp/home/.cargo".into()));
}

#[test]
fn extends_cycles_and_unknown_parents_are_errors() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("a.toml"), "extends = \"b\"\n").unwrap();
    std::fs::write(d.path().join("b.toml"), "extends = \"a\"\n").unwrap();
    std::fs::write(d.path().join("c.toml"), "extends = \"nope\"\n").unwrap();
    let cat = Catalog::new(Some(d.path().to_path_buf()));
    assert!(
        cat.load("a", None)
            .unwrap_err()
            .to_string()
            .contains("extends itself")
    );
    let e = cat.load("c", None).unwrap_err().to_string();
    assert!(
        e.contains("c.toml:1:11: field `extends`: no profile named `nope`"),
        "{e}"
    );
}

#[test]
fn schema_names_every_section() {
    let s = schema().to_string();
    for k in [
        "filesystem",
        "network",
        "limits",
        "require",
        "landlock_abi",
        "open_files",
    ] {
        assert!(s.contains(k), "{k}");
    }
}

#[test]
fn explain_names_the_deny_paths_carved_out_of_writable_trees() {
    let line = |p: &Profile| {
        explain(p)
            .lines()
            .find(|l| l.starts_with("denied inside writable trees"))
            .map(str::to_owned)
    };
    let home = src(
        "home",
        "extends = \"base\"\n[filesystem]\nwrite = [\"{home}\"]\n",
    );
    let p = Profile::from_layers(&[base(), home]).unwrap();
    let got = line(&p).unwrap_or_default();
    assert!(got.contains("{home}/.ssh"), "{got}");
    assert!(!got.contains("/etc/shadow"), "{got}");
    // Nothing of base's lies in a tree it writes.
    assert_eq!(line(&Profile::from_layers(&[base()]).unwrap()), None);
}

#[test]
fn the_digest_covers_each_layers_name_and_text_in_order() {
    // Approvals and task records bind to this value: its input must not
    // change shape (name, NUL, text, NUL per layer, root first).
    let leaf = src("leaf", "extends = \"base\"\ndescription = \"x\"\n");
    let p = Profile::from_layers(&[base(), leaf.clone()]).unwrap();
    let mut input = Vec::new();
    for s in [&base(), &leaf] {
        input.extend_from_slice(s.name.as_bytes());
        input.push(0);
        input.extend_from_slice(s.text.as_bytes());
        input.push(0);
    }
    let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&input));
    assert_eq!(p.digest(), want);
    let other = src("leaf", "extends = \"base\"\ndescription = \"y\"\n");
    let q = Profile::from_layers(&[base(), other]).unwrap();
    assert_ne!(q.digest(), p.digest());
    assert_ne!(q, p);
}

#[test]
fn base_deny_is_the_deny_list_of_base_toml() {
    let p = Catalog::new(None).load("base", None).unwrap();
    let written: Vec<&str> = p.fs.deny.iter().map(|t| t.as_str()).collect();
    assert_eq!(written, BASE_DENY);
}
