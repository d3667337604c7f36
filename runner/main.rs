//! The `taskbox` binary: hands the arguments to `taskbox::cli::run`, prints the
//! error chain, and exits with the code the command-line contract names.

fn main() {
    let code = match taskbox::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("taskbox: {e:#}");
            taskbox::cli::exit_code_of(&e)
        }
    };
    std::process::exit(code);
}
