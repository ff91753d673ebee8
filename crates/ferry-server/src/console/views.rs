//! The console's pages as askama templates (`templates/console/`): every value is escaped
//! as HTML text unless a template says otherwise (none does).

use askama::Template;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Renders a template as an HTML answer.
pub(crate) trait Page: Template {
    fn into_page(self, status: StatusCode) -> Response
    where
        Self: Sized,
    {
        match self.render() {
            Ok(html) => (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                html,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "rendering a console page failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    "the page could not be rendered",
                )
                    .into_response()
            }
        }
    }
}

impl<T: Template> Page for T {}

/// The header of every page.
#[derive(Default)]
pub(crate) struct Nav {
    /// Empty when nobody is logged in.
    pub user: String,
    pub csrf: String,
    pub manage_users: bool,
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub(crate) struct ErrorPage<'a> {
    pub status: u16,
    pub title: &'a str,
    pub message: &'a str,
}

#[derive(Template)]
#[template(path = "console/login.html")]
pub(crate) struct LoginPage {
    pub nav: Nav,
    pub csrf: String,
    pub next: String,
    pub username: String,
    pub error: String,
    pub notice: String,
}

/// `GET /login/link/{token}`: a "Sign in" button that POSTs the link; opening the page (as
/// a chat app's link preview does) uses nothing up.
#[derive(Template)]
#[template(path = "console/login_link.html")]
pub(crate) struct LoginLinkPage {
    pub nav: Nav,
    pub csrf: String,
    pub token: String,
}

/// One environment of one app on the dashboard.
pub(crate) struct Cell {
    pub present: bool,
    pub version: String,
    pub state: String,
    /// When its latest deployment last moved; `age` counts from it (the console's script
    /// keeps ages current, so they are not part of the row's fingerprint).
    pub at_ms: i64,
    pub age: String,
    pub who: String,
    pub deployment: Option<i64>,
    /// `37 %` while a canary moves.
    pub weight: String,
}

pub(crate) struct AppRow {
    pub app: String,
    pub cells: Vec<Cell>,
    /// Fingerprint of what the row shows (not the ages): the script asks for the rows whose
    /// fingerprint it does not have.
    pub fp: String,
}

#[derive(Hash)]
pub(crate) struct RolloutRow {
    pub app: String,
    pub env: String,
    pub id: i64,
    pub version: String,
    pub stable: String,
    pub weight: Weight,
    pub stage: String,
    pub paused: bool,
}

#[derive(Hash)]
pub(crate) struct WaitingRow {
    pub app: String,
    pub env: String,
    pub id: i64,
    pub version: String,
    pub state: String,
    pub requested_by: String,
    pub waiting_for: Vec<String>,
}

/// What the dashboard's live part (`#live`) shows, each piece with its fingerprint.
pub(crate) struct DashboardLive {
    /// Fingerprint of the frame: the columns, the rows in order and the count of visible
    /// apps. When it changed, the whole live part is sent again.
    pub frame: String,
    pub now_ms: i64,
    pub columns: Vec<String>,
    pub rows: Vec<AppRow>,
    pub rollouts: Vec<RolloutRow>,
    pub rollouts_fp: String,
    pub waiting: Vec<WaitingRow>,
    pub waiting_fp: String,
    pub total: usize,
}

#[derive(Template)]
#[template(path = "console/dashboard.html")]
pub(crate) struct Dashboard {
    pub nav: Nav,
    pub filter: String,
    pub live: DashboardLive,
}

/// `GET /dashboard/parts`: what changed on the dashboard since the fingerprints the script
/// has — the whole live part when its frame changed, else only the sections and rows that
/// did (`live.rows` holds only those).
#[derive(Template)]
#[template(path = "console/dashboard_parts.html")]
pub(crate) struct DashboardParts {
    pub full: bool,
    pub send_waiting: bool,
    pub send_rollouts: bool,
    pub live: DashboardLive,
}

/// A short fingerprint (32 bits of SipHash with fixed keys, so the same in every process of
/// one build) of what a piece of the dashboard shows.
pub(crate) fn fingerprint(what: &impl std::hash::Hash) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(what);
    format!("{:08x}", hash as u32)
}

/// A traffic split for the weights bar (SVG widths in percent, no inline style).
pub(crate) struct Weight {
    pub canary: f64,
    pub canary_label: String,
    pub stable_label: String,
}

impl std::hash::Hash for Weight {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.canary.to_bits().hash(state);
    }
}

impl Weight {
    /// From the canary's share in percent.
    pub fn new(canary_percent: f64) -> Weight {
        let canary = canary_percent.clamp(0.0, 100.0);
        Weight {
            canary,
            canary_label: format!("{canary:.1}"),
            stable_label: format!("{:.1}", 100.0 - canary),
        }
    }

    pub fn canary_width(&self) -> String {
        format!("{:.2}", self.canary)
    }

    pub fn stable_width(&self) -> String {
        format!("{:.2}", 100.0 - self.canary)
    }
}

pub(crate) struct EventRow {
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub message: String,
}

pub(crate) struct GateView {
    pub gate: String,
    pub state: String,
    pub detail: String,
}

/// One analysis metric's row on the deployment page.
pub(crate) struct AnalysisRow {
    pub analysis: &'static str,
    pub metric: String,
    pub dry_run: bool,
    pub service: String,
    pub value: String,
    pub threshold: String,
    pub sample: String,
    /// `pass`, `fail`, `inconclusive`, or empty before the first measurement.
    pub verdict: &'static str,
    /// `3 · 0 · 1`: passes, failures, inconclusive measurements so far.
    pub counts: String,
    /// Why the latest verdict (the judge's own words).
    pub reason: String,
}

impl AnalysisRow {
    pub fn of(a: &ferry_core::api::AnalysisMetric) -> AnalysisRow {
        let last = a.last.as_ref();
        AnalysisRow {
            analysis: a.analysis.as_str(),
            metric: a.metric.clone(),
            dry_run: last.is_some_and(|m| m.dry_run),
            service: last.and_then(|m| m.service.clone()).unwrap_or_default(),
            value: last.map(value_text).unwrap_or_default(),
            threshold: last.map(|m| m.threshold.clone()).unwrap_or_default(),
            sample: last.map(|m| m.sample_size.to_string()).unwrap_or_default(),
            verdict: last.map(|m| m.verdict.as_str()).unwrap_or(""),
            counts: format!("{} · {} · {}", a.passes, a.failures, a.inconclusives),
            reason: last.map(|m| m.reason.clone()).unwrap_or_default(),
        }
    }
}

/// A measured value in its unit: `27.27 %`, `412 ms`, `12.5/s`.
pub(crate) fn value_text(m: &ferry_core::analysis::Measurement) -> String {
    use ferry_core::analysis::Unit;
    match (m.value, m.unit) {
        (None, _) | (_, Unit::Check) => "—".to_string(),
        (Some(v), Unit::Ratio) => format!("{:.2} %", v * 100.0),
        (Some(v), Unit::Millis) => format!("{v:.0} ms"),
        (Some(v), Unit::PerSecond) => format!("{v:.1}/s"),
        (Some(v), Unit::Number | Unit::Score) => format!("{v:.4}"),
    }
}

pub(crate) struct HookView {
    pub phase: String,
    pub hook: String,
    pub attempt: u32,
    pub state: String,
    pub summary: String,
    pub duration: String,
    /// Empty when the person may not read logs.
    pub output: String,
}

pub(crate) struct ActionForm {
    pub path: String,
    pub label: &'static str,
    /// `none`, `optional` or `required`.
    pub reason: &'static str,
    pub danger: bool,
    pub id: String,
}

impl ActionForm {
    pub fn asks_reason(&self) -> bool {
        self.reason != "none"
    }

    pub fn needs_reason(&self) -> bool {
        self.reason == "required"
    }
}

#[derive(Template)]
#[template(path = "console/deployment.html", blocks = ["parts"])]
pub(crate) struct DeploymentPage {
    pub nav: Nav,
    pub id: i64,
    pub app: String,
    pub env: String,
    pub version: String,
    pub previous: String,
    pub strategy: String,
    pub kind: String,
    pub state: String,
    pub reason: String,
    pub requested_by: String,
    pub created: String,
    pub finished: String,
    pub rollout: Option<RolloutBox>,
    pub analysis: Vec<AnalysisRow>,
    /// Request rate, error rate and p95 per version over the rollout (None: no sample).
    pub charts: Option<super::charts::Charts>,
    pub events: Vec<EventRow>,
    pub last_seq: i64,
    pub gates: Vec<GateView>,
    pub approvals: Vec<String>,
    pub hooks: Vec<HookView>,
    pub actions: Vec<ActionForm>,
    pub live: bool,
}

pub(crate) struct RolloutBox {
    pub weight: Weight,
    pub canary_version: String,
    pub stable_version: String,
    pub stage: String,
    pub summary: String,
    pub waiting_for: String,
}

pub(crate) struct EnvView {
    pub env: String,
    pub version: String,
    pub tag: String,
    pub state: String,
    pub deployment: Option<i64>,
    pub replicas: String,
    pub gates: Vec<String>,
}

pub(crate) struct ReleaseRow {
    pub version: String,
    pub commit: String,
    pub created: String,
    pub by: String,
    pub notes: String,
    /// `production: 1.4.2-sha-abcdef1-production (current)`.
    pub placements: Vec<String>,
}

pub(crate) struct DiffRow {
    pub service: String,
    pub name: String,
    pub left: String,
    pub right: String,
}

#[derive(Template)]
#[template(path = "console/app.html")]
pub(crate) struct AppPage {
    pub nav: Nav,
    pub app: String,
    pub revision: i64,
    pub envs: Vec<EnvView>,
    pub env_names: Vec<String>,
    pub releases: Vec<ReleaseRow>,
    pub left: String,
    pub right: String,
    pub diff: Vec<DiffRow>,
    /// `NAME vN fingerprint` of each side's secrets.
    pub left_secrets: Vec<String>,
    pub right_secrets: Vec<String>,
    pub diff_error: String,
}

impl AppPage {
    pub fn is_left(&self, env: &str) -> bool {
        self.left == env
    }

    pub fn is_right(&self, env: &str) -> bool {
        self.right == env
    }
}

pub(crate) struct AuditRow {
    pub seq: i64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
pub(crate) struct AuditPage {
    pub nav: Nav,
    pub app: String,
    pub env: String,
    pub actor: String,
    pub since: String,
    pub until: String,
    pub rows: Vec<AuditRow>,
    pub verification: String,
    pub verified: bool,
    pub error: String,
}

pub(crate) struct UserRow {
    pub name: String,
    pub disabled: bool,
    pub bindings: Vec<(i64, String)>,
}

#[derive(Template)]
#[template(path = "console/users.html")]
pub(crate) struct UsersPage {
    pub nav: Nav,
    pub users: Vec<UserRow>,
    pub roles: Vec<String>,
    pub tokens: Vec<String>,
    /// A token just created: shown once.
    pub new_token: String,
    pub notice: String,
}
