//! Plain-words views of a profile: `explain` (effective permissions, widenings
//! marked) and `diff` (what one grants that the other does not).

use std::fmt::Write as _;

use super::model::{Delivery, Kind, Limits, NetMode, Profile, WorkspaceMode};
use super::spec::PROTECTED;

/// The effective permissions of `p`, in plain words; every widening is marked `[WIDENS]`.
pub fn explain(p: &Profile) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "profile {} ({}), digest {}",
        p.name,
        p.origin,
        &p.digest()[..16]
    );
    if p.chain.len() > 1 {
        let _ = writeln!(o, "extends: {}", p.chain.join(" -> "));
    }
    if !p.description.is_empty() {
        let _ = writeln!(o, "{}", p.description);
    }
    let _ = writeln!(
        o,
        "kind: {}",
        match p.kind {
            Kind::Explore => "explore: isolated, no credentials",
            Kind::SharedChange => "shared-change: may change shared systems; approval required",
        }
    );
    let _ = writeln!(
        o,
        "backend: {}",
        match p.backend {
            super::model::Backend::Native =>
                "native: commands run as processes (a .wasm command picks the WASM backend)",
            super::model::Backend::Wasm =>
                "wasm: every command is a WASM tool, run by taskbox-wasm inside this same sandbox",
        }
    );
    let _ = writeln!(
        o,
        "workspace: {}",
        match p.workspace {
            WorkspaceMode::ReadOnly => "read-only",
            WorkspaceMode::Overlay => "writable; writes are kept apart as a changeset",
            WorkspaceMode::Direct => "writes land in the real workspace",
        }
    );
    let list = |v: &[String]| {
        if v.is_empty() {
            "nothing".to_owned()
        } else {
            v.join(", ")
        }
    };
    let strs = |v: &[super::model::PathTemplate]| {
        v.iter().map(|t| t.as_str().to_owned()).collect::<Vec<_>>()
    };
    let _ = writeln!(o, "can read: {}", list(&strs(&p.fs.read)));
    let _ = writeln!(o, "can write: {}", list(&strs(&p.fs.write)));
    if !p.fs.scratch.is_empty() {
        let _ = writeln!(
            o,
            "scratch, its own and thrown away (the host's are neither read nor written; with namespaces only): {}",
            list(&strs(&p.fs.scratch))
        );
    }
    if !p.fs.cache.is_empty() {
        let _ = writeln!(
            o,
            "caches, the host's read through a layer of its own that takes every write and is thrown away (with namespaces; read-only without): {}",
            list(&strs(&p.fs.cache))
        );
    }
    let _ = writeln!(
        o,
        "its own, with namespaces: /tmp ({{tmp}}) and /dev/shm, in memory, holding at most the memory limit together with its scratch trees and cache layers, gone with the task (without namespaces {{tmp}} is a private directory and /dev/shm is refused)"
    );
    let _ = writeln!(o, "can never read or write: {}", list(&strs(&p.fs.deny)));
    // Landlock carves a deny path out of a writable tree (without
    // namespaces always, with them where it is not there to mask; never
    // in the overlay workspace, which is thrown away): its parents keep
    // their entries' rights, but take no new entries.
    let in_direct_workspace = |d: &super::model::PathTemplate| {
        p.workspace == WorkspaceMode::Direct && d.as_str().starts_with("{workspace}/")
    };
    let carved: Vec<String> =
        p.fs.deny
            .iter()
            .filter(|d| in_direct_workspace(d) || p.fs.write.iter().any(|w| w.covers(d) && w != *d))
            .map(|d| d.as_str().to_owned())
            .collect();
    if !carved.is_empty() {
        let _ = writeln!(
            o,
            "denied inside writable trees (the directories on the way to them take no new entries): {}",
            list(&carved)
        );
    }
    let protected: Vec<String> = PROTECTED
        .iter()
        .map(|(rel, _)| format!("{{workspace}}/{rel}"))
        .filter(|p2| !p.fs.unprotect.iter().any(|u| p2.starts_with(u.as_str())))
        .collect();
    let _ = writeln!(o, "read-only even in the workspace: {}", list(&protected));
    let _ = writeln!(
        o,
        "unix sockets: its own, and the host's only inside the trees above it can read or write (with namespaces: nothing else of the host is there; without them, socket(AF_UNIX) is refused)"
    );
    let _ = writeln!(
        o,
        "network: {}",
        match p.net.mode {
            NetMode::None => "none (no interface up, no inet sockets)".to_owned(),
            NetMode::Proxy => format!("through the proxy, to {} only", list(&p.net.allow)),
            NetMode::Host => "THE HOST NETWORK, UNFILTERED (dangerous)".to_owned(),
        }
    );
    if !p.net.deny.is_empty() {
        let _ = writeln!(o, "hosts always denied: {}", list(&p.net.deny));
    }
    if p.grants.is_empty() && !p.identity {
        let _ = writeln!(o, "credentials: none");
    }
    if p.identity {
        let _ = writeln!(
            o,
            "identity: each task gets a signed token in $TASKBOX_IDENTITY_TOKEN (task, agent, human, profile, hosts; expires with the task)"
        );
    }
    for g in &p.grants {
        let how = match &g.deliver {
            Delivery::Header => format!(
                "injected by the proxy into requests to {} (HTTPS through a per-task CA; the task sees a placeholder)",
                g.to.join(", ")
            ),
            Delivery::Env(v) => format!("in ${v}"),
            Delivery::File => "in a private file".to_owned(),
        };
        let src_kind = g.from.split(':').next().unwrap_or("");
        let ttl = g.ttl.map_or("no ttl".into(), |d| {
            humantime::format_duration(d).to_string()
        });
        let _ = writeln!(
            o,
            "credential {}: from {src_kind}, {how}, lease {ttl}",
            g.name
        );
    }
    let _ = writeln!(
        o,
        "environment: passes {}; sets {}",
        list(&p.env.pass),
        list(&p.env.set.keys().cloned().collect::<Vec<_>>())
    );
    let _ = writeln!(o, "limits: {}", limits_words(&p.limits));
    let _ = writeln!(
        o,
        "approval: {}",
        if p.approval_required {
            "required before every run"
        } else {
            "not required"
        }
    );
    let _ = writeln!(
        o,
        "requires: landlock ABI >= {}, namespaces {}, seccomp {}",
        p.require.landlock_abi,
        if p.require.namespaces {
            "required"
        } else {
            "optional"
        },
        if p.require.seccomp {
            "required"
        } else {
            "optional"
        },
    );
    for w in &p.widenings {
        let _ = writeln!(o, "[WIDENS] {}: {} (at {})", w.field, w.detail, w.at);
    }
    o
}

fn limits_words(l: &Limits) -> String {
    let Limits {
        wall,
        cpu,
        memory,
        processes,
        output,
        file_size,
        open_files,
        disk_free,
    } = l;
    let d = |v: &Option<std::time::Duration>| {
        v.map_or("unlimited".into(), |d| {
            humantime::format_duration(d).to_string()
        })
    };
    let s = |v: &Option<u64>| {
        v.map_or("unlimited".into(), |b| {
            bytesize::ByteSize(b).display().iec().to_string()
        })
    };
    let n = |v: &Option<u64>| v.map_or("unlimited".into(), |n| n.to_string());
    format!(
        "wall {}, cpu {}, memory {}, processes {}, output {}, file size {}, open files {}, disk left free {}",
        d(wall),
        d(cpu),
        s(memory),
        n(processes),
        s(output),
        s(file_size),
        n(open_files),
        match disk_free {
            None | Some(0) => "none".into(),
            b => s(b),
        }
    )
}

/// What `a` grants that `b` does not, and the reverse, one line each.
pub fn diff(a: &Profile, b: &Profile) -> String {
    let mut o = String::new();
    one_way(&mut o, a, b);
    one_way(&mut o, b, a);
    if o.is_empty() {
        o.push_str("the two profiles grant the same\n");
    }
    o
}

fn one_way(o: &mut String, a: &Profile, b: &Profile) {
    let pre = format!("{} grants, {} does not:", a.name, b.name);
    let mut line = |what: String| {
        let _ = writeln!(o, "{pre} {what}");
    };
    for r in &a.fs.read {
        if !b.fs.read.iter().chain(&b.fs.write).any(|x| x.covers(r)) {
            line(format!("read {}", r.as_str()));
        }
    }
    for w in &a.fs.write {
        if !b.fs.write.iter().any(|x| x.covers(w)) {
            line(format!("write {}", w.as_str()));
        }
    }
    for d in &b.fs.deny {
        if !a.fs.deny.contains(d) {
            line(format!("access to {} (denied by {})", d.as_str(), b.name));
        }
    }
    for u in &a.fs.unprotect {
        if !b.fs.unprotect.contains(u) {
            line(format!("writing protected {}", u.as_str()));
        }
    }
    for s in &a.fs.scratch {
        if !b.fs.scratch.contains(s) {
            line(format!("a scratch tree of its own at {}", s.as_str()));
        }
    }
    for c in &a.fs.cache {
        if !b.fs.cache.contains(c) {
            line(format!(
                "the host's {} read through a layer of its own",
                c.as_str()
            ));
        }
    }
    if a.workspace > b.workspace {
        line(format!("workspace {:?} (vs {:?})", a.workspace, b.workspace).to_lowercase());
    }
    if a.net.mode > b.net.mode {
        line(format!("network {:?} (vs {:?})", a.net.mode, b.net.mode).to_lowercase());
    }
    for h in &a.net.allow {
        if !b.net.allow.contains(h) {
            line(format!("host {h}"));
        }
    }
    for g in &a.grants {
        if !b.grants.iter().any(|x| x.name == g.name) {
            line(format!("credential {}", g.name));
        }
    }
    for v in &a.env.pass {
        if !b.env.pass.contains(v) {
            line(format!("env ${v}"));
        }
    }
    let la = &a.limits;
    let lb = &b.limits;
    let more = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
        _ => false,
    };
    let ms = |d: Option<std::time::Duration>| {
        d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    for (name, x, y) in [
        ("wall", ms(la.wall), ms(lb.wall)),
        ("cpu", ms(la.cpu), ms(lb.cpu)),
        ("memory", la.memory, lb.memory),
        ("processes", la.processes, lb.processes),
        ("output", la.output, lb.output),
        ("file size", la.file_size, lb.file_size),
        ("open files", la.open_files, lb.open_files),
    ] {
        if more(x, y) {
            line(format!("a higher {name} limit"));
        }
    }
    // A floor: leaving less free is the wider grant (no floor, or 0, least).
    let floor = |v: Option<u64>| v.unwrap_or(0);
    if floor(la.disk_free) < floor(lb.disk_free) {
        line("a lower floor of free disk space".into());
    }
    if !a.approval_required && b.approval_required {
        line("running without approval".into());
    }
    if a.require.landlock_abi < b.require.landlock_abi
        || (!a.require.namespaces && b.require.namespaces)
        || (!a.require.seccomp && b.require.seccomp)
    {
        line("running under weaker enforcement".into());
    }
}
