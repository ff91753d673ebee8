//! Identity commands: password login and logout, whoami, users, passwords, roles, role
//! bindings, API tokens and `auth can-i`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::Stdio;

use clap::{Args, Subcommand};
use ferry_core::api::identity::{
    CallerKind, CreateBindingRequest, CreateRoleRequest, CreateTokenRequest, CreateUserRequest,
    LoginLinkRequest, LoginRequest, Password, PasswordRequest,
};
use ferry_core::endpoint::{self as e, Empty};
use ferry_core::rbac::Scope;

use super::client::Client;
use super::config::{self, ConfigFile, Connection};
use super::output::{Table, age, now_ms, print_json, timestamp};
use super::{DEFAULT_URL, Failure, Format, OutputArg, commands, exit};

/// `ferry login` options.
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name (asked for on a terminal when left out).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Read the password from stdin (first line) instead of asking for it.
    #[arg(long)]
    pub password_stdin: bool,
}

/// The identity commands, flattened into the top-level `ferry` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// End the session saved by `ferry login` (server side too) and forget its token.
    Logout,
    /// Show who the current credentials belong to, and their role bindings.
    Whoami {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Add, list, disable and enable users.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Change a password: your own (asks for the current one) or, with manage_users,
    /// someone else's.
    Passwd {
        /// The user (default: you).
        name: Option<String>,
        /// Read the passwords from stdin: for your own, the current one on the first line
        /// and the new one on the second; for someone else's, the new one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List, define and delete roles.
    #[command(subcommand)]
    Roles(RolesCommand),
    /// Give USER the role ROLE, on all apps or one (--app), all environments or some (--env).
    Grant {
        /// User name.
        user: String,
        /// Role name (`ferry roles list`).
        role: String,
        /// Only this app (default: all apps, and global permissions).
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// Only these environments (repeatable; default: all).
        #[arg(long = "env", value_name = "ENV")]
        envs: Vec<String>,
        /// Bind ahead of time: accept an app or environments not applied yet (otherwise a
        /// name that exists nowhere is refused, since the binding would grant nothing).
        #[arg(long)]
        allow_missing: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Delete a role binding (its id as shown by `ferry bindings`).
    Revoke {
        /// Binding id.
        id: i64,
    },
    /// List role bindings: yours, or everyone's (or --user's) with manage_users.
    Bindings {
        /// Only this user's.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Ask the server about permissions.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user (asks for the password, or reads it with --password-stdin).
    Add {
        /// User name: letters, digits, '.', '_', '-', '@'.
        name: String,
        /// Read the password from stdin (first line).
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users.
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Disable a user: their sessions end and their tokens stop working.
    Disable {
        /// User name.
        name: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// User name.
        name: String,
    },
    /// Print a one-time link that logs the user into the web console (valid 10 minutes,
    /// works once).
    LoginLink {
        /// User name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RolesCommand {
    /// List the built-in and custom roles with their permissions.
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Define a custom role.
    Create {
        /// Role name: lowercase letters, digits, '-', '_'.
        name: String,
        /// A permission of the role (repeatable): deploy, promote, approve, rollback, abort,
        /// view, view_logs, view_metrics, manage_apps, manage_config, manage_secrets,
        /// manage_flags, manage_users, manage_roles, override_freeze, manage_server.
        #[arg(long = "permission", value_name = "PERMISSION", required = true)]
        permissions: Vec<String>,
        /// What the role is for.
        #[arg(long, default_value = "", value_name = "TEXT")]
        description: String,
    },
    /// Delete a custom role.
    Delete {
        /// Role name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create an API token (printed once on stdout: store it now).
    Create {
        /// A name for the token (shown in the audit log as token:NAME).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The token's role; it may not give more than you have.
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// Only this app (default: all apps).
        #[arg(long, value_name = "APP")]
        app: Option<String>,
        /// Only these environments (repeatable; default: all).
        #[arg(long = "env", value_name = "ENV")]
        envs: Vec<String>,
        /// Lifetime, e.g. 90d, 12h (default: never expires).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// List tokens: yours (sessions included), or every token with manage_users.
    List {
        #[command(flatten)]
        out: OutputArg,
    },
    /// Revoke a token (its id as shown by `ferry tokens list`).
    Revoke {
        /// Token id.
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// May I (or --as USER) do PERMISSION on APP (and --env)? Prints yes or no and why;
    /// exit code 0 for yes, 1 for no.
    CanI {
        /// The permission, e.g. deploy, view_logs, manage_users.
        permission: String,
        /// The app (leave out for global permissions such as manage_users).
        app: Option<String>,
        /// The environment.
        #[arg(long, value_name = "ENV")]
        env: Option<String>,
        /// Ask for another user (needs manage_users).
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
}

fn scope_short(app: &Option<String>, envs: &[String]) -> String {
    Scope {
        app: app.clone(),
        envs: envs.to_vec(),
    }
    .short()
}

// ---------------------------------------------------------------------------------------------
// Reading passwords
// ---------------------------------------------------------------------------------------------

/// Turns terminal echo back on when dropped.
struct EchoOff;

impl EchoOff {
    fn new() -> Option<EchoOff> {
        stty("-echo").then_some(EchoOff)
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        stty("echo");
    }
}

/// Runs `stty ARG` on the terminal that is our stdin; whether it worked.
fn stty(arg: &str) -> bool {
    std::process::Command::new("stty")
        .arg(arg)
        .stdin(Stdio::inherit())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn strip_newline(mut line: String) -> String {
    if line.ends_with('\n') {
        line.pop();
        if line.ends_with('\r') {
            line.pop();
        }
    }
    line
}

/// One line from stdin without its newline; `None` at the end of input.
fn read_stdin_line() -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Failure::new(exit::ERROR, format!("cannot read stdin: {e}")))?;
    Ok((n > 0).then(|| strip_newline(line)))
}

/// Asks on the terminal (prompt on stderr) with echo off.
fn prompt_hidden(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let guard = EchoOff::new();
    let line = read_stdin_line();
    drop(guard);
    eprintln!();
    line?.ok_or_else(|| Failure::new(exit::INVALID, "no password given").into())
}

/// Where passwords come from: stdin lines (`--password-stdin`, or stdin not a terminal)
/// or terminal prompts without echo.
struct Passwords {
    from_stdin: bool,
}

impl Passwords {
    fn new(password_stdin: bool) -> Passwords {
        Passwords {
            from_stdin: password_stdin || !std::io::stdin().is_terminal(),
        }
    }

    /// A password that exists already (login, the current one).
    fn existing(&self, prompt: &str) -> anyhow::Result<String> {
        if self.from_stdin {
            return self.line(prompt);
        }
        prompt_hidden(prompt)
    }

    /// A new password: on a terminal asked twice.
    fn new_password(&self, prompt: &str) -> anyhow::Result<String> {
        if self.from_stdin {
            return self.line(prompt);
        }
        let first = prompt_hidden(prompt)?;
        let again = prompt_hidden("Repeat it: ")?;
        if first != again {
            return Err(Failure::new(exit::INVALID, "the passwords do not match").into());
        }
        Ok(first)
    }

    fn line(&self, what: &str) -> anyhow::Result<String> {
        match read_stdin_line()? {
            Some(line) if !line.is_empty() => Ok(line),
            _ => Err(Failure::new(
                exit::INVALID,
                format!(
                    "expected a password on stdin ({}) but found none",
                    what.trim_end_matches([':', ' ']).to_lowercase()
                ),
            )
            .into()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Login, logout, whoami
// ---------------------------------------------------------------------------------------------

/// `ferry login`: with `--token` (and no `--user`) checks and saves the token as before;
/// otherwise logs in with user name and password and saves the session token.
pub async fn login(
    url: Option<String>,
    token: Option<String>,
    args: LoginArgs,
) -> anyhow::Result<()> {
    let token = token.filter(|t| !t.trim().is_empty());
    if token.is_some() && args.user.is_none() && !args.password_stdin {
        return commands::login(url, token).await;
    }
    let existing = config::load();
    let url = url
        .or(existing.url)
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let conn = Connection {
        url: url.trim_end_matches('/').to_string(),
        token: None,
    };
    let client = Client::new(&conn)?;
    let username = match args.user {
        Some(user) => user,
        None if std::io::stdin().is_terminal() && !args.password_stdin => {
            eprint!("User: ");
            let _ = std::io::stderr().flush();
            read_stdin_line()?.unwrap_or_default()
        }
        None => {
            return Err(Failure::new(
                exit::INVALID,
                "`ferry login` needs --user NAME when stdin is not a terminal (or --token TOKEN)",
            )
            .into());
        }
    };
    let username = username.trim().to_string();
    if username.is_empty() {
        return Err(Failure::new(exit::INVALID, "no user name given").into());
    }
    let password = Passwords::new(args.password_stdin).existing("Password: ")?;
    let resp = client
        .call(
            e::Login,
            &[],
            &[],
            &LoginRequest {
                username,
                password: Password::new(password),
            },
        )
        .await
        .map_err(|e| match e.downcast::<Failure>() {
            // not the "no API token given" hint: this request needs none
            Ok(f) => Failure::new(f.code, f.message).into(),
            Err(e) => e,
        })?;
    let path = config::save(&ConfigFile {
        url: Some(conn.url.clone()),
        token: Some(resp.token),
    })?;
    println!(
        "logged in to {} as {} (session until {}); saved in {}",
        conn.url,
        resp.user.name,
        timestamp(resp.expires_at_ms),
        path.display()
    );
    Ok(())
}

/// Runs an identity command.
pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Logout => logout(client).await,
        Command::Whoami { out } => whoami(client, out.output).await,
        Command::Users(cmd) => users(client, cmd).await,
        Command::Passwd {
            name,
            password_stdin,
        } => passwd(client, name, password_stdin).await,
        Command::Roles(cmd) => roles(client, cmd).await,
        Command::Grant {
            user,
            role,
            app,
            envs,
            allow_missing,
            out,
        } => {
            let request = CreateBindingRequest {
                user,
                role,
                app,
                envs,
                allow_missing,
            };
            grant(client, request, out.output).await
        }
        Command::Revoke { id } => {
            let b = client
                .call(e::BindingsDelete, &[&id.to_string()], &[], &())
                .await?;
            println!(
                "deleted binding #{}: role {} of user {} on {}",
                b.id,
                b.role,
                b.subject,
                scope_short(&b.app, &b.envs)
            );
            Ok(())
        }
        Command::Bindings { user, out } => bindings(client, user, out.output).await,
        Command::Tokens(cmd) => tokens(client, cmd).await,
        Command::Auth(AuthCommand::CanI {
            permission,
            app,
            env,
            as_user,
            out,
        }) => can_i(client, permission, app, env, as_user, out.output).await,
    }
}

async fn logout(client: &Client) -> anyhow::Result<()> {
    let result = client.call(e::Logout, &[], &[], &Empty {}).await;
    // Forget the saved token whatever the server said (expired, already revoked).
    let mut file = config::load();
    let forgot = file.token.take().is_some();
    if forgot {
        config::save(&file)?;
    }
    match result {
        Ok(_) => {
            println!("logged out; the session has ended");
            Ok(())
        }
        Err(e) => {
            let code = e.downcast_ref::<Failure>().map(|f| f.code);
            if forgot && matches!(code, Some(exit::UNAUTHORIZED) | Some(exit::INVALID)) {
                println!("the saved token was forgotten (the server said: {e})");
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

async fn whoami(client: &Client, format: Format) -> anyhow::Result<()> {
    let me = client.call(e::Whoami, &[], &[], &()).await?;
    if format == Format::Json {
        return print_json(&me);
    }
    println!("{} ({})", me.name, me.kind);
    if let Some(user) = me.user.as_ref().filter(|u| me.name != format!("user:{u}")) {
        println!("on behalf of user {user}");
    }
    match me.expires_at_ms {
        Some(at) => println!("credentials expire {}", timestamp(at)),
        None => println!("credentials do not expire"),
    }
    if me.bindings.is_empty() {
        println!("no role bindings: you may do nothing yet");
    } else {
        let mut table = Table::new(&["BINDING", "ROLE", "SCOPE"]);
        for b in &me.bindings {
            table.row(vec![
                format!("#{}", b.id),
                b.role.clone(),
                b.scope.describe(),
            ]);
        }
        print!("{}", table.render());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Users and passwords
// ---------------------------------------------------------------------------------------------

async fn users(client: &Client, command: UsersCommand) -> anyhow::Result<()> {
    match command {
        UsersCommand::Add {
            name,
            password_stdin,
        } => {
            let password =
                Passwords::new(password_stdin).new_password("Password for the new user: ")?;
            let request = CreateUserRequest {
                username: name,
                password: Password::new(password),
            };
            let user = client.call(e::UsersCreate, &[], &[], &request).await?;
            println!(
                "added user {}; give them a role with `ferry grant {} ROLE`",
                user.name, user.name
            );
            Ok(())
        }
        UsersCommand::List { out } => {
            let list = client.call(e::UsersList, &[], &[], &()).await?;
            if out.output == Format::Json {
                return print_json(&list);
            }
            let now = now_ms();
            let mut table = Table::new(&["NAME", "STATE", "CREATED", "UPDATED"]);
            for u in &list {
                table.row(vec![
                    u.name.clone(),
                    if u.disabled { "disabled" } else { "active" }.to_string(),
                    timestamp(u.created_at_ms),
                    age(u.updated_at_ms, now),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        UsersCommand::Disable { name } => {
            let user = client
                .call(e::UsersDisable, &[&name], &[], &Empty {})
                .await?;
            println!(
                "disabled user {}: their sessions ended and their tokens are refused",
                user.name
            );
            Ok(())
        }
        UsersCommand::Enable { name } => {
            let user = client
                .call(e::UsersEnable, &[&name], &[], &Empty {})
                .await?;
            println!("enabled user {}", user.name);
            Ok(())
        }
        UsersCommand::LoginLink { name } => {
            let link = client
                .call(
                    e::LoginLinksCreate,
                    &[],
                    &[],
                    &LoginLinkRequest { user: name },
                )
                .await?;
            println!("{}{}", client.base_url().trim_end_matches('/'), link.path);
            eprintln!(
                "opens the web console as {} once, until {}",
                link.user,
                timestamp(link.expires_at_ms)
            );
            Ok(())
        }
    }
}

async fn passwd(client: &Client, name: Option<String>, password_stdin: bool) -> anyhow::Result<()> {
    let me = client.call(e::Whoami, &[], &[], &()).await?;
    let session_user = (me.kind == CallerKind::User)
        .then(|| me.user.clone())
        .flatten();
    let name = match name.or_else(|| session_user.clone()) {
        Some(name) => name,
        None => {
            return Err(Failure::new(
                exit::INVALID,
                format!(
                    "you are {} (not a user session): name the user, `ferry passwd NAME`",
                    me.name
                ),
            )
            .into());
        }
    };
    let own = session_user.as_deref() == Some(name.as_str());
    let passwords = Passwords::new(password_stdin);
    let current = if own {
        Some(passwords.existing("Current password: ")?)
    } else {
        None
    };
    let password = passwords.new_password(&format!("New password for {name}: "))?;
    let body = PasswordRequest {
        password: Password::new(password),
        current_password: current.map(Password::new),
    };
    let user = client.call(e::UsersPassword, &[&name], &[], &body).await?;
    println!(
        "changed the password of {}; their other sessions have ended",
        user.name
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Roles and bindings
// ---------------------------------------------------------------------------------------------

async fn roles(client: &Client, command: RolesCommand) -> anyhow::Result<()> {
    match command {
        RolesCommand::List { out } => {
            let list = client.call(e::RolesList, &[], &[], &()).await?;
            if out.output == Format::Json {
                return print_json(&list);
            }
            let mut table = Table::new(&["ROLE", "KIND", "PERMISSIONS"]);
            for r in &list {
                table.row(vec![
                    r.name.clone(),
                    if r.builtin { "built-in" } else { "custom" }.to_string(),
                    r.permissions
                        .iter()
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        RolesCommand::Create {
            name,
            permissions,
            description,
        } => {
            let request = CreateRoleRequest {
                name,
                description,
                permissions,
            };
            let role = client.call(e::RolesCreate, &[], &[], &request).await?;
            println!(
                "defined role {} with permissions {}",
                role.name,
                role.permissions
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            Ok(())
        }
        RolesCommand::Delete { name } => {
            client.call(e::RolesDelete, &[&name], &[], &()).await?;
            println!("deleted role {name}");
            Ok(())
        }
    }
}

async fn grant(
    client: &Client,
    request: CreateBindingRequest,
    format: Format,
) -> anyhow::Result<()> {
    let b = client.call(e::BindingsCreate, &[], &[], &request).await?;
    if format == Format::Json {
        return print_json(&b);
    }
    println!(
        "binding #{}: user {} has role {} on {}",
        b.id,
        b.subject,
        b.role,
        scope_short(&b.app, &b.envs)
    );
    Ok(())
}

async fn bindings(client: &Client, user: Option<String>, format: Format) -> anyhow::Result<()> {
    let query: Vec<(&str, String)> = user.into_iter().map(|u| ("user", u)).collect();
    let list = client.call(e::BindingsList, &[], &query, &()).await?;
    if format == Format::Json {
        return print_json(&list);
    }
    let mut table = Table::new(&["ID", "USER", "ROLE", "APP", "ENVIRONMENTS", "BY"]);
    for b in &list {
        table.row(vec![
            b.id.to_string(),
            b.subject.clone(),
            b.role.clone(),
            b.app.clone().unwrap_or_else(|| "(all)".to_string()),
            if b.envs.is_empty() {
                "(all)".to_string()
            } else {
                b.envs.join(",")
            },
            b.created_by.clone(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

async fn tokens(client: &Client, command: TokensCommand) -> anyhow::Result<()> {
    match command {
        TokensCommand::Create {
            name,
            role,
            app,
            envs,
            expires,
            out,
        } => {
            let request = CreateTokenRequest {
                name,
                role,
                app,
                envs,
                expires_in: expires,
            };
            let created = client.call(e::TokensCreate, &[], &[], &request).await?;
            if out.output == Format::Json {
                print_json(&created)?;
            } else {
                let t = &created.info;
                eprintln!(
                    "created token #{} {:?}: role {} on {}, {}",
                    t.id,
                    t.name,
                    t.role,
                    scope_short(&t.app, &t.envs),
                    match t.expires_at_ms {
                        Some(at) => format!("expires {}", timestamp(at)),
                        None => "never expires".to_string(),
                    }
                );
                println!("{}", created.token);
            }
            eprintln!(
                "warning: store this token now (e.g. in your CI's secret store); it is shown \
                 only this once and cannot be read back"
            );
            Ok(())
        }
        TokensCommand::List { out } => {
            let list = client.call(e::TokensList, &[], &[], &()).await?;
            if out.output == Format::Json {
                return print_json(&list);
            }
            let now = now_ms();
            let mut table = Table::new(&[
                "ID",
                "NAME",
                "KIND",
                "OWNER",
                "ROLE",
                "SCOPE",
                "STATE",
                "EXPIRES",
                "LAST USED",
            ]);
            for t in &list {
                table.row(vec![
                    t.id.to_string(),
                    t.name.clone(),
                    t.kind.clone(),
                    t.owner.clone().unwrap_or_else(|| "-".to_string()),
                    if t.role.is_empty() {
                        "(user's)".to_string()
                    } else {
                        t.role.clone()
                    },
                    if t.kind == "session" {
                        "-".to_string()
                    } else {
                        scope_short(&t.app, &t.envs)
                    },
                    t.state.to_string(),
                    t.expires_at_ms
                        .map(timestamp)
                        .unwrap_or_else(|| "never".to_string()),
                    t.last_used_at_ms
                        .map(|at| age(at, now))
                        .unwrap_or_else(|| "never".to_string()),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        TokensCommand::Revoke { id } => {
            let t = client
                .call(e::TokensDelete, &[&id.to_string()], &[], &())
                .await?;
            println!("revoked token #{} {:?}", t.id, t.name);
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// can-i
// ---------------------------------------------------------------------------------------------

async fn can_i(
    client: &Client,
    permission: String,
    app: Option<String>,
    env: Option<String>,
    as_user: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let mut query = vec![("permission", permission)];
    query.extend(app.map(|a| ("app", a)));
    query.extend(env.map(|e| ("env", e)));
    query.extend(as_user.map(|u| ("as", u)));
    let answer = client.call(e::AuthCanI, &[], &query, &()).await?;
    if format == Format::Json {
        print_json(&answer)?;
    } else {
        println!("{}", if answer.decision.allowed { "yes" } else { "no" });
        println!("{}", answer.decision.reason);
    }
    if answer.decision.allowed {
        return Ok(());
    }
    let on = match (&answer.app, &answer.env) {
        (Some(a), Some(e)) => format!("{a}/{e}"),
        (Some(a), None) => a.clone(),
        (None, Some(e)) => format!("all apps/{e}"),
        (None, None) => "the server".to_string(),
    };
    Err(Failure::new(
        exit::ERROR,
        format!("{} may not {} on {on}", answer.subject, answer.permission),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_one_newline() {
        assert_eq!(strip_newline("secret\n".into()), "secret");
        assert_eq!(strip_newline("secret\r\n".into()), "secret");
        assert_eq!(strip_newline("sec ret ".into()), "sec ret ");
        assert_eq!(strip_newline("a\n\n".into()), "a\n");
    }
}

#[cfg(test)]
mod parse_tests {
    use clap::Parser;

    use crate::cli::{Cli, Command as Top};

    fn parse(args: &[&str]) -> Top {
        Cli::try_parse_from(args).unwrap().command
    }

    #[test]
    fn parses_identity_and_audit_commands() {
        let grant = parse(&[
            "ferry",
            "grant",
            "alice",
            "developer",
            "--app",
            "shop",
            "--env",
            "dev",
            "--env",
            "staging",
        ]);
        assert!(matches!(
            grant,
            Top::Identity(super::Command::Grant { ref envs, app: Some(ref app), .. })
                if envs == &["dev", "staging"] && app == "shop"
        ));
        let can_i = parse(&["ferry", "auth", "can-i", "deploy", "shop", "--env", "prod"]);
        assert!(matches!(
            can_i,
            Top::Identity(super::Command::Auth(super::AuthCommand::CanI {
                app: Some(_),
                ..
            }))
        ));
        assert!(matches!(
            parse(&["ferry", "login", "--user", "alice", "--password-stdin"]),
            Top::Login(super::LoginArgs {
                user: Some(_),
                password_stdin: true
            })
        ));
        assert!(matches!(
            parse(&["ferry", "audit", "export", "--actor", "alice"]),
            Top::Audit(_)
        ));
        assert!(matches!(
            parse(&["ferry", "change-record", "4", "-o", "json"]),
            Top::Audit(_)
        ));
        let cli =
            Cli::try_parse_from(["ferry", "users", "disable", "bob", "--reason", "left"]).unwrap();
        assert_eq!(cli.reason.as_deref(), Some("left"));
        assert!(Cli::try_parse_from(["ferry", "roles", "create", "r"]).is_err());
    }
}
