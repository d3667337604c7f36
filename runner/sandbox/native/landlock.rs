//! Landlock: filesystem, TCP and scope rules at the highest ABI the kernel has.
//!
//! Landlock grants are inherited down a tree and cannot be carved out, so a
//! deny path inside a granted tree is enforced by granting the tree's other
//! entries one by one (`carve`), never the tree itself.

use std::path::{Path, PathBuf};

use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};

use landlock::{ABI, Access, AccessFs, AccessNet, BitFlags, Ruleset, RulesetAttr, Scope};

use super::NativeError;
use crate::sandbox::Level;

/// Highest Landlock ABI of the running kernel (0: none).
pub fn kernel_abi() -> u8 {
    // SAFETY: landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    // only returns the ABI version; no pointer is dereferenced.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    u8::try_from(v).unwrap_or(0)
}

/// What to grant on one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// List a directory's entries only (an ancestor of a hole: any wider
    /// right would be inherited by the hole).
    List,
    /// Read (and execute).
    Read,
    /// Read and write.
    Write,
}

/// One path that must not inherit its ancestors' grant.
#[derive(Debug, Clone)]
pub struct Hole {
    /// The path.
    pub path: PathBuf,
    /// What it keeps: `None` for nothing (deny), `Some(Read)` for protected.
    pub keep: Option<Grant>,
}

/// What a rule's path is, when a directory listing said so: a rule for
/// a non-directory may only carry file rights, and knowing it from the
/// listing's `d_type` saves an `fstat` per rule (a carved `/etc` has some
/// 140).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    /// A symlink (the rule goes to its target) or a listing without types.
    Unknown,
}

impl Kind {
    fn of(t: Option<std::fs::FileType>) -> Self {
        match t {
            Some(t) if t.is_dir() => Self::Dir,
            Some(t) if t.is_symlink() => Self::Unknown,
            Some(_) => Self::File,
            None => Self::Unknown,
        }
    }
}

/// One Landlock rule: a path and its grant, with what a carve's listing
/// knew of it (its kind, and its descriptor if the listing was opened
/// ahead, see [`preopen`]).
#[derive(Debug)]
pub struct Rule {
    /// The path.
    pub path: PathBuf,
    /// What it is granted.
    pub grant: Grant,
    kind: Kind,
    fd: Option<OwnedFd>,
    /// An entry of a carved directory, not a root of the profile: its
    /// last component is never followed when its type was a directory or
    /// a file (a symlink swapped in since gets a rule on itself, which
    /// grants nothing).
    entry: bool,
}

impl Rule {
    fn new(path: PathBuf, grant: Grant) -> Self {
        Self {
            path,
            grant,
            kind: Kind::Unknown,
            fd: None,
            entry: false,
        }
    }

    /// An entry of a carved directory; `None` if it must get no rule: a
    /// symlink (or an entry of unknown type) is opened, following it, and
    /// dropped when what it resolves to is a hole, lies in one, or holds
    /// one. Landlock grants the inode a descriptor reaches, so a rule for
    /// `link -> secret` or `up -> ..` would grant the hole itself; without
    /// a rule the link's target is reachable only through its own grants.
    fn entry(
        path: PathBuf,
        grant: Grant,
        kind: Kind,
        fd: Option<OwnedFd>,
        holes: &Holes,
    ) -> Option<Self> {
        let fd = match kind {
            Kind::Unknown => {
                let fd = fd.or_else(|| open_path(&path, false))?;
                let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
                let conflict = holes.list.iter().any(|h| {
                    bytes(&h.path) == bytes(&real)
                        || strictly_below(&real, &h.path)
                        || strictly_below(&h.path, &real)
                });
                if conflict {
                    return None;
                }
                Some(fd)
            }
            Kind::Dir | Kind::File => fd,
        };
        // Another hard link to a denied file: no rule, or it would grant
        // the file under every name.
        let fd = match (kind, holes.linked.is_empty()) {
            (Kind::Dir, _) | (_, true) => fd,
            _ => {
                let fd = fd.or_else(|| open_path(&path, true))?;
                let st = nix::sys::stat::fstat(&fd).ok()?;
                #[allow(
                    clippy::useless_conversion,
                    reason = "dev_t and ino_t differ by target"
                )]
                let id = (u64::from(st.st_dev), u64::from(st.st_ino));
                if holes.linked.contains(&id) {
                    return None;
                }
                Some(fd)
            }
        };
        Some(Self {
            path,
            grant,
            kind,
            fd,
            entry: true,
        })
    }
}

/// A directory's entries, listed and each opened `O_PATH` ahead of need:
/// in Landlock-only mode the stage waits for the plan with nothing to do,
/// and a carved directory costs a rule (an open) per entry, so the
/// directories it will most likely carve are opened while it waits.
/// [`carve`] takes the listing instead of reading the directory again;
/// an entry made in between is not granted (the carve fails closed).
#[derive(Debug)]
pub struct Listing {
    dir: PathBuf,
    entries: Vec<(std::ffi::OsString, Kind, Option<OwnedFd>)>,
    /// The listing's remainder, when it stopped early: the carve reads on.
    rest: Option<std::fs::ReadDir>,
}

/// The directories opened ahead in Landlock-only mode: the built-in base
/// denies the host's secrets directly inside `/etc` (`/etc/shadow`), so
/// every profile that extends it carves `/etc` there, for uid 0 (see
/// [`worth_opening_ahead`]).
pub const AHEAD: &[&str] = &["/etc"];

/// Whether a caller of this uid is likely to carve [`AHEAD`]: file
/// permissions close `/etc/shadow` and its kind to everyone but root, so
/// for other callers they are no holes (`rlimit::drop_closed_by_permissions`),
/// and the absent ones are none either (see `Writable`). Wrong either way
/// costs time only: the carve reads what was not opened ahead, and what
/// was is closed unused.
pub fn worth_opening_ahead(uid: u32) -> bool {
    uid == 0
}

/// At most this many entries are opened ahead per directory (the rest of
/// the listing is left to the carve).
pub const AHEAD_MAX: usize = 1024;

/// Lists `dir` and opens each entry, until `stop` says so (checked every
/// few entries: the plan is in) or `max` are open; the rest of the
/// listing is left for the carve. `None` if `dir` cannot be read.
pub fn preopen(dir: &Path, max: usize, mut stop: impl FnMut() -> bool) -> Option<Listing> {
    use nix::fcntl::{OFlag, openat};
    let at = open_path(dir, false)?;
    let mut listing = std::fs::read_dir(dir).ok()?;
    let mut entries = Vec::new();
    let mut rest = None;
    loop {
        if entries.len() == max || (entries.len() % 16 == 15 && stop()) {
            rest = Some(listing);
            break;
        }
        let Some(e) = listing.next() else { break };
        let Ok(e) = e else { continue };
        let name = e.file_name();
        // Relative to the directory: one component to walk, not the path.
        // An entry listed as a directory or a file is not followed should
        // it have become a symlink since (see `Rule::entry`).
        let kind = Kind::of(e.file_type().ok());
        let follow = if kind == Kind::Unknown {
            OFlag::empty()
        } else {
            OFlag::O_NOFOLLOW
        };
        let fd = openat(
            &at,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_CLOEXEC | follow,
            nix::sys::stat::Mode::empty(),
        )
        .ok();
        entries.push((name, kind, fd));
    }
    Some(Listing {
        dir: normal(dir),
        entries,
        rest,
    })
}

/// The holes a carve works around: each under every spelling it has, and
/// the files among them that have other hard links (by device and inode).
struct Holes {
    list: Vec<Hole>,
    linked: Vec<(u64, u64)>,
}

/// Rules after carving holes.
///
/// Paths are compared as bytes after one normalisation each (`Path`'s own
/// comparisons parse components on every call, and carving compares every
/// root and entry with every hole: that was most of its cost). A directory
/// with a [`Listing`] among `ahead` is carved from it, not read again.
///
/// Each hole counts under its real path too (a deny path spelled through a
/// symlinked parent): no entry may resolve to it under either.
pub fn carve(
    roots: &[(PathBuf, Grant)],
    holes: &[Hole],
    ahead: &mut Vec<Listing>,
    existing: Existing,
) -> Vec<Rule> {
    // One `lstat` per hole; a hole that exists is resolved (most do not:
    // the built-in list names stores a caller may not have).
    let mut spelled: Vec<Hole> = Vec::new();
    let mut linked = Vec::new();
    let mut writable = Writable::of(roots);
    let holes = if existing == Existing::Masked && writable.roots.is_empty() {
        &[]
    } else {
        holes
    };
    for h in holes {
        let path = normal(&h.path);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if not_there(&e) => {
                if let Some(made) = writable.could_make(&path) {
                    if made != path {
                        spelled.push(Hole {
                            path: made,
                            keep: h.keep,
                        });
                    }
                    spelled.push(Hole { path, keep: h.keep });
                }
                continue;
            }
            Err(_) => {
                spelled.push(Hole { path, keep: h.keep });
                continue;
            }
        };
        if existing == Existing::Masked {
            continue;
        }
        let real = super::ns::real_path(&path).filter(|r| *r != path);
        // A denied file with other hard links: an entry that is one of
        // them would grant the file itself (Landlock rules are on inodes).
        // Files have one link as a rule, so this costs nothing then.
        let meta = if meta.file_type().is_symlink() {
            real.as_deref().and_then(|r| std::fs::metadata(r).ok())
        } else {
            Some(meta)
        };
        if let Some(m) = meta.filter(|m| m.is_file()) {
            use std::os::unix::fs::MetadataExt as _;
            if m.nlink() > 1 {
                linked.push((m.dev(), m.ino()));
            }
        }
        spelled.push(Hole { path, keep: h.keep });
        if let Some(real) = real {
            spelled.push(Hole {
                path: real,
                keep: h.keep,
            });
        }
    }
    let holes = Holes {
        list: spelled,
        linked,
    };
    let mut out = Vec::new();
    for (root, grant) in roots {
        carve_one(Rule::new(normal(root), *grant), &holes, ahead, &mut out, 0);
    }
    out
}

/// What [`carve`] does with a hole that exists at launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Carves it out (without namespaces: Landlock alone holds it).
    Carved,
    /// Leaves it to the mount that masks it (with namespaces); only a hole
    /// not there, that the task could make, is carved.
    Masked,
}

/// Whether a failed `lstat` says the path is not there (rather than out
/// of reach, which keeps it a hole).
fn not_there(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Where the task may make entries: the write-granted roots, as spelled and
/// resolved. A deny path that does not exist at launch is carved out only
/// where the task could make it appear (or put a file of its own there);
/// in a tree it may only read it cannot, so it costs no rule. Carving
/// for one took a rule per entry of each directory on the way: the
/// built-in list names `/etc` stores most hosts lack (`/etc/krb5.keytab`,
/// `/etc/wireguard`), and that carved all of `/etc` for every caller.
/// With namespaces the masks cover what exists at launch, and this the
/// rest ([`Existing::Masked`]).
struct Writable {
    roots: Vec<PathBuf>,
    /// Ancestors already looked at: each as it resolves (an absent one:
    /// its nearest existing ancestor resolved, and the rest), and whether
    /// the task could make entries there.
    seen: Vec<(PathBuf, PathBuf, bool)>,
}

impl Writable {
    fn of(roots: &[(PathBuf, Grant)]) -> Self {
        let mut out = Vec::new();
        for (r, g) in roots {
            if *g == Grant::Write {
                let r = normal(r);
                out.extend(super::ns::real_path(&r).filter(|x| *x != r));
                out.push(r);
            }
        }
        Self {
            roots: out,
            seen: Vec::new(),
        }
    }

    fn covers(&self, p: &Path) -> bool {
        self.roots.iter().any(|r| within(p, r))
    }

    /// Whether the task could make `path` (absent) appear: it lies in a
    /// writable root as spelled, or its nearest existing ancestor does once
    /// resolved (a symlink on the way may lead into one). Anything that
    /// cannot be settled counts as yes. If yes, the path as it would be
    /// made (the ancestor resolved), for the carve to refuse under that
    /// spelling too.
    fn could_make(&mut self, path: &Path) -> Option<PathBuf> {
        if self.roots.is_empty() {
            return None;
        }
        let mut walked = Vec::new();
        let mut found = None;
        for up in path.ancestors().skip(1) {
            if let Some((_, real, yes)) = self.seen.iter().find(|(p, _, _)| p == up) {
                found = Some((up.to_path_buf(), real.clone(), *yes));
                break;
            }
            walked.push(up.to_path_buf());
            match std::fs::symlink_metadata(up) {
                Ok(_) => {
                    let real = super::ns::real_path(up);
                    let yes = real.as_ref().is_none_or(|r| self.covers(r));
                    found = Some((up.to_path_buf(), real.unwrap_or_else(|| up.into()), yes));
                    break;
                }
                Err(e) if not_there(&e) => {}
                Err(_) => {
                    found = Some((up.to_path_buf(), up.to_path_buf(), true));
                    break;
                }
            }
        }
        let (at, real, yes) = found?;
        // Holes share parents (`~/.config`, `/etc`): each is looked at once.
        for w in walked {
            let r = w
                .strip_prefix(&at)
                .map_or_else(|_| w.clone(), |rest| real.join(rest));
            self.seen.push((w, r, yes));
        }
        let made = path
            .strip_prefix(&at)
            .map_or_else(|_| path.into(), |rest| real.join(rest));
        (yes || self.covers(path)).then_some(made)
    }
}

/// One spelling per path (no `.`, no repeated or trailing `/`), so that
/// byte equality and byte prefixes mean what component comparisons mean.
fn normal(p: &Path) -> PathBuf {
    p.components().collect()
}

fn bytes(p: &Path) -> &[u8] {
    std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str())
}

/// Whether `inner` lies strictly below `outer` (both normal), compared as
/// bytes: `Path::starts_with` parses both into components on every call.
pub(super) fn strictly_below(inner: &Path, outer: &Path) -> bool {
    let (i, o) = (bytes(inner), bytes(outer));
    i.len() > o.len() && i.starts_with(o) && (o.ends_with(b"/") || i[o.len()] == b'/')
}

/// Whether `inner` is `outer` or lies below it (both normal: absolute,
/// no `.`, `..`, doubled or trailing `/`, as profile paths are resolved).
pub(super) fn within(inner: &Path, outer: &Path) -> bool {
    bytes(inner) == bytes(outer) || strictly_below(inner, outer)
}

fn carve_one(
    mut rule: Rule,
    holes: &Holes,
    ahead: &mut Vec<Listing>,
    out: &mut Vec<Rule>,
    depth: usize,
) {
    if let Some(h) = holes
        .list
        .iter()
        .find(|h| bytes(&h.path) == bytes(&rule.path))
    {
        if let Some(keep) = h.keep {
            rule.grant = if keep == Grant::Read || rule.grant == Grant::Read {
                Grant::Read
            } else {
                Grant::Write
            };
            carve_one_inner(rule, holes, ahead, out, depth);
        }
        return;
    }
    carve_one_inner(rule, holes, ahead, out, depth);
}

fn carve_one_inner(
    rule: Rule,
    holes: &Holes,
    ahead: &mut Vec<Listing>,
    out: &mut Vec<Rule>,
    depth: usize,
) {
    let inside = holes
        .list
        .iter()
        .any(|h| strictly_below(&h.path, &rule.path));
    if !inside || depth > 32 {
        out.push(rule);
        return;
    }
    let (path, grant) = (rule.path.clone(), rule.grant);
    // The directory itself: listing only; read or write rights would be
    // inherited by the hole.
    out.push(Rule {
        grant: Grant::List,
        ..rule
    });
    let rest = match ahead.iter().position(|l| l.dir == path) {
        Some(i) => {
            let listing = ahead.swap_remove(i);
            for (name, kind, fd) in listing.entries {
                if let Some(entry) = Rule::entry(path.join(name), grant, kind, fd, holes) {
                    carve_one(entry, holes, ahead, out, depth + 1);
                }
            }
            listing.rest
        }
        None => std::fs::read_dir(&path).ok(),
    };
    for e in rest.into_iter().flatten().flatten() {
        let kind = Kind::of(e.file_type().ok());
        if let Some(entry) = Rule::entry(e.path(), grant, kind, None, holes) {
            carve_one(entry, holes, ahead, out, depth + 1);
        }
    }
}

/// What Landlock enforced.
#[derive(Debug, Clone)]
pub struct LandlockReport {
    /// ABI in force.
    pub abi: u8,
    /// Status.
    pub level: Level,
    /// Access classes handled.
    pub rights: Vec<String>,
}

/// A ruleset being filled: created (and its rights chosen) once, then
/// rules added, possibly by two processes that share its descriptor (a
/// fork's copy), then enforced on the calling process.
///
/// The crate creates the ruleset (ABI and rights); the rules are added and
/// the ruleset enforced with the raw syscalls on its descriptor. A carved
/// tree takes a rule per entry (`/etc`: some 140), and through the crate
/// each cost six syscalls (libc's `open` adds an `fcntl` for close-on-exec,
/// the crate an `fstat` of its own beside ours); here it is four.
pub struct Filling {
    fd: Option<OwnedFd>,
    abi_n: u8,
    rights: Vec<String>,
}

/// The crate's ABI for the kernel's version number.
fn abi_of(n: u8) -> ABI {
    ABI::from(i32::from(n.min(10)))
}

/// Creates the ruleset for the kernel's highest ABI (`None`: no Landlock).
///
/// `tcp`: whether TCP bind/connect stay allowed.
///
/// # Errors
/// When the ruleset cannot be created.
pub fn create(tcp: bool) -> Result<Option<Filling>, NativeError> {
    let abi_n = kernel_abi();
    if abi_n == 0 {
        return Ok(None);
    }
    let abi = abi_of(abi_n);
    let fs_all = AccessFs::from_all(abi);
    let mut rights = vec!["fs".to_owned()];
    if fs_all.contains(AccessFs::Refer) {
        rights.push("refer".into());
    }
    if fs_all.contains(AccessFs::Truncate) {
        rights.push("truncate".into());
    }
    if fs_all.contains(AccessFs::IoctlDev) {
        rights.push("ioctl-dev".into());
    }
    let mut ruleset = Ruleset::default().handle_access(fs_all).map_err(ll_err)?;
    let net = AccessNet::from_all(abi);
    if !tcp && !net.is_empty() {
        ruleset = ruleset.handle_access(net).map_err(ll_err)?;
        rights.push("tcp".into());
    }
    let scopes = Scope::from_all(abi);
    if !scopes.is_empty() {
        ruleset = ruleset.scope(scopes).map_err(ll_err)?;
        rights.push("scope-abstract-unix".into());
        rights.push("scope-signal".into());
    }
    let Some(fd) = Option::<OwnedFd>::from(ruleset.create().map_err(ll_err)?) else {
        return Ok(None);
    };
    Ok(Some(Filling {
        fd: Some(fd),
        abi_n,
        rights,
    }))
}

fn ll_err(e: landlock::RulesetError) -> NativeError {
    NativeError::Landlock {
        message: e.to_string(),
    }
}

impl Filling {
    /// Adds the rules (a path that cannot be opened is skipped: nothing to grant).
    ///
    /// # Errors
    /// When the kernel refuses a rule.
    pub fn add(&mut self, rules: &[Rule]) -> Result<(), NativeError> {
        let abi = abi_of(self.abi_n);
        let fs_all = AccessFs::from_all(abi);
        let read: BitFlags<AccessFs> = AccessFs::from_read(abi);
        let file_rights = AccessFs::from_file(abi);
        let ruleset = self.fd.as_ref().ok_or_else(failed_earlier)?.as_raw_fd();
        for rule in rules {
            let opened;
            let fd = match &rule.fd {
                Some(fd) => fd.as_fd(),
                None => {
                    let Some(fd) = open_path(&rule.path, rule.entry) else {
                        continue;
                    };
                    opened = fd;
                    opened.as_fd()
                }
            };
            let is_file = match rule.kind {
                Kind::Dir => false,
                Kind::File => true,
                // On the descriptor just opened: no second walk of the path.
                Kind::Unknown => nix::sys::stat::fstat(fd)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT != libc::S_IFDIR),
            };
            let mut access = match rule.grant {
                Grant::List => BitFlags::from(AccessFs::ReadDir),
                Grant::Read => read,
                Grant::Write => fs_all,
            };
            if is_file {
                access &= file_rights;
            }
            let attr = PathBeneathAttr {
                allowed_access: access.bits(),
                parent_fd: fd.as_raw_fd(),
            };
            // SAFETY: landlock_add_rule reads one packed path-beneath
            // attribute, valid for the call; both descriptors are open.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset,
                    LANDLOCK_RULE_PATH_BENEATH,
                    &raw const attr,
                    0u32,
                )
            };
            if rc != 0 {
                self.fd = None;
                return Err(NativeError::Landlock {
                    message: format!(
                        "add the rule for {}: {}",
                        rule.path.display(),
                        std::io::Error::last_os_error()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Enforces the ruleset on the calling (single-threaded) process.
    ///
    /// # Errors
    /// When it cannot be enforced.
    pub fn restrict(mut self) -> Result<LandlockReport, NativeError> {
        let fd = self.fd.take().ok_or_else(failed_earlier)?;
        super::rlimit::no_new_privs()?;
        // SAFETY: landlock_restrict_self takes a ruleset descriptor and flags.
        let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) };
        if rc != 0 {
            return Err(NativeError::Landlock {
                message: format!("restrict self: {}", std::io::Error::last_os_error()),
            });
        }
        // The rights were chosen from this kernel's ABI, so all are in force.
        Ok(LandlockReport {
            abi: self.abi_n,
            level: Level::Full,
            rights: std::mem::take(&mut self.rights),
        })
    }
}

/// `struct landlock_path_beneath_attr` (packed, as the kernel's uapi).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// `LANDLOCK_RULE_PATH_BENEATH`.
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

fn failed_earlier() -> NativeError {
    NativeError::Landlock {
        message: "the ruleset failed earlier".into(),
    }
}

/// `path` opened `O_PATH | O_CLOEXEC` (and `O_NOFOLLOW` with `nofollow`)
/// by the raw `openat` (libc's `open` follows it with an `fcntl` for
/// close-on-exec, for kernels that predate the flag); `None` if it cannot
/// be opened (nothing to grant).
fn open_path(path: &Path, nofollow: bool) -> Option<OwnedFd> {
    let c = super::ns::cstring(path)?;
    let flags = libc::O_PATH | libc::O_CLOEXEC | if nofollow { libc::O_NOFOLLOW } else { 0 };
    // SAFETY: a NUL-terminated path valid for the call.
    let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The report when the kernel has no Landlock.
pub fn absent() -> LandlockReport {
    LandlockReport {
        abi: 0,
        level: Level::None,
        rights: Vec::new(),
    }
}

/// Builds and applies the ruleset to the calling (single-threaded) process.
///
/// `tcp`: whether TCP bind/connect stay allowed.
///
/// # Errors
/// When the ruleset cannot be built or applied.
pub fn apply(rules: &[Rule], tcp: bool) -> Result<LandlockReport, NativeError> {
    let Some(mut f) = create(tcp)? else {
        return Ok(absent());
    };
    f.add(rules)?;
    f.restrict()
}

/// Whether a root must wait for the task's own /proc: it lies in /proc, or
/// /proc lies beneath it (carving it could descend into /proc).
pub fn needs_proc(root: &Path) -> bool {
    let r = normal(root);
    r.starts_with("/proc") || strictly_below(Path::new("/proc"), &r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules as paths and grants.
    fn plain(rules: Vec<Rule>) -> Vec<(PathBuf, Grant)> {
        rules.into_iter().map(|r| (r.path, r.grant)).collect()
    }

    /// `carve` of one root around one hole, its rules sorted by path.
    fn carve_sorted(root: PathBuf, grant: Grant, hole: PathBuf) -> Vec<(PathBuf, Grant)> {
        let mut got = plain(carve(
            &[(root, grant)],
            &[Hole {
                path: hole,
                keep: None,
            }],
            &mut Vec::new(),
            Existing::Carved,
        ));
        got.sort_by(|x, y| x.0.cmp(&y.0));
        got
    }

    #[test]
    fn carve_grants_siblings_not_the_hole_nor_its_ancestors_write() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("a/secret")).unwrap();
        std::fs::create_dir_all(root.join("a/ok")).unwrap();
        std::fs::write(root.join("b"), "").unwrap();
        assert_eq!(
            carve_sorted(root.clone(), Grant::Write, root.join("a/secret")),
            vec![
                (root.clone(), Grant::List),
                (root.join("a"), Grant::List),
                (root.join("a/ok"), Grant::Write),
                (root.join("b"), Grant::Write),
            ]
        );
    }

    #[test]
    fn carve_keeps_protected_readable() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join(".git/hooks")).unwrap();
        let rules = plain(carve(
            &[(root.clone(), Grant::Write)],
            &[Hole {
                path: root.join(".git/hooks"),
                keep: Some(Grant::Read),
            }],
            &mut Vec::new(),
            Existing::Carved,
        ));
        assert!(rules.contains(&(root.join(".git/hooks"), Grant::Read)));
        assert!(!rules.contains(&(root.clone(), Grant::Write)));
    }

    #[test]
    fn carve_finds_holes_however_they_are_spelled() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("a/secret")).unwrap();
        std::fs::create_dir_all(root.join("ab")).unwrap();
        let spelled = format!("{}//a/./secret/", root.display());
        let rooted = PathBuf::from(format!("{}/", root.display()));
        // `ab` shares a byte prefix with `a` but is not below it.
        assert_eq!(
            carve_sorted(rooted, Grant::Read, PathBuf::from(spelled)),
            vec![
                (root.clone(), Grant::List),
                (root.join("a"), Grant::List),
                (root.join("ab"), Grant::Read),
            ]
        );
        assert!(strictly_below(Path::new("/x"), Path::new("/")));
        assert!(!strictly_below(Path::new("/"), Path::new("/")));
        assert!(!strictly_below(Path::new("/ab"), Path::new("/a")));
        let p = Path::new;
        for (a, b) in [
            ("/var/tmp", "/var"),
            ("/var", "/var"),
            ("/variable", "/var"),
            ("/var", "/var/tmp"),
            ("/x", "/"),
            ("/", "/"),
        ] {
            assert_eq!(within(p(a), p(b)), p(a).starts_with(b), "{a} within {b}");
        }
    }

    #[test]
    fn carve_takes_a_listing_opened_ahead_instead_of_reading_again() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("secret"), "").unwrap();
        std::fs::write(root.join("f"), "").unwrap();
        let mut ahead = vec![preopen(&root, AHEAD_MAX, || false).unwrap()];
        // Made after the listing: not granted (the carve fails closed).
        std::fs::write(root.join("late"), "").unwrap();
        let hole = [Hole {
            path: root.join("secret"),
            keep: None,
        }];
        let mut rules = carve(
            &[(root.clone(), Grant::Read)],
            &hole,
            &mut ahead,
            Existing::Carved,
        );
        assert!(ahead.is_empty(), "the listing was used up");
        rules.sort_by(|x, y| x.path.cmp(&y.path));
        let got: Vec<_> = rules
            .iter()
            .map(|r| (r.path.clone(), r.grant, r.kind, r.fd.is_some()))
            .collect();
        assert_eq!(
            got,
            vec![
                (root.clone(), Grant::List, Kind::Unknown, false),
                (root.join("d"), Grant::Read, Kind::Dir, true),
                (root.join("f"), Grant::Read, Kind::File, true),
            ]
        );
        // Stopped early (here after one entry): the carve reads the rest
        // of the same listing, and the rules are the same.
        let mut ahead = vec![preopen(&root, 1, || false).unwrap()];
        assert_eq!(ahead[0].entries.len(), 1);
        let mut again = carve(
            &[(root.clone(), Grant::Read)],
            &hole,
            &mut ahead,
            Existing::Carved,
        );
        again.sort_by(|x, y| x.path.cmp(&y.path));
        let paths = |r: &[Rule]| {
            r.iter()
                .map(|r| (r.path.clone(), r.grant))
                .collect::<Vec<_>>()
        };
        let mut want = paths(&rules);
        want.push((root.join("late"), Grant::Read));
        want.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(paths(&again), want);
        assert_eq!(again.iter().filter(|r| r.fd.is_some()).count(), 1);
    }

    #[test]
    fn carve_gives_no_rule_to_a_link_that_reaches_a_hole() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("secret"), "").unwrap();
        std::fs::write(root.join("fine"), "").unwrap();
        std::os::unix::fs::symlink("secret", root.join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink("fine", root.join("alias")).unwrap();
        let hole = [Hole {
            path: root.join("secret"),
            keep: None,
        }];
        for ahead in [false, true] {
            let mut listings: Vec<Listing> = if ahead {
                vec![preopen(&root, AHEAD_MAX, || false).unwrap()]
            } else {
                Vec::new()
            };
            let mut got = plain(carve(
                &[(root.clone(), Grant::Read)],
                &hole,
                &mut listings,
                Existing::Carved,
            ));
            got.sort_by(|x, y| x.0.cmp(&y.0));
            assert_eq!(
                got,
                vec![
                    (root.clone(), Grant::List),
                    (root.join("alias"), Grant::Read),
                    (root.join("fine"), Grant::Read),
                ],
                "opened ahead: {ahead}"
            );
        }
    }

    #[test]
    fn base_carves_what_is_opened_ahead() {
        let prof = crate::profile::Catalog::new(None)
            .load("base", None)
            .unwrap();
        let vars = crate::profile::PathVars {
            workspace: "/w".into(),
            home: "/h".into(),
            tmp: "/tmp".into(),
        };
        let spec = prof.resolve(&vars, &[]);
        for dir in AHEAD {
            assert!(
                spec.fs
                    .deny
                    .iter()
                    .any(|d| d.parent() == Some(Path::new(dir))),
                "base denies nothing directly in {dir}: stop opening it ahead"
            );
            assert!(
                spec.fs.read.iter().any(|r| r == Path::new(dir)),
                "base does not grant {dir}: nothing to carve"
            );
        }
    }

    #[test]
    fn a_deny_path_not_there_is_carved_only_where_the_task_could_make_it() {
        let t = tempfile::tempdir().unwrap();
        let ro = t.path().join("ro");
        let rw = t.path().join("rw");
        for d in [ro.join("d"), rw.join("d")] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(ro.join("f"), "").unwrap();
        // Through this link, a path spelled in `ro` is made in `rw`.
        std::os::unix::fs::symlink(&rw, ro.join("to-rw")).unwrap();
        let hole = |p: PathBuf| Hole {
            path: p,
            keep: None,
        };
        let rules = |holes: &[Hole]| {
            let mut got = plain(carve(
                &[(ro.clone(), Grant::Read), (rw.clone(), Grant::Write)],
                holes,
                &mut Vec::new(),
                Existing::Carved,
            ));
            got.sort_by(|x, y| x.0.cmp(&y.0));
            got
        };
        let whole = vec![(ro.clone(), Grant::Read), (rw.clone(), Grant::Write)];
        // In a tree the task may only read, nothing can make it appear.
        assert_eq!(rules(&[hole(ro.join("missing"))]), whole);
        assert_eq!(rules(&[hole(ro.join("d/no/such"))]), whole);
        assert_eq!(rules(&[hole(ro.join("f/under-a-file"))]), whole);
        // Where it may write, the task could make it: carved, so it cannot.
        assert_eq!(
            rules(&[hole(rw.join("d/missing"))]),
            vec![
                (ro.clone(), Grant::Read),
                (rw.clone(), Grant::List),
                (rw.join("d"), Grant::List),
            ]
        );
        // Spelled through a link that leads into a writable tree: carved.
        let got = rules(&[hole(ro.join("to-rw/d/missing"))]);
        assert!(
            got.contains(&(ro.clone(), Grant::List)),
            "not carved: {got:?}"
        );
        assert!(!got.contains(&(ro.join("to-rw"), Grant::Read)), "{got:?}");
        // ... and under the name it would be made by.
        assert!(got.contains(&(rw.join("d"), Grant::List)), "{got:?}");
        assert!(!got.contains(&(rw.clone(), Grant::Write)), "{got:?}");
    }

    #[test]
    fn carve_without_holes_is_identity() {
        let rules = plain(carve(
            &[("/usr".into(), Grant::Read)],
            &[],
            &mut Vec::new(),
            Existing::Carved,
        ));
        assert_eq!(rules, vec![(PathBuf::from("/usr"), Grant::Read)]);
    }
}
