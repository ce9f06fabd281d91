//! Link-time wiring for `llama_sys::weight_layout`: on ELF targets, calls of llama.cpp's
//! `llama_load_model_from_file` (made by `llama-cpp-2`) go through our wrapper, which sets the
//! one model parameter the safe crate does not expose (`use_extra_bufts`).
fn main() {
    let vendor = std::env::var("CARGO_CFG_TARGET_VENDOR").unwrap_or_default();
    let family = std::env::var("CARGO_CFG_TARGET_FAMILY").unwrap_or_default();
    if family.split(',').any(|f| f == "unix") && vendor != "apple" {
        println!("cargo:rustc-link-arg=-Wl,--wrap=llama_load_model_from_file");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
