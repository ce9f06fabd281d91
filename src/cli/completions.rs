//! `dscoder completions SHELL`: a completion script for bash, zsh, fish, elvish or PowerShell
//! (clap_complete), written to stdout.

use anyhow::Result;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: Shell,
}

/// Writes the script for `args.shell`; `Cli` is the whole command line.
pub fn run<C: CommandFactory>(args: CompletionsArgs) -> Result<()> {
    let mut cmd = C::command();
    clap_complete::generate(args.shell, &mut cmd, "dscoder", &mut std::io::stdout());
    Ok(())
}
