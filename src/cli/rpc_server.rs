//! `dscoder rpc-server`: this machine's CPU (or GPUs, in a GPU build) for another machine's
//! `--rpc`, over ggml's RPC protocol (interchangeable with llama.cpp's `rpc-server` of the same
//! protocol version).

use std::net::{IpAddr, TcpListener};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use dscoder::{engine, interrupt, llama_sys};

#[derive(Args)]
pub struct RpcServerArgs {
    /// Address to listen on. The protocol has no authentication or encryption: anything but
    /// loopback must be a trusted network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port.
    #[arg(long, short = 'p', default_value_t = 50052)]
    port: u16,
    /// CPU threads for the computations sent here (default: the physical cores).
    #[arg(long, short = 't', value_parser = super::parse_threads)]
    threads: Option<usize>,
    /// Keep large tensors the client sends in this folder, so the next load skips the network.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
}

pub fn run(args: RpcServerArgs) -> Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| engine::default_threads() as usize);
    let loopback = args
        .host
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(args.host == "localhost");
    if let Some(dir) = &args.cache {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--cache: cannot create {}", dir.display()))?;
    }
    // Say that the address is taken before ggml's own terse failure.
    let endpoint = format!("{}:{}", args.host, args.port);
    drop(
        TcpListener::bind((args.host.as_str(), args.port))
            .with_context(|| format!("cannot listen on {endpoint}"))?,
    );
    if !loopback {
        eprintln!(
            "warning: listening on {endpoint}: ggml's RPC protocol has no authentication or \
             encryption; anyone who can reach this port can run computations and read what is \
             sent. Use it on a trusted network only."
        );
    }
    let _ = engine::backend();
    eprintln!(
        "dscoder rpc-server: serving at {endpoint} with {threads} threads (protocol {}); \
         clients: --rpc {endpoint}. Ctrl-C stops it.",
        llama_sys::RPC_PROTO_MAJOR
    );
    // ggml's accept loop never returns on its own: a watcher ends the process on Ctrl-C.
    std::thread::spawn(|| loop {
        if interrupt::requested() {
            eprintln!("[interrupted]");
            std::process::exit(130);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    });
    llama_sys::rpc_start_server(&endpoint, args.cache.as_deref(), threads)
        .map_err(anyhow::Error::msg)
}
