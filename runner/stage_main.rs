//! `taskbox-stage`: the launch stage as a binary of its own. The runner execs
//! it once per task, so it carries only the sandbox setup (no clap, no
//! tokio, no proxy, no TLS): it starts in a fraction of the runner's time.

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(fd), Some(pass)) = (
        args.next().and_then(|a| a.parse().ok()),
        args.next().and_then(|a| a.parse().ok()),
    ) else {
        eprintln!(
            "taskbox-stage: started by the taskbox runner only (usage: taskbox-stage FD PASS_FD [ns|ns-hostnet|-])"
        );
        std::process::exit(125);
    };
    let early = taskbox::sandbox::native::EarlyNamespaces::parse(&args.next().unwrap_or_default());
    taskbox::sandbox::native::stage_main(fd, pass, early)
}
