//! The notification dispatcher: one task that routes the outbox's new notifications into
//! groups, turns due groups into deliveries, and sends due deliveries to their receivers
//! (webhook, Slack, email, PagerDuty) with retries. The decisions are
//! `ferry_core::notify::route`'s; this is the shell around the store and the network
//! (docs/notifications.md).
//!
//! Exactly once, as receivers see it: an attempt is claimed (counted, its retry scheduled)
//! before it is made and marked delivered as soon as the receiver confirms; a crash in
//! between repeats the attempt with the same idempotency key, which receivers dedupe on.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::manifest::{
    EmailReceiver, EmailTls, Manifest, PAGERDUTY_EVENTS_URL, PagerDutyReceiver, Receiver,
    SlackReceiver, WebhookReceiver,
};
use ferry_core::notify::route::{Flush, Group, Routing, Timing, delivery_key};
use ferry_core::notify::{DeliveryState, Kind, Notification, Severity};
use ferry_store::notify::ActiveChange;
use ferry_store::{DeliveryRecord, GroupRow, NewDelivery, Store, StoreError};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::lock;

/// Attempts of one delivery before it is `failed`.
pub const MAX_ATTEMPTS: i64 = 8;
/// How long one attempt may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Most notifications routed, groups flushed and deliveries started per pass.
const BATCH: u32 = 100;
/// The longest sleep between passes (also catches what another process enqueued).
const IDLE: Duration = Duration::from_secs(1);

/// The wait before attempt `attempt + 1` after `attempt` failed: 1 s, 2 s, 4 s … 5 min.
pub fn backoff_ms(attempt: i64) -> i64 {
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    (1000i64 << exp).min(300_000)
}

/// What a deployment state change says (today's webhook body, kept as the notification's
/// `details` and at the top of a webhook body about one deployment change).
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

/// A group as stored: its state and the timers of its route.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredGroup {
    group: Group,
    group_wait_ms: i64,
    group_interval_ms: i64,
    repeat_interval_ms: i64,
}

impl StoredGroup {
    fn timing(&self) -> Timing {
        Timing {
            group_wait_ms: self.group_wait_ms,
            group_interval_ms: self.group_interval_ms,
            repeat_interval_ms: self.repeat_interval_ms,
        }
    }
}

/// Why an attempt failed; `permanent` ends the delivery at once (no receiver, no secret).
#[derive(Debug)]
struct SendError {
    message: String,
    permanent: bool,
}

impl SendError {
    fn retry(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            permanent: false,
        }
    }
    fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            permanent: true,
        }
    }
}

/// The dispatcher. Cheap to share; [`Dispatcher::wake`] after enqueueing.
pub struct Dispatcher {
    store: Store,
    secrets: Arc<crate::secrets::Secrets>,
    http: reqwest::Client,
    wake: Arc<Notify>,
    /// Each app's routing, parsed once per manifest revision.
    routing: Mutex<HashMap<String, (i64, Arc<Routing>)>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        secrets: Arc<crate::secrets::Secrets>,
        wake: Arc<Notify>,
    ) -> Arc<Dispatcher> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Dispatcher {
            store,
            secrets,
            http,
            wake,
            routing: Mutex::new(HashMap::new()),
        })
    }

    /// Runs until `shutdown`: a pass, then sleep until something is due, a wake, or 1 s.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let now = now_ms();
            if let Err(e) = self.pass(now).await {
                tracing::warn!(error = %e, "notification dispatcher pass failed; retrying");
            }
            let next = self.next_due().await.unwrap_or(None);
            let sleep = next
                .map(|t| Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)))
                .unwrap_or(IDLE)
                .clamp(Duration::from_millis(20), IDLE);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let groups = self.store.next_group_due().await?;
        let deliveries = self.store.next_delivery_due().await?;
        Ok(match (groups, deliveries) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// One pass: route, flush, deliver.
    pub async fn pass(self: &Arc<Self>, now: i64) -> Result<(), StoreError> {
        self.route_new(now).await?;
        self.flush_groups(now).await?;
        self.deliver_due(now).await
    }

    async fn routing_of(&self, app: &str) -> Result<Arc<Routing>, StoreError> {
        let Some(record) = self.store.get_app(app).await? else {
            return Ok(Arc::new(Routing::default()));
        };
        if let Some((revision, routing)) = lock(&self.routing).get(app)
            && *revision == record.revision
        {
            return Ok(routing.clone());
        }
        let manifest: Manifest = serde_json::from_str(&record.manifest_json)
            .map_err(|e| StoreError::Corrupt(format!("manifest of app {app}: {e}")))?;
        let routing = Arc::new(Routing::of(&manifest));
        lock(&self.routing).insert(app.to_string(), (record.revision, routing.clone()));
        Ok(routing)
    }

    async fn route_new(&self, now: i64) -> Result<(), StoreError> {
        for (id, n) in self.store.unrouted_notifications(BATCH).await? {
            let routing = self.routing_of(&n.app).await?;
            let firing = if routing.inhibit.is_empty() {
                Vec::new()
            } else {
                self.store.active_alerts(&n.app).await?
            };
            let mut groups = Vec::new();
            let mut deliveries = Vec::new();
            for r in routing.routes_for(&n) {
                let route = &routing.routes[r];
                let receiver_type = routing
                    .receivers
                    .get(&route.receiver)
                    .map_or("unknown", |s| s.receiver.type_name());
                if let Some((rule, source)) = routing.inhibited_by(&n, &firing) {
                    deliveries.push(NewDelivery {
                        key: format!("{}-inhibited-{r}", n.key),
                        receiver: route.receiver.clone(),
                        receiver_type: receiver_type.into(),
                        app: n.app.clone(),
                        env: n.env.clone(),
                        group_key: routing.group_key(r, &n),
                        summary: n.summary.clone(),
                        notification_ids: vec![id],
                        state: DeliveryState::Inhibited,
                        note: Some(format!(
                            "inhibited by inhibit[{rule}] while {} fires",
                            source.summary
                        )),
                    });
                    continue;
                }
                let group_key = routing.group_key(r, &n);
                let mut stored = match self
                    .store
                    .group(&n.app, &route.receiver, &group_key)
                    .await?
                {
                    Some(row) => parse_group(&row)?,
                    None => StoredGroup {
                        group: Group::default(),
                        group_wait_ms: route.timing.group_wait_ms,
                        group_interval_ms: route.timing.group_interval_ms,
                        repeat_interval_ms: route.timing.repeat_interval_ms,
                    },
                };
                stored.group.add(id, &n, now);
                groups.push(group_row(&n.app, &route.receiver, &group_key, &stored)?);
            }
            let active = match n.kind {
                Kind::AlertFiring => ActiveChange::Firing(Box::new(n.clone())),
                Kind::AlertResolved => ActiveChange::Resolved(n.fingerprint()),
                _ => ActiveChange::None,
            };
            self.store
                .route_notification(id, &groups, &deliveries, &active, now)
                .await?;
        }
        Ok(())
    }

    async fn flush_groups(&self, now: i64) -> Result<(), StoreError> {
        for row in self.store.due_groups(now, BATCH).await? {
            let mut stored = parse_group(&row)?;
            let timing = stored.timing();
            match stored.group.flush(&timing, now) {
                Flush::Idle => self.store.flush_group(&row, None, None, now).await?,
                Flush::Wait(_) => {
                    let new = group_row(&row.app, &row.receiver, &row.group_key, &stored)?;
                    self.store.flush_group(&row, Some(&new), None, now).await?
                }
                Flush::Send(batch) => {
                    let notifications = self.store.notifications_by_id(&batch).await?;
                    let routing = self.routing_of(&row.app).await?;
                    let receiver_type = routing
                        .receivers
                        .get(&row.receiver)
                        .map_or("unknown", |s| s.receiver.type_name());
                    let delivery = NewDelivery {
                        key: delivery_key(
                            &row.app,
                            &row.receiver,
                            &row.group_key,
                            &batch,
                            stored.group.flushes,
                        ),
                        receiver: row.receiver.clone(),
                        receiver_type: receiver_type.into(),
                        app: row.app.clone(),
                        env: notifications
                            .first()
                            .map(|(_, n)| n.env.clone())
                            .unwrap_or_default(),
                        group_key: row.group_key.clone(),
                        summary: summary_line(&notifications),
                        notification_ids: batch,
                        state: DeliveryState::Pending,
                        note: None,
                    };
                    let new = group_row(&row.app, &row.receiver, &row.group_key, &stored)?;
                    self.store
                        .flush_group(&row, Some(&new), Some(&delivery), now)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn deliver_due(self: &Arc<Self>, now: i64) -> Result<(), StoreError> {
        for d in self.store.due_deliveries(now, BATCH).await? {
            // claimed before it is sent: a crash during the attempt retries it after this
            let retry_at = now + TIMEOUT.as_millis() as i64 + backoff_ms(d.attempts + 1);
            if !self
                .store
                .claim_delivery(d.id, d.attempts, retry_at)
                .await?
            {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move {
                let attempt = d.attempts + 1;
                let outcome = this.send(&d).await;
                let now = now_ms();
                let result = match &outcome {
                    Ok(()) => {
                        tracing::info!(delivery = d.id, receiver = %d.receiver, key = %d.key, attempt, "notification delivered");
                        this.store.finish_delivery(d.id, None, None, now).await
                    }
                    Err(e) => {
                        let give_up = e.permanent || attempt >= MAX_ATTEMPTS;
                        tracing::warn!(delivery = d.id, receiver = %d.receiver, attempt, give_up, error = %e.message, "notification not delivered");
                        let retry = (!give_up).then(|| now + backoff_ms(attempt));
                        this.store
                            .finish_delivery(d.id, Some(&e.message), retry, now)
                            .await
                    }
                };
                if let Err(e) = result {
                    tracing::error!(delivery = d.id, error = %e, "could not record a delivery's outcome; it will be retried");
                }
                this.wake.notify_one();
            });
        }
        Ok(())
    }

    /// One attempt of `d`. Error messages never carry a secret or a receiver URL.
    async fn send(&self, d: &DeliveryRecord) -> Result<(), SendError> {
        let routing = self
            .routing_of(&d.app)
            .await
            .map_err(|e| SendError::retry(e.to_string()))?;
        let Some(spec) = routing.receivers.get(&d.receiver) else {
            return Err(SendError::permanent(format!(
                "receiver {} is no longer in the manifest of {}",
                d.receiver, d.app
            )));
        };
        let notifications: Vec<Notification> = self
            .store
            .notifications_by_id(&d.notification_ids)
            .await
            .map_err(|e| SendError::retry(e.to_string()))?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        let secrets = match spec.receiver.secret_names().is_empty() {
            true => BTreeMap::new(),
            false => self.secrets.env_vars(&d.app, &d.env).await.map_err(|e| {
                SendError::retry(format!("reading the secrets of {}/{}: {e}", d.app, d.env))
            })?,
        };
        let secret = |name: &str| -> Result<&str, SendError> {
            secrets.get(name).map(String::as_str).ok_or_else(|| {
                SendError::permanent(format!(
                    "no secret {name} in {}/{} (ferry secrets set {} {name} --env {})",
                    d.app, d.env, d.app, d.env
                ))
            })
        };
        let message = Message {
            key: &d.key,
            receiver: &d.receiver,
            group_key: &d.group_key,
            notifications: &notifications,
            legacy: spec.legacy,
        };
        let values: Vec<String> = secrets.values().cloned().collect();
        let result = match &spec.receiver {
            Receiver::Webhook(w) => {
                let key = w.secret.as_deref().map(&secret).transpose()?;
                self.webhook(w, key, &message).await
            }
            Receiver::Slack(s) => {
                let url = match (&s.url, &s.url_secret) {
                    (_, Some(name)) => secret(name)?,
                    (Some(url), None) => url.as_str(),
                    (None, None) => return Err(SendError::permanent("slack receiver without url")),
                };
                self.slack(s, url, &message).await
            }
            Receiver::Email(e) => {
                let password = e.password_secret.as_deref().map(&secret).transpose()?;
                email::send(e, password, &message).await
            }
            Receiver::Pagerduty(p) => {
                let routing_key = secret(&p.routing_key_secret)?;
                self.pagerduty(p, routing_key, &message).await
            }
        };
        result.map_err(|e| SendError {
            message: crate::secrets::redact(e.message, &values),
            permanent: e.permanent,
        })
    }

    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        headers: &[(&str, String)],
        ok: impl Fn(reqwest::StatusCode) -> bool,
    ) -> Result<(), SendError> {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        match request.body(body).send().await {
            Ok(response) if ok(response.status()) => Ok(()),
            Ok(response) => {
                let status = response.status();
                Err(SendError::retry(format!("{} answered {status}", host(url))))
            }
            Err(e) => Err(SendError::retry(format!(
                "{} unreachable: {}",
                host(url),
                crate::error::one_line(&e.without_url())
            ))),
        }
    }

    async fn webhook(
        &self,
        w: &WebhookReceiver,
        signing_key: Option<&str>,
        m: &Message<'_>,
    ) -> Result<(), SendError> {
        let body = serde_json::to_vec(&m.webhook_body()).unwrap_or_default();
        let mut headers = vec![
            ("Idempotency-Key", m.key.to_string()),
            ("X-Ferry-Delivery", m.key.to_string()),
        ];
        if let Some(key) = signing_key {
            let timestamp = (now_ms() / 1000).to_string();
            headers.push(("X-Ferry-Signature", sign(key, &timestamp, &body)));
            headers.push(("X-Ferry-Timestamp", timestamp));
        }
        self.post(&w.url, body, &headers, |s| s.is_success()).await
    }

    async fn slack(&self, _s: &SlackReceiver, url: &str, m: &Message<'_>) -> Result<(), SendError> {
        let body =
            serde_json::to_vec(&serde_json::json!({ "text": m.slack_text() })).unwrap_or_default();
        let headers = [("Idempotency-Key", m.key.to_string())];
        self.post(url, body, &headers, |s| s.is_success()).await
    }

    async fn pagerduty(
        &self,
        p: &PagerDutyReceiver,
        routing_key: &str,
        m: &Message<'_>,
    ) -> Result<(), SendError> {
        let url = p.url.as_deref().unwrap_or(PAGERDUTY_EVENTS_URL);
        for event in m.pagerduty_events(routing_key) {
            let body = serde_json::to_vec(&event).unwrap_or_default();
            let headers = [("Idempotency-Key", m.key.to_string())];
            self.post(url, body, &headers, |s| s.is_success()).await?;
        }
        Ok(())
    }
}

fn parse_group(row: &GroupRow) -> Result<StoredGroup, StoreError> {
    serde_json::from_str(&row.state)
        .map_err(|e| StoreError::Corrupt(format!("notification group {}: {e}", row.group_key)))
}

fn group_row(
    app: &str,
    receiver: &str,
    group_key: &str,
    stored: &StoredGroup,
) -> Result<GroupRow, StoreError> {
    Ok(GroupRow {
        app: app.to_string(),
        receiver: receiver.to_string(),
        group_key: group_key.to_string(),
        state: serde_json::to_string(stored).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        due_at_ms: Some(stored.group.due_at(&stored.timing())),
    })
}

/// `X-Ferry-Signature`: `v1=` + hex HMAC-SHA256(key, `TIMESTAMP.BODY`).
pub fn sign(key: &str, timestamp: &str, body: &[u8]) -> String {
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let mac = ferry_core::audit::hmac_sha256(key.as_bytes(), &signed);
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// A delivery's one-line summary: the first notification's, `(+N more)`.
fn summary_line(notifications: &[(i64, Notification)]) -> String {
    let first = notifications
        .first()
        .map(|(_, n)| n.summary.as_str())
        .unwrap_or("(no notification)");
    match notifications.len() {
        0 | 1 => first.to_string(),
        n => format!("{first} (+{} more)", n - 1),
    }
}

/// Only the host goes to logs and errors: receiver URLs often carry a secret in their path.
fn host(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit('@').next())
        .unwrap_or("?")
}

/// One message to one receiver: the bodies each receiver type gets.
struct Message<'a> {
    key: &'a str,
    receiver: &'a str,
    group_key: &'a str,
    notifications: &'a [Notification],
    legacy: bool,
}

impl Message<'_> {
    /// `firing` while an alert of the message fires, `resolved` when only resolved alerts,
    /// otherwise `info`.
    fn status(&self) -> &'static str {
        if self
            .notifications
            .iter()
            .any(|n| n.kind == Kind::AlertFiring)
        {
            "firing"
        } else if self
            .notifications
            .iter()
            .any(|n| n.kind == Kind::AlertResolved)
        {
            "resolved"
        } else {
            "info"
        }
    }

    /// The one deployment state change this message is about, if it is about exactly one.
    fn single_state_change(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        match self.notifications {
            [n] if !n.kind.is_alert()
                && !matches!(n.kind, Kind::ApprovalGiven | Kind::ApprovalRequested) =>
            {
                n.details.as_object()
            }
            _ => None,
        }
    }

    fn webhook_body(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        // today's body first (a legacy receiver's whole body), then the envelope
        if let Some(change) = self.single_state_change() {
            body.extend(change.clone());
        }
        body.insert("key".into(), self.key.into());
        if !self.legacy {
            body.insert("receiver".into(), self.receiver.into());
            body.insert("status".into(), self.status().into());
            body.insert("group_key".into(), self.group_key.into());
            body.insert(
                "notifications".into(),
                serde_json::to_value(self.notifications).unwrap_or_default(),
            );
        }
        serde_json::Value::Object(body)
    }

    fn slack_text(&self) -> String {
        if let Some(change) = self.single_state_change() {
            let field = |k: &str| match change.get(k) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
                None => String::new(),
            };
            return format!(
                "*{}/{}*: deployment #{} of {} is *{}* — {}",
                field("app"),
                field("env"),
                field("deployment_id"),
                field("version"),
                field("state"),
                field("message")
            );
        }
        let lines: Vec<String> = self
            .notifications
            .iter()
            .map(|n| {
                let status = match n.kind {
                    Kind::AlertResolved => "RESOLVED ",
                    Kind::AlertFiring => "FIRING ",
                    _ => "",
                };
                format!(
                    "{status}*{}/{}* [{}] {}",
                    n.app,
                    n.env,
                    n.severity(),
                    n.summary
                )
            })
            .collect();
        lines.join("\n")
    }

    fn email_subject(&self) -> String {
        let first = self
            .notifications
            .first()
            .map(|n| n.summary.as_str())
            .unwrap_or("notification");
        match self.notifications.len() {
            0 | 1 => format!("[Ferry] {first}"),
            n => format!("[Ferry] {first} (+{} more)", n - 1),
        }
    }

    fn email_text(&self) -> String {
        let mut text = String::new();
        for n in self.notifications {
            text.push_str(&format!(
                "{} — {}/{}: {}\n",
                n.kind, n.app, n.env, n.summary
            ));
            for (k, v) in &n.labels {
                text.push_str(&format!("  {k}: {v}\n"));
            }
            for (k, v) in &n.annotations {
                text.push_str(&format!("  {k}: {v}\n"));
            }
            text.push_str(&format!("  key: {}\n\n", n.key));
        }
        text.push_str(&format!(
            "Delivery {} (receiver {}).\n",
            self.key, self.receiver
        ));
        text
    }

    /// One Events API v2 event per notification.
    fn pagerduty_events(&self, routing_key: &str) -> Vec<serde_json::Value> {
        self.notifications
            .iter()
            .map(|n| {
                let action = if n.kind == Kind::AlertResolved {
                    "resolve"
                } else {
                    "trigger"
                };
                let severity = match n.severity() {
                    Severity::Critical => "critical",
                    Severity::Warning => "warning",
                    Severity::Info => "info",
                };
                let mut event = serde_json::json!({
                    "routing_key": routing_key,
                    "event_action": action,
                    "dedup_key": n.fingerprint(),
                });
                if action == "trigger" {
                    event["payload"] = serde_json::json!({
                        "summary": n.summary.chars().take(1024).collect::<String>(),
                        "source": format!("{}/{}", n.app, n.env),
                        "severity": severity,
                        "component": n.app,
                        "group": n.env,
                        "class": n.kind.as_str(),
                        "custom_details": {
                            "labels": n.labels,
                            "annotations": n.annotations,
                            "key": n.key,
                        },
                    });
                }
                event
            })
            .collect()
    }
}

/// Email over SMTP (lettre).
mod email {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

    use super::{EmailReceiver, EmailTls, Message, SendError, TIMEOUT};

    pub(super) async fn send(
        e: &EmailReceiver,
        password: Option<&str>,
        m: &Message<'_>,
    ) -> Result<(), SendError> {
        let (host, port) = e
            .smarthost
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .ok_or_else(|| SendError::permanent(format!("invalid smarthost {}", e.smarthost)))?;
        let tls = match e.tls {
            EmailTls::None => Tls::None,
            EmailTls::Starttls | EmailTls::Tls => {
                let params = TlsParameters::new(host.to_string())
                    .map_err(|err| SendError::permanent(format!("TLS for {host}: {err}")))?;
                if e.tls == EmailTls::Tls {
                    Tls::Wrapper(params)
                } else {
                    Tls::Required(params)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(TIMEOUT));
        if let (Some(user), Some(password)) = (&e.username, password) {
            builder = builder.credentials(Credentials::new(user.clone(), password.to_string()));
        }
        let transport = builder.build();
        let bad = |what: &str, err: &dyn std::fmt::Display| {
            SendError::permanent(format!("email {what}: {err}"))
        };
        let mut message = lettre::Message::builder()
            .from(e.from.parse().map_err(|err| bad("from", &err))?)
            .subject(m.email_subject())
            .message_id(Some(format!("<{}@ferry>", m.key)))
            .header(ContentType::TEXT_PLAIN);
        for to in &e.to {
            message = message.to(to.parse().map_err(|err| bad("to", &err))?);
        }
        let message = message
            .body(m.email_text())
            .map_err(|err| bad("message", &err))?;
        transport.send(message).await.map(|_| ()).map_err(|err| {
            SendError::retry(format!(
                "SMTP {host}:{port}: {}",
                crate::error::one_line(&err)
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::model::DeploymentState;

    fn change() -> Notification {
        let state = DeploymentState::RolledBack;
        Notification::new(
            ferry_core::notify::key_deployment(7, 4, state),
            Kind::of_deployment_state(state),
            "shop",
            "production",
            Severity::Warning,
            "2.0.0 rolled-back",
            1,
        )
        .with_details(
            serde_json::to_value(StateChange {
                app: "shop".into(),
                env: "production".into(),
                deployment_id: 7,
                version: "2.0.0".into(),
                previous_version: Some("1.0.0".into()),
                state: "rolled-back".into(),
                previous_state: "rolling-back".into(),
                message: "error rate 0.5 > max 0.01".into(),
                at_ms: 1,
            })
            .unwrap(),
        )
    }

    fn alert(kind: Kind) -> Notification {
        Notification::new(
            ferry_core::notify::key_alert("shop", "production", "errors", 5, kind),
            kind,
            "shop",
            "production",
            Severity::Critical,
            "error rate 3 % > 1 %",
            6,
        )
        .label("alertname", "errors")
    }

    fn message<'a>(ns: &'a [Notification], legacy: bool) -> Message<'a> {
        Message {
            key: "ferry-abc-1-1",
            receiver: "ops",
            group_key: "0:x",
            notifications: ns,
            legacy,
        }
    }

    #[test]
    fn a_legacy_webhook_gets_todays_body_plus_the_key() {
        let ns = [change()];
        let body = message(&ns, true).webhook_body();
        assert_eq!(body["state"], "rolled-back");
        assert_eq!(body["deployment_id"], 7);
        assert_eq!(body["previous_version"], "1.0.0");
        assert_eq!(body["key"], "ferry-abc-1-1");
        assert!(body.get("notifications").is_none());
        let full = message(&ns, false).webhook_body();
        assert_eq!(full["state"], "rolled-back");
        assert_eq!(full["notifications"][0]["kind"], "deployment-rolled-back");
        assert_eq!(full["status"], "info");
        let slack = message(&ns, false).slack_text();
        assert!(
            slack.contains("shop/production")
                && slack.contains("rolled-back")
                && slack.contains("0.5"),
            "{slack}"
        );
    }

    #[test]
    fn alerts_say_firing_or_resolved_everywhere() {
        let ns = [alert(Kind::AlertFiring)];
        let m = message(&ns, false);
        assert_eq!(m.webhook_body()["status"], "firing");
        assert!(
            m.slack_text()
                .starts_with("FIRING *shop/production* [critical]")
        );
        let events = m.pagerduty_events("RK");
        assert_eq!(events[0]["event_action"], "trigger");
        assert_eq!(events[0]["payload"]["severity"], "critical");
        let resolved = [alert(Kind::AlertResolved)];
        let r = message(&resolved, false);
        assert_eq!(r.webhook_body()["status"], "resolved");
        let events = r.pagerduty_events("RK");
        assert_eq!(events[0]["event_action"], "resolve");
        // a resolve closes the incident its trigger opened
        assert_eq!(
            events[0]["dedup_key"],
            message(&ns, false).pagerduty_events("RK")[0]["dedup_key"]
        );
        assert!(events[0].get("payload").is_none());
        let both = [alert(Kind::AlertFiring), change()];
        let m = message(&both, false);
        assert_eq!(m.email_subject(), "[Ferry] error rate 3 % > 1 % (+1 more)");
        assert!(m.email_text().contains("alertname: errors"));
        assert!(m.webhook_body().get("deployment_id").is_none());
    }

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_dot_body() {
        // as Python's hmac.new(b"Jefe", b'1700000000.{"a":1}', hashlib.sha256) computes it
        assert_eq!(
            sign("Jefe", "1700000000", br#"{"a":1}"#),
            "v1=fa5f6481efc59da48b19c9dc10196c9953e5651f8304b3a318b6b87d70272e0a"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(4), 8000);
        assert_eq!(backoff_ms(30), 300_000);
    }

    #[test]
    fn logs_only_the_host() {
        assert_eq!(
            host("https://hooks.slack.com/services/T000/B000/SECRET"),
            "hooks.slack.com"
        );
        assert_eq!(host("https://user:pw@example.com/x"), "example.com");
    }
}
