//! `civic terminal enroll | renew | list`: terminal certificates, signed by the authority.

use anyhow::Result;
use civic_reader::terminal::{self, describe_access, Role};
use clap::{Args, Subcommand};

use super::{Ctx, Exit};

#[derive(Debug, Subcommand)]
pub enum TerminalCmd {
    /// Create a terminal key and have the authority certify it for a role
    Enroll(EnrollArgs),
    /// A fresh certificate for an enrolled terminal (same key, new validity)
    Renew(RenewArgs),
    /// Terminals enrolled in this data directory
    List,
}

#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// Terminal id, e.g. "clinic-east-01" (lowercase letters, digits, '-')
    #[arg(long)]
    id: String,
    /// What the terminal is for; it decides the rights in the certificate
    #[arg(long, value_enum)]
    role: Role,
    /// Certificate validity in days (short by design: terminals are renewed, not trusted
    /// forever)
    #[arg(long, default_value_t = 30)]
    valid_days: u64,
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    #[arg(long)]
    id: String,
    #[arg(long, default_value_t = 30)]
    valid_days: u64,
}

pub fn run(ctx: &Ctx, cmd: TerminalCmd) -> Result<Exit> {
    let data = ctx.data()?;
    let now = civic_reader::now();
    let (t, verb) = match cmd {
        TerminalCmd::Enroll(a) => (
            terminal::enroll(&data, &a.id, a.role, a.valid_days, now, false)?,
            "Enrolled",
        ),
        TerminalCmd::Renew(a) => {
            let role = Role::from_byte(terminal::load(&data, &a.id)?.cert.role)
                .ok_or_else(|| anyhow::anyhow!("terminal {:?} has an unknown role", a.id))?;
            (
                terminal::enroll(&data, &a.id, role, a.valid_days, now, true)?,
                "Renewed",
            )
        }
        TerminalCmd::List => {
            let all = terminal::list(&data)?;
            if ctx.json {
                let v: Vec<_> = all.iter().map(describe).collect();
                ctx.print_json(&v)?;
            } else {
                println!("{:<20} {:<18} {:<44} valid until", "id", "role", "rights");
                for t in &all {
                    println!(
                        "{:<20} {:<18} {:<44} {}",
                        t.cert.terminal_id,
                        Role::from_byte(t.cert.role).map(Role::name).unwrap_or("?"),
                        describe_access(t.cert.access),
                        civic_reader::fmt_time(t.cert.not_after)
                    );
                }
            }
            return Ok(Exit::Ok);
        }
    };
    if ctx.json {
        ctx.print_json(&describe(&t))?;
    } else {
        println!(
            "{verb} terminal {} ({}): may read/do {}; certificate {} bytes, valid until {}",
            t.cert.terminal_id,
            Role::from_byte(t.cert.role).map(Role::name).unwrap_or("?"),
            describe_access(t.cert.access),
            t.certificate.len(),
            civic_reader::fmt_time(t.cert.not_after)
        );
    }
    Ok(Exit::Ok)
}

fn describe(t: &terminal::Enrolled) -> serde_json::Value {
    serde_json::json!({
        "terminal_id": t.cert.terminal_id,
        "role": Role::from_byte(t.cert.role),
        "access": describe_access(t.cert.access),
        "not_before": t.cert.not_before,
        "not_after": t.cert.not_after,
        "certificate_bytes": t.certificate.len(),
    })
}
