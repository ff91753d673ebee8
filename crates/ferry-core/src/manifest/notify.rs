//! `receivers:`, `routes:` and `inhibit:` — where notifications go (docs/notifications.md).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Manifest;
use super::tree::Seg;
use super::validate::{Issues, with};
use crate::duration::HumanDuration;

/// Most receivers, routes and inhibition rules one app may have (each).
pub const MAX_NOTIFY_ITEMS: usize = 50;
/// Most recipients of one email receiver.
pub const MAX_EMAIL_RECIPIENTS: usize = 50;
/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// A receiver: one way of telling people. Credentials are never written here: they name a
/// Ferry secret (`ferry secrets set`) of the environment the notification is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Receiver {
    /// POST of Ferry's JSON, signed with HMAC-SHA256 when `secret` is set.
    Webhook(WebhookReceiver),
    /// A Slack-compatible incoming webhook (`{"text": …}`).
    Slack(SlackReceiver),
    /// Email over SMTP (STARTTLS by default), with authentication.
    Email(EmailReceiver),
    /// PagerDuty Events API v2: trigger, and resolve when an alert resolves (same dedup key).
    Pagerduty(PagerDutyReceiver),
}

impl Receiver {
    pub fn type_name(&self) -> &'static str {
        match self {
            Receiver::Webhook(_) => "webhook",
            Receiver::Slack(_) => "slack",
            Receiver::Email(_) => "email",
            Receiver::Pagerduty(_) => "pagerduty",
        }
    }

    /// The names of the Ferry secrets this receiver reads.
    pub fn secret_names(&self) -> Vec<&str> {
        match self {
            Receiver::Webhook(w) => w.secret.as_deref().into_iter().collect(),
            Receiver::Slack(s) => s.url_secret.as_deref().into_iter().collect(),
            Receiver::Email(e) => e.password_secret.as_deref().into_iter().collect(),
            Receiver::Pagerduty(p) => vec![p.routing_key_secret.as_str()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceiver {
    /// `http://` or `https://` URL receiving a POST.
    pub url: String,
    /// A Ferry secret whose value signs every body: `X-Ferry-Signature: v1=HEX`, the
    /// HMAC-SHA256 of `TIMESTAMP.BODY` (TIMESTAMP is `X-Ferry-Timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackReceiver {
    /// The incoming webhook URL, when it may be written here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A Ferry secret holding the URL (Slack's URLs are credentials). One of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// Plain connection upgraded with STARTTLS; refused if the server does not offer it.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS (a relay on the same host only).
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailReceiver {
    /// `host:port` of the SMTP server, e.g. `smtp.example.com:587`.
    pub smarthost: String,
    pub from: String,
    /// At least one address.
    pub to: Vec<String>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub tls: EmailTls,
    /// SMTP user; with `password_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A Ferry secret holding the SMTP password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyReceiver {
    /// A Ferry secret holding the integration's routing key.
    pub routing_key_secret: String,
    /// The Events API v2 endpoint (default PagerDuty's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// A label's wanted value, or any of several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MatchValue {
    One(String),
    Any(Vec<String>),
}

impl MatchValue {
    pub fn matches(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (_, None) => false,
            (MatchValue::One(v), Some(x)) => v == x,
            (MatchValue::Any(vs), Some(x)) => vs.iter().any(|v| v == x),
        }
    }
}

/// Label name → wanted value(s); every listed label must match (an empty map matches all).
pub type Matchers = BTreeMap<String, MatchValue>;

/// Sends the notifications whose labels match to `receiver`; routes are tried in order and
/// the first match wins, unless it says `continue: true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifyRoute {
    pub receiver: String,
    /// Labels to match: `app`, `env`, `kind`, `severity`, and an alert's own labels.
    #[serde(default, rename = "match", skip_serializing_if = "BTreeMap::is_empty")]
    pub matchers: Matchers,
    /// Labels whose values form a group (one message per group). Absent or `['...']`: no
    /// grouping (each event alone; an alert's firing and resolved share a group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_by: Option<Vec<String>>,
    /// How long a new group waits for more before its first message (default `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_wait: Option<HumanDuration>,
    /// How long after a group's message the next one about new events waits (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_interval: Option<HumanDuration>,
    /// How often a group's still-firing alerts are sent again (default `4h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_interval: Option<HumanDuration>,
    /// Keep trying the routes after this one when it matched.
    #[serde(
        default,
        rename = "continue",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub continue_matching: bool,
}

/// While an alert matching `source_match` fires, notifications matching `target_match`
/// whose `equal` labels have the same values are not sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InhibitRule {
    #[serde(default)]
    pub source_match: Matchers,
    #[serde(default)]
    pub target_match: Matchers,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub equal: Vec<String>,
}

fn is_secret_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('A'..='Z' | 'a'..='z' | '_'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

fn is_http_url(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://")) && url.len() >= 10
}

/// Checks `receivers`, `routes` and `inhibit`, and that legacy `notifications:` don't clash.
pub(super) fn validate(out: &mut Issues, m: &Manifest) {
    let root = |key: &str| vec![Seg::Key(key.to_string())];
    for (key, count) in [
        ("receivers", m.receivers.len()),
        ("routes", m.routes.len()),
        ("inhibit", m.inhibit.len()),
    ] {
        if count > MAX_NOTIFY_ITEMS {
            out.key(
                root(key),
                format!("{count} {key}, more than the limit of {MAX_NOTIFY_ITEMS}"),
                None,
            );
            return;
        }
    }
    let secret = |out: &mut Issues, path: Vec<Seg>, name: &str| {
        if !is_secret_name(name) {
            out.value(
                path,
                format!("invalid secret name {name:?}"),
                Some("name a Ferry secret, e.g. `WEBHOOK_SECRET` (`ferry secrets set`)".into()),
            );
        }
    };
    let url = |out: &mut Issues, path: Vec<Seg>, url: &str| {
        if !is_http_url(url) {
            out.value(
                path,
                format!("invalid URL {url:?}"),
                Some("write a full URL, e.g. `https://hooks.example.com/ferry`".into()),
            );
        }
    };
    for (name, receiver) in &m.receivers {
        let base = vec![Seg::Key("receivers".into()), Seg::Key(name.clone())];
        if name.is_empty() || name.len() > 63 || name.starts_with("notifications[") {
            out.key(
                base.clone(),
                format!("invalid receiver name {name:?}"),
                Some("1 to 63 characters, not starting with `notifications[`".into()),
            );
        }
        let kind = with(&base, receiver.type_name());
        match receiver {
            Receiver::Webhook(w) => {
                url(out, with(&kind, "url"), &w.url);
                if let Some(s) = &w.secret {
                    secret(out, with(&kind, "secret"), s);
                }
            }
            Receiver::Slack(s) => match (&s.url, &s.url_secret) {
                (Some(u), None) => url(out, with(&kind, "url"), u),
                (None, Some(name)) => secret(out, with(&kind, "url_secret"), name),
                _ => out.key(
                    kind.clone(),
                    "a slack receiver needs exactly one of `url` and `url_secret`",
                    Some("`url_secret` names a Ferry secret holding the URL".into()),
                ),
            },
            Receiver::Email(e) => {
                let host_port = e.smarthost.rsplit_once(':');
                if !host_port.is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) {
                    out.value(
                        with(&kind, "smarthost"),
                        format!("invalid smarthost {:?}", e.smarthost),
                        Some("write `host:port`, e.g. `smtp.example.com:587`".into()),
                    );
                }
                for (field, address) in
                    std::iter::once(("from", &e.from)).chain(e.to.iter().map(|a| ("to", a)))
                {
                    if !address.contains('@') || address.len() > 254 {
                        out.value(
                            with(&kind, field),
                            format!("invalid email address {address:?}"),
                            None,
                        );
                    }
                }
                if e.to.is_empty() || e.to.len() > MAX_EMAIL_RECIPIENTS {
                    out.value(
                        with(&kind, "to"),
                        format!("1 to {MAX_EMAIL_RECIPIENTS} recipients"),
                        None,
                    );
                }
                if let Some(s) = &e.password_secret {
                    secret(out, with(&kind, "password_secret"), s);
                    if e.username.is_none() {
                        out.key(
                            with(&kind, "password_secret"),
                            "a password needs a `username`",
                            None,
                        );
                    }
                }
            }
            Receiver::Pagerduty(p) => {
                secret(
                    out,
                    with(&kind, "routing_key_secret"),
                    &p.routing_key_secret,
                );
                if let Some(u) = &p.url {
                    url(out, with(&kind, "url"), u);
                }
            }
        }
    }
    for (i, route) in m.routes.iter().enumerate() {
        let base = vec![Seg::Key("routes".into()), Seg::Index(i)];
        if !m.receivers.contains_key(&route.receiver) {
            let names: Vec<&str> = m.receivers.keys().map(String::as_str).collect();
            out.value(
                with(&base, "receiver"),
                format!("no receiver `{}` in `receivers`", route.receiver),
                Some(if names.is_empty() {
                    "define it under `receivers:`".to_string()
                } else {
                    format!("one of: {}", names.join(", "))
                }),
            );
        }
        if let Some(group_by) = &route.group_by
            && group_by.iter().any(|l| l == "...")
            && group_by.len() > 1
        {
            out.value(
                with(&base, "group_by"),
                "`...` (no grouping) stands alone",
                Some("write `group_by: ['...']` or a list of labels".into()),
            );
        }
        for (field, d) in [
            ("group_interval", route.group_interval),
            ("repeat_interval", route.repeat_interval),
        ] {
            if d.is_some_and(|d| d.get().is_zero()) {
                out.value(
                    with(&base, field),
                    format!("`{field}` must be more than 0"),
                    None,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::manifest::parse;

    const BASE: &str = "app: shop\nservices:\n  web:\n    run: [\"x\"]\nenvironments:\n  prod: { listen: \"127.0.0.1:8080\" }\n";

    #[test]
    fn receivers_routes_and_inhibition_parse() {
        let text = format!(
            "{BASE}receivers:\n  ops:\n    webhook:\n      url: https://hooks.example.com/x\n      secret: HOOK_KEY\n  chat:\n    slack:\n      url_secret: SLACK_URL\n  mail:\n    email:\n      smarthost: smtp.example.com:587\n      from: ferry@example.com\n      to: [ops@example.com]\n      username: ferry\n      password_secret: SMTP_PASSWORD\n  pager:\n    pagerduty:\n      routing_key_secret: PD_KEY\nroutes:\n  - receiver: pager\n    match: {{severity: critical}}\n    group_by: [app, alertname]\n    group_wait: 30s\n    continue: true\n  - receiver: chat\n    match: {{kind: [deployment-failed, deployment-rolled-back]}}\ninhibit:\n  - source_match: {{severity: critical}}\n    target_match: {{severity: warning}}\n    equal: [app, env]\n"
        );
        let m = parse(&text, "ferry.yaml").unwrap();
        assert_eq!(m.receivers.len(), 4);
        assert_eq!(m.receivers["pager"].type_name(), "pagerduty");
        assert_eq!(m.receivers["mail"].secret_names(), vec!["SMTP_PASSWORD"]);
        assert!(m.routes[0].continue_matching);
        assert_eq!(m.inhibit[0].equal, vec!["app", "env"]);
    }

    #[test]
    fn mistakes_are_located() {
        let text = format!(
            "{BASE}receivers:\n  chat:\n    slack: {{}}\n  mail:\n    email:\n      smarthost: nohost\n      from: nobody\n      to: []\n      password_secret: 'bad name'\nroutes:\n  - receiver: nobody\n    group_by: ['...', app]\n    repeat_interval: 0s\n"
        );
        let errors = parse(&text, "ferry.yaml").unwrap_err().to_string();
        for needle in [
            "receivers.chat.slack",
            "exactly one of `url` and `url_secret`",
            "receivers.mail.email.smarthost",
            "invalid email address \"nobody\"",
            "receivers.mail.email.to",
            "invalid secret name \"bad name\"",
            "a password needs a `username`",
            "routes[0].receiver",
            "no receiver `nobody`",
            "routes[0].group_by",
            "routes[0].repeat_interval",
        ] {
            assert!(
                errors.contains(needle),
                "{needle:?} missing from:\n{errors}"
            );
        }
    }
}
