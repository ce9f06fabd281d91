//! Other machines' devices over ggml's RPC back-end (`--rpc host:port,...`).
//!
//! Each `dscoder rpc-server` (or llama.cpp's `rpc-server`) serves its machine's CPU or GPUs;
//! registered here, its device joins the local ones, and llama.cpp places whole layers on the
//! devices in proportion to their free memory (remote devices first, to keep the hidden state's
//! trips over the network few: one per device boundary per token). This module checks each
//! server before llama.cpp sees it, so a server that is down or of another protocol version is a
//! clear error, and describes the placement llama.cpp will make ([`split_layers`] is its rule).
//!
//! A server that dies mid-generation makes ggml abort inside a decode; the abort handler
//! installed here turns that into one line naming the servers that no longer answer, and exit
//! status 1. The protocol has no timeouts of its own: a server that hangs without closing its
//! connection stalls the client (ggml's limitation; documented).

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::Duration;

use super::EngineError;
use crate::llama_sys;

/// How long a server may take to accept a connection before it counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The endpoints registered in this process, for the abort handler's message.
static SERVERS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Checks and registers each endpoint (`host:port`); a no-op for an empty list.
pub fn connect(endpoints: &[String]) -> Result<(), EngineError> {
    for endpoint in endpoints {
        let err = |message: String| EngineError::Rpc {
            endpoint: endpoint.clone(),
            message,
        };
        let addr = resolve(endpoint).map_err(err)?;
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| {
            err(format!(
                "cannot connect ({e}); is `dscoder rpc-server` running there?"
            ))
        })?;
        llama_sys::rpc_add_server(endpoint).map_err(err)?;
        let mut servers = SERVERS.lock().unwrap_or_else(|e| e.into_inner());
        if !servers.contains(endpoint) {
            servers.push(endpoint.clone());
        }
    }
    if !endpoints.is_empty() {
        llama_sys::set_ggml_abort_handler(on_ggml_abort);
    }
    Ok(())
}

/// `host:port` to one socket address, with the reason when it is not one.
fn resolve(endpoint: &str) -> Result<std::net::SocketAddr, String> {
    let (host, port) = endpoint
        .rsplit_once(':')
        .ok_or_else(|| "expected HOST:PORT, e.g. 192.168.1.20:50052".to_string())?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err("expected HOST:PORT with a port from 0 to 65535".into());
    }
    endpoint
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve the address: {e}"))?
        .next()
        .ok_or_else(|| "the address resolves to nothing".into())
}

/// ggml is about to abort: with RPC servers in play the likely cause is one that died. Name the
/// ones that no longer accept connections and exit without the abort's core dump.
fn on_ggml_abort(message: &str) {
    let message = message.trim();
    let servers = SERVERS.try_lock().map(|s| s.clone()).unwrap_or_default();
    let down: Vec<&str> = servers
        .iter()
        .filter(|s| {
            resolve(s)
                .ok()
                .and_then(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok())
                .is_none()
        })
        .map(String::as_str)
        .collect();
    let who = if down.is_empty() {
        format!("one of the RPC servers ({})", servers.join(", "))
    } else {
        format!("the RPC server {} (not answering)", down.join(", "))
    };
    eprintln!("error: lost {who}; generation cannot go on. ggml: {message}");
    // SAFETY: _exit ends the process at once, without running C++ destructors that might touch
    // the half-failed back-end (which is why it is used instead of std::process::exit).
    unsafe { libc::_exit(1) }
}

/// llama.cpp's layer placement over devices (`llama_model::load_tensors`): the last
/// `n_gpu_layers` of the `n_layer + 1` layers (the output layer last) go to the devices, split at
/// the cumulative shares of `free`. Returns each layer's device index, `None` for the CPU.
pub fn split_layers(n_layer: usize, n_gpu_layers: usize, free: &[u64]) -> Vec<Option<usize>> {
    let total: f64 = free.iter().map(|&f| f as f64).sum();
    let mut cumulative = Vec::with_capacity(free.len());
    let mut sum = 0.0f32;
    for &f in free {
        sum += f as f32;
        cumulative.push(sum);
    }
    for c in &mut cumulative {
        *c /= sum;
    }
    let start = (n_layer + 1).saturating_sub(n_gpu_layers);
    let active = if free.is_empty() || total <= 0.0 {
        0
    } else {
        n_gpu_layers.min(n_layer + 1)
    };
    (0..=n_layer)
        .map(|il| {
            if il < start || il - start >= active {
                return None;
            }
            let x = (il - start) as f32 / active as f32;
            // std::upper_bound: the first split point greater than x.
            let d = cumulative.partition_point(|&c| c <= x);
            Some(d.min(free.len() - 1))
        })
        .collect()
}

/// The devices llama.cpp will use, in its order (RPC servers first, then GPUs), as
/// `(name, description, free bytes)`.
pub fn devices() -> Vec<(String, String, u64)> {
    use llama_cpp_2::LlamaBackendDeviceType as T;
    let all = llama_cpp_2::list_llama_ggml_backend_devices();
    let gpu = |d: &&llama_cpp_2::LlamaBackendDevice| matches!(d.device_type, T::Gpu);
    let rpc: Vec<_> = all
        .iter()
        .filter(gpu)
        .filter(|d| d.backend == "RPC")
        .collect();
    let local: Vec<_> = all
        .iter()
        .filter(gpu)
        .filter(|d| d.backend != "RPC")
        .collect();
    rpc.into_iter()
        .chain(local)
        .map(|d| (d.name.clone(), d.description.clone(), d.memory_free as u64))
        .collect()
}

/// One line per device: the layers llama.cpp will place there.
pub fn split_report(n_layer: usize, n_gpu_layers: usize) -> String {
    let devs = devices();
    let free: Vec<u64> = devs.iter().map(|d| d.2).collect();
    let split = split_layers(n_layer, n_gpu_layers, &free);
    let ranges = |want: Option<usize>| -> String {
        let layers: Vec<usize> = (0..=n_layer).filter(|&il| split[il] == want).collect();
        if layers.is_empty() {
            return "no layers".into();
        }
        let mut parts = Vec::new();
        let mut i = 0;
        while i < layers.len() {
            let mut j = i;
            while j + 1 < layers.len() && layers[j + 1] == layers[j] + 1 {
                j += 1;
            }
            let name = |l: usize| {
                if l == n_layer {
                    "output".to_string()
                } else {
                    l.to_string()
                }
            };
            parts.push(if i == j {
                name(layers[i])
            } else {
                format!("{}-{}", name(layers[i]), name(layers[j]))
            });
            i = j + 1;
        }
        format!("layers {}", parts.join(", "))
    };
    let mut out = String::from("placement (llama.cpp splits the offloaded layers by free memory):");
    out += &format!("\n  this machine's CPU: token embedding, {}", ranges(None));
    for (i, (name, desc, free)) in devs.iter().enumerate() {
        out += &format!(
            "\n  {name} ({desc}, {} free): {}",
            crate::units::human_bytes(*free),
            ranges(Some(i))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_split_by_free_memory_as_llama_cpp_does() {
        // Two equal devices, all 27 layers and the output: 14 + 14.
        let s = split_layers(27, 28, &[8, 8]);
        assert_eq!(s.iter().filter(|d| **d == Some(0)).count(), 14);
        assert_eq!(s.iter().filter(|d| **d == Some(1)).count(), 14);
        assert_eq!(s[0], Some(0));
        assert_eq!(s[27], Some(1));
        // 3:1 over 4 layers + output: x = 0, .2, .4, .6 on device 0 (split at .75), .8 on 1.
        let s = split_layers(4, 5, &[3, 1]);
        assert_eq!(s, vec![Some(0), Some(0), Some(0), Some(0), Some(1)]);
        // Only the last 3 (of 6 + output) offloaded: the first four stay on the CPU.
        let s = split_layers(6, 3, &[1]);
        assert_eq!(s, vec![None, None, None, None, Some(0), Some(0), Some(0)]);
        // No devices: everything on the CPU.
        assert!(split_layers(3, 4, &[]).iter().all(Option::is_none));
    }

    #[test]
    fn endpoints_are_checked_before_connecting() {
        assert!(resolve("localhost").unwrap_err().contains("HOST:PORT"));
        assert!(resolve(":50052").unwrap_err().contains("HOST:PORT"));
        assert!(resolve("h:99999").unwrap_err().contains("port"));
        assert_eq!(resolve("127.0.0.1:50052").unwrap().port(), 50052);
    }
}
