//! Stand-alone proxy for benchmarks and manual tests:
//! `cargo run --release -p ferry-proxy --example proxy -- --state-dir DIR --admin-listen 127.0.0.1:PORT`
//! (`ferry proxy` does the same from the main binary).

use std::net::SocketAddr;
use std::path::PathBuf;

use ferry_proxy::{ProxyConfig, run};
use tokio_util::sync::CancellationToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut state_dir: Option<PathBuf> = None;
    let mut admin_listen: SocketAddr = "127.0.0.1:7480".parse()?;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--state-dir" => state_dir = args.next().map(PathBuf::from),
            "--admin-listen" => {
                admin_listen = args.next().ok_or("--admin-listen needs a value")?.parse()?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let state_dir = state_dir.ok_or("--state-dir is required")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            s.cancel();
        });
        run(
            ProxyConfig {
                state_dir,
                admin_listen,
            },
            shutdown,
        )
        .await
    })?;
    Ok(())
}
