//! `ferry-demo`: a small, fast HTTP service used by the quickstart, tests and benchmarks.
//!
//! `GET /` answers `hello from {service} {version}` (with `X-Version`), `GET /health` and
//! `GET /api/health` answer a JSON status. Knobs (flags or env vars) inject errors, latency,
//! unhealthiness, crashes and start failures so rollouts and rollbacks can be exercised.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

/// A demo HTTP service for Ferry.
#[derive(Debug, Clone, Parser)]
#[command(name = "ferry-demo")]
pub struct DemoArgs {
    /// Port to listen on.
    #[arg(long, env = "PORT")]
    pub port: u16,
    /// Address to listen on (the Docker runtime sets `HOST=0.0.0.0` behind a bridge network,
    /// where only the published port reaches the container).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Version reported in answers.
    #[arg(long, env = "VERSION", default_value = "dev")]
    pub version: String,
    /// Service name reported in answers.
    #[arg(long, env = "FERRY_SERVICE", default_value = "demo")]
    pub service: String,
    /// Fraction (0..1) of `/` answers that are 500.
    #[arg(long, env = "DEMO_ERROR_RATE", default_value_t = 0.0)]
    pub error_rate: f64,
    /// Only these versions (comma-separated) answer errors at `--error-rate`; empty: every
    /// version (the quickstart's bad release: `DEMO_ERROR_VERSIONS=1.2.0`).
    #[arg(long, env = "DEMO_ERROR_VERSIONS", default_value = "")]
    pub error_versions: String,
    /// Delay added to every `/` answer, in milliseconds.
    #[arg(long, env = "DEMO_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Health endpoints answer 503.
    #[arg(long, env = "DEMO_UNHEALTHY", value_parser = clap::builder::FalseyValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub unhealthy: bool,
    /// Exit with status 1 once N requests to `/` have been answered.
    #[arg(long, env = "DEMO_CRASH_AFTER")]
    pub crash_after: Option<u64>,
    /// Print an error and exit 1 immediately.
    #[arg(long, env = "DEMO_FAIL_START", value_parser = clap::builder::FalseyValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub fail_start: bool,
}

/// The error rate of this version: `--error-rate`, unless `--error-versions` leaves it out.
fn error_rate_of(args: &DemoArgs) -> f64 {
    let listed: Vec<&str> = args
        .error_versions
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if listed.is_empty() || listed.contains(&args.version.as_str()) {
        args.error_rate
    } else {
        0.0
    }
}

struct State {
    hello: Bytes,
    health: Bytes,
    version: HeaderValue,
    error_rate: f64,
    latency: Option<Duration>,
    unhealthy: bool,
    crash_after: Option<u64>,
    served: AtomicU64,
}

type Body = Full<Bytes>;

fn respond(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(respond(
            StatusCode::METHOD_NOT_ALLOWED,
            Bytes::from_static(b"method not allowed\n"),
        ));
    }
    let response = match req.uri().path() {
        "/" => {
            if let Some(delay) = state.latency {
                tokio::time::sleep(delay).await;
            }
            let failed = state.error_rate > 0.0 && rand::random::<f64>() < state.error_rate;
            let mut response = if failed {
                respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Bytes::from_static(b"injected error\n"),
                )
            } else {
                respond(StatusCode::OK, state.hello.clone())
            };
            response
                .headers_mut()
                .insert("x-version", state.version.clone());
            if let Some(limit) = state.crash_after {
                let served = state.served.fetch_add(1, Ordering::Relaxed) + 1;
                if served >= limit {
                    // Let this answer go out, then crash.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        println!("ferry-demo crashing after {served} requests");
                        std::process::exit(1);
                    });
                }
            }
            response
        }
        "/health" | "/api/health" => {
            let status = if state.unhealthy {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let mut response = respond(status, state.health.clone());
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        _ => respond(StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    Ok(response)
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            // Signal handlers could not be installed: fall back to Ctrl-C only.
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Runs the demo service until SIGTERM/SIGINT (after the start-time checks).
pub async fn serve(args: DemoArgs) -> anyhow::Result<()> {
    if args.fail_start {
        eprintln!(
            "ferry-demo {} {}: failing at start (DEMO_FAIL_START)",
            args.service, args.version
        );
        std::process::exit(1);
    }
    if !(0.0..=1.0).contains(&args.error_rate) {
        anyhow::bail!("--error-rate must be within 0..1, got {}", args.error_rate);
    }
    run(args).await
}

async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let addr = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
    let state = Arc::new(State {
        hello: Bytes::from(format!("hello from {} {}\n", args.service, args.version)),
        health: Bytes::from(
            serde_json::json!({
                "status": if args.unhealthy { "unhealthy" } else { "ok" },
                "version": args.version,
            })
            .to_string(),
        ),
        version: HeaderValue::from_str(&args.version)
            .map_err(|_| anyhow::anyhow!("version {:?} is not a valid header", args.version))?,
        error_rate: error_rate_of(&args),
        latency: (args.latency_ms > 0).then(|| Duration::from_millis(args.latency_ms)),
        unhealthy: args.unhealthy,
        crash_after: args.crash_after,
        served: AtomicU64::new(0),
    });
    println!(
        "ferry-demo {} {} listening on {addr}",
        args.service, args.version
    );

    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let reason = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // e.g. EMFILE: back off briefly instead of spinning.
                        eprintln!("ferry-demo: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |req| handle(state.clone(), req));
                let conn = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            reason = &mut signal => break reason,
        }
    };
    drop(listener);
    println!(
        "ferry-demo {} {} received {reason}, shutting down",
        args.service, args.version
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(5)) => {
            eprintln!("ferry-demo: connections still open after 5s, exiting anyway");
        }
    }
    println!("ferry-demo {} {} stopped", args.service, args.version);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_rate_applies_to_the_listed_versions_only() {
        let args = |version: &str, listed: &str| {
            DemoArgs::parse_from([
                "ferry-demo",
                "--port",
                "1",
                "--version",
                version,
                "--error-rate",
                "0.3",
                "--error-versions",
                listed,
            ])
        };
        assert_eq!(
            error_rate_of(&args("1.2.0", "")),
            0.3,
            "no list: every version"
        );
        assert_eq!(error_rate_of(&args("1.2.0", "1.2.0")), 0.3);
        assert_eq!(error_rate_of(&args("1.2.0", "0.9, 1.2.0")), 0.3);
        assert_eq!(error_rate_of(&args("1.1.0", "1.2.0")), 0.0);
    }
}
