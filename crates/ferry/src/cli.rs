//! The command line: argument parsing, dispatch, and how errors become exit codes.

// alerts:
mod alerts;
mod approvals;
mod audit;
mod client;
mod commands;
mod config;
mod dora;
mod export;
// notify:
mod notifications;
// flags:
mod flags;
// gates:
mod gates;
// hooks:
mod hooks;
mod identity;
mod output;
mod progressive;
mod quickstart;
mod secrets;
// releases:
mod releases;
mod serve;
mod wait;
// config:
mod vars;

use std::fmt;

use quickstart::{DEV_LISTEN, PRODUCTION_LISTEN};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use ferry_core::duration::HumanDuration;

/// Default address of the Ferry API.
pub const DEFAULT_URL: &str = "http://127.0.0.1:7070";

/// Exit codes, also listed in `ferry --help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const INVALID: u8 = 2;
    pub const DEPLOY_FAILED: u8 = 3;
    pub const TIMED_OUT: u8 = 4;
    pub const UNAUTHORIZED: u8 = 5;
    pub const NOT_FOUND: u8 = 6;
    pub const CONFLICT: u8 = 7;
    /// Ctrl-C while following a deployment (128 + SIGINT, as shells report it).
    pub const INTERRUPTED: u8 = 130;
}

const AFTER_HELP: &str = "\
Configuration:
  The API address comes from --url, then FERRY_URL, then the config file, then http://127.0.0.1:7070.
  The token comes from --token, then FERRY_TOKEN, then the config file.
  Config file: $FERRY_CONFIG or ~/.config/ferry/config.json (written by `ferry login` and `ferry quickstart`).

Exit codes:
  0  success
  1  error (including: cannot reach the server)
  2  invalid input (bad manifest, bad flags or arguments)
  3  deployment failed, was rolled back or aborted
  4  timed out waiting
  5  unauthorized or forbidden
  6  not found
  7  conflict (e.g. nothing to roll back to, no rollout in progress to promote or abort)
  130  interrupted (Ctrl-C) while following a deployment: it goes on in the server";

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Ferry: release orchestrator and progressive-delivery engine",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// URL of the Ferry API.
    #[arg(
        long,
        global = true,
        env = "FERRY_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    url: Option<String>,
    /// API token (bearer).
    #[arg(
        long,
        global = true,
        env = "FERRY_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<String>,
    /// Why you do this: sent as X-Ferry-Reason and kept in the audit log (mutating commands).
    #[arg(long, global = true, value_name = "TEXT")]
    reason: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Args, Default)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Ferry server (API, controller, and the proxy it supervises).
    Server {
        /// Data directory (SQLite database, admin token, logs).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// Address of the API.
        #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
        listen: SocketAddr,
        /// Keep the state in PostgreSQL instead of DIR/ferry.db, e.g.
        /// postgres://ferry:PASSWORD@db.internal/ferry (tables are created on first start).
        #[arg(
            long,
            env = "FERRY_DATABASE_URL",
            value_name = "URL",
            hide_env_values = true
        )]
        database: Option<String>,
        /// When the server runs as root: the OS user replicas, hooks and command checks run
        /// as, unless their environment says `run_as` (default nobody; `root` to keep root).
        #[arg(long, env = "FERRY_RUN_AS", value_name = "USER")]
        run_as: Option<String>,
        /// The ports replicas and the proxy's admin API get, e.g. 20000-29999 (for hosts
        /// whose firewall allows only a range; default: any free port).
        #[arg(long, env = "FERRY_PORTS", value_name = "FIRST-LAST")]
        ports: Option<ferry_runtime::PortRange>,
        /// The image of the proxy pods of `runtime: kubernetes`, `traffic: proxy`
        /// environments whose manifest names none (`kubernetes.proxy.image` wins; default
        /// ferry:VERSION).
        #[arg(long, env = "FERRY_PROXY_IMAGE", value_name = "IMAGE", value_parser = serve::parse_image)]
        proxy_image: Option<String>,
        #[command(flatten)]
        notify: serve::NotifyArgs,
        #[command(flatten)]
        leader: serve::LeaderArgs,
    },
    /// Redact workload output into a file (started by `ferry server`).
    #[command(name = "__log-filter", hide = true)]
    LogFilter {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Run the data-plane proxy (started by `ferry server`).
    #[command(hide = true)]
    Proxy {
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
        #[arg(long, value_name = "ADDR")]
        admin_listen: SocketAddr,
        /// Close a client connection that has not sent its first byte, or a complete
        /// request head (also between keep-alive requests), or a buffered body, in time.
        #[arg(
            long,
            value_name = "DURATION",
            env = "FERRY_PROXY_HEADER_READ_TIMEOUT",
            default_value = "30s"
        )]
        header_read_timeout: HumanDuration,
        /// Close a client connection on which nothing moved for this long (up to twice
        /// this) while none of its requests waits on an upstream.
        #[arg(
            long,
            value_name = "DURATION",
            env = "FERRY_PROXY_IDLE_TIMEOUT",
            default_value = "75s"
        )]
        idle_timeout: HumanDuration,
        /// Read the admin API's bearer token from this file (a Kubernetes Secret) instead
        /// of the state directory; only then may `--admin-listen` be beyond loopback.
        #[arg(long, value_name = "FILE")]
        admin_token_file: Option<PathBuf>,
        /// Serve this route table at start when the state directory has none (a proxy pod
        /// reads the ConfigMap the server writes).
        #[arg(long, value_name = "FILE")]
        seed_routes: Option<PathBuf>,
        /// Bind every listener on this address instead of the table's (a pod's own IP).
        #[arg(long, value_name = "IP")]
        listen_ip: Option<std::net::IpAddr>,
    },
    /// Run the demo HTTP service (same as the `ferry-demo` binary).
    #[command(hide = true)]
    Demo(ferry_demo::DemoArgs),
    /// Log in with user name and password (or check --token TOKEN) and save the session
    /// token and URL in the config file (mode 0600).
    Login(identity::LoginArgs),
    /// Validate a manifest and store it on the server. Nothing restarts: replica counts and
    /// new services take effect with each environment's next deployment (`ferry redeploy`).
    Apply {
        /// The manifest (ferry.yaml).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Show what would change (and what would stop) without storing anything.
        #[arg(long)]
        dry_run: bool,
        /// Confirm removing environments or services that run: their replicas stop (and a
        /// removed environment's listener closes). Without it such a manifest is refused.
        #[arg(long)]
        prune: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print the Kubernetes objects of a release (multi-document YAML) for review or
    /// GitOps, offline: `ferry export --k8s APP --env ENV --version V [-f ferry.yaml]`.
    Export(export::ExportArgs),
    /// Check a manifest offline (no server needed): the same located errors as `apply`.
    /// Role names are checked by the server at apply time.
    Validate {
        /// The manifest (ferry.yaml).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the version of this client and of the server it talks to.
    Version {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print a shell completion script: `ferry completions bash > /etc/bash_completion.d/ferry`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Deploy a version of an app to an environment.
    Deploy {
        /// App name (as in the manifest).
        app: String,
        /// Environment to deploy to.
        #[arg(long, value_name = "ENV")]
        env: String,
        /// Version to deploy (substituted for ${VERSION} in the service's `run`).
        #[arg(long, value_name = "VERSION")]
        version: String,
        /// Release data: recorded with the release when the version is new (it must then
        /// be a semantic version), must match it otherwise (exit 7).
        #[command(flatten)]
        release: releases::ReleaseFlags,
        /// This deployment fixes deployment N (an earlier one in the same environment):
        /// DORA counts N as a failed change from now on (docs/dora.md).
        #[arg(long, value_name = "N")]
        fix_of: Option<i64>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Record or show an immutable release (version, commit, artifacts, notes).
    #[command(subcommand)]
    Release(releases::Command),
    /// List an app's releases, newest first, with where each is deployed and its tag there.
    Releases {
        /// App name.
        app: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Roll an environment back to the previous succeeded release (or to --to VERSION).
    Rollback {
        /// App name.
        app: String,
        /// Environment to roll back.
        #[arg(long, value_name = "ENV")]
        env: String,
        /// Version to go back to.
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Go back past an irreversible migration anyway (needs --reason; audited).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show what runs where: current version, latest deployment, rollout, replicas.
    Status {
        /// App name.
        app: String,
        /// Only this environment (with -o json: prints that environment's status object).
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
        /// Follow the environment live (needs --env) until its latest deployment ends;
        /// exit code as `deploy --wait`. With -o json: one status object per line.
        #[arg(short = 'w', long, requires = "env")]
        watch: bool,
        /// With --watch: stop watching after this long (exit code 4).
        #[arg(long, value_name = "DURATION", requires = "watch")]
        timeout: Option<HumanDuration>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Move a canary or blue/green rollout past its current step (--env ENV [--full]),
    /// or deploy the version serving in one environment to another (--from A --to B).
    Promote {
        /// App name.
        app: String,
        /// Environment whose rollout moves on.
        #[arg(
            long,
            value_name = "ENV",
            required_unless_present = "from",
            conflicts_with_all = ["from", "to"]
        )]
        env: Option<String>,
        /// Skip every remaining step: the new version gets 100% now (with --env).
        #[arg(long, conflicts_with_all = ["from", "to"])]
        full: bool,
        /// Environment whose current version is promoted (with --to).
        #[arg(long, value_name = "ENV", requires = "to")]
        from: Option<String>,
        /// Environment it is deployed to (with --from).
        #[arg(long, value_name = "ENV", requires = "from")]
        to: Option<String>,
        /// With --from/--to: follow the deployment until it ends.
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Hold a canary or blue/green rollout where it is (background analysis keeps watching).
    Pause {
        /// App name.
        app: String,
        /// Environment.
        #[arg(long, value_name = "ENV")]
        env: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Continue a paused rollout (or one waiting on an inconclusive analysis).
    Resume {
        /// App name.
        app: String,
        /// Environment.
        #[arg(long, value_name = "ENV")]
        env: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Stop the rollout in progress: 100% of traffic back to the stable version now, the new
    /// version stopped, state `aborted`.
    Abort {
        /// App name.
        app: String,
        /// Environment.
        #[arg(long, value_name = "ENV")]
        env: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Start the latest aborted, rolled-back or failed rollout again from its first step.
    Retry {
        /// App name.
        app: String,
        /// Environment.
        #[arg(long, value_name = "ENV")]
        env: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        out: OutputArg,
    },
    /// List the deployments of an environment, newest first.
    History {
        /// App name.
        app: String,
        /// Environment.
        #[arg(long, value_name = "ENV")]
        env: String,
        /// How many deployments to show.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Print the output of an environment's replicas.
    Logs {
        /// App name.
        app: String,
        /// Environment.
        #[arg(long, value_name = "ENV")]
        env: String,
        /// Only this service.
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,
        /// Lines to show from the end of each replica's log.
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Print the captured output of this deployment hook instead (every attempt).
        #[arg(long, value_name = "NAME", conflicts_with_all = ["service", "tail", "follow"])]
        hook: Option<String>,
        /// With --hook: this deployment (default: the latest one that ran the hook).
        #[arg(long, value_name = "ID", requires = "hook")]
        deployment: Option<i64>,
        /// With --hook: `-o json` prints the attempts with their output as JSON.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text, requires = "hook")]
        output: Format,
    },
    /// List the apps (or `ferry apps delete APP --yes`).
    Apps {
        #[command(subcommand)]
        command: Option<AppsCommand>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one deployment with its timeline.
    Deployment {
        /// Deployment id (as shown by `ferry history`).
        id: i64,
        #[command(flatten)]
        out: OutputArg,
    },
    #[command(flatten)]
    Identity(identity::Command),
    #[command(flatten)]
    Audit(audit::Command),
    /// Show the effective variables of each service in an environment and where each comes
    /// from (secrets: name, version and fingerprint only); `ferry config diff APP ENV1 ENV2`
    /// compares two environments.
    Config(vars::ConfigArgs),
    /// Deploy the version already serving again, replacing the replicas whose configuration
    /// (variables, secrets, command line) changed, at the environment's rolling pace.
    Redeploy(vars::RedeployArgs),
    /// Encrypted secrets, injected as environment variables when replicas start.
    #[command(subcommand)]
    Secrets(secrets::Command),
    /// Feature flags served to Unleash and OpenFeature SDKs (docs/flags.md).
    #[command(subcommand)]
    Flags(flags::Command),
    /// Approve a deployment awaiting approval (or --reject it with --reason, or
    /// --withdraw your decision). You can never approve your own deployment.
    Approve(approvals::ApproveArgs),
    /// Show a deployment's approvals and what its gate still needs.
    Approvals {
        /// The deployment.
        deployment: i64,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show every gate of a deployment with its state (GATE / STATE / DETAIL), or
    /// `ferry gates override ID --gate freeze --reason "…"` to lift a freeze for it.
    Gates(gates::GatesArgs),
    /// DORA metrics of an app in an environment from Ferry's history: deployment frequency,
    /// lead time for changes, change failure rate, failed deployment recovery time and
    /// deployment rework rate, each with its DORA performance level.
    Dora(dora::DoraArgs),
    /// Alerts: firing, pending and recently resolved ones with their history (`ferry
    /// alerts [APP] [--env ENV]`), and silences (`ferry alerts silence|silences|unsilence`).
    Alerts(alerts::AlertsArgs),
    /// The delivery history of notifications (webhook, Slack, email, PagerDuty), newest
    /// first: receiver, state, attempts, delivered at, last error.
    Notifications(notifications::NotificationsArgs),
    /// Print the JSON Schema of ferry.yaml (for editors).
    Schema,
    /// Stop every replica and the proxy, then the server (nothing keeps running).
    Teardown {
        /// Confirm: traffic to every environment stops.
        #[arg(long)]
        yes: bool,
    },
    /// Start a local Ferry, deploy a demo app, roll out a new version, and keep it running.
    Quickstart {
        /// Data directory.
        #[arg(long, default_value = ".ferry/quickstart", value_name = "DIR")]
        data: PathBuf,
        /// Address of the API.
        #[arg(long, default_value = "127.0.0.1:7070", value_name = "ADDR")]
        listen: SocketAddr,
        /// Where the demo app's dev environment serves (when 8080 is taken).
        #[arg(long, default_value = DEV_LISTEN, value_name = "ADDR")]
        dev_listen: SocketAddr,
        /// Where the demo app's production environment serves (when 8090 is taken).
        #[arg(long, default_value = PRODUCTION_LISTEN, value_name = "ADDR")]
        production_listen: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum AppsCommand {
    /// Delete an app: its manifest, and (with --yes) every replica of every environment;
    /// its listeners close. Its deployments, releases and audit records are kept.
    Delete {
        /// App name.
        app: String,
        /// Confirm: the app's replicas stop and its traffic stops.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Follow the deployment until it ends; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    pub timeout: HumanDuration,
}

/// An error that carries its exit code (and detail lines printed under the message).
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub details: Vec<String>,
    /// A transport problem (server unreachable, timeout) worth retrying while waiting.
    pub transient: bool,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            details: Vec::new(),
            transient: false,
        }
    }

    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    /// Whether `err` is a transient transport failure.
    pub fn is_transient(err: &anyhow::Error) -> bool {
        err.downcast_ref::<Failure>().is_some_and(|f| f.transient)
    }

    pub fn with_details(mut self, details: Vec<String>) -> Self {
        self.details = details;
        self
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// What happens when a reader closes our standard output (`ferry status APP | head -2`).
pub(crate) mod closed_stdout {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Exit quietly (0) at the first write to a closed stdout; off for commands that must
    /// clean up whatever happens to their output (the quickstart).
    static EXIT: AtomicBool = AtomicBool::new(true);

    fn is_closed_stdout(message: &str) -> bool {
        message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
    }

    /// `print!` panics when stdout is a closed pipe: that panic ends the process quietly,
    /// like `head`'s other writers, instead of a `Broken pipe` panic and exit code 101.
    /// With `keep_running` it is only kept out of stderr (the caller catches it).
    pub fn install(keep_running: bool) {
        EXIT.store(!keep_running, Ordering::SeqCst);
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload_as_str().is_some_and(is_closed_stdout) {
                if EXIT.load(Ordering::SeqCst) {
                    std::process::exit(0);
                }
                return;
            }
            default(info);
        }));
    }

    /// Prints a line; a closed or failing stdout is ignored (output is best effort where
    /// what follows matters more, e.g. the quickstart's cleanup).
    #[macro_export]
    macro_rules! say {
        ($($arg:tt)*) => {{
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout().lock(), $($arg)*);
        }};
    }
}

/// Entry point: parse, run, turn the outcome into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    closed_stdout::install(matches!(cli.command, Command::Quickstart { .. }));
    init_tracing(&cli.command);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::ERROR);
        }
    };
    let result = runtime.block_on(run(cli));
    // Don't wait for stray blocking tasks (stdin readers, DNS) on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => ExitCode::from(report(&err)),
    }
}

/// Prints an error to stderr (each line cut to a bounded length: an error never repeats a
/// huge value) and returns its exit code.
fn report(err: &anyhow::Error) -> u8 {
    use ferry_core::api::{MAX_MESSAGE_CHARS, clip};
    let _ = std::io::stdout().flush();
    let mut stderr = std::io::stderr().lock();
    if let Some(failure) = err.downcast_ref::<Failure>() {
        let _ = writeln!(
            stderr,
            "error: {}",
            clip(&failure.message, MAX_MESSAGE_CHARS)
        );
        for line in &failure.details {
            let _ = writeln!(stderr, "  {}", clip(line, MAX_MESSAGE_CHARS));
        }
        failure.code
    } else {
        let _ = writeln!(
            stderr,
            "error: {}",
            clip(&format!("{err:#}"), MAX_MESSAGE_CHARS)
        );
        exit::ERROR
    }
}

fn init_tracing(command: &Command) {
    let default = match command {
        Command::Server { .. } | Command::Proxy { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli {
        url,
        token,
        reason,
        command,
    } = cli;
    if let Command::Login(args) = command {
        return identity::login(url, token, args).await;
    }
    let conn = config::Connection::resolve(url, token);
    match command {
        Command::Server {
            data,
            listen,
            database,
            run_as,
            ports,
            proxy_image,
            notify,
            leader,
        } => {
            serve::server(
                data,
                listen,
                database,
                run_as,
                ports,
                proxy_image,
                notify.settings()?,
                leader.settings()?,
            )
            .await
        }
        Command::LogFilter { out } => {
            ferry_runtime::redact::run_filter(std::io::stdin().lock(), &out)
                .map_err(|e| anyhow::anyhow!("log filter into {}: {e}", out.display()))
        }
        Command::Proxy {
            state_dir,
            admin_listen,
            header_read_timeout,
            idle_timeout,
            admin_token_file,
            seed_routes,
            listen_ip,
        } => {
            let options = ferry_proxy::ProxyOptions {
                header_read_timeout: header_read_timeout.get(),
                idle_timeout: idle_timeout.get(),
                admin_token_file,
                seed_routes,
                listen_ip,
                ..ferry_proxy::ProxyOptions::default()
            };
            serve::proxy(state_dir, admin_listen, options).await
        }
        Command::Quickstart {
            data,
            listen,
            dev_listen,
            production_listen,
        } => quickstart::run(data, listen, [dev_listen, production_listen]).await,
        Command::Schema => commands::schema(),
        Command::Validate { file } => commands::validate(&file),
        Command::Export(args) => export::run(&args),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "ferry", &mut std::io::stdout());
            Ok(())
        }
        Command::Demo(args) => ferry_demo::serve(args).await,
        command => {
            // hooks: a forced rollback must say why (it is audited).
            if matches!(command, Command::Rollback { force: true, .. })
                && reason.as_deref().is_none_or(|r| r.trim().is_empty())
            {
                return Err(Failure::new(
                    exit::INVALID,
                    "--force needs --reason \"why the old version is safe on the migrated data\" (it is kept in the audit log)",
                )
                .into());
            }
            let client = client::Client::new(&conn)?.with_reason(reason.clone())?;
            match command {
                Command::Apply {
                    file,
                    dry_run,
                    prune,
                    out,
                } => commands::apply(&client, &file, dry_run, prune, out.output).await,
                Command::Version { out } => commands::version(&client, out.output).await,
                Command::Deploy {
                    app,
                    env,
                    version,
                    release,
                    fix_of,
                    wait,
                    out,
                } => {
                    let request = ferry_core::api::DeployRequest {
                        version,
                        release: release.data()?,
                        fix_of,
                    };
                    commands::deploy(&client, &app, &env, &request, wait, out.output).await
                }
                Command::Rollback {
                    app,
                    env,
                    to,
                    force,
                    wait,
                    out,
                } => commands::rollback(&client, &app, &env, to, force, wait, out.output).await,
                Command::Status {
                    app,
                    env: Some(env),
                    watch: true,
                    timeout,
                    out,
                } => {
                    progressive::watch(
                        &client,
                        &app,
                        &env,
                        out.output,
                        timeout.map(HumanDuration::get),
                    )
                    .await
                }
                Command::Status { app, env, out, .. } => {
                    commands::status(&client, &app, env.as_deref(), out.output).await
                }
                Command::Promote {
                    app,
                    env,
                    full,
                    from,
                    to,
                    wait,
                    out,
                } => match (env, from, to) {
                    (Some(env), _, _) => {
                        if wait.wait {
                            return Err(Failure::new(
                                exit::INVALID,
                                "--wait goes with --from/--to (a rollout step is promoted at once)",
                            )
                            .into());
                        }
                        let what = progressive::Steer::Promote { full };
                        progressive::steer(&client, &app, &env, what, out.output).await
                    }
                    (None, Some(from), Some(to)) => {
                        releases::promote(&client, &app, &from, &to, wait, out.output).await
                    }
                    _ => Err(Failure::new(
                        exit::INVALID,
                        "`ferry promote` needs --env ENV, or --from ENV --to ENV",
                    )
                    .into()),
                },
                Command::Pause { app, env, out } => {
                    progressive::steer(&client, &app, &env, progressive::Steer::Pause, out.output)
                        .await
                }
                Command::Resume { app, env, out } => {
                    progressive::steer(&client, &app, &env, progressive::Steer::Resume, out.output)
                        .await
                }
                Command::Abort {
                    app,
                    env,
                    wait,
                    out,
                } => progressive::abort(&client, &app, &env, wait, out.output).await,
                Command::Retry {
                    app,
                    env,
                    wait,
                    out,
                } => progressive::retry(&client, &app, &env, wait, out.output).await,
                Command::History {
                    app,
                    env,
                    limit,
                    out,
                } => commands::history(&client, &app, &env, limit, out.output).await,
                Command::Logs {
                    app,
                    env,
                    hook: Some(hook),
                    deployment,
                    output,
                    ..
                } => {
                    hooks::logs(
                        &client,
                        &app,
                        &env,
                        &hook,
                        deployment,
                        output == Format::Json,
                    )
                    .await
                }
                Command::Logs {
                    app,
                    env,
                    service,
                    tail,
                    follow,
                    ..
                } => commands::logs(&client, &app, &env, service.as_deref(), tail, follow).await,
                Command::Apps {
                    command: Some(AppsCommand::Delete { app, yes }),
                    ..
                } => commands::delete_app(&client, &app, yes).await,
                Command::Apps { command: None, out } => commands::apps(&client, out.output).await,
                Command::Approve(args) => approvals::approve(&client, args).await,
                Command::Approvals { deployment, out } => {
                    approvals::approvals(&client, deployment, out).await
                }
                Command::Deployment { id, out } => {
                    commands::deployment(&client, id, out.output).await
                }
                Command::Teardown { yes } => commands::teardown(&client, yes).await,
                Command::Identity(cmd) => identity::run(&client, cmd).await,
                Command::Audit(cmd) => audit::run(&client, cmd).await,
                Command::Secrets(cmd) => secrets::run(&client, cmd).await,
                // flags:
                Command::Flags(cmd) => flags::run(&client, cmd).await,
                // releases:
                Command::Release(cmd) => releases::run(&client, cmd).await,
                Command::Releases { app, out } => releases::list(&client, &app, out.output).await,
                // gates:
                Command::Gates(args) => gates::run(&client, args).await,
                Command::Dora(args) => dora::run(&client, args).await,
                // alerts:
                Command::Alerts(args) => alerts::run(&client, args, reason.as_deref()).await,
                // notify:
                Command::Notifications(args) => notifications::run(&client, args).await,
                // config:
                Command::Config(args) => vars::config(&client, args).await,
                Command::Redeploy(args) => vars::redeploy(&client, args).await,
                Command::Server { .. }
                | Command::LogFilter { .. }
                | Command::Proxy { .. }
                | Command::Quickstart { .. }
                | Command::Schema
                | Command::Validate { .. }
                | Command::Export(_)
                | Command::Completions { .. }
                | Command::Demo(_)
                | Command::Login(_) => Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Unset, FERRY_URL used to show as `[env: FERRY_URL=]`, as if it were set to nothing.
    #[test]
    fn help_names_the_environment_variables_without_values() {
        let help = Cli::command().render_long_help().to_string();
        assert!(
            help.contains("[env: FERRY_URL]") && help.contains("[env: FERRY_TOKEN]"),
            "{help}"
        );
        assert!(!help.contains("FERRY_URL="), "{help}");
        assert!(help.contains("130  interrupted (Ctrl-C)"), "{help}");
    }

    #[test]
    fn parses_deploy_with_wait_and_timeout() {
        let cli = Cli::try_parse_from([
            "ferry",
            "deploy",
            "demo",
            "--env",
            "production",
            "--version",
            "1.1.0",
            "--wait",
            "--timeout",
            "2m",
        ])
        .unwrap();
        match cli.command {
            Command::Deploy { wait, .. } => {
                assert!(wait.wait);
                assert_eq!(wait.timeout.get(), std::time::Duration::from_secs(120));
            }
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn the_proxy_pods_image_is_checked_when_the_server_starts() {
        let server = |image: &str| {
            Cli::try_parse_from(["ferry", "server", "--data", "d", "--proxy-image", image])
        };
        let cli = server("registry.example.com/ferry:1.4.0").unwrap();
        assert!(matches!(
            cli.command,
            Command::Server { proxy_image: Some(ref i), .. } if i == "registry.example.com/ferry:1.4.0"
        ));
        let error = server("ferry 1.4").unwrap_err().to_string();
        assert!(
            error.contains("--proxy-image") && error.contains("without spaces"),
            "{error}"
        );
    }

    #[test]
    fn parses_the_rollout_commands() {
        let cli =
            Cli::try_parse_from(["ferry", "promote", "shop", "--env", "prod", "--full"]).unwrap();
        assert!(matches!(cli.command, Command::Promote { full: true, .. }));
        let cli =
            Cli::try_parse_from(["ferry", "abort", "shop", "--env", "prod", "--wait"]).unwrap();
        assert!(matches!(cli.command, Command::Abort { wait, .. } if wait.wait));
        let cli = Cli::try_parse_from([
            "ferry",
            "status",
            "shop",
            "--env",
            "prod",
            "--watch",
            "--timeout",
            "30s",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Status { watch: true, timeout: Some(t), .. } if t.get() == std::time::Duration::from_secs(30)
        ));
        assert!(
            Cli::try_parse_from(["ferry", "status", "shop", "--watch"]).is_err(),
            "--watch needs --env"
        );
    }

    // releases:
    #[test]
    fn promote_takes_env_or_from_and_to() {
        let cli = Cli::try_parse_from([
            "ferry",
            "promote",
            "shop",
            "--from",
            "staging",
            "--to",
            "production",
            "--wait",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Promote { env: None, from: Some(_), to: Some(_), wait, .. } if wait.wait
        ));
        for bad in [
            &["ferry", "promote", "shop"][..],
            &[
                "ferry", "promote", "shop", "--env", "prod", "--from", "staging",
            ],
            &["ferry", "promote", "shop", "--from", "staging"],
            &["ferry", "promote", "shop", "--to", "production"],
            &[
                "ferry", "promote", "shop", "--from", "a", "--to", "b", "--full",
            ],
        ] {
            let e = Cli::try_parse_from(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
        }
        let cli = Cli::try_parse_from([
            "ferry",
            "deploy",
            "shop",
            "--env",
            "qa",
            "--version",
            "1.4.2",
            "--commit",
            "abcdef1",
            "--artifact",
            "api=img:1",
            "--artifact",
            "web=img:2",
            "--notes",
            "n",
        ])
        .unwrap();
        match cli.command {
            Command::Deploy { release, .. } => {
                let data = release.data().unwrap();
                assert_eq!(data.artifacts.len(), 2);
                assert_eq!(data.commit.as_deref(), Some("abcdef1"));
            }
            other => panic!("parsed {other:?}"),
        }
    }
}
