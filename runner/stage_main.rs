//! `taskbox-stage`: the launch stage as a binary of its own, for a stage the
//! runner cannot fork (it may have threads by then) and so execs. It carries
//! only the sandbox setup (no clap, no tokio, no proxy, no TLS): it starts
//! in a fraction of the runner's time.

fn main() {
    taskbox::sandbox::native::stage_entry(std::env::args().skip(1))
}
