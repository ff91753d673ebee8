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
use ferry_store::{GroupRow, NewDelivery, Store, StoreError};
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
/// Longest wait between retries.
const MAX_BACKOFF_MS: i64 = 300_000;
/// Most rows of each table one pruning pass deletes.
const PRUNE_BATCH: u32 = 1000;
/// How often the history is pruned (sooner while a pass finds a full batch).
const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);

/// The dispatcher's knobs (`ferry server --notify-retry-base`, `--notify-retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The wait after a first failed attempt; it doubles after each one, up to 5 min.
    pub retry_base: Duration,
    /// Delivered, failed and inhibited deliveries, and the notifications no delivery needs,
    /// are deleted this long after they were created.
    pub retention: Duration,
    /// The longest sleep while idle. Enqueueing in this process wakes the dispatcher at
    /// once; this poll only catches other processes' writes.
    pub poll: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            retry_base: Duration::from_secs(1),
            retention: Duration::from_secs(30 * 24 * 3600),
            poll: Duration::from_secs(5),
        }
    }
}

/// The wait before attempt `attempt + 1` after `attempt` failed: `base`, 2×, 4× … 5 min.
pub fn backoff_ms(base: Duration, attempt: i64) -> i64 {
    let base = i64::try_from(base.as_millis())
        .unwrap_or(MAX_BACKOFF_MS)
        .clamp(1, MAX_BACKOFF_MS);
    let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    base.saturating_mul(1i64 << exp).min(MAX_BACKOFF_MS)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
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

/// The dispatcher. It wakes on [`Store::outbox_signal`].
pub struct Dispatcher {
    store: Store,
    secrets: Arc<crate::secrets::Secrets>,
    settings: Settings,
    http: reqwest::Client,
    wake: Arc<Notify>,
    /// Each app's routing, parsed once per manifest revision.
    routing: Mutex<HashMap<String, (i64, Arc<Routing>)>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        secrets: Arc<crate::secrets::Secrets>,
        settings: Settings,
    ) -> Arc<Dispatcher> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Dispatcher {
            wake: store.outbox_signal(),
            store,
            secrets,
            settings,
            http,
            routing: Mutex::new(HashMap::new()),
        })
    }

    /// Runs until `shutdown`: a pass, then sleep until something is due, a wake (a commit
    /// that enqueued), or the idle poll; prunes the history now and then.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut next_prune = tokio::time::Instant::now();
        loop {
            let now = now_ms();
            if let Err(e) = self.pass(now).await {
                tracing::warn!(error = %e, "notification dispatcher pass failed; retrying");
            }
            if tokio::time::Instant::now() >= next_prune {
                let full = self.prune(now).await;
                next_prune = tokio::time::Instant::now()
                    + if full {
                        self.settings.poll
                    } else {
                        PRUNE_EVERY
                    };
            }
            let poll = self.settings.poll;
            let next = self.next_due().await.unwrap_or(None);
            let sleep = next
                .map(|t| Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)))
                .unwrap_or(poll)
                .clamp(Duration::from_millis(20).min(poll), poll);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One bounded pruning pass; `true` when it found a full batch (more may be left).
    async fn prune(&self, now: i64) -> bool {
        let before = now.saturating_sub(millis(self.settings.retention));
        match self.store.prune_notifications(before, PRUNE_BATCH).await {
            Ok(pruned) => {
                if pruned.deliveries + pruned.notifications > 0 {
                    tracing::info!(
                        deliveries = pruned.deliveries,
                        notifications = pruned.notifications,
                        "pruned the notification history"
                    );
                }
                pruned.deliveries.max(pruned.notifications) >= u64::from(PRUNE_BATCH)
            }
            Err(e) => {
                tracing::warn!(error = %e, "pruning the notification history failed");
                false
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
            let mut groups = Vec::new();
            for r in routing.routes_for(&n) {
                let route = &routing.routes[r];
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
                .route_notification(id, &groups, &active, now)
                .await?;
        }
        Ok(())
    }

    async fn flush_groups(&self, now: i64) -> Result<(), StoreError> {
        for row in self.store.due_groups(now, BATCH).await? {
            let mut stored = parse_group(&row)?;
            let timing = stored.timing();
            match stored.group.flush(&timing, now) {
                Flush::Idle => self.store.flush_group(&row, None, &[], now).await?,
                Flush::Wait(_) => {
                    let new = group_row(&row.app, &row.receiver, &row.group_key, &stored)?;
                    self.store.flush_group(&row, Some(&new), &[], now).await?
                }
                Flush::Send(batch) => {
                    let deliveries = self.plan(&row, &batch, &mut stored.group).await?;
                    let new = group_row(&row.app, &row.receiver, &row.group_key, &stored)?;
                    self.store
                        .flush_group(&row, Some(&new), &deliveries, now)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// The deliveries of a group's message: inhibition is decided now, against the alerts
    /// firing now (Alertmanager's meaning) — what they mute is recorded as `inhibited` (once
    /// per episode: not again at each repeat of a message that stays muted,
    /// `Group::note_muted`), the rest is one pending delivery.
    async fn plan(
        &self,
        row: &GroupRow,
        batch: &[i64],
        group: &mut Group,
    ) -> Result<Vec<NewDelivery>, StoreError> {
        let flushes = group.flushes;
        let notifications = self.store.notifications_by_id(batch).await?;
        let routing = self.routing_of(&row.app).await?;
        let firing = match routing.inhibit.is_empty() {
            true => Vec::new(),
            false => self.store.active_alerts(&row.app).await?,
        };
        let muting = routing.mute(&notifications, &firing);
        let key = delivery_key(&row.app, &row.receiver, &row.group_key, batch, flushes);
        let delivery = |key: String, ids: &[i64], state, last_error| {
            let these: Vec<&(i64, Notification)> = notifications
                .iter()
                .filter(|(id, _)| ids.contains(id))
                .collect();
            NewDelivery {
                key,
                receiver: row.receiver.clone(),
                receiver_type: routing
                    .receivers
                    .get(&row.receiver)
                    .map_or("unknown", |s| s.receiver.type_name())
                    .into(),
                app: row.app.clone(),
                env: these
                    .first()
                    .map(|(_, n)| n.env.clone())
                    .unwrap_or_default(),
                group_key: row.group_key.clone(),
                summary: summary_line(&these),
                notification_ids: ids.to_vec(),
                state,
                last_error,
            }
        };
        let mut out = Vec::new();
        let news = group.note_muted(&muting.muted);
        if let Some((rule, source)) = muting.muted_by.filter(|_| news) {
            let note = format!(
                "inhibited by inhibit[{rule}] while {} fires",
                source.summary
            );
            out.push(delivery(
                format!("{key}-inhibited"),
                &muting.muted,
                DeliveryState::Inhibited,
                Some(note),
            ));
        }
        if !muting.send.is_empty() {
            out.push(delivery(key, &muting.send, DeliveryState::Pending, None));
        }
        Ok(out)
    }

    async fn deliver_due(self: &Arc<Self>, now: i64) -> Result<(), StoreError> {
        for d in self.store.due_deliveries(now, BATCH).await? {
            // claimed before it is sent: a crash during the attempt retries it after this
            let retry_at =
                now + millis(TIMEOUT) + backoff_ms(self.settings.retry_base, d.attempts + 1);
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
                let outcome = this.send(&d.delivery).await;
                let now = now_ms();
                let result = match &outcome {
                    Ok(()) => {
                        tracing::info!(delivery = d.id, receiver = %d.delivery.receiver, key = %d.delivery.key, attempt, "notification delivered");
                        this.store.finish_delivery(d.id, None, None, now).await
                    }
                    Err(e) => {
                        let give_up = e.permanent || attempt >= MAX_ATTEMPTS;
                        tracing::warn!(delivery = d.id, receiver = %d.delivery.receiver, attempt, give_up, error = %e.message, "notification not delivered");
                        let retry =
                            (!give_up).then(|| now + backoff_ms(this.settings.retry_base, attempt));
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
    async fn send(&self, d: &NewDelivery) -> Result<(), SendError> {
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
fn summary_line(notifications: &[&(i64, Notification)]) -> String {
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
        let base = Settings::default().retry_base;
        assert_eq!(backoff_ms(base, 1), 1000);
        assert_eq!(backoff_ms(base, 2), 2000);
        assert_eq!(backoff_ms(base, 4), 8000);
        assert_eq!(backoff_ms(base, 30), 300_000);
        assert_eq!(backoff_ms(Duration::from_millis(20), 3), 80);
        assert_eq!(backoff_ms(Duration::ZERO, 1), 1);
        assert_eq!(backoff_ms(Duration::from_secs(u64::MAX), 1), 300_000);
    }

    /// A store with app `shop` whose every notification goes to a webhook on `port`, and
    /// the dispatcher's secrets.
    async fn shop(port: u16, dir: &std::path::Path) -> (Store, Arc<crate::secrets::Secrets>) {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let yaml = format!(
            "app: shop\nservices:\n  web:\n    run: [\"x\"]\nenvironments:\n  prod: {{ listen: \"127.0.0.1:8080\" }}\nreceivers:\n  hook:\n    webhook: {{ url: 'http://127.0.0.1:{port}/hook' }}\nroutes:\n  - receiver: hook\n"
        );
        let manifest = ferry_core::manifest::parse(&yaml, "ferry.yaml").unwrap();
        store
            .apply_manifest(ferry_store::NewManifest {
                app: "shop".into(),
                yaml: yaml.clone(),
                manifest_json: serde_json::to_string(&manifest).unwrap(),
                base_dir: None,
                applied_by: "user:admin".into(),
                now_ms: 1,
            })
            .await
            .unwrap();
        let secrets = crate::secrets::Secrets::open(store.clone(), dir, None)
            .await
            .unwrap();
        (store, secrets)
    }

    /// A loopback webhook receiver answering `status`; each request's arrival is sent on the
    /// channel.
    async fn receiver(
        status: u16,
    ) -> (
        u16,
        tokio::sync::mpsc::UnboundedReceiver<std::time::Instant>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(std::time::Instant::now());
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (port, rx)
    }

    /// Enqueues `rounds` notifications one after another, each once the previous one
    /// arrived, and returns how long each took to reach the receiver. With
    /// `woken: false` the dispatcher does not hear the store's signal (as before it did):
    /// only its poll finds the notification.
    async fn first_delivery_latencies(rounds: u32, poll: Duration, woken: bool) -> Vec<Duration> {
        let dir = tempfile::tempdir().unwrap();
        let (port, mut arrivals) = receiver(200).await;
        let (store, secrets) = shop(port, dir.path()).await;
        let settings = Settings {
            poll,
            ..Settings::default()
        };
        let dispatcher = Dispatcher::new(store.clone(), secrets, settings);
        let dispatcher = match woken {
            true => dispatcher,
            false => Arc::new(Dispatcher {
                wake: Arc::new(Notify::new()),
                store: store.clone(),
                secrets: dispatcher.secrets.clone(),
                settings,
                http: dispatcher.http.clone(),
                routing: Mutex::new(HashMap::new()),
            }),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(dispatcher.run(shutdown.clone()));
        let mut out = Vec::new();
        for i in 0..rounds {
            // let the dispatcher go idle first
            tokio::time::sleep(Duration::from_millis(30)).await;
            let n = Notification::new(
                format!("n-{i}"),
                Kind::DeploymentSucceeded,
                "shop",
                "prod",
                Severity::Info,
                "1.0.0 succeeded",
                1,
            );
            let start = std::time::Instant::now();
            store.enqueue_notifications(&[n], now_ms()).await.unwrap();
            let arrived = tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
                .await
                .expect("delivered within 30 s")
                .unwrap();
            out.push(arrived - start);
        }
        shutdown.cancel();
        task.await.unwrap();
        out
    }

    fn median(mut d: Vec<Duration>) -> Duration {
        d.sort();
        d[d.len() / 2]
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_enqueue_wakes_the_idle_dispatcher_at_once() {
        // the poll is an hour: only the store's signal can deliver within the 30 s bound
        let latencies = first_delivery_latencies(3, Duration::from_secs(3600), true).await;
        eprintln!("first-delivery latency, woken: {latencies:?}");
        assert_eq!(latencies.len(), 3);
    }

    /// The figure in docs/benchmarks.md: `cargo test -p ferry-server --lib
    /// notify::tests::first_delivery_latency_before_and_after -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a test"]
    async fn first_delivery_latency_before_and_after() {
        let before = first_delivery_latencies(20, Duration::from_secs(1), false).await;
        let after = first_delivery_latencies(20, Settings::default().poll, true).await;
        eprintln!(
            "first delivery, median of 20: polled every 1 s {:?} (max {:?}); woken {:?} (max {:?})",
            median(before.clone()),
            before.iter().max().unwrap(),
            median(after.clone()),
            after.iter().max().unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_that_always_fails_ends_failed_after_the_bounded_attempts() {
        let dir = tempfile::tempdir().unwrap();
        let (port, mut arrivals) = receiver(500).await;
        let (store, secrets) = shop(port, dir.path()).await;
        let settings = Settings {
            retry_base: Duration::from_millis(10),
            ..Settings::default()
        };
        let shutdown = CancellationToken::new();
        let task =
            tokio::spawn(Dispatcher::new(store.clone(), secrets, settings).run(shutdown.clone()));
        let n = Notification::new(
            "n-fail",
            Kind::DeploymentFailed,
            "shop",
            "prod",
            Severity::Warning,
            "1.0.0 failed",
            1,
        );
        store.enqueue_notifications(&[n], now_ms()).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let failed = loop {
            let rows = store
                .deliveries(&ferry_store::DeliveryQuery {
                    limit: 10,
                    ..Default::default()
                })
                .await
                .unwrap();
            if let Some(row) = rows
                .iter()
                .find(|r| r.delivery.state == DeliveryState::Failed)
            {
                break row.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not failed in 60 s: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(failed.attempts, MAX_ATTEMPTS);
        let want = format!("127.0.0.1:{port} answered 500 Internal Server Error");
        assert_eq!(failed.delivery.last_error, Some(want));
        let mut count = 0;
        while arrivals.try_recv().is_ok() {
            count += 1;
        }
        assert_eq!(
            count, MAX_ATTEMPTS,
            "the receiver saw every attempt, no more"
        );
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
