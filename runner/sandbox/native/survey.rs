//! The built-in base's deny paths, looked at while the stage waits for its
//! plan. Every built-in profile extends base, whose deny list a child can
//! only grow, so a task's deny list starts with these; expanding their
//! globs and checking which ones file permissions close already took the
//! stage 0.17 ms after the plan (uid 65534, without namespaces), time the
//! runner's preparation now covers.

use std::path::{Path, PathBuf};

use super::{ns, rlimit};

/// What the stage found for the base's deny paths before the plan.
#[derive(Debug, Default)]
pub struct Survey {
    /// The caller the permission checks were made for.
    uid: u32,
    /// Each deny path as resolved, with what it stands for at launch: its
    /// glob matches (or itself), less those closed by permissions.
    found: Vec<(PathBuf, Vec<PathBuf>)>,
}

impl Survey {
    /// Looks at the base's deny paths, `{home}` being `home` (those under
    /// it are skipped without one), for `uid`; asks `plan_in` every four
    /// paths and stops once it says the plan is in (the rest is looked at
    /// after, as if there were no survey).
    pub fn before_plan(home: Option<&Path>, uid: u32, plan_in: &mut dyn FnMut() -> bool) -> Self {
        let mut found = Vec::new();
        // Four at a time: one capability round trip for their permission
        // checks, and a look at the channel between.
        for chunk in crate::profile::BASE_DENY.chunks(4) {
            if plan_in() {
                break;
            }
            let mut expanded: Vec<(usize, PathBuf)> = Vec::new();
            for template in chunk {
                let path = match (template.strip_prefix("{home}"), home) {
                    (Some(rest), Some(h)) => h.join(rest.trim_start_matches('/')),
                    (Some(_), None) => continue,
                    (None, _) => PathBuf::from(template),
                };
                let at = found.len();
                for m in ns::expand_globs(std::slice::from_ref(&path)) {
                    expanded.push((at, m));
                }
                found.push((path, Vec::new()));
            }
            let paths: Vec<PathBuf> = expanded.iter().map(|(_, p)| p.clone()).collect();
            let closed = rlimit::closed_by_permissions(&paths, uid);
            for ((at, path), closed) in expanded.into_iter().zip(closed) {
                if !closed {
                    found[at].1.push(path);
                }
            }
        }
        Self { uid, found }
    }

    /// What `deny` stands for at launch: each path's glob matches (or
    /// itself) less those that file permissions close to `uid` already,
    /// as [`ns::expand_globs`] and [`rlimit::drop_closed_by_permissions`]
    /// find them; what was surveyed for the same caller is not looked at
    /// again. (Surveyed paths come first; the order means nothing.)
    pub fn hidden(&self, deny: &[PathBuf], uid: u32) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut rest = Vec::new();
        // Compared as bytes: `Path`'s `==` parses both into components,
        // for each of some 34 × 34 pairs. (A path spelled differently is
        // only looked at again.)
        let same = |(p, _): &&(PathBuf, Vec<PathBuf>), d: &PathBuf| p.as_os_str() == d.as_os_str();
        for d in deny {
            match self.found.iter().find(|f| same(f, d)) {
                Some((_, kept)) if uid == self.uid => out.extend(kept.iter().cloned()),
                _ => rest.push(d.clone()),
            }
        }
        let mut rest = ns::expand_globs(&rest);
        rlimit::drop_closed_by_permissions(&mut rest, uid);
        out.append(&mut rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
        v.sort();
        v
    }

    #[test]
    fn a_surveyed_deny_list_stands_for_what_an_unsurveyed_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path();
        for d in [".ssh", ".aws", ".config/gh"] {
            std::fs::create_dir_all(home.join(d)).unwrap();
        }
        std::fs::write(home.join(".netrc"), "machine x").unwrap();
        let uid = nix::unistd::getuid().as_raw();
        let deny: Vec<PathBuf> = crate::profile::BASE_DENY
            .iter()
            .map(|t| PathBuf::from(t.replace("{home}", &home.to_string_lossy())))
            .chain([home.join("extra-*"), home.join(".aws")])
            .collect();
        std::fs::write(home.join("extra-1"), "").unwrap();
        let mut want = ns::expand_globs(&deny);
        rlimit::drop_closed_by_permissions(&mut want, uid);
        let whole = Survey::before_plan(Some(home), uid, &mut || false);
        assert_eq!(whole.found.len(), crate::profile::BASE_DENY.len());
        assert!(
            whole
                .found
                .iter()
                .any(|(p, k)| *p == home.join(".ssh") && k.len() == 1)
        );
        assert_eq!(sorted(whole.hidden(&deny, uid)), sorted(want.clone()));
        // Cut short by the plan, or without a home, or for another caller:
        // the same answer, the rest looked at afresh.
        let mut polls = 0;
        let cut = Survey::before_plan(Some(home), uid, &mut || {
            polls += 1;
            polls > 2
        });
        assert_eq!(cut.found.len(), 8, "two chunks of four before the plan");
        assert_eq!(sorted(cut.hidden(&deny, uid)), sorted(want.clone()));
        let homeless = Survey::before_plan(None, uid, &mut || false);
        assert!(homeless.found.iter().all(|(p, _)| !p.starts_with(home)));
        assert_eq!(sorted(homeless.hidden(&deny, uid)), sorted(want.clone()));
        let other = Survey::before_plan(Some(home), uid + 1, &mut || false);
        assert_eq!(sorted(other.hidden(&deny, uid)), sorted(want));
    }
}
