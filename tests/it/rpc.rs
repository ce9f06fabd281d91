//! ggml's RPC back-end over loopback: `dscoder rpc-server` processes serve their CPU, and a
//! client with `--rpc` places the layers on them. Same greedy output and the same logits (KL
//! against a local run) as one process; a server that is down or dies is a clear error.
//!
//! Everything runs in child processes: a registered RPC device stays in a process for good, and
//! a context created after its server died would abort, so the test binary never registers one.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// An `rpc-server` child process, killed when dropped.
struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server() -> Server {
    let port = free_port();
    let child = common::dscoder()
        .args(["rpc-server", "--port", &port.to_string(), "--threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(&endpoint).is_err() {
        assert!(Instant::now() < deadline, "rpc-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, endpoint }
}

fn nano() -> PathBuf {
    common::converted(&common::repo("nano/model"), "f32")
}

fn run(model: &PathBuf, extra: &[&str]) -> std::process::Output {
    common::dscoder()
        .arg("run")
        .arg(model)
        .args([
            "def fibonacci(n):",
            "--raw",
            "--temp",
            "0",
            "-n",
            "24",
            "--draft",
            "off",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn greedy_output_over_two_servers_equals_one_process() {
    let (a, b) = (start_server(), start_server());
    let servers = format!("{},{}", a.endpoint, b.endpoint);
    for model in [
        nano(),
        common::converted(&common::fixture("lite-tiny"), "f32"),
    ] {
        let local = run(&model, &[]);
        assert!(local.status.success());
        let remote = run(&model, &["--rpc", &servers]);
        let stderr = String::from_utf8_lossy(&remote.stderr);
        assert!(remote.status.success(), "{stderr}");
        assert_eq!(
            String::from_utf8_lossy(&remote.stdout),
            String::from_utf8_lossy(&local.stdout),
            "{}",
            model.display()
        );
        // The placement names both servers, each with a share of the layers.
        for s in [&a.endpoint, &b.endpoint] {
            let line = stderr
                .lines()
                .find(|l| l.contains(s.as_str()))
                .unwrap_or_else(|| panic!("no placement line for {s}: {stderr}"));
            assert!(line.contains("layers "), "{line}");
        }
    }
}

#[test]
fn logits_over_rpc_match_a_local_run() {
    let (a, b) = (start_server(), start_server());
    let model = nano();
    let out = common::dscoder()
        .arg("perplexity")
        .arg(&model)
        .arg("--kl-base")
        .arg(&model)
        .args([
            "--base-on-cpu",
            "--json",
            "--chunks",
            "2",
            "--chunk-size",
            "128",
        ])
        .arg("-f")
        .arg(common::repo("nano/heldout.py.txt"))
        .args(["--rpc", &format!("{},{}", a.endpoint, b.endpoint)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kl = j["kl"]["mean"].as_f64().unwrap_or_else(|| panic!("{j}"));
    assert!(
        kl < 1e-6,
        "mean KL {kl} between the RPC run and the local one"
    );
    assert!(stderr.contains(&a.endpoint), "{stderr}");
}

#[test]
fn a_server_that_is_down_is_named() {
    let endpoint = format!("127.0.0.1:{}", free_port());
    let out = run(&nano(), &["--rpc", &endpoint]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&endpoint) && stderr.contains("cannot connect"),
        "{stderr}"
    );
    let out = run(&nano(), &["--rpc", "nonsense"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST:PORT"));
}

#[test]
fn a_server_that_dies_mid_generation_stops_the_client_with_its_name() {
    let server = start_server();
    let mut client = common::dscoder()
        .arg("run")
        .arg(nano())
        .args([
            "def main():",
            "--raw",
            "--temp",
            "0.8",
            "-n",
            "100000",
            "--draft",
            "off",
        ])
        .args(["-c", "2048", "--rpc", &server.endpoint])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for generated text, then kill the server under it.
    let mut first = [0u8; 1];
    client
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    let endpoint = server.endpoint.clone();
    drop(server);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = client.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the client hangs after its server died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    client
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    // Either the server died mid-decode (the abort handler names it) or between tokens after
    // the context filled; both must name the server and fail.
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&endpoint), "{stderr}");
}

#[test]
fn rpc_server_checks_its_address_and_warns_off_loopback() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = common::dscoder()
        .args(["rpc-server", "--port", &port])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));

    let port = free_port().to_string();
    let mut child = common::dscoder()
        .args(["rpc-server", "--host", "0.0.0.0", "--port", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("serving") {
        let n = stderr.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("warning") && text.contains("no authentication"),
        "{text}"
    );
}
