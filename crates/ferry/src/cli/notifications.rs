//! `ferry notifications [--app A] [--env E] [--state failed] [--limit N] [-o json]`: the
//! delivery history of notifications, newest first (docs/notifications.md).

use clap::{Args, ValueEnum};
use ferry_core::endpoint as e;
use ferry_core::notify::{DeliveryState, DeliveryView};

use super::client::Client;
use super::output::{Table, age, now_ms, print_json, timestamp};
use super::{Format, OutputArg};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Pending,
    Delivered,
    Failed,
    Inhibited,
}

impl StateArg {
    fn state(self) -> DeliveryState {
        match self {
            StateArg::Pending => DeliveryState::Pending,
            StateArg::Delivered => DeliveryState::Delivered,
            StateArg::Failed => DeliveryState::Failed,
            StateArg::Inhibited => DeliveryState::Inhibited,
        }
    }
}

#[derive(Debug, Args)]
pub struct NotificationsArgs {
    /// Only this app's.
    #[arg(long)]
    pub app: Option<String>,
    /// Only this environment's.
    #[arg(long)]
    pub env: Option<String>,
    /// Only deliveries in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// At most this many (1 to 500).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub out: OutputArg,
}

pub async fn run(client: &Client, args: NotificationsArgs) -> anyhow::Result<()> {
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(app) = args.app {
        query.push(("app", app));
    }
    if let Some(env) = args.env {
        query.push(("env", env));
    }
    if let Some(state) = args.state {
        query.push(("state", state.state().to_string()));
    }
    let rows = client.call(e::Notifications, &[], &query, &()).await?;
    if args.out.output == Format::Json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no notifications");
        return Ok(());
    }
    print!("{}", render(&rows, now_ms()));
    Ok(())
}

fn render(rows: &[DeliveryView], now: i64) -> String {
    let mut table = Table::new(&[
        "WHEN",
        "APP/ENV",
        "RECEIVER",
        "STATE",
        "ATTEMPTS",
        "DELIVERED",
        "SUMMARY",
        "LAST ERROR",
    ]);
    for d in rows {
        let delivered = match (d.delivered_at_ms, d.next_attempt_at_ms) {
            (Some(at), _) => timestamp(at),
            (None, Some(next)) if next > now => {
                format!("next try in {}s", (next - now + 999) / 1000)
            }
            (None, Some(_)) => "due".to_string(),
            (None, None) => "-".to_string(),
        };
        table.row(vec![
            age(d.created_at_ms, now),
            format!("{}/{}", d.app, d.env),
            format!("{} ({})", d.receiver, d.receiver_type),
            d.state.to_string(),
            d.attempts.to_string(),
            delivered,
            d.summary.clone(),
            d.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_names_receiver_state_attempts_and_error() {
        let row = DeliveryView {
            id: 1,
            key: "ferry-x-1-1".into(),
            receiver: "pager".into(),
            receiver_type: "pagerduty".into(),
            app: "shop".into(),
            env: "production".into(),
            state: DeliveryState::Failed,
            summary: "error rate 3 %".into(),
            notifications: 1,
            attempts: 8,
            last_error: Some("events.pagerduty.com answered 400".into()),
            created_at_ms: 0,
            next_attempt_at_ms: None,
            delivered_at_ms: None,
        };
        let text = render(&[row], 120_000);
        for needle in [
            "shop/production",
            "pager (pagerduty)",
            "failed",
            "8",
            "answered 400",
            "2m ago",
        ] {
            assert!(text.contains(needle), "{needle:?} missing:\n{text}");
        }
    }
}
