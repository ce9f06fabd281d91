//! The one place dscoder calls into `llama-cpp-sys-2` directly: all of the crate's FFI.
//!
//! The safe `llama-cpp-2` crate covers loading and running models but not ggml's quantizer entry
//! points. We use those as oracles (our quantizers must produce the same bytes) and as the baseline
//! in benchmarks, so each gets a small safe wrapper here. It does not cover ggml's RPC back-end
//! either (`ggml-rpc.h` is not in the bindings): the few functions `rpc-server` and `--rpc` need
//! are declared here by hand, against the vendored header, with their safety arguments.
//!
//! The only other `unsafe` in this crate, each with its safety argument beside it: memory
//! mapping (`Mmap::map` in `gguf/reader.rs` and `convert/checkpoint.rs`) and the `MADV_DONTNEED`
//! advice in `convert/checkpoint.rs`; four libc calls, `kill(pid, 0)` (is a stale temp file's
//! writer gone? `gguf/writer.rs`), `_exit` (after a lost RPC server, `engine/rpc.rs`),
//! `signal` (the termination signals, `interrupt.rs`) and `posix_fadvise` (expert read-ahead,
//! `engine/prefetch.rs`). Eval callbacks (the prefetcher, `dscoder imatrix`) implement the safe
//! [`eval_callback::Observer`]; the one trampoline here dereferences what ggml passes back.
//!
//! Two model/context parameters that `llama-cpp-2` keeps private are set by wrapping, at link
//! time, the two llama.cpp calls that take them ([`weight_layout`], [`eval_callback`]; the
//! `--wrap` flags come from `build.rs`).
//! (`dscoder-quantize` holds the SIMD kernels' `unsafe`, behind run-time feature checks.)

use std::ffi::CString;
use std::path::Path;

use dscoder_quantize::GgmlType;

/// Quantizes `src` (`nrows` rows of `n_per_row` floats) with ggml's own `ggml_quantize_chunk`,
/// without an importance matrix. This is exactly what `llama-quantize` runs per chunk.
///
/// Panics if `src.len() != nrows * n_per_row` or the row length is not a whole number of blocks;
/// callers are tests and benchmarks with fixed shapes.
pub fn ggml_quantize(ty: GgmlType, src: &[f32], n_per_row: usize) -> Vec<u8> {
    assert!(
        n_per_row > 0 && src.len().is_multiple_of(n_per_row),
        "src is not whole rows"
    );
    let nrows = src.len() / n_per_row;
    let row_bytes = ty
        .row_bytes(n_per_row)
        .expect("row length must be whole blocks");
    let mut dst = vec![0u8; nrows * row_bytes];
    ggml_quantize_into(ty, src, n_per_row, &mut dst);
    dst
}

/// Like [`ggml_quantize`] into a caller's buffer, which must hold exactly the quantized rows.
pub fn ggml_quantize_into(ty: GgmlType, src: &[f32], n_per_row: usize, dst: &mut [u8]) {
    quantize_chunk(ty, src, n_per_row, None, dst);
}

/// ggml's `ggml_quantize_chunk` over whole rows, with an optional importance vector of one row:
/// how dscoder writes the types (and importance-weighted variants) it has no kernel of its own
/// for. The caller guarantees the sizes (panics otherwise) and, for the types ggml cannot
/// quantize without one, an importance vector (`recipe::requires_imatrix`).
pub fn ggml_quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    weights: Option<&[f32]>,
    dst: &mut [u8],
) {
    quantize_chunk(ty, src, n_per_row, weights, dst)
}

/// Decodes whole blocks of `ty` with ggml's own `to_float` (its `dequantize_row_*`): how
/// dscoder reads the types its own decoder lacks (requantizing a downloaded low-bit file).
/// Returns false, touching nothing, for a type ggml cannot decode or sizes that do not match.
pub fn ggml_dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> bool {
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if bs == 0 || !dst.len().is_multiple_of(bs) || src.len() != dst.len() / bs * ts {
        return false;
    }
    // SAFETY: the traits table lookup takes any valid type id (ours come from ggml's table).
    let traits = unsafe {
        llama_cpp_sys_2::ggml_get_type_traits(ty.id() as llama_cpp_sys_2::ggml_type).as_ref()
    };
    let Some(to_float) = traits.and_then(|t| t.to_float) else {
        return false;
    };
    // SAFETY: src holds exactly dst.len() / bs blocks of ty (checked above), which is what
    // to_float reads to write dst.len() floats.
    unsafe { to_float(src.as_ptr().cast(), dst.as_mut_ptr(), dst.len() as i64) };
    true
}

/// `ggml_quantize_requires_imatrix`: ggml aborts quantizing `ty` without importance weights.
pub fn ggml_requires_importance(ty: GgmlType) -> bool {
    // SAFETY: a pure function of the type id, which is a valid ggml type.
    unsafe {
        llama_cpp_sys_2::ggml_quantize_requires_imatrix(ty.id() as llama_cpp_sys_2::ggml_type)
    }
}

/// `ggml_quantize_chunk` over whole rows, with an optional importance vector of one row.
fn quantize_chunk(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    weights: Option<&[f32]>,
    dst: &mut [u8],
) {
    assert!(
        n_per_row > 0 && src.len().is_multiple_of(n_per_row),
        "src is not whole rows"
    );
    assert!(
        weights.is_none_or(|w| w.len() == n_per_row),
        "the importance vector is not one row"
    );
    let nrows = src.len() / n_per_row;
    let row_bytes = ty
        .row_bytes(n_per_row)
        .expect("row length must be whole blocks");
    assert_eq!(dst.len(), nrows * row_bytes, "dst size");
    // SAFETY: src holds nrows*n_per_row floats, weights (when given) one row's worth, and dst
    // exactly the bytes ggml writes for them (checked above); ggml initialises the tables its
    // IQ quantizers need itself, and accepts a null importance vector for every type we pass
    // without one.
    let written = unsafe {
        llama_cpp_sys_2::ggml_quantize_chunk(
            ty.id() as llama_cpp_sys_2::ggml_type,
            src.as_ptr(),
            dst.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            weights.map_or(std::ptr::null(), <[f32]>::as_ptr),
        )
    };
    assert_eq!(written, dst.len(), "ggml wrote an unexpected size");
}

/// What the linked ggml says of type id `id`: `(name, elements per block, bytes per block)`, or
/// `None` for an id beyond `GGML_TYPE_COUNT` or one whose support was removed (block size 0).
/// The oracle for the reader's type table.
pub fn ggml_type_traits(id: u32) -> Option<(String, usize, usize)> {
    if id >= llama_cpp_sys_2::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: `id` is below GGML_TYPE_COUNT, the size of ggml's traits table, so these are plain
    // table reads; the name is a static C string.
    unsafe {
        let ty = id as llama_cpp_sys_2::ggml_type;
        let block = llama_cpp_sys_2::ggml_blck_size(ty);
        if block <= 0 {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(llama_cpp_sys_2::ggml_type_name(ty))
            .to_string_lossy()
            .into_owned();
        Some((name, block as usize, llama_cpp_sys_2::ggml_type_size(ty)))
    }
}

/// Like [`ggml_quantize`] with an importance vector (`n_per_row` weights, ggml's
/// `quant_weights`), which ggml requires for its lowest-bit types.
pub fn ggml_quantize_weighted(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    weights: &[f32],
) -> Vec<u8> {
    let rows = src.len() / n_per_row.max(1);
    let mut dst = vec![0u8; rows * ty.row_bytes(n_per_row).unwrap_or(0)];
    quantize_chunk(ty, src, n_per_row, Some(weights), &mut dst);
    dst
}

/// Runs llama.cpp's `llama_model_quantize` (what `llama-quantize` does) in process, without an
/// imatrix. Used as the reference for `dscoder quantize`.
pub fn llama_quantize_file(
    input: &Path,
    output: &Path,
    ftype: u32,
    pure: bool,
    threads: i32,
) -> Result<(), String> {
    llama_quantize_file_weighted(input, output, ftype, pure, threads, &[])
}

/// Like [`llama_quantize_file`], with importance vectors by tensor name (what `llama-quantize
/// --imatrix` hands llama.cpp after normalising the file: mean x² per column and matrix).
pub fn llama_quantize_file_weighted(
    input: &Path,
    output: &Path,
    ftype: u32,
    pure: bool,
    threads: i32,
    imatrix: &[(String, Vec<f32>)],
) -> Result<(), String> {
    let cstr = |p: &Path| {
        CString::new(p.to_string_lossy().as_bytes())
            .map_err(|_| format!("path {} has a NUL", p.display()))
    };
    let (inp, out) = (cstr(input)?, cstr(output)?);
    let names = imatrix
        .iter()
        .map(|(n, _)| CString::new(n.as_str()).map_err(|_| format!("name {n} has a NUL")))
        .collect::<Result<Vec<_>, _>>()?;
    let mut entries: Vec<llama_cpp_sys_2::llama_model_imatrix_data> = names
        .iter()
        .zip(imatrix)
        .map(|(n, (_, v))| llama_cpp_sys_2::llama_model_imatrix_data {
            name: n.as_ptr(),
            data: v.as_ptr(),
            size: v.len(),
        })
        .collect();
    // llama.cpp reads the array up to an entry with a null name.
    entries.push(llama_cpp_sys_2::llama_model_imatrix_data {
        name: std::ptr::null(),
        data: std::ptr::null(),
        size: 0,
    });
    // SAFETY: plain C calls; the params struct comes from llama.cpp's own defaults, and the
    // strings, the terminated entry array and the vectors it points into outlive the call.
    let rc = unsafe {
        llama_cpp_sys_2::llama_backend_init();
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = ftype as _;
        params.pure_ = pure;
        params.nthread = threads;
        // Only matters for already-quantized input, which the tests requantize on purpose.
        params.allow_requantize = true;
        if !imatrix.is_empty() {
            params.imatrix = entries.as_ptr();
        }
        llama_cpp_sys_2::llama_model_quantize(inp.as_ptr(), out.as_ptr(), &params)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("llama_model_quantize failed with code {rc}"))
    }
}

/// What ggml's own GGUF reader sees in a file: the oracle for dscoder's GGUF writer.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufSummary {
    pub version: u32,
    pub alignment: usize,
    pub data_offset: usize,
    pub n_kv: i64,
    pub n_tensors: i64,
    pub kvs: Vec<GgufSummaryKv>,
    pub tensors: Vec<GgufSummaryTensor>,
}

/// One key/value pair as ggml read it.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufSummaryKv {
    pub key: String,
    /// `enum gguf_type` of the value (9 for arrays).
    pub type_id: u32,
    /// Element type of an array.
    pub arr_type_id: Option<u32>,
    /// Elements of an array (1 for a scalar).
    pub n: usize,
    /// Little-endian bytes of a non-string scalar or array (bools one byte each); empty for strings.
    pub data: Vec<u8>,
    /// The string, or the elements of a string array.
    pub strings: Vec<String>,
}

/// One tensor info as ggml read it.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufSummaryTensor {
    pub name: String,
    /// Relative to the data section.
    pub offset: usize,
    pub type_id: u32,
    pub ne: [i64; 4],
    pub size: usize,
}

/// Reads `path` with ggml's `gguf_init_from_file` (metadata only) and reports what it found.
/// `Err` if ggml rejects the file.
pub fn gguf_summary(path: &Path) -> Result<GgufSummary, String> {
    use std::ffi::CStr;
    use std::os::raw::c_char;

    use llama_cpp_sys_2 as sys;

    /// Copies a C string returned by ggml (never null for valid ids).
    unsafe fn owned(p: *const c_char) -> String {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
    /// Bytes of one element of a fixed-size `gguf_type`.
    fn elem_size(ty: u32) -> usize {
        match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            _ => 8,
        }
    }

    let cpath = CString::new(path.to_string_lossy().as_bytes())
        .map_err(|_| format!("path {} has a NUL", path.display()))?;
    let params = sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    };
    // SAFETY: params asks for metadata only (no ggml context); the path outlives the call.
    let ctx = unsafe { sys::gguf_init_from_file(cpath.as_ptr(), params) };
    if ctx.is_null() {
        return Err(format!(
            "ggml's gguf_init_from_file rejected {}",
            path.display()
        ));
    }
    // SAFETY: ctx is a valid context until gguf_free below; every id passed is in range
    // (0..n_kv, 0..n_tensors), and each getter is called only for the value type it asserts
    // (dispatching on gguf_get_kv_type / gguf_get_arr_type). Data pointers are read for exactly
    // n elements of the stored type, and only when n > 0.
    let summary = unsafe {
        let n_kv = sys::gguf_get_n_kv(ctx);
        let n_tensors = sys::gguf_get_n_tensors(ctx);
        let mut kvs = Vec::new();
        for i in 0..n_kv {
            let key = owned(sys::gguf_get_key(ctx, i));
            let type_id = sys::gguf_get_kv_type(ctx, i) as u32;
            let mut kv = GgufSummaryKv {
                key,
                type_id,
                arr_type_id: None,
                n: 1,
                data: Vec::new(),
                strings: Vec::new(),
            };
            if type_id == sys::GGUF_TYPE_ARRAY {
                let at = sys::gguf_get_arr_type(ctx, i) as u32;
                let n = sys::gguf_get_arr_n(ctx, i);
                kv.arr_type_id = Some(at);
                kv.n = n;
                if at == sys::GGUF_TYPE_STRING {
                    kv.strings = (0..n)
                        .map(|j| owned(sys::gguf_get_arr_str(ctx, i, j)))
                        .collect();
                } else if n > 0 {
                    let p = sys::gguf_get_arr_data(ctx, i).cast::<u8>();
                    kv.data = std::slice::from_raw_parts(p, n * elem_size(at)).to_vec();
                }
            } else if type_id == sys::GGUF_TYPE_STRING {
                kv.strings = vec![owned(sys::gguf_get_val_str(ctx, i))];
            } else {
                let p = sys::gguf_get_val_data(ctx, i).cast::<u8>();
                kv.data = std::slice::from_raw_parts(p, elem_size(type_id)).to_vec();
            }
            kvs.push(kv);
        }
        let mut tensors = Vec::new();
        for i in 0..n_tensors {
            let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(ctx, i), 4);
            tensors.push(GgufSummaryTensor {
                name: owned(sys::gguf_get_tensor_name(ctx, i)),
                offset: sys::gguf_get_tensor_offset(ctx, i),
                type_id: sys::gguf_get_tensor_type(ctx, i) as u32,
                ne: [ne[0], ne[1], ne[2], ne[3]],
                size: sys::gguf_get_tensor_size(ctx, i),
            });
        }
        let summary = GgufSummary {
            version: sys::gguf_get_version(ctx),
            alignment: sys::gguf_get_alignment(ctx),
            data_offset: sys::gguf_get_data_offset(ctx),
            n_kv,
            n_tensors,
            kvs,
            tensors,
        };
        sys::gguf_free(ctx);
        summary
    };
    Ok(summary)
}

/// `ggml/include/ggml-rpc.h` of the vendored llama.cpp, which bindgen does not cover. llama.cpp is
/// built with `GGML_RPC=ON` (`.cargo/config.toml`), so `libggml-rpc` is linked in.
mod rpc_ffi {
    use std::os::raw::c_char;

    use llama_cpp_sys_2::{ggml_backend_dev_t, ggml_backend_reg_t};

    extern "C" {
        pub fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> ggml_backend_reg_t;
        pub fn ggml_backend_rpc_start_server(
            endpoint: *const c_char,
            cache_dir: *const c_char,
            n_threads: usize,
            n_devices: usize,
            devices: *mut ggml_backend_dev_t,
        );
    }
}

/// Connects to the ggml RPC server at `endpoint` (`host:port`) and registers its devices with
/// ggml, so models loaded afterwards can place layers on them. Registering the same endpoint
/// again does nothing. `Err` when the server does not answer as a compatible RPC server.
pub fn rpc_add_server(endpoint: &str) -> Result<(), String> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static REGISTERED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    let c = CString::new(endpoint).map_err(|_| format!("{endpoint:?} has a NUL"))?;
    let mut registered = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    let set = registered.get_or_insert_with(HashSet::new);
    if set.contains(endpoint) {
        return Ok(());
    }
    // SAFETY: the string outlives the call; ggml returns null when it cannot talk to the
    // server, and otherwise a registry it owns for the life of the process, which is what
    // ggml_backend_register takes (it keeps the pointer).
    unsafe {
        let reg = rpc_ffi::ggml_backend_rpc_add_server(c.as_ptr());
        if reg.is_null() {
            return Err(format!(
                "{endpoint} did not answer as a ggml RPC server of this version (protocol {}.x)",
                RPC_PROTO_MAJOR
            ));
        }
        llama_cpp_sys_2::ggml_backend_register(reg);
    }
    set.insert(endpoint.to_string());
    Ok(())
}

/// `RPC_PROTO_MAJOR_VERSION` of the vendored `ggml-rpc.h`: servers and clients must agree.
pub const RPC_PROTO_MAJOR: u32 = 7;

/// Serves this machine's devices (the CPU, and the GPUs of a GPU build) over ggml's RPC
/// protocol at `endpoint` until the process ends. Returns only when ggml gives up (it prints
/// why on stderr, e.g. the address is taken).
pub fn rpc_start_server(
    endpoint: &str,
    cache_dir: Option<&Path>,
    threads: usize,
) -> Result<(), String> {
    let c = CString::new(endpoint).map_err(|_| format!("{endpoint:?} has a NUL"))?;
    let cache = cache_dir
        .map(|p| CString::new(p.to_string_lossy().as_bytes()))
        .transpose()
        .map_err(|_| "the cache folder's path has a NUL".to_string())?;
    // SAFETY: device handles come from ggml's own registry and live for the process; the
    // array and the strings outlive the (blocking) call.
    unsafe {
        let mut devices = Vec::new();
        for i in 0..llama_cpp_sys_2::ggml_backend_dev_count() {
            let dev = llama_cpp_sys_2::ggml_backend_dev_get(i);
            let ty = llama_cpp_sys_2::ggml_backend_dev_type(dev);
            if ty == llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_GPU
                || ty == llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_IGPU
            {
                devices.push(dev);
            }
        }
        // As ggml's rpc-server: the accelerators if there are any, else the CPU.
        if devices.is_empty() {
            let cpu = llama_cpp_sys_2::ggml_backend_dev_by_type(
                llama_cpp_sys_2::GGML_BACKEND_DEVICE_TYPE_CPU,
            );
            if cpu.is_null() {
                return Err("ggml has no CPU device".into());
            }
            devices.push(cpu);
        }
        rpc_ffi::ggml_backend_rpc_start_server(
            c.as_ptr(),
            cache.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            threads,
            devices.len(),
            devices.as_mut_ptr(),
        );
    }
    Err(format!("the RPC server at {endpoint} stopped"))
}

/// Makes ggml call `handler` with its message before it aborts, so a failure inside llama.cpp (a
/// dead RPC server) can be explained first. The abort follows when the handler returns; a
/// handler may end the process itself instead.
pub fn set_ggml_abort_handler(handler: fn(&str)) {
    use std::sync::OnceLock;
    static HANDLER: OnceLock<fn(&str)> = OnceLock::new();

    extern "C" fn trampoline(message: *const std::os::raw::c_char) {
        let text = if message.is_null() {
            String::new()
        } else {
            // SAFETY: ggml passes a NUL-terminated message that lives for this call.
            unsafe { std::ffi::CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        };
        if let Some(h) = HANDLER.get() {
            h(&text);
        }
    }

    if HANDLER.set(handler).is_ok() {
        // SAFETY: ggml stores the function pointer and calls it on its abort path only.
        unsafe {
            llama_cpp_sys_2::ggml_set_abort_callback(Some(trampoline));
        }
    }
}

/// The CPU kernels compiled into the linked ggml (its `ggml_cpu_has_*` answers, which report
/// the instruction sets ggml-cpu was built for).
pub fn cpu_kernels() -> crate::engine::layout::CpuKernels {
    // SAFETY: argument-less queries of compile-time constants; they touch no state.
    unsafe {
        use llama_cpp_sys_2 as sys;
        crate::engine::layout::CpuKernels {
            avx2: sys::ggml_cpu_has_avx2() != 0,
            avx512: sys::ggml_cpu_has_avx512() != 0,
            avx512_vnni: sys::ggml_cpu_has_avx512_vnni() != 0,
            avx512_bf16: sys::ggml_cpu_has_avx512_bf16() != 0,
            amx: sys::ggml_cpu_has_amx_int8() != 0,
            neon: sys::ggml_cpu_has_neon() != 0,
        }
    }
}

/// Weight layouts: whether llama.cpp may put weights in the CPU back-end's "extra" buffer types
/// (`llama_model_params::use_extra_bufts`), which `llama-cpp-2` does not expose.
///
/// Those buffer types repack Q4_0/Q4_K/IQ4_NL/Q2_K weights into interleaved anonymous memory
/// for the AVX2/NEON kernels, and, in a native build on a CPU with AMX, hold AMX tiles. Without
/// them every weight stays a view of the memory-mapped file: its pages are shared with the page
/// cache and evictable (the low-memory mode), the AVX-512 kernels read the plain layout, and the
/// AMX buffer type, with which llama.cpp aborts on deepseek2's 3-D MLA matmuls, is never chosen.
///
/// The safe crate's `LlamaModel::load_from_file` passes its params by value to llama.cpp's
/// `llama_load_model_from_file`; the parameters are a private field. So on ELF targets the
/// build script links with `--wrap=llama_load_model_from_file`: calls from `llama-cpp-2` reach
/// [`__wrap_llama_load_model_from_file`] below, which sets the one flag and calls the real
/// function. Elsewhere (macOS's linker has no `--wrap`) the flag cannot be set and
/// [`extra_buffers_settable`] says so.
pub mod weight_layout {
    use std::os::raw::c_char;
    use std::sync::atomic::{AtomicBool, Ordering};

    static EXTRA_BUFFERS: AtomicBool = AtomicBool::new(true);
    static WRAPPER_RAN: AtomicBool = AtomicBool::new(false);

    /// Whether the next model load may use the extra (repacking, AMX) buffer types.
    pub fn set_extra_buffers(on: bool) {
        EXTRA_BUFFERS.store(on, Ordering::SeqCst);
        // A reference keeps the wrapper's object file in the link, whatever the archive order.
        #[cfg(all(unix, not(target_vendor = "apple")))]
        {
            let wrapper: unsafe extern "C" fn(
                *const c_char,
                llama_cpp_sys_2::llama_model_params,
            ) -> *mut llama_cpp_sys_2::llama_model = __wrap_llama_load_model_from_file;
            std::hint::black_box(wrapper);
        }
    }

    /// True when this build routes model loads through the wrapper (ELF targets), so
    /// [`set_extra_buffers`] takes effect.
    pub fn extra_buffers_settable() -> bool {
        cfg!(all(unix, not(target_vendor = "apple")))
    }

    /// True once a model load went through the wrapper: the proof, after a load, that the flag
    /// reached llama.cpp.
    pub fn wrapper_ran() -> bool {
        WRAPPER_RAN.load(Ordering::SeqCst)
    }

    #[cfg(all(unix, not(target_vendor = "apple")))]
    extern "C" {
        fn __real_llama_load_model_from_file(
            path: *const c_char,
            params: llama_cpp_sys_2::llama_model_params,
        ) -> *mut llama_cpp_sys_2::llama_model;
    }

    /// Stands in for `llama_load_model_from_file` (see the module docs).
    ///
    /// # Safety
    /// The linker routes every call of `llama_load_model_from_file` here, with the caller's
    /// arguments unchanged; `llama_model_params` is the bindgen (`repr(C)`) struct of the linked
    /// header, passed by value as the C declaration does, and only its `use_extra_bufts` bool is
    /// changed before the real function gets the same `path` pointer.
    #[cfg(all(unix, not(target_vendor = "apple")))]
    #[no_mangle]
    pub unsafe extern "C" fn __wrap_llama_load_model_from_file(
        path: *const c_char,
        mut params: llama_cpp_sys_2::llama_model_params,
    ) -> *mut llama_cpp_sys_2::llama_model {
        WRAPPER_RAN.store(true, Ordering::SeqCst);
        params.use_extra_bufts = EXTRA_BUFFERS.load(Ordering::SeqCst);
        // SAFETY: see the function's safety section.
        unsafe { __real_llama_load_model_from_file(path, params) }
    }
}

/// An eval callback for the next context a thread creates: llama.cpp's `cb_eval`, which
/// `llama-cpp-2` does not expose (`LlamaContextParams`' raw params are private).
///
/// As with [`weight_layout`], on ELF targets the build script links with
/// `--wrap=llama_new_context_with_model`; [`__wrap_llama_new_context_with_model`] takes the
/// callback set by [`set_next_eval_callback`] on the same thread (once) and puts it in the
/// params before the real call. ggml then calls it for every graph node: first asking whether
/// the node is wanted (`ask == true`), then, for wanted ones, once the node's data is computed.
pub mod eval_callback {
    use std::cell::Cell;
    use std::os::raw::c_void;

    /// What ggml calls: `(tensor, ask, user_data) -> bool` (true: observe it / go on).
    pub type Callback =
        unsafe extern "C" fn(*mut llama_cpp_sys_2::ggml_tensor, bool, *mut c_void) -> bool;

    thread_local! {
        static NEXT: Cell<Option<(Callback, *mut c_void)>> = const { Cell::new(None) };
    }

    /// Makes the next context created on this thread call `callback` with `user_data`, which
    /// must stay valid for as long as that context lives. Returns false where the call cannot be
    /// routed (not an ELF target); nothing is then installed.
    pub fn set_next_eval_callback(callback: Callback, user_data: *mut c_void) -> bool {
        if !super::weight_layout::extra_buffers_settable() {
            return false;
        }
        NEXT.with(|n| n.set(Some((callback, user_data))));
        #[cfg(all(unix, not(target_vendor = "apple")))]
        {
            let wrapper: unsafe extern "C" fn(
                *mut llama_cpp_sys_2::llama_model,
                llama_cpp_sys_2::llama_context_params,
            ) -> *mut llama_cpp_sys_2::llama_context = __wrap_llama_new_context_with_model;
            std::hint::black_box(wrapper);
        }
        true
    }

    /// What watches a context's computation: asked for each node whether it wants to see it
    /// computed, then shown it (during ggml's graph compute, from its threads).
    pub trait Observer: Sync {
        fn wants(&self, node: &Node<'_>) -> bool;
        fn observe(&self, node: &Node<'_>);
    }

    /// ggml's callback for an [`Observer`] of type `T` passed as the user data.
    unsafe extern "C" fn trampoline<T: Observer>(
        t: *mut llama_cpp_sys_2::ggml_tensor,
        ask: bool,
        user_data: *mut c_void,
    ) -> bool {
        // SAFETY: ggml passes the node it evaluates, alive for this call (or null, refused).
        let Some(node) = (unsafe { Node::new(t) }) else {
            return !ask;
        };
        // SAFETY: `user_data` is the `T` that `observer_callback` paired with this function;
        // the caller of that promised it outlives the context.
        let Some(observer) = (unsafe { user_data.cast::<T>().as_ref() }) else {
            return !ask;
        };
        if ask {
            return observer.wants(&node);
        }
        observer.observe(&node);
        // True: go on computing the graph.
        true
    }

    /// The callback and user data that route ggml's calls to `observer`, which must outlive the
    /// context they are given to (the engine's sessions borrow it for their lifetime).
    pub fn observer_callback<T: Observer>(observer: &T) -> (Callback, *mut c_void) {
        (trampoline::<T>, observer as *const T as *mut c_void)
    }

    /// Forgets a callback that no context took.
    pub fn clear_next_eval_callback() {
        NEXT.with(|n| n.set(None));
    }

    #[cfg(all(unix, not(target_vendor = "apple")))]
    extern "C" {
        fn __real_llama_new_context_with_model(
            model: *mut llama_cpp_sys_2::llama_model,
            params: llama_cpp_sys_2::llama_context_params,
        ) -> *mut llama_cpp_sys_2::llama_context;
    }

    /// Stands in for `llama_new_context_with_model` (see the module docs).
    ///
    /// # Safety
    /// The linker routes every call of `llama_new_context_with_model` here with the caller's
    /// arguments; the params struct is the bindgen (`repr(C)`) one of the linked header, passed
    /// by value. Only `cb_eval` and `cb_eval_user_data` change, and only to a callback whose
    /// setter promised that its data outlives the context.
    #[cfg(all(unix, not(target_vendor = "apple")))]
    #[no_mangle]
    pub unsafe extern "C" fn __wrap_llama_new_context_with_model(
        model: *mut llama_cpp_sys_2::llama_model,
        mut params: llama_cpp_sys_2::llama_context_params,
    ) -> *mut llama_cpp_sys_2::llama_context {
        if let Some((callback, data)) = NEXT.with(|n| n.take()) {
            params.cb_eval = Some(callback);
            params.cb_eval_user_data = data;
        }
        // SAFETY: see the function's safety section.
        unsafe { __real_llama_new_context_with_model(model, params) }
    }

    /// The operations an observer tells apart.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Op {
        MulMat,
        MulMatId,
        Other,
    }

    /// A computed tensor as the callback sees it: its name and, for an I32 tensor in host
    /// memory, its elements by (column, row).
    pub struct Node<'a> {
        tensor: &'a llama_cpp_sys_2::ggml_tensor,
    }

    impl<'a> Node<'a> {
        /// # Safety
        /// `t` is the tensor ggml passed to the callback, alive during the call.
        pub unsafe fn new(t: *mut llama_cpp_sys_2::ggml_tensor) -> Option<Node<'a>> {
            // SAFETY: ggml passes a valid tensor pointer (or null, refused here).
            unsafe { t.as_ref() }.map(|tensor| Node { tensor })
        }

        pub fn name(&self) -> &str {
            let bytes: &[u8] = bytemuck_name(&self.tensor.name);
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            std::str::from_utf8(&bytes[..end]).unwrap_or("")
        }

        /// The operation that computed it.
        pub fn op(&self) -> Op {
            match self.tensor.op {
                llama_cpp_sys_2::GGML_OP_MUL_MAT => Op::MulMat,
                llama_cpp_sys_2::GGML_OP_MUL_MAT_ID => Op::MulMatId,
                _ => Op::Other,
            }
        }

        /// Operand `i` (`src[i]`), when present.
        pub fn src(&self, i: usize) -> Option<Node<'a>> {
            let p = *self.tensor.src.get(i)?;
            // SAFETY: ggml's operands of a live node are live tensors (or null, refused).
            unsafe { p.as_ref() }.map(|tensor| Node { tensor })
        }

        /// All four extents (`ne`).
        pub fn ne(&self) -> [usize; 4] {
            self.tensor.ne.map(|n| n.max(0) as usize)
        }

        fn on_host(&self) -> bool {
            let t = self.tensor;
            // SAFETY: a non-null buffer pointer from ggml; the query reads its type.
            !t.data.is_null()
                && (t.buffer.is_null()
                    || unsafe { llama_cpp_sys_2::ggml_backend_buffer_is_host(t.buffer) })
        }

        /// Row `(i1, i2, i3)` of an F32 tensor in host memory whose rows are contiguous
        /// (`nb[0]` = 4): `ne[0]` floats. `None` otherwise.
        pub fn f32_row(&self, i1: usize, i2: usize, i3: usize) -> Option<&'a [f32]> {
            let t = self.tensor;
            let ne = self.ne();
            if t.type_ != llama_cpp_sys_2::GGML_TYPE_F32
                || t.nb[0] != 4
                || i1 >= ne[1]
                || i2 >= ne[2]
                || i3 >= ne[3]
                || !self.on_host()
            {
                return None;
            }
            let offset = i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3];
            // SAFETY: the row lies inside the tensor (indices below ne, ggml's strides), the
            // data is host memory computed before ggml called back, F32 rows are 4-byte
            // aligned in ggml's buffers, and the node outlives this borrow (the callback).
            Some(unsafe {
                std::slice::from_raw_parts(t.data.cast::<u8>().add(offset).cast::<f32>(), ne[0])
            })
        }

        /// `ne[0]` and `ne[1]`.
        pub fn shape(&self) -> (usize, usize) {
            (
                self.tensor.ne[0].max(0) as usize,
                self.tensor.ne[1].max(0) as usize,
            )
        }

        /// Element (i, j) of an I32 tensor whose data is in host memory; `None` otherwise.
        pub fn i32_at(&self, i: usize, j: usize) -> Option<i32> {
            let t = self.tensor;
            let (n0, n1) = self.shape();
            if t.type_ != llama_cpp_sys_2::GGML_TYPE_I32 || t.data.is_null() || i >= n0 || j >= n1 {
                return None;
            }
            // A CPU-only context computes into host memory; with a GPU back-end the buffer
            // may be device memory, which must not be read here.
            // SAFETY: a non-null buffer pointer from ggml; the query reads its type.
            let host = t.buffer.is_null()
                || unsafe { llama_cpp_sys_2::ggml_backend_buffer_is_host(t.buffer) };
            if !host {
                return None;
            }
            let offset = i * t.nb[0] + j * t.nb[1];
            // SAFETY: (i, j) is inside ne, the strides are ggml's, and the data is host
            // memory computed before ggml called back.
            Some(unsafe {
                t.data
                    .cast::<u8>()
                    .add(offset)
                    .cast::<i32>()
                    .read_unaligned()
            })
        }
    }

    fn bytemuck_name(name: &[std::os::raw::c_char; 64]) -> &[u8] {
        // SAFETY: c_char and u8 have the same size and alignment.
        unsafe { std::slice::from_raw_parts(name.as_ptr().cast::<u8>(), name.len()) }
    }
}
