//! `ferry server` and the hidden `ferry proxy`: the long-running processes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferry_core::duration::HumanDuration;
use ferry_core::endpoint::{self as e, Endpoint};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use super::Failure;
use super::exit;

/// Resolves on the first SIGINT or SIGTERM, with the signal's name.
pub async fn terminated() -> anyhow::Result<&'static str> {
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    })
}

/// `ferry server`'s notification knobs (docs/notifications.md).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct NotifyArgs {
    /// The wait before a failed notification delivery is retried; it doubles after each
    /// failed attempt, up to 5 min (at most 8 attempts).
    #[arg(
        long,
        env = "FERRY_NOTIFY_RETRY_BASE",
        default_value = "1s",
        value_name = "DURATION"
    )]
    notify_retry_base: HumanDuration,
    /// How long delivered, failed and inhibited notification deliveries are kept in the
    /// history (`ferry notifications`), e.g. 30d.
    #[arg(
        long,
        env = "FERRY_NOTIFY_RETENTION",
        default_value = "30d",
        value_name = "DURATION"
    )]
    notify_retention: HumanDuration,
}

impl NotifyArgs {
    /// The dispatcher's settings; out-of-range values are refused, naming the flag.
    pub fn settings(self) -> anyhow::Result<ferry_server::NotifySettings> {
        let retry_base = self.notify_retry_base.get();
        let retention = self.notify_retention.get();
        let bad = |message: String| Failure::new(exit::INVALID, message);
        if retry_base < Duration::from_millis(10) || retry_base > Duration::from_secs(300) {
            return Err(bad(format!(
                "--notify-retry-base {}: must be 10ms to 5m",
                self.notify_retry_base
            ))
            .into());
        }
        if retention < Duration::from_secs(3600)
            || retention > Duration::from_secs(10 * 365 * 86_400)
        {
            return Err(bad(format!(
                "--notify-retention {}: must be 1h to 3650d",
                self.notify_retention
            ))
            .into());
        }
        Ok(ferry_server::NotifySettings {
            retry_base,
            retention,
            ..Default::default()
        })
    }
}

/// `ferry server`'s place among several servers on one database (docs/high-availability.md).
#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// This server's id, unique among the servers sharing the database (default HOST:PID).
    #[arg(long, env = "FERRY_SERVER_ID", value_name = "ID")]
    server_id: Option<String>,
    /// How long the leader lease lasts without a renewal (2s to 10m): a follower takes over
    /// this long after the leader dies; the leader renews every third of it.
    #[arg(
        long,
        env = "FERRY_LEASE_TTL",
        default_value = "15s",
        value_name = "DURATION"
    )]
    lease_ttl: HumanDuration,
}

impl LeaderArgs {
    /// The server's leader settings; an out-of-range TTL or a bad id is refused, naming the flag.
    pub fn settings(self) -> anyhow::Result<ferry_server::LeaderSettings> {
        let settings = ferry_server::LeaderSettings {
            server_id: self
                .server_id
                .unwrap_or_else(ferry_server::default_server_id),
            lease_ttl: self.lease_ttl.get(),
        };
        settings
            .timing()
            .map_err(|e| Failure::new(exit::INVALID, e.to_string()))?;
        Ok(settings)
    }
}

/// `--proxy-image`: an image reference as a manifest's `kubernetes.proxy.image` may be.
pub fn parse_image(image: &str) -> Result<String, String> {
    if ferry_core::manifest::kubernetes::is_image(image) {
        Ok(image.to_string())
    } else {
        Err("an image is 1 to 512 characters, without spaces or control characters".to_string())
    }
}

/// Starts the server in this process (the `ferry` executable is reused for the proxy).
#[allow(clippy::too_many_arguments)]
pub async fn start_server(
    data: &Path,
    listen: SocketAddr,
    database_url: Option<String>,
    run_as: Option<String>,
    ports: Option<ferry_runtime::PortRange>,
    proxy_image: Option<String>,
    notify: ferry_server::NotifySettings,
    leader: ferry_server::LeaderSettings,
) -> anyhow::Result<ferry_server::Server> {
    let ferry_exe = std::env::current_exe().context("cannot find the ferry executable")?;
    ferry_server::start(ferry_server::ServerConfig {
        data_dir: data.to_path_buf(),
        listen,
        ferry_exe,
        database_url,
        run_as,
        ports,
        proxy_image,
        notify,
        leader,
    })
    .await
    .map_err(|e| Failure::new(exit::ERROR, format!("cannot start the Ferry server: {e}")).into())
}

#[allow(clippy::too_many_arguments)]
pub async fn server(
    data: PathBuf,
    listen: SocketAddr,
    database: Option<String>,
    run_as: Option<String>,
    ports: Option<ferry_runtime::PortRange>,
    proxy_image: Option<String>,
    notify: ferry_server::NotifySettings,
    leader: ferry_server::LeaderSettings,
) -> anyhow::Result<()> {
    let store = match &database {
        Some(url) => ferry_store::redact(url).into_owned(),
        None => "SQLite, in the data directory".to_string(),
    };
    let server_id = leader.server_id.clone();
    let server = start_server(
        &data,
        listen,
        database,
        run_as,
        ports,
        proxy_image,
        notify,
        leader,
    )
    .await?;
    let data_abs = std::fs::canonicalize(&data).unwrap_or(data);
    let token_file = data_abs.join("admin.token");
    println!("Ferry API on http://{}", server.addr());
    println!("  data       {}", data_abs.display());
    println!("  state      {store}");
    println!(
        "  server id  {server_id} (one leader acts; GET {} says which)",
        <e::Version as Endpoint>::SPEC.path
    );
    println!("  admin token in {} (chmod 600)", token_file.display());
    println!(
        "  try        FERRY_URL=http://{} FERRY_TOKEN=$(cat {}) ferry apps",
        server.addr(),
        token_file.display()
    );
    tokio::select! {
        signal = terminated() => {
            let signal = signal?;
            eprintln!("{signal}: stopping the control plane");
            server.stop().await;
            eprintln!("control plane stopped; the proxy and the replicas keep serving.");
            eprintln!("to stop them too: start `ferry server` again and run `ferry teardown --yes`");
        }
        () = server.stopped() => {
            let lost = server.lost_lease();
            if let Some(duplicate) = server.duplicate_id().cloned() {
                server.stop().await;
                return Err(Failure::new(exit::ERROR, duplicate.to_string()).into());
            }
            server.stop().await;
            if lost {
                return Err(Failure::new(
                    exit::ERROR,
                    "lost the leader lease (another server leads now): stopped acting; \
                     start this server again to follow",
                )
                .into());
            }
            eprintln!("teardown requested through the API: replicas and proxy stopped");
        }
    }
    Ok(())
}

pub async fn proxy(
    state_dir: PathBuf,
    admin_listen: SocketAddr,
    options: ferry_proxy::ProxyOptions,
) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        if let Ok(signal) = terminated().await {
            tracing::info!(signal, "proxy stopping");
        }
        on_signal.cancel();
    });
    ferry_proxy::run_with_options(
        ferry_proxy::ProxyConfig {
            state_dir,
            admin_listen,
        },
        options,
        shutdown,
    )
    .await
    .map_err(|e| Failure::new(exit::ERROR, format!("proxy: {e}")).into())
}
