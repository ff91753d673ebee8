//! `ferry secrets`: set (value from stdin), list, rm, rotate-key. Values go to the server
//! once and are never shown back: only names, versions and fingerprints.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use ferry_core::api::secrets::SetSecretRequest;
use ferry_core::endpoint::{self as e, Empty};

use super::client::Client;
use super::output::{Table, print_json, timestamp};
use super::{Failure, Format, OutputArg, exit};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Set a secret; the value is read from stdin (one trailing newline is dropped).
    Set {
        app: String,
        #[arg(long)]
        env: String,
        /// Variable name: ^[A-Z_][A-Z0-9_]*$, not PORT, VERSION or FERRY_* (FERRY_REGISTRY_USERNAME/_PASSWORD excepted: registry credentials).
        name: String,
    },
    /// List an environment's secrets: names, versions and fingerprints (never values).
    List {
        app: String,
        #[arg(long)]
        env: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a secret.
    Rm {
        app: String,
        #[arg(long)]
        env: String,
        name: String,
    },
    /// Generate a new master key and re-encrypt every secret under it.
    RotateKey,
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Set { app, env, name } => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("Enter the value of {name}, then Ctrl-D:");
            }
            let mut value = String::new();
            stdin
                .lock()
                .read_to_string(&mut value)
                .map_err(|e| Failure::new(exit::INVALID, format!("reading stdin: {e}")))?;
            if value.ends_with('\n') {
                value.pop();
                if value.ends_with('\r') {
                    value.pop();
                }
            }
            if value.is_empty() {
                return Err(Failure::new(
                    exit::INVALID,
                    format!("no value for {name} on stdin; e.g. `printf %s \"$VALUE\" | ferry secrets set {app} --env {env} {name}`"),
                )
                .into());
            }
            let body = SetSecretRequest { value };
            let info = client
                .call(e::SecretsSet, &[&app, &env, &name], &[], &body)
                .await?;
            drop(body);
            println!(
                "secret {} of {app}/{env} set: version {}, fingerprint {}",
                info.name, info.version, info.fingerprint
            );
            println!(
                "running replicas keep the old value until the next deployment; `ferry redeploy {app} --env {env}` rolls it out now"
            );
            Ok(())
        }
        Command::List { app, env, out } => {
            let list = client.call(e::SecretsList, &[&app, &env], &[], &()).await?;
            if out.output == Format::Json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("{app}/{env} has no secrets");
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "VERSION", "FINGERPRINT", "UPDATED", "BY"]);
            for s in list {
                table.row(vec![
                    s.name,
                    s.version.to_string(),
                    s.fingerprint,
                    timestamp(s.updated_at_ms),
                    s.updated_by,
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        Command::Rm { app, env, name } => {
            client
                .call(e::SecretsDelete, &[&app, &env, &name], &[], &())
                .await?;
            println!("secret {name} of {app}/{env} deleted");
            Ok(())
        }
        Command::RotateKey => {
            let answer = client
                .call(e::SecretsRotateKey, &[], &[], &Empty {})
                .await?;
            println!(
                "master key rotated to {}: {} secret(s) re-encrypted",
                answer.key_id, answer.reencrypted
            );
            Ok(())
        }
    }
}
