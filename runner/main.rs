//! The `taskbox` binary: hands the arguments to `taskbox::cli::run` (or, with
//! `__stage`, becomes the launch stage when `taskbox-stage` is not beside it), prints the
//! error chain, and exits with the code the command-line contract names.

fn main() {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(taskbox::sandbox::native::SELF_STAGE_ARG) {
        taskbox::sandbox::native::stage_entry(args)
    }
    let code = match taskbox::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("taskbox: {e:#}");
            taskbox::cli::exit_code_of(&e)
        }
    };
    std::process::exit(code);
}
