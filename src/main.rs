//! The `sluice` binary: parse arguments, run, turn the outcome into an exit
//! code. A closed output pipe (`sluice plan | head`) is not an error.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The sandbox launcher a command node runs under: handled before clap,
    // which must not interpret the node's own arguments.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == sluice::exec::sandbox::SUBCOMMAND)
    {
        sluice::exec::sandbox::launcher_main(&args[2..]);
    }
    let cli = sluice::cli::Cli::parse();
    match sluice::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            let broken_pipe = err.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
