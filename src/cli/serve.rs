//! `dscoder serve`: the OpenAI, llama.cpp and ollama endpoints (in the library's `server`).

use std::net::IpAddr;

use anyhow::Result;
use clap::Args;
use dscoder::interrupt;
use dscoder::server::{self, wire::Defaults, ServeOptions};

use super::{EngineArgs, SamplingArgs};

#[derive(Args)]
pub struct ServeArgs {
    /// A GGUF file or a name from `dscoder list` (default: the config file's model, else the
    /// newest in the models folder, else the bundled dscoder-nano demo model).
    model: Option<String>,
    /// Address to listen on; anything but loopback exposes the model to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one and prints it).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health.
    #[arg(long, env = "DSCODER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Allow browser requests from this origin (repeatable); CORS is off without it.
    #[arg(long = "cors", value_name = "ORIGIN")]
    cors: Vec<String>,
    /// Requests that may wait while one runs; more get 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    max_body_mib: u64,
    /// Token cap for requests that set none.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 1024)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(mut args: ServeArgs, d: &super::Defaults) -> Result<()> {
    args.engine.apply_config(d)?;
    args.sampling.apply_config(d)?;
    let loopback = args
        .host
        .parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(args.host == "localhost");
    if !loopback && args.api_key.is_none() {
        eprintln!(
            "warning: listening on {} without --api-key: anyone who can reach this machine can use the model",
            args.host
        );
    }
    let model = d.model(args.model.as_deref())?;
    let options = ServeOptions {
        host: args.host,
        port: args.port,
        api_key: args.api_key,
        cors: args.cors,
        queue: args.queue,
        max_body: (args.max_body_mib as usize) << 20,
        defaults: Defaults {
            sampling: args.sampling.settings(),
            max_tokens: args.max_tokens,
            draft: args.sampling.draft,
        },
    };
    server::serve(
        model,
        args.engine.settings()?,
        options,
        interrupt::requested,
        |addr, info| {
            eprintln!(
                "dscoder serve: {} (context {} tokens) listening on http://{addr}",
                info.name, info.n_ctx
            );
        },
    )?;
    eprintln!("dscoder serve: stopped");
    Ok(())
}
