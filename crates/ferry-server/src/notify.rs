//! Outgoing webhooks on deployment state changes: Ferry's JSON body or a Slack-compatible
//! one. Sent in the background with a few retries; a slow receiver never holds a rollout.

use std::time::Duration;

use ferry_core::manifest::{Notification, WebhookFormat};
use serde::Serialize;

const ATTEMPTS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a webhook receives (format `json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StateChange {
    pub app: String,
    pub env: String,
    pub deployment_id: i64,
    pub version: String,
    pub previous_version: Option<String>,
    pub state: String,
    pub previous_state: String,
    pub message: String,
    pub at_ms: i64,
}

impl StateChange {
    fn wanted_by(&self, notification: &Notification) -> bool {
        (notification.states.is_empty() || notification.states.contains(&self.state))
            && (notification.environments.is_empty()
                || notification.environments.contains(&self.env))
    }

    /// The body for `format`.
    pub fn body(&self, format: WebhookFormat) -> serde_json::Value {
        match format {
            WebhookFormat::Json => serde_json::to_value(self).unwrap_or_default(),
            WebhookFormat::Slack => serde_json::json!({
                "text": format!(
                    "*{}/{}*: deployment #{} of {} is *{}* — {}",
                    self.app, self.env, self.deployment_id, self.version, self.state, self.message
                )
            }),
        }
    }
}

/// Posts `change` to every notification that wants it, in the background.
pub fn send(http: &reqwest::Client, notifications: &[Notification], change: StateChange) {
    for notification in notifications.iter().filter(|n| change.wanted_by(n)) {
        let http = http.clone();
        let url = notification.webhook.clone();
        let body = change.body(notification.format);
        tokio::spawn(async move {
            for attempt in 1..=ATTEMPTS {
                match http.post(&url).timeout(TIMEOUT).json(&body).send().await {
                    Ok(response) if response.status().is_success() => return,
                    Ok(response) => {
                        tracing::warn!(host = %host(&url), status = %response.status(), attempt, "webhook refused the notification")
                    }
                    Err(e) => {
                        tracing::warn!(host = %host(&url), error = %crate::error::one_line(&e.without_url()), attempt, "webhook unreachable")
                    }
                }
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        });
    }
}

/// Only the host goes to logs: webhook URLs often carry a secret in their path.
fn host(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("?")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> StateChange {
        StateChange {
            app: "shop".into(),
            env: "production".into(),
            deployment_id: 7,
            version: "2.0.0".into(),
            previous_version: Some("1.0.0".into()),
            state: "rolled-back".into(),
            previous_state: "rolling-back".into(),
            message: "error rate 0.5 > max 0.01".into(),
            at_ms: 1,
        }
    }

    #[test]
    fn filters_by_state_and_environment() {
        let mut n = Notification {
            webhook: "http://127.0.0.1:1/x".into(),
            format: WebhookFormat::Json,
            states: vec![],
            environments: vec![],
        };
        assert!(change().wanted_by(&n));
        n.states = vec!["succeeded".into()];
        assert!(!change().wanted_by(&n));
        n.states = vec!["rolled-back".into()];
        n.environments = vec!["staging".into()];
        assert!(!change().wanted_by(&n));
    }

    #[test]
    fn bodies_carry_what_happened() {
        let json = change().body(WebhookFormat::Json);
        assert_eq!(json["state"], "rolled-back");
        assert_eq!(json["deployment_id"], 7);
        let slack = change().body(WebhookFormat::Slack);
        let text = slack["text"].as_str().unwrap();
        assert!(
            text.contains("shop/production")
                && text.contains("rolled-back")
                && text.contains("0.5"),
            "{text}"
        );
    }

    #[test]
    fn logs_only_the_host() {
        assert_eq!(
            host("https://hooks.slack.com/services/T000/B000/SECRET"),
            "hooks.slack.com"
        );
    }
}
