//! Starting a helper process on another CPU than its creator's.
//!
//! Measured on our 2-vCPU machines: a process forked by a parent that keeps
//! running waits on the parent's CPU until the parent blocks or the idle
//! CPU's balancer pulls it (median 1.0 ms when the parent computes for 1
//! ms); moved to the other CPU at once, it runs 0.2 ms after the fork. The
//! runner forks the stage and then parses, loads and plans; the stage forks
//! pid 1 and then fills the Landlock ruleset. Without the move the
//! "parallel" half of each ran after the other: moving the stage took
//! 0.37 ms off a Landlock + seccomp launch and 0.6 ms off a namespaced one;
//! moving pid 1 another 0.03-0.18 ms. (The stage's network namespace is
//! made by the stage itself, in its one `unshare`: a thread for it was
//! slower wherever it ran, see `ns::enter`.)
//!
//! The move is temporary: it narrows a process's CPUs to "the runner's but
//! mine", and the process widens them back to the runner's set at a point
//! ordered after the move (the stage when the plan arrives; the command
//! after the stage's Landlock report; pid 1 once the command exec'd),
//! before anything of the task starts. So no command inherits a narrowed
//! set; a test compares its `Cpus_allowed_list` with its caller's. Best
//! effort: a failed call changes only the timing.

/// The CPUs the runner may use: the set every process of a task keeps.
#[derive(Clone, Copy)]
pub struct Spread {
    allowed: libc::cpu_set_t,
}

const SET: usize = std::mem::size_of::<libc::cpu_set_t>();

impl Spread {
    /// This process's CPUs; `None` with fewer than two (nowhere to go).
    pub fn here() -> Option<Self> {
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
        let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the size passed is that of the set written to.
        let rc = unsafe { libc::sched_getaffinity(0, SET, &mut allowed) };
        // SAFETY: reads the set only.
        (rc == 0 && unsafe { libc::CPU_COUNT(&allowed) } > 1).then_some(Self { allowed })
    }

    /// The set without the CPU the caller runs on now, if any CPU is left.
    fn others(&self) -> Option<libc::cpu_set_t> {
        // SAFETY: sched_getcpu has no arguments.
        let me = usize::try_from(unsafe { libc::sched_getcpu() }).ok()?;
        let mut others = self.allowed;
        if me < libc::CPU_SETSIZE as usize {
            // SAFETY: `me` is below CPU_SETSIZE.
            unsafe { libc::CPU_CLR(me, &mut others) };
        }
        // SAFETY: reads the set only.
        (unsafe { libc::CPU_COUNT(&others) } > 0).then_some(others)
    }

    /// Moves the process `pid` off the caller's CPU; it must call
    /// [`Spread::restore`] at a point it reaches only after this call,
    /// before it starts anything of the task.
    pub fn away(&self, pid: libc::pid_t) {
        if let Some(others) = self.others() {
            // SAFETY: the set passed lives for the call.
            unsafe { libc::sched_setaffinity(pid, SET, &others) };
        }
    }

    /// Gives the calling process the runner's CPUs back.
    pub fn restore(&self) {
        // SAFETY: the set passed lives for the call.
        unsafe { libc::sched_setaffinity(0, SET, &self.allowed) };
    }
}
