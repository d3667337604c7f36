//! `taskbox-stage`: the launch stage as a binary of its own. The runner execs
//! it once per task, so it carries only the sandbox setup (no clap, no
//! tokio, no proxy, no TLS): it starts in a fraction of the runner's time.

fn main() {
    taskbox::sandbox::native::stage_entry(std::env::args().skip(1))
}
