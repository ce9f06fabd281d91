//! Link-time wiring for `llama_sys::weight_layout` and `llama_sys::eval_callback`: on ELF
//! targets, calls of llama.cpp's `llama_load_model_from_file` and `llama_new_context_with_model`
//! (made by `llama-cpp-2`) go through our wrappers, which set the parameters the safe crate does
//! not expose (`use_extra_bufts`, `cb_eval`).
fn main() {
    let vendor = std::env::var("CARGO_CFG_TARGET_VENDOR").unwrap_or_default();
    let family = std::env::var("CARGO_CFG_TARGET_FAMILY").unwrap_or_default();
    if family.split(',').any(|f| f == "unix") && vendor != "apple" {
        println!("cargo:rustc-link-arg=-Wl,--wrap=llama_load_model_from_file");
        println!("cargo:rustc-link-arg=-Wl,--wrap=llama_new_context_with_model");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
