//! `civic desk`: serve the web interface (crate::desk) on 127.0.0.1.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use super::{Ctx, Exit, ReaderArg};

#[derive(Debug, Args)]
pub struct DeskArgs {
    #[command(flatten)]
    reader: ReaderArg,
    /// Port on 127.0.0.1 (0: any free port; the address printed says which)
    #[arg(long, env = "CIVIC_DESK_PORT", default_value_t = 8470)]
    port: u16,
    /// Address to listen on: 127.0.0.1 only (anything else is refused: the desk serves
    /// personal data and uses the office's signing keys)
    #[arg(long, default_value = "127.0.0.1")]
    address: String,
}

pub fn run(ctx: Ctx, a: DeskArgs) -> Result<Exit> {
    let addr = crate::desk::listen_addr(&a.address, a.port)?;
    // The data directory must exist before anyone opens a page.
    ctx.data()?;
    crate::desk::serve(ctx, a.reader, addr, |url| {
        // The one place the token is shown: stdout, for the person who started the desk.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "Civic desk: open {url}");
        let _ = writeln!(
            out,
            "(this address holds the desk's access token for this run: do not share it; \
             Ctrl-C stops the desk)"
        );
        let _ = out.flush();
    })?;
    Ok(Exit::Ok)
}
