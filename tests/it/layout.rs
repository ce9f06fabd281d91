//! The weight layout reaches llama.cpp: `--low-memory` keeps every weight a view of the mapped
//! file, `--repack` lets the CPU back-end copy Q4_0 weights into its repacked buffer (llama.cpp's
//! own load log says which buffers it made), and the start-up log names the kernels and why.

use crate::common::{self, dscoder};

fn load_log(flag: &str) -> String {
    let model = common::converted(&common::repo("nano/model"), "q4_0");
    let mut cmd = dscoder();
    cmd.args(["run"])
        .arg(&model)
        .args(["-p", "def f", "-n", "2", "--temp", "0"]);
    if !flag.is_empty() {
        cmd.arg(flag);
    }
    let out = cmd
        .env("DSCODER_LLAMA_LOG", "1")
        .env("DSCODER_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    log
}

#[test]
fn low_memory_maps_and_repack_repacks() {
    let low = load_log("--low-memory");
    assert!(low.contains("CPU_Mapped model buffer"), "{low}");
    assert!(!low.contains("CPU_REPACK model buffer"), "{low}");
    let kernels = dscoder::engine::layout::CpuKernels::linked();
    let said = format!(
        "CPU kernels: {}; weights mapped from the file (--low-memory)",
        kernels.describe()
    );
    assert!(low.contains(&said), "{low}");

    let repack = load_log("--repack");
    assert!(repack.contains("CPU_REPACK model buffer"), "{repack}");

    // The default follows the linked kernels (BENCHMARKS.md "Weight layouts").
    let auto = load_log("");
    let repacked = auto.contains("CPU_REPACK model buffer");
    assert_eq!(repacked, !kernels.avx512 && !kernels.amx, "{auto}");
}

#[test]
fn low_memory_and_repack_conflict() {
    let out = dscoder()
        .args(["run", "--low-memory", "--repack", "-p", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--low-memory") && err.contains("--repack"),
        "{err}"
    );
}

#[test]
fn low_memory_reads_the_chosen_experts_ahead_and_changes_no_token() {
    use dscoder::engine::layout::LayoutRequest;
    use dscoder::engine::{Engine, EngineSettings, GenerateOptions, Generator};
    let model = common::converted(&common::repo("nano/model"), "q4_0");
    let greedy = GenerateOptions {
        max_tokens: 24,
        sampling: dscoder::engine::SamplingSettings {
            temperature: 0.0,
            ..Default::default()
        },
        ..Default::default()
    };
    let generate = |prefetch| {
        let engine = Engine::load(
            &model,
            EngineSettings {
                layout: LayoutRequest::LowMemory,
                prefetch,
                ..Default::default()
            },
        )
        .unwrap();
        let prompt = engine.tokenize("def fibonacci(n):", true);
        let mut session = engine.session().unwrap();
        let stats = Generator::new(&mut session, &prompt, &greedy, || false)
            .unwrap()
            .drive(|_| true)
            .unwrap();
        (stats.tokens, engine.prefetch_requests())
    };
    let (tokens, requests) = generate(true);
    // nano: 8 experts, top-2, 2 MoE layers, 3 tensors per expert; each token asks for some.
    let requests = requests.expect("prefetch is on in low-memory mode");
    assert!(requests >= 2 * 3 * 2 * 24, "{requests} slices asked for");
    // The same kernels without the callback: the same tokens.
    let (plain, none) = generate(false);
    assert_eq!(none, None);
    assert_eq!(tokens, plain);
}

/// The memory check's KV cache size is the buffer llama.cpp allocates (its own load log), for
/// the MLA layout (no V cache) in both cache types; Lite's 128K q8_0 context is the unit test's.
#[test]
fn the_kv_estimate_is_the_kv_buffer_llama_cpp_allocates() {
    use dscoder::engine::memory::{kv_bytes, CacheType};
    let model = common::converted(&common::fixture("lite-tiny"), "q8_0");
    let shape =
        dscoder::model::ModelShape::from_gguf(&dscoder::gguf::GgufFile::open(&model).unwrap())
            .unwrap();
    assert!(shape.mla);
    for (cache, ty, n_ctx) in [
        ("f16", CacheType::F16, 4096u32),
        ("q8_0", CacheType::Q8_0, 8192),
    ] {
        let out = dscoder()
            .arg("run")
            .arg(&model)
            .args(["-p", "hi", "-n", "1", "--cache-type", cache])
            .args(["--ctx-size", &n_ctx.to_string()])
            .env("DSCODER_LLAMA_LOG", "1")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        let theirs: f64 = log
            .lines()
            .find_map(|l| {
                let rest = l.split("KV buffer size =").nth(1)?;
                rest.trim().strip_suffix("MiB")?.trim().parse().ok()
            })
            .unwrap_or_else(|| panic!("no KV buffer line: {log}"));
        let ours = kv_bytes(&shape, n_ctx, ty) as f64 / 1048576.0;
        assert!(
            (ours - theirs).abs() <= 0.01,
            "{cache} at {n_ctx}: estimate {ours:.2} MiB, llama.cpp {theirs:.2} MiB"
        );
    }
}
