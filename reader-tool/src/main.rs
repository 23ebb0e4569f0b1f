//! `civic`: the Civic Card command line. Thin: parse, dispatch, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;

mod cmd;
mod desk;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::run(cli) {
        Ok(code) => code.into(),
        Err(e) => {
            let code = cmd::Exit::of_error(&e);
            eprintln!("civic: {}", cmd::describe_error(&e));
            code.into()
        }
    }
}
