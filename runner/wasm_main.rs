//! `taskbox-wasm`: the WASM backend's helper (compile into the cache; run a
//! tool as the command of a native task). Declares no modules; the work is in
//! `taskbox::sandbox::wasm`.

fn main() {
    std::process::exit(taskbox::sandbox::wasm::helper_main(
        std::env::args().collect(),
    ))
}
