//! Namespaces and mounts: the task's own view of the machine.
//!
//! Runs in the launch stage (unshare, id maps, the view but /proc) and in
//! the task's pid 1 (its /proc, hostname), before Landlock, whose rules
//! are tied to mounts.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

use super::NativeError;
use super::landlock::within;

/// Namespaces the stage enters, by name, for the enforcement report.
pub const NAMESPACES: [&str; 6] = ["user", "mount", "pid", "net", "ipc", "uts"];

/// Enters new user, mount, pid, ipc and uts namespaces, and with `net` a
/// network namespace, and maps the caller's uid/gid to themselves. The
/// stage does this ahead of the plan, all in one `unshare` on its own CPU
/// (it runs beside the runner, see `cpu`): a thread that made the network
/// namespace meanwhile was 0.23 ms slower per launch, because the kernel
/// does not preempt that 0.6 ms of work and the plan's arrival found both
/// CPUs busy. Loopback stays down (see [`loopback_up`]).
///
/// # Errors
/// [`NativeError::Namespaces`] when user namespaces are unavailable
/// (`errno` tells why; nothing was entered); another error when the id
/// maps cannot be written (the namespaces were entered).
pub fn enter(uid: u32, gid: u32, net: bool) -> Result<(), NativeError> {
    let mut flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| NativeError::Namespaces { errno: e })?;
    map_ids(uid, gid)
}

/// Maps the caller's uid and gid to themselves in its new user namespace.
fn map_ids(uid: u32, gid: u32) -> Result<(), NativeError> {
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|source| NativeError::Setup {
            what: format!("write {file}"),
            source,
        })
    };
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    Ok(())
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), NativeError> {
    mount(src, target, fstype, flags, data).map_err(|e| NativeError::Mount {
        target: target.to_path_buf(),
        source: std::io::Error::from(e),
    })
}

/// What the mount namespace must look like.
#[derive(Debug)]
pub struct MountPlan<'a> {
    /// Host unix-socket directories to hide behind empty read-only tmpfs.
    pub mask_dirs: &'a [PathBuf],
    /// Paths to make unreadable and unwritable (existing; globs expanded).
    pub deny: &'a [PathBuf],
    /// Paths inside writable trees to make read-only.
    pub protect: &'a [PathBuf],
    /// The workspace, for protected-path parents.
    pub workspace: &'a Path,
    /// Granted trees: they stay visible even under a directory we overmount.
    pub keep: &'a [PathBuf],
    /// Writable trees: everything else is mounted read-only.
    pub write: &'a [PathBuf],
    /// Overlay mode: (upper, work) directories; the workspace becomes the lower layer.
    pub overlay: Option<(&'a Path, &'a Path)>,
    /// The entries of `/`, if listed ahead ([`list_tops`]); else listed when needed.
    pub tops: Option<&'a [(PathBuf, Top)]>,
    /// The most the task's `/tmp`, `/dev/shm`, scratch trees and cache
    /// layers may hold together (the profile's `memory`; see `Store`): a
    /// tmpfs is RAM that no rlimit counts, and its default is half the host's.
    pub tmp_size: Option<u64>,
    /// Scratch trees: an empty directory of the task's store over each
    /// (see `FsSpec::scratch`).
    pub scratch: &'a [PathBuf],
    /// Cache trees: the host's directory under a throwaway layer of the
    /// task's, in its store (see `FsSpec::cache`).
    pub cache: &'a [PathBuf],
}

/// Hides `target` under an empty read-only tmpfs, carrying over the granted
/// trees beneath it (bound back in from descriptors opened before the
/// overmount, then the tmpfs remounted read-only).
///
/// `empty`: the first one made that keeps nothing, which later ones bind
/// instead of making their own; a bind takes its source's flags and cost
/// 6.5 µs here against 15 µs for a tmpfs (measured in a user namespace, 12
/// of each).
fn overmount_tmpfs(
    target: &Path,
    keep: &[PathBuf],
    base: MsFlags,
    data: &str,
    empty: &mut Option<PathBuf>,
) -> Result<(), NativeError> {
    let held = hold(target, keep);
    // With nothing to bind back in, read-only from the start: one mount
    // instead of a mount and a remount.
    if held.is_empty() {
        if let Some(src) = empty.as_deref() {
            return mnt(
                Some(&src.to_string_lossy()),
                target,
                None,
                MsFlags::MS_BIND,
                None,
            );
        }
        *empty = Some(target.to_path_buf());
        return mnt(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            base | MsFlags::MS_RDONLY,
            Some(data),
        );
    }
    mnt(Some("tmpfs"), target, Some("tmpfs"), base, Some(data))?;
    bind_back(&held)?;
    mnt(
        None,
        target,
        None,
        base | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        Some(data),
    )
}

/// The granted trees strictly beneath `target`, opened before something
/// covers it (outermost first; a tree inside one already held comes back
/// with it, the bind being recursive).
fn hold(target: &Path, keep: &[PathBuf]) -> Vec<(PathBuf, std::os::fd::OwnedFd)> {
    let mut inside: Vec<&PathBuf> = keep
        .iter()
        .filter(|k| within(k, target) && k.as_os_str() != target.as_os_str())
        .collect();
    inside.sort_by_key(|k| k.components().count());
    let mut held: Vec<(PathBuf, std::os::fd::OwnedFd)> = Vec::new();
    for k in inside {
        if held.iter().any(|(h, _)| within(k, h)) {
            continue;
        }
        if let Some(fd) = open_path(k) {
            held.push((k.clone(), fd));
        }
    }
    held
}

/// Binds each held tree back at its path (made afresh in what covers it).
fn bind_back(held: &[(PathBuf, std::os::fd::OwnedFd)]) -> Result<(), NativeError> {
    use std::os::fd::AsRawFd as _;
    for (path, fd) in held {
        let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if std::fs::metadata(&src).map(|m| m.is_dir()).unwrap_or(false) {
            std::fs::create_dir_all(path).map_err(|source| NativeError::Setup {
                what: format!("recreate {}", path.display()),
                source,
            })?;
        } else {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| NativeError::Setup {
                    what: format!("recreate {}", parent.display()),
                    source,
                })?;
            }
            std::fs::File::create(path).map_err(|source| NativeError::Setup {
                what: format!("recreate {}", path.display()),
                source,
            })?;
        }
        mnt(
            Some(&src),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
    }
    Ok(())
}

/// Covers `target` with a directory of the task's store (by descriptor),
/// with `flags` (e.g. `noexec`), carrying over the granted trees beneath it.
fn cover_from_store(
    target: &Path,
    dir: &std::os::fd::OwnedFd,
    keep: &[PathBuf],
    flags: MsFlags,
) -> Result<(), NativeError> {
    let held = hold(target, keep);
    bind_store_dir(dir, target, flags)?;
    bind_back(&held)
}

/// Binds a directory of the store on `target`, then applies `flags`.
fn bind_store_dir(
    dir: &std::os::fd::OwnedFd,
    target: &Path,
    flags: MsFlags,
) -> Result<(), NativeError> {
    use std::os::fd::AsRawFd as _;
    let src = format!("/proc/self/fd/{}", dir.as_raw_fd());
    mnt(Some(&src), target, None, MsFlags::MS_BIND, None)?;
    mnt(
        None,
        target,
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None,
    )
}

/// Everything the task holds in memory, in one tmpfs capped at its memory
/// limit: its `/tmp`, `/dev/shm`, scratch trees and the upper layers of its
/// cache trees are directories of it, so together they hold at most that
/// much (no rlimit counts tmpfs pages, and one tmpfs each would multiply
/// the cap). Mounted on `/tmp`, whose own directory is then bound over it:
/// the store's root, and the other directories in it, are out of reach.
struct Store {
    /// The task's `/dev/shm` (if the host has one to cover).
    shm: Option<std::os::fd::OwnedFd>,
    /// Each scratch tree, with its empty directory.
    scratch: Vec<(PathBuf, std::os::fd::OwnedFd)>,
    /// The cache trees to layer.
    caches: Vec<CacheLayer>,
}

impl Store {
    /// Makes the store and the task's `/tmp` from it.
    fn make(p: &MountPlan<'_>) -> Result<Self, NativeError> {
        use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
        let setup = |what: String, source: std::io::Error| NativeError::Setup { what, source };
        // Looked at and opened before the store covers /tmp, in which any
        // of them may lie.
        let mut lowers = Vec::new();
        for c in p.cache {
            let Some(meta) = own_tree_meta(c) else {
                continue;
            };
            let fd = open_path(c).ok_or_else(|| {
                setup(
                    format!("open the cache tree {}", c.display()),
                    std::io::Error::last_os_error(),
                )
            })?;
            lowers.push((c.clone(), meta.mode() & 0o7777, fd));
        }
        let scratch: Vec<&PathBuf> = p.scratch.iter().filter(|s| own_tree(s)).collect();
        let shm = Path::new("/dev/shm").is_dir();
        let held = hold(Path::new("/tmp"), p.keep);
        let root = Path::new("/tmp");
        mnt(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(&tmpfs_options("755", p.tmp_size)),
        )?;
        let dir = |name: &str, mode: u32| -> Result<std::os::fd::OwnedFd, NativeError> {
            let d = root.join(name);
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(&d)
                .map_err(|e| setup(format!("make {} in the task's store", d.display()), e))?;
            // The mode exactly (the umask narrows what mkdir is given).
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|e| setup(format!("chmod {}", d.display()), e))?;
            open_path(&d).ok_or_else(|| {
                setup(
                    format!("open {}", d.display()),
                    std::io::Error::last_os_error(),
                )
            })
        };
        let tmp = dir("tmp", 0o1777)?;
        let shm = if shm { Some(dir("shm", 0o1777)?) } else { None };
        let scratch = scratch
            .into_iter()
            .enumerate()
            .map(|(i, s)| Ok((s.clone(), dir(&format!("scratch{i}"), 0o700)?)))
            .collect::<Result<Vec<_>, NativeError>>()?;
        let caches = lowers
            .into_iter()
            .enumerate()
            .map(|(i, (c, mode, lower))| {
                // The layered tree's root takes the upper's mode: the host's.
                let upper = dir(&format!("upper{i}"), mode)?;
                let work = dir(&format!("work{i}"), 0o700)?;
                Ok((c, [upper, work], lower))
            })
            .collect::<Result<Vec<_>, NativeError>>()?;
        bind_store_dir(&tmp, root, MsFlags::MS_NOSUID | MsFlags::MS_NODEV)?;
        bind_back(&held)?;
        Ok(Self {
            shm,
            scratch,
            caches,
        })
    }
}

/// Builds the task's filesystem view inside its fresh mount namespace:
/// [`prepare_view`], then [`finish_view`]. Must run in the new pid
/// namespace (for /proc).
///
/// # Errors
/// Any mount that fails: the task must not run with a partial view.
pub fn build_view(p: &MountPlan<'_>) -> Result<(), NativeError> {
    let later = prepare_view(p)?;
    finish_view(p, &later)
}

/// The masks [`prepare_view`] left for [`finish_view`]: those in /proc (or
/// that resolve there), each still to be resolved in the task's own /proc.
/// The others are not looked at twice.
#[derive(Debug, Default, Clone)]
pub struct Deferred {
    mask_dirs: Vec<PathBuf>,
    deny: Vec<PathBuf>,
    protect: Vec<PathBuf>,
}

/// Whether `path` lies in /proc, which [`finish_view`] mounts afresh: a
/// mount made beneath /proc before that would be hidden under it.
fn in_proc(path: &Path) -> bool {
    within(path, Path::new("/proc"))
}

/// Everything of the view but the fresh /proc and what lies beneath it.
/// Needs only the mount namespace, not the pid one, so the stage can do
/// it while its network namespace is still being made.
///
/// # Errors
/// Any mount that fails: the task must not run with a partial view.
pub fn prepare_view(p: &MountPlan<'_>) -> Result<Deferred, NativeError> {
    // Nothing we mount may propagate back to the host.
    mnt(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // Which protected paths exist, looked up before the overlay covers the
    // workspace: its upper layer is empty, so the overlay shows what the
    // workspace has, and misses through overlayfs (upper, then lower) took
    // 0.1 ms for the 13 paths an empty workspace lacks. (Those in /proc
    // are looked at in the task's own /proc.)
    let protect: Vec<PathBuf> = p
        .protect
        .iter()
        .filter(|x| in_proc(x) || x.exists())
        .cloned()
        .collect();
    // The overlay goes first: its upper directory (in the task store) is
    // about to become read-only like everything else outside the writable trees.
    if let Some((upper, work)) = p.overlay {
        // The snapshot: from here to the overlay's mount (the launch
        // benchmark reads these two phases).
        super::stage::mark("snapshot-start");
        // The task store's directories for this task: made here, off the
        // runner's path, private to the user.
        for d in [upper, work] {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|source| NativeError::Setup {
                    what: if source.kind() == std::io::ErrorKind::PermissionDenied
                        && nix::unistd::getuid().is_root()
                    {
                        format!(
                            "create {} (root reaches the state dir from inside the task's user namespace, where directories of other users are open to it only through their permission bits. Hint: make the state dir's parents searchable by others, or set TASKBOX_STATE_DIR to a directory of root's)",
                            d.display()
                        )
                    } else {
                        format!("create {}", d.display())
                    },
                    source,
                })?;
        }
        // userxattr: overlayfs in a user namespace keeps its metadata in user.* xattrs.
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},userxattr,volatile",
            p.workspace.display(),
            upper.display(),
            work.display()
        );
        mnt(
            Some("overlay"),
            p.workspace,
            Some("overlay"),
            MsFlags::empty(),
            Some(&opts),
        )?;
        super::stage::mark("snapshot");
    }
    read_only_root(p.write)?;
    // The task's own trees, all from one capped tmpfs (see `Store`), made
    // after the root went read-only (new mounts are writable).
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let store = Store::make(p)?;
    if let Some(shm) = &store.shm {
        cover_from_store(
            Path::new("/dev/shm"),
            shm,
            p.keep,
            hard | MsFlags::MS_NOEXEC,
        )?;
    }
    // Before the masks, which then lie over the layered view.
    layer_caches(&store.caches)?;
    let mut later = Deferred::default();
    let p = MountPlan {
        protect: &protect,
        ..*p
    };
    mask(&p, false, &mut later)?;
    // Last, over what the hiding bound back (a scratch tree is kept like a
    // granted one, so its directory is there) and any mask inside it.
    // A cache tree inside one comes back (bound in from the layered view).
    for (s, dir) in &store.scratch {
        cover_from_store(s, dir, p.cache, hard)?;
    }
    Ok(later)
}

/// A cache tree, its (upper, work) directories in the store and the host's
/// directory (its lower layer), opened before anything covered it.
type CacheLayer = (PathBuf, [std::os::fd::OwnedFd; 2], std::os::fd::OwnedFd);

/// Lays a throwaway layer of the task's over each cache tree the store
/// made room for: an overlay whose lower layer is the host's directory and
/// whose upper one is in the store. The host's files are read as they are;
/// every write, new file or deletion lands in the store and goes with the
/// task. Layers are named by descriptor, so no path text reaches the mount
/// options (a `,` or `:` in a home directory would split them).
fn layer_caches(caches: &[CacheLayer]) -> Result<(), NativeError> {
    use std::os::fd::AsRawFd as _;
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    for (c, [upper, work], lower) in caches {
        let opts = format!(
            "lowerdir=/proc/self/fd/{},upperdir=/proc/self/fd/{},workdir=/proc/self/fd/{},userxattr,volatile",
            lower.as_raw_fd(),
            upper.as_raw_fd(),
            work.as_raw_fd()
        );
        mount(Some("overlay"), c.as_path(), Some("overlay"), hard, Some(opts.as_str())).map_err(
            |e| NativeError::Setup {
                what: format!(
                    "mount the throwaway layer over the cache tree {} (an overlay with the host's directory as its lower layer, which its filesystem may not support)",
                    c.display()
                ),
                source: std::io::Error::other(format!(
                    "{}. Hint: in a profile of your own, list the tree under `write` to use the host's directory as it is (a widening), or leave it out",
                    std::io::Error::from(e)
                )),
            },
        )?;
    }
    Ok(())
}

/// Whether the view gives the task a tree of its own at `c`, a scratch or
/// a cache tree: a directory there at launch, outside /proc. Anything else
/// named as one (a file, a path in /proc) stays as read-only as the rest.
pub fn own_tree(c: &Path) -> bool {
    own_tree_meta(c).is_some()
}

/// [`own_tree`], with the directory's metadata.
fn own_tree_meta(c: &Path) -> Option<std::fs::Metadata> {
    (!in_proc(c))
        .then(|| std::fs::metadata(c).ok())
        .flatten()
        .filter(std::fs::Metadata::is_dir)
}

/// A tmpfs's mount options: its root's mode, and its size cap if any.
fn tmpfs_options(mode: &str, size: Option<u64>) -> String {
    match size {
        Some(n) => format!("mode={mode},size={n}"),
        None => format!("mode={mode}"),
    }
}

/// The fresh /proc of the task's pid namespace, then the masks that lie
/// beneath it. Runs in pid 1 of that namespace, after [`prepare_view`].
///
/// # Errors
/// Any mount that fails: the task must not run with a partial view.
pub fn finish_view(p: &MountPlan<'_>, later: &Deferred) -> Result<(), NativeError> {
    mnt(
        Some("proc"),
        Path::new("/proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    let p = MountPlan {
        mask_dirs: &later.mask_dirs,
        deny: &later.deny,
        protect: &later.protect,
        ..*p
    };
    mask(&p, true, &mut Deferred::default())
}

/// Socket directories, deny paths and protected paths: those in /proc
/// (`proc`) or those outside it. Outside, what lies (or may resolve) in
/// /proc goes to `later`.
fn mask(p: &MountPlan<'_>, proc: bool, later: &mut Deferred) -> Result<(), NativeError> {
    let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let unreached = if proc {
        Unreached {
            dirs: Vec::new(),
            sockets: Vec::new(),
            keep: p.keep.to_vec(),
        }
    } else {
        unreached(p.keep, p.workspace, p.tops)?
    };
    let keep = &unreached.keep;
    // The socket directories, then the top-level directories (real paths
    // already: the listing of `/` told them from symlinks; none in /proc);
    // what lies inside one listed before is hidden with it.
    let mut hide: Vec<PathBuf> = Vec::new();
    for d in p.mask_dirs {
        let real = real_path(d);
        if !proc && (in_proc(d) || real.as_deref().is_some_and(in_proc)) {
            later.mask_dirs.push(d.clone());
            continue;
        }
        let Some(real) = real else {
            continue;
        };
        if in_proc(&real) != proc || hide.iter().any(|s| within(&real, s)) || !real.is_dir() {
            continue;
        }
        hide.push(real);
    }
    for d in &unreached.dirs {
        if !hide.iter().any(|s| within(d, s)) {
            hide.push(d.clone());
        }
    }
    let mut empty = None;
    for d in &hide {
        overmount_tmpfs(d, keep, hard | MsFlags::MS_NOEXEC, "mode=755", &mut empty)?;
    }
    // A mode-000 file to bind over denied files, made when the first one
    // needs it (most tasks have no denied file present); its name is
    // removed afterwards.
    let mask_file = Path::new("/tmp/.taskbox-mask");
    let mut mask_made = false;
    for s in &unreached.sockets {
        if !mask_made {
            make_mask_file(mask_file)?;
            mask_made = true;
        }
        bind_ro(mask_file, s)?;
    }
    // Directories masked so far: what lies beneath one is unreachable
    // already (a mode-000 tmpfs), and a path listed twice (the state dir
    // is a built-in deny path and hidden by the runner too) is masked once.
    let mut masked: Vec<PathBuf> = Vec::new();
    for d in p.deny {
        if !proc && in_proc(d) {
            later.deny.push(d.clone());
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(d) else {
            continue;
        };
        let target = real_path(d).unwrap_or_else(|| d.clone());
        if in_proc(&target) != proc {
            if !proc {
                later.deny.push(d.clone());
            }
            continue;
        }
        if masked.iter().any(|m| within(&target, m)) {
            continue;
        }
        if meta.is_dir() || target.is_dir() {
            mnt(
                Some("tmpfs"),
                &target,
                Some("tmpfs"),
                hard | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                Some("mode=000,size=4k"),
            )?;
            masked.push(target);
        } else {
            if !mask_made {
                make_mask_file(mask_file)?;
                mask_made = true;
            }
            bind_ro(mask_file, &target)?;
        }
    }
    if mask_made {
        std::fs::remove_file(mask_file).ok();
    }
    // Protected paths: make each top-level parent inside the workspace a mount
    // point (so it cannot be renamed away and recreated), then bind read-only.
    let mut tops: Vec<PathBuf> = Vec::new();
    for path in p.protect {
        if !proc && in_proc(path) {
            later.protect.push(path.clone());
            continue;
        }
        if in_proc(path) != proc || !path.exists() {
            continue;
        }
        if let Ok(rel) = path.strip_prefix(p.workspace)
            && let Some(first) = rel.components().next()
        {
            let top = p.workspace.join(first);
            if top != *path && top.is_dir() && !tops.contains(&top) {
                mnt(
                    Some(&top.to_string_lossy()),
                    &top,
                    None,
                    MsFlags::MS_BIND,
                    None,
                )?;
                tops.push(top);
            }
        }
        bind_ro(path, path)?;
    }
    Ok(())
}

/// What the view hides of the host beyond the profile's masks: see [`unreached`].
#[derive(Debug)]
struct Unreached {
    /// Top-level directories holding nothing granted, or granted trees only
    /// in part: each becomes an empty read-only tmpfs with the granted trees
    /// bound back in.
    dirs: Vec<PathBuf>,
    /// Pathname sockets at the top of `/`, and a syslog `/dev/log`.
    sockets: Vec<PathBuf>,
    /// The granted trees, plus each as it resolves through a top-level
    /// symlink (`/home` -> `var/home`), so the directory it really lies in
    /// keeps it.
    keep: Vec<PathBuf>,
}

/// Top-level names the view always has its own way: a fresh `/proc` and
/// `/tmp`, sysfs (which holds no sockets) and `/dev` (root's alone; its
/// `log` socket is masked).
const OWN_TOPS: [&str; 4] = ["/proc", "/sys", "/tmp", "/dev"];

/// The parts of the host the profile grants nothing in, which the view
/// hides rather than leave to Landlock. Landlock (up to ABI 7) refuses
/// reads and writes but not `connect` on a pathname unix socket, which
/// needs only the walk to it and the socket's write permission: in a
/// read-only host tree a task could reach any daemon of its user
/// (`~/.docker/desktop/docker.sock`, an agent's socket) or one open to
/// all. So every top-level directory not inside a granted tree is
/// overmounted, its granted trees bound back, and sockets at the top of
/// `/` and `/dev/log` are masked. A socket inside a granted tree stays
/// reachable, as the grant says.
fn unreached(
    keep: &[PathBuf],
    workspace: &Path,
    tops: Option<&[(PathBuf, Top)]>,
) -> Result<Unreached, NativeError> {
    let listed;
    let tops = match tops {
        Some(t) => t,
        None => {
            listed = list_tops()?;
            &listed
        }
    };
    Ok(hide_of(tops, keep, workspace))
}

/// The directories, symlinks and sockets at the top of `/` (and a socket
/// at `/dev/log`): the stage
/// lists them while it waits for its plan (they do not depend on it), as
/// the view's [`MountPlan::tops`].
///
/// # Errors
/// When `/` cannot be listed.
pub fn list_tops() -> Result<Vec<(PathBuf, Top)>, NativeError> {
    use std::os::unix::fs::FileTypeExt as _;
    let rd = std::fs::read_dir("/").map_err(|source| NativeError::Setup {
        what: "list /".into(),
        source,
    })?;
    let mut tops = Vec::new();
    for e in rd.flatten() {
        let (path, Ok(ft)) = (e.path(), e.file_type()) else {
            continue;
        };
        let top = if ft.is_symlink() {
            match std::fs::read_link(&path) {
                Ok(to) => Top::Link(to),
                Err(_) => continue,
            }
        } else if ft.is_dir() {
            Top::Dir
        } else if ft.is_socket() {
            Top::Socket
        } else {
            continue;
        };
        tops.push((path, top));
    }
    // In /dev (root's alone) a syslog daemon's socket; a listing of all of
    // /dev cost 0.1 ms here.
    let log = Path::new("/dev/log");
    if std::fs::symlink_metadata(log).is_ok_and(|m| m.file_type().is_socket()) {
        tops.push((log.to_path_buf(), Top::Socket));
    }
    Ok(tops)
}

/// What an entry of `/` is (see [`list_tops`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Top {
    Dir,
    /// A symlink, with its target as written.
    Link(PathBuf),
    Socket,
}

/// [`unreached`]'s decision on the entries of `/` it read.
fn hide_of(tops: &[(PathBuf, Top)], keep: &[PathBuf], workspace: &Path) -> Unreached {
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut dirs = Vec::new();
    let mut sockets = Vec::new();
    for (path, top) in tops {
        match top {
            Top::Link(to) => links.push((path.clone(), lexical(&Path::new("/").join(to)))),
            Top::Dir if !OWN_TOPS.iter().any(|o| path == Path::new(o)) => dirs.push(path.clone()),
            Top::Dir => {}
            Top::Socket => sockets.push(path.clone()),
        }
    }
    let mut kept: Vec<PathBuf> = keep.to_vec();
    kept.push(workspace.to_path_buf());
    for k in kept.clone() {
        // Through at most 8 top-level links, as the kernel follows 40.
        let mut cur = k;
        for _ in 0..8 {
            let Some((link, to)) = links.iter().find(|(l, _)| within(&cur, l)) else {
                break;
            };
            let rest = cur.strip_prefix(link).unwrap_or(Path::new(""));
            cur = lexical(&to.join(rest));
            kept.push(cur.clone());
        }
    }
    dirs.retain(|d| !kept.iter().any(|k| within(d, k)));
    Unreached {
        dirs,
        sockets,
        keep: kept,
    }
}

/// `p` with `.` and `..` taken out by its spelling alone (a top-level
/// symlink's target, joined onto `/`).
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if out.parent().is_some() {
                    out.pop();
                }
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn set_read_only(path: &Path, read_only: bool, recursive: bool) -> Result<(), NativeError> {
    let c = cstring(path).ok_or_else(|| NativeError::Plan {
        message: format!("NUL byte in {}", path.display()),
    })?;
    let attr = MountAttr {
        attr_set: if read_only { MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: if read_only { 0 } else { MOUNT_ATTR_RDONLY },
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `c` is a valid C string and `attr` a valid mount_attr, both live
    // for the call; the size passed is the struct's.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(NativeError::Mount {
            target: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Makes the whole host filesystem read-only in this mount namespace, then
/// binds the writable trees back read-write. Landlock cannot refuse chmod,
/// chown, utimes or xattrs outside the writable trees; a read-only mount does.
fn read_only_root(write: &[PathBuf]) -> Result<(), NativeError> {
    use std::os::fd::AsRawFd as _;
    // Not rebound: /tmp and /dev/shm themselves (the task's store replaces
    // them) and device files (writing a device works on a read-only mount).
    let held: Vec<_> = write
        .iter()
        .filter(|w| *w != Path::new("/tmp") && *w != Path::new("/dev/shm"))
        .filter(|w| std::fs::metadata(w).is_ok_and(|m| m.is_dir() || m.is_file()))
        .filter_map(|w| open_path(w).map(|fd| (w.clone(), fd)))
        .collect();
    set_read_only(Path::new("/"), true, true)?;
    for (path, fd) in &held {
        let src = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mnt(
            Some(&src),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        if set_read_only(path, false, true).is_err() {
            set_read_only(path, false, false)?;
        }
    }
    Ok(())
}

fn make_mask_file(path: &Path) -> Result<(), NativeError> {
    std::fs::File::create(path).map_err(|source| NativeError::Setup {
        what: "create mask file".into(),
        source,
    })?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o000)).map_err(
        |source| NativeError::Setup {
            what: "chmod mask file".into(),
            source,
        },
    )
}

fn bind_ro(src: &Path, target: &Path) -> Result<(), NativeError> {
    let s = src.to_string_lossy();
    mnt(Some(&s), target, None, MsFlags::MS_BIND, None)?;
    mnt(
        None,
        target,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV,
        None,
    )
}

/// Brings up loopback in the (empty) network namespace: for the egress
/// proxy's listener only. With the network off it stays down, as does every
/// interface (seccomp refuses inet sockets then anyway), which spared the
/// stage 0.07 ms before the plan.
///
/// # Errors
/// When the interface cannot be configured.
pub fn loopback_up() -> Result<(), NativeError> {
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| NativeError::Setup {
        what: "loopback socket".into(),
        source: e.into(),
    })?;
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    use std::os::fd::AsRawFd as _;
    // SAFETY: SIOCSIFFLAGS reads a valid, initialised ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) };
    if rc != 0 {
        return Err(NativeError::Setup {
            what: "bring up loopback".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Sets the task's hostname (its own uts namespace).
pub fn set_hostname() {
    nix::unistd::sethostname("taskbox").ok();
}

/// Expands deny globs against the filesystem as it is at launch.
pub fn expand_globs(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        let s = p.to_string_lossy();
        if !s.contains(['*', '?', '[']) {
            out.push(p.clone());
        } else if let Some(found) = last_component_glob(p) {
            out.extend(found);
        } else if let Ok(g) = glob::glob(&s) {
            // The crate matches `.*` against `.` and `..` too: the
            // directory and its parent, never what a deny of "every dot
            // entry" means (and `{home}/.*` would deny all of home).
            out.extend(g.flatten().filter(|m| !dot_or_dotdot(m)));
        }
    }
    out
}

/// Whether `p` ends in a `.` or `..` component.
fn dot_or_dotdot(p: &Path) -> bool {
    let b = p.as_os_str().as_bytes();
    b.ends_with(b"/.") || b.ends_with(b"/..")
}

/// The matches of a glob whose only wildcards (`*`, `?`) are in its last
/// component, as the `glob` crate would find them (`*` matches a leading
/// dot, `\` is no escape; `.` and `..` are no entries, see
/// [`expand_globs`]): one listing of the parent, each name matched
/// by libc's `fnmatch`. The crate takes 40-80 µs for the built-in
/// `/etc/ssh/ssh_host_*_key` in the stage, walking and compiling every
/// component; this takes one `getdents`. `None` for any other pattern
/// (the crate's).
fn last_component_glob(p: &Path) -> Option<Vec<PathBuf>> {
    let (parent, last) = (p.parent()?, p.file_name()?);
    let parent_s = parent.as_os_str().as_bytes();
    if !p.is_absolute()
        || parent_s.iter().any(|b| b"*?[".contains(b))
        || last.as_bytes().contains(&b'[')
    {
        return None;
    }
    let pattern = CString::new(last.as_bytes()).ok()?;
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Some(Vec::new());
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            CString::new(e.file_name().as_bytes()).is_ok_and(|name| {
                // SAFETY: both NUL-terminated, valid for the call.
                unsafe { libc::fnmatch(pattern.as_ptr(), name.as_ptr(), libc::FNM_NOESCAPE) == 0 }
            })
        })
        .map(|e| parent.join(e.file_name()))
        .collect();
    out.sort();
    Some(out)
}

/// A path as a C string, for exec.
pub fn cstring(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

/// `p` with every symlink resolved, by `realpath` into a buffer of ours
/// (`std::fs::canonicalize` has musl allocate the result: an `mmap` and a
/// `munmap` per call); `None` if it does not resolve.
pub fn real_path(p: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    let c = cstring(p)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: `c` is NUL-terminated; `buf` holds PATH_MAX + 1 bytes, the
    // most realpath writes.
    let r = unsafe { libc::realpath(c.as_ptr(), buf.as_mut_ptr().cast()) };
    if r.is_null() {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0)?;
    buf.truncate(len);
    Some(PathBuf::from(std::ffi::OsString::from_vec(buf)))
}

/// Whether this process can create a user namespace (tried in a throwaway child).
/// Call only from a single-threaded process (`doctor`).
pub fn userns_available() -> bool {
    // SAFETY: the child only calls unshare and _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let ok = unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS).is_ok();
            // SAFETY: _exit is async-signal-safe and skips the parent's atexit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            matches!(
                nix::sys::wait::waitpid(child, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            )
        }
        Err(_) => false,
    }
}

/// An `O_PATH` descriptor pinning `p`, to bind it back after an overmount.
fn open_path(p: &Path) -> Option<std::os::fd::OwnedFd> {
    let flags = nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC;
    nix::fcntl::open(p, flags, nix::sys::stat::Mode::empty()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_directories_without_a_whole_grant_are_hidden() {
        let p = PathBuf::from;
        let tops = vec![
            (p("/usr"), Top::Dir),
            (p("/bin"), Top::Link(p("usr/bin"))),
            (p("/home"), Top::Link(p("var/home"))),
            (p("/var"), Top::Dir),
            (p("/srv"), Top::Dir),
            (p("/work"), Top::Dir),
            (p("/proc"), Top::Dir),
            (p("/tmp"), Top::Dir),
            (p("/dev"), Top::Dir),
            (p("/docker.sock"), Top::Socket),
            (p("/up"), Top::Link(p("../srv/./x"))),
        ];
        let keep = [p("/usr"), p("/home/u/.cargo"), p("/up/y")];
        let u = hide_of(&tops, &keep, Path::new("/work/ws"));
        // /usr is granted whole; /var holds a grant (through /home) in part,
        // /work the workspace, /srv one through /up; the task's own tops
        // are left to the view.
        assert_eq!(u.dirs, [p("/var"), p("/srv"), p("/work")]);
        assert_eq!(u.sockets, [p("/docker.sock")]);
        for k in [
            "/var/home/u/.cargo",
            "/srv/x/y",
            "/work/ws",
            "/home/u/.cargo",
        ] {
            assert!(u.keep.contains(&p(k)), "{k} not kept: {:?}", u.keep);
        }
        // Granting `/` hides nothing.
        let u = hide_of(&[(p("/var"), Top::Dir)], &[p("/")], Path::new("/w"));
        assert!(u.dirs.is_empty());
    }

    #[test]
    fn a_last_component_glob_matches_what_the_glob_crate_does() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for name in [
            "ssh_host_rsa_key",
            "ssh_host_rsa_key.pub",
            "ssh_host_ed25519_key",
            ".hidden_key",
            "a\\b",
            "x?y",
            "plain",
        ] {
            std::fs::write(d.join(name), "").unwrap();
        }
        std::fs::create_dir(d.join("sub_key")).unwrap();
        for pattern in [
            "ssh_host_*_key",
            "*",
            "?????",
            "*.pub",
            ".*",
            "a\\*",
            "*_key",
            "x?y",
        ] {
            let p = d.join(pattern);
            let fast = last_component_glob(&p).expect("takes a last-component glob");
            let mut slow: Vec<PathBuf> = glob::glob(&p.to_string_lossy())
                .unwrap()
                .flatten()
                .filter(|m| !dot_or_dotdot(m))
                .collect();
            slow.sort();
            assert_eq!(fast, slow, "{pattern}");
        }
        // Not there: nothing; other shapes are left to the crate.
        assert_eq!(last_component_glob(&d.join("none/*")), Some(Vec::new()));
        assert_eq!(last_component_glob(&d.join("*/key")), None);
        assert_eq!(last_component_glob(&d.join("[ab]*")), None);
        // The crate's path leaves `.` and `..` out too.
        std::fs::create_dir(d.join("dir")).unwrap();
        std::fs::write(d.join("dir/.dotted"), "").unwrap();
        assert_eq!(
            expand_globs(&[d.join("di[r]/.*")]),
            vec![d.join("dir/.dotted")]
        );
        let mut both = expand_globs(&[d.join("*_key"), d.join("plain")]);
        both.sort();
        assert_eq!(
            both,
            vec![
                d.join(".hidden_key"),
                d.join("plain"),
                d.join("ssh_host_ed25519_key"),
                d.join("ssh_host_rsa_key"),
                d.join("sub_key"),
            ]
        );
    }
}
