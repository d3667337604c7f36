//! `taskbox __exec`: the launch stage. Hidden; started only by the runner.

/// Arguments of the launch stage.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// Descriptor of the socket carrying the plan.
    #[arg(long)]
    fd: i32,
    /// Descriptor of the socket that carries descriptors back (the proxy listener).
    #[arg(long)]
    pass_fd: i32,
}

impl ExecArgs {
    /// Becomes the stage; never returns.
    pub fn execute(self) -> anyhow::Result<i32> {
        crate::sandbox::native::stage_main(self.fd, self.pass_fd)
    }
}
