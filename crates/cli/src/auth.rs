//! `ringkv auth`: make a token and the policy entry that grants it roles, or hash a token.
//!
//! The token is printed once, to stdout, and never stored: the policy keeps only its SHA-256
//! (see `ringkv_auth::policy`), so whoever reads the policy cannot call with it.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::io::Read;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Make a new token; print it, and the `[[token]]` entry to add to the access policy.
    Token {
        /// Who holds it (shown in logs and refusals).
        #[arg(long)]
        subject: String,
        /// A role of the policy to grant (repeat for several).
        #[arg(long = "role")]
        roles: Vec<String>,
    },
    /// Print the SHA-256 of a token read from stdin (for a policy's `sha256`).
    Hash,
}

pub fn run(command: &AuthCommand) -> Result<u8> {
    match command {
        AuthCommand::Token { subject, roles } => {
            if subject.is_empty() || !subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                bail!("the subject must be printable ASCII");
            }
            let token = ringkv_auth::generate_token()
                .map_err(|_| anyhow::anyhow!("the system's random generator failed"))?;
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            println!("# The token (give it to {subject}; it is not stored anywhere):");
            println!("# {}", token.expose());
            print!("{}", ringkv_auth::policy::token_entry(subject, token.expose(), &roles));
        }
        AuthCommand::Hash => {
            let mut token = String::new();
            std::io::stdin()
                .take(ringkv_auth::policy::POLICY_BYTES_MAX)
                .read_to_string(&mut token)
                .context("reading the token from stdin")?;
            let token = token.trim();
            if token.is_empty() {
                bail!("no token on stdin");
            }
            println!("{}", ringkv_auth::hash_token(token));
        }
    }
    Ok(0)
}
