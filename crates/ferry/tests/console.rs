//! The web console over HTTP, without a browser, against a real `ferry server`: login,
//! sessions, CSRF, the Content-Security-Policy, escaping of what people typed, which
//! buttons each role gets, forged POSTs refused by the API's gate (and audited), approval
//! and rollback through the console's forms, logout and session expiry, the login
//! throttle.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    Ferry, SERIAL, Spec, add_person, bounded, deploy_as, free_port, wait_state,
    with_approved_production,
};
use reqwest::StatusCode;
use reqwest::header::{self, HeaderMap};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(150);
const PASSWORD: &str = "correct horse battery";
/// Longest wait for a deployment to reach a state.
const STATE_LIMIT: Duration = Duration::from_secs(60);

/// A cookie-keeping client that does not follow redirects.
struct Browser {
    http: reqwest::Client,
    base: String,
    cookies: BTreeMap<String, String>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect()
    }
}

/// The dashboard's fingerprints as its script sends them: the frame, then every piece's in
/// page order, `.`-separated.
fn fingerprints(body: &str) -> String {
    let attr = |name: &str| {
        let pattern = format!("{name}=\"");
        body.match_indices(&pattern)
            .map(|(at, _)| {
                let rest = &body[at + pattern.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_string()
            })
            .collect::<Vec<_>>()
    };
    attr("data-frame")
        .into_iter()
        .chain(attr("data-fp"))
        .collect::<Vec<_>>()
        .join(".")
}

/// The value of the first `name="csrf" value="…"` on a page.
fn csrf(body: &str) -> String {
    let at = body
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field on the page:\n{body}"));
    let rest = &body[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("closing quote")].to_string()
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                k,
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(ferry: &Ferry) -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            base: ferry.url.clone(),
            cookies: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn answer(&mut self, response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        for set in headers.get_all(header::SET_COOKIE) {
            let set = set.to_str().expect("ascii cookie");
            let pair = set.split(';').next().unwrap_or_default();
            let (name, value) = pair.split_once('=').expect("name=value");
            if value.is_empty() || set.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_string(), value.to_string());
            }
        }
        let body = response.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        self.answer(response).await
    }

    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(fields))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        self.answer(response).await
    }

    async fn login(&mut self, user: &str, password: &str) -> Answer {
        let page = self.get("/login").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let token = csrf(&page.body);
        self.post(
            "/login",
            &[
                ("csrf", &token),
                ("username", user),
                ("password", password),
                ("next", "/"),
            ],
        )
        .await
    }

    /// Logs in and returns the CSRF token of the session (from the dashboard).
    async fn logged_in(ferry: &Ferry, user: &str) -> (Browser, String) {
        let mut browser = Browser::new(ferry);
        let answer = browser.login(user, PASSWORD).await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "login of {user}: {}",
            answer.body
        );
        let page = browser.get("/").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let token = csrf(&page.body);
        (browser, token)
    }
}

fn assert_no_markup_from_users(body: &str) {
    assert!(
        !body.contains("<script>alert"),
        "text someone typed reached the page as HTML:\n{body}"
    );
    let scripts: Vec<&str> = body
        .match_indices("<script")
        .map(|(i, _)| &body[i..])
        .collect();
    for script in scripts {
        assert!(
            script.starts_with("<script src=\"/assets/console.js\" defer></script>"),
            "a script other than the console's own: {}",
            &script[..script.len().min(80)]
        );
    }
    assert!(!body.contains(" style="), "an inline style on the page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_sessions_csrf_roles_and_escaping() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.env = "staging".into();
        spec.replicas = 1;
        ferry
            .apply(&with_approved_production(&ferry, &spec, &spec.strategy))
            .await;
        add_person(&ferry, "alice", PASSWORD, &[("developer", "shop", None)]).await;
        add_person(&ferry, "bob", PASSWORD, &[("approver", "shop", None)]).await;
        add_person(&ferry, "vic", PASSWORD, &[("viewer", "shop", None)]).await;

        // Not logged in: every page sends the browser to the login form, which says where
        // it goes back to; the API keeps answering JSON 401s.
        let mut anonymous = Browser::new(&ferry);
        let answer = anonymous.get("/apps/shop").await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER);
        assert_eq!(answer.location(), "/login?next=%2Fapps%2Fshop");
        let (status, _) = {
            let r = reqwest::get(format!("{}/v1/apps", ferry.url))
                .await
                .expect("api");
            (r.status(), ())
        };
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // The login page: a CSP without inline script, a double-submit CSRF cookie.
        let page = anonymous.get("/login").await;
        let csp = page.headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_no_markup_from_users(&page.body);
        let login_cookie = page.set_cookies().join("\n");
        assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));

        // A login form from elsewhere (no or another CSRF value) is refused before the
        // password is even checked.
        let forged = anonymous
            .post(
                "/login",
                &[
                    ("csrf", "0".repeat(64).as_str()),
                    ("username", "alice"),
                    ("password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
        assert!(forged.body.contains("CSRF"));

        // A wrong password: 401, the form again with the API's message, the name kept as
        // text. The name someone typed is markup: it is shown escaped (and audited).
        let wrong = anonymous
            .login("<script>alert(1)</script>", "not the password")
            .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.body);
        assert!(
            wrong.body.contains("wrong username or password"),
            "{}",
            wrong.body
        );
        assert!(
            wrong
                .body
                .contains("&#60;script&#62;alert(1)&#60;/script&#62;")
                || wrong.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{}",
            wrong.body
        );
        assert_no_markup_from_users(&wrong.body);

        // Logged in: a session cookie, HttpOnly and SameSite=Strict.
        let mut alice = Browser::new(&ferry);
        let answer = alice.login("alice", PASSWORD).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), "/");
        let session = answer
            .set_cookies()
            .into_iter()
            .find(|c| c.starts_with("ferry_session="))
            .expect("a session cookie");
        assert!(
            session.contains("HttpOnly")
                && session.contains("SameSite=Strict")
                && session.contains("Path=/"),
            "{session}"
        );
        assert!(!session.contains("Secure"), "plain HTTP here: {session}");
        let (_, alice_csrf) = Browser::logged_in(&ferry, "alice").await;
        drop(alice_csrf);
        let dashboard = alice.get("/").await;
        assert_eq!(dashboard.status, StatusCode::OK);
        assert!(
            dashboard.body.contains("<a href=\"/apps/shop\">shop</a>"),
            "{}",
            dashboard.body
        );
        assert!(
            dashboard
                .body
                .contains("Logged in as <strong>alice</strong>")
        );
        assert!(
            !dashboard.body.contains("href=\"/users\""),
            "alice may not manage users"
        );
        let users = alice.get("/users").await;
        assert_eq!(users.status, StatusCode::FORBIDDEN, "{}", users.body);

        // staging 1.0.0 then 2.0.0; production 2.0.0 waits for an approver.
        let first = deploy_as(&ferry, "alice", "shop", "staging", "1.0.0").await;
        wait_state(&ferry, first, "succeeded", STATE_LIMIT).await;
        let second = deploy_as(&ferry, "alice", "shop", "staging", "2.0.0").await;
        wait_state(&ferry, second, "succeeded", STATE_LIMIT).await;
        let before = fingerprints(&alice.get("/").await.body);
        let prod = deploy_as(&ferry, "alice", "shop", "production", "2.0.0").await;
        wait_state(&ferry, prod, "awaiting-approval", STATE_LIMIT).await;
        // The dashboard's script, holding the page from before, gets the changed pieces
        // alone: shop's row and the waiting section, not the page or the other section.
        let parts = alice.get(&format!("/dashboard/parts?have={before}")).await;
        assert_eq!(parts.status, StatusCode::OK, "{}", parts.body);
        assert!(
            parts.body.contains("<tr id=\"row-shop\"")
                && parts.body.contains("<section id=\"waiting\"")
                && parts.body.contains(&format!("/deployments/{prod}")),
            "{}",
            parts.body
        );
        assert!(
            !parts.body.contains("id=\"live\"")
                && !parts.body.contains("id=\"rollouts\"")
                && !parts.body.contains("<html"),
            "{}",
            parts.body
        );

        let dashboard = alice.get("/").await;
        // …and with the fingerprints of now, nothing.
        let now = fingerprints(&dashboard.body);
        let unchanged = alice.get(&format!("/dashboard/parts?have={now}")).await;
        assert_eq!(unchanged.body.trim(), "", "nothing changed");
        // A frame it does not know (another filter, an app added): the whole live part.
        let whole = alice.get("/dashboard/parts?have=00000000").await;
        assert!(
            whole.body.contains("<div id=\"live\"") && whole.body.contains("row-shop"),
            "{}",
            whole.body
        );
        // Without a session: 401, the script says to reload.
        let anonymous = Browser::new(&ferry)
            .get(&format!("/dashboard/parts?have={now}"))
            .await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        assert!(
            dashboard.body.contains(&format!(
                "<a href=\"/deployments/{prod}\">shop/production 2.0.0</a>"
            )),
            "the dashboard lists the waiting deployment:\n{}",
            dashboard.body
        );
        assert!(
            dashboard.body.contains("approvals"),
            "and what it waits for"
        );
        let filtered = alice.get("/?app=nothing-like-this").await;
        assert!(
            !filtered.body.contains("/apps/shop\""),
            "the filter hides shop"
        );

        // Which buttons each role gets on the waiting production deployment.
        let page = format!("/deployments/{prod}");
        let (mut bob, bob_csrf) = Browser::logged_in(&ferry, "bob").await;
        let (mut vic, vic_csrf) = Browser::logged_in(&ferry, "vic").await;
        let (mut alice, alice_csrf) = Browser::logged_in(&ferry, "alice").await;
        let as_alice = alice.get(&page).await;
        let as_bob = bob.get(&page).await;
        let as_vic = vic.get(&page).await;
        assert!(
            !as_alice.body.contains("id=\"do-approve\""),
            "the requester gets no approve button"
        );
        assert!(
            as_bob.body.contains("id=\"do-approve\"") && as_bob.body.contains("id=\"do-reject\"")
        );
        assert!(
            !as_bob.body.contains("id=\"do-rollback\""),
            "an approver may not roll back"
        );
        assert!(
            as_vic.body.contains("No action is open to you"),
            "{}",
            as_vic.body
        );
        assert!(!as_vic.body.contains("id=\"do-"));
        for body in [&as_alice.body, &as_bob.body, &as_vic.body] {
            assert_no_markup_from_users(body);
        }

        // Forged approvals: a viewer's and the requester's (right CSRF token, no approve
        // permission) are refused by the API's gate, 403, and audited.
        let approve = format!("/deployments/{prod}/approve");
        let by_vic = vic
            .post(&approve, &[("csrf", &vic_csrf), ("reason", "looks fine")])
            .await;
        assert_eq!(by_vic.status, StatusCode::FORBIDDEN, "{}", by_vic.body);
        let by_alice = alice
            .post(&approve, &[("csrf", &alice_csrf), ("reason", "mine")])
            .await;
        assert_eq!(by_alice.status, StatusCode::FORBIDDEN, "{}", by_alice.body);
        assert!(by_alice.body.contains("denied"), "{}", by_alice.body);
        // Bob's approval with a CSRF token that is not his session's: refused.
        let no_csrf = bob
            .post(&approve, &[("csrf", &vic_csrf), ("reason", "ok")])
            .await;
        assert_eq!(no_csrf.status, StatusCode::FORBIDDEN);
        assert!(no_csrf.body.contains("CSRF"));
        let (_, audit) = ferry
            .api_get("/v1/audit?actor=user:vic&action=approve")
            .await;
        let records = audit.as_array().expect("audit records");
        assert!(
            records
                .iter()
                .any(|r| r["outcome"].as_str().unwrap_or("").starts_with("denied")),
            "the viewer's forged approval is in the audit log: {audit}"
        );
        assert_eq!(
            ferry.deployment(prod).await.deployment.state.to_string(),
            "awaiting-approval"
        );

        // Bob approves through the console; production goes ahead.
        let approved = bob
            .post(
                &approve,
                &[("csrf", &bob_csrf), ("reason", "release train <b>42</b>")],
            )
            .await;
        assert_eq!(approved.status, StatusCode::SEE_OTHER, "{}", approved.body);
        assert_eq!(approved.location(), page);
        wait_state(&ferry, prod, "succeeded", STATE_LIMIT).await;

        // Alice rolls staging back from the console, with a reason that is markup.
        let staging = alice.get(&format!("/deployments/{second}")).await;
        assert!(
            staging.body.contains("id=\"do-rollback\""),
            "{}",
            staging.body
        );
        let rollback = alice
            .post(
                "/apps/shop/envs/staging/rollback",
                &[
                    ("csrf", &alice_csrf),
                    ("deployment", &second.to_string()),
                    ("reason", "<script>alert(2)</script> bad build"),
                ],
            )
            .await;
        assert_eq!(rollback.status, StatusCode::SEE_OTHER, "{}", rollback.body);
        let back: i64 = rollback
            .location()
            .trim_start_matches("/deployments/")
            .parse()
            .expect("the new deployment's page");
        assert_ne!(back, second);
        wait_state(&ferry, back, "succeeded", STATE_LIMIT).await;
        let status = ferry.api_get("/v1/apps/shop/status?env=staging").await.1;
        assert_eq!(status["environments"][0]["current_version"], "1.0.0");

        // The live stream resumes after the last event the browser saw (Last-Event-ID),
        // and ends once the deployment is over.
        let live = alice
            .http
            .get(format!("{}/deployments/{back}/live", ferry.url))
            .header(header::COOKIE, alice.cookie_header())
            .header("last-event-id", "2")
            .send()
            .await
            .expect("live");
        assert_eq!(live.status(), StatusCode::OK);
        let stream = tokio::time::timeout(Duration::from_secs(30), live.text())
            .await
            .expect("the stream of a finished deployment ends")
            .expect("stream body");
        assert!(
            stream.contains("id: 3\n")
                && !stream.contains("id: 2\n")
                && !stream.contains("id: 1\n"),
            "{stream}"
        );
        assert!(
            stream.contains("event: status") && stream.contains("event: end"),
            "{stream}"
        );
        let anonymous_live = reqwest::get(format!("{}/deployments/{back}/live", ferry.url))
            .await
            .expect("live");
        assert_eq!(anonymous_live.status(), StatusCode::UNAUTHORIZED);

        // The audit page shows the reason and the failed login's name as text.
        let audit = alice.get("/audit?app=shop").await;
        assert_eq!(audit.status, StatusCode::OK);
        assert!(audit.body.contains("bad build"), "{}", audit.body);
        // verifying the whole chain needs `view` on everything: alice is told so
        assert!(
            audit.body.contains("Verification not available to you"),
            "{}",
            audit.body
        );
        assert_no_markup_from_users(&audit.body);

        // The app page: environments in order with versions, the release tag, a diff.
        let app = alice.get("/apps/shop").await;
        assert_eq!(app.status, StatusCode::OK);
        let (s, p) = (
            app.body
                .find("<th scope=\"row\">staging</th>")
                .expect("staging row"),
            app.body
                .find("<th scope=\"row\">production</th>")
                .expect("production row"),
        );
        assert!(s < p, "promotion order");
        assert_no_markup_from_users(&app.body);

        // Logout ends the session: the old cookie no longer opens a page.
        let stolen = alice.cookies.clone();
        let out = alice.post("/logout", &[("csrf", &alice_csrf)]).await;
        assert_eq!(out.status, StatusCode::SEE_OTHER);
        assert_eq!(out.location(), "/login?out=1");
        assert!(!alice.cookies.contains_key("ferry_session"));
        alice.cookies = stolen;
        let after = alice.get("/").await;
        assert_eq!(after.status, StatusCode::SEE_OTHER);
        assert!(after.location().contains("ended=1"), "{}", after.location());

        // Expiry: a session past its end opens nothing (and the form says so).
        let sql =
            "UPDATE api_tokens SET expires_at_ms = 1 WHERE owner = 'bob' AND kind = 'session'";
        let done = std::process::Command::new("sqlite3")
            .arg(ferry.data.join("ferry.db"))
            .arg(sql)
            .status()
            .expect("sqlite3");
        assert!(done.success());
        let expired = bob.get("/").await;
        assert_eq!(expired.status, StatusCode::SEE_OTHER);
        let form = bob.get(expired.location()).await;
        assert!(form.body.contains("Your session ended"), "{}", form.body);
        let late = bob
            .post(&approve, &[("csrf", &bob_csrf), ("reason", "late")])
            .await;
        assert_eq!(
            late.status,
            StatusCode::SEE_OTHER,
            "an expired session acts on nothing"
        );

        // Users and tokens, for who may manage users: a token is shown once.
        for (path, body) in [
            (
                "/v1/users",
                serde_json::json!({ "username": "root", "password": PASSWORD }),
            ),
            (
                "/v1/bindings",
                serde_json::json!({ "user": "root", "role": "admin" }),
            ),
        ] {
            let answer = ferry
                .http
                .post(format!("{}{path}", ferry.url))
                .bearer_auth(&ferry.token)
                .json(&body)
                .send()
                .await
                .expect("identity");
            assert!(answer.status().is_success(), "{path}");
        }
        let (mut root, root_csrf) = Browser::logged_in(&ferry, "root").await;
        let users = root.get("/users").await;
        assert_eq!(users.status, StatusCode::OK, "{}", users.body);
        assert!(
            users.body.contains("<th scope=\"row\">vic"),
            "{}",
            users.body
        );
        let created = root
            .post(
                "/tokens",
                &[
                    ("csrf", &root_csrf),
                    ("name", "ci"),
                    ("role", "viewer"),
                    ("app", "shop"),
                ],
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
        assert!(
            created.body.contains("value=\"ferry_"),
            "the token is shown once"
        );
        let again = root.get("/users").await;
        assert!(
            !again.body.contains("value=\"ferry_") && again.body.contains("ci (viewer, active)"),
            "{}",
            again.body
        );

        // The API's failed-login throttling holds for the console too (last: it locks
        // this address out for a while).
        let mut mallory = Browser::new(&ferry);
        let mut throttled = None;
        for attempt in 0..8 {
            let answer = mallory.login("mallory", "guess guess guess").await;
            if answer.status == StatusCode::TOO_MANY_REQUESTS {
                throttled = Some((attempt, answer));
                break;
            }
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        }
        let (attempt, answer) = throttled.expect("the login throttle never answered 429");
        assert!(attempt <= 5, "throttled only after {attempt} failures");
        assert!(answer.headers.contains_key(header::RETRY_AFTER));
        assert!(
            answer.body.contains("too many failed logins"),
            "{}",
            answer.body
        );
    })
    .await;
}

/// The dashboard with 200 apps × 4 environments (sharing one listener by host): its
/// server render time and page weight (figures in docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dashboard_with_200_apps_by_4_environments() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let port = free_port();
        let api = |path: &str| format!("{}{path}", ferry.url);
        for i in 0..200 {
            let envs: String = ["dev", "test", "staging", "production"]
                .iter()
                .map(|env| {
                    format!(
                        "  {env}:\n    listen: 127.0.0.1:{port}\n    hosts: [app-{i:03}-{env}.test]\n"
                    )
                })
                .collect();
            let yaml = format!(
                "app: app-{i:03}\nservices:\n  web:\n    run: [\"true\"]\nenvironments:\n{envs}"
            );
            let answer = ferry
                .http
                .post(api("/v1/apps"))
                .bearer_auth(&ferry.token)
                .json(&serde_json::json!({ "manifest": yaml }))
                .send()
                .await
                .expect("apply");
            assert!(answer.status().is_success(), "{}", answer.text().await.unwrap_or_default());
        }
        for (path, body) in [
            ("/v1/users", serde_json::json!({ "username": "ops", "password": PASSWORD })),
            ("/v1/bindings", serde_json::json!({ "user": "ops", "role": "viewer" })),
        ] {
            let answer = ferry
                .http
                .post(api(path))
                .bearer_auth(&ferry.token)
                .json(&body)
                .send()
                .await
                .expect("identity");
            assert!(answer.status().is_success(), "{path}: {}", answer.text().await.unwrap_or_default());
        }
        let (mut ops, _) = Browser::logged_in(&ferry, "ops").await;
        let mut times = Vec::new();
        let mut size = 0;
        for round in 0..23 {
            let started = std::time::Instant::now();
            let page = ops.get("/").await;
            let took = started.elapsed();
            assert_eq!(page.status, StatusCode::OK);
            assert!(page.body.contains("Apps (200 of 200)"), "{}", &page.body[..page.body.len().min(2000)]);
            size = page.body.len();
            if round >= 3 {
                times.push(took.as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let p95 = times[(times.len() * 95).div_ceil(100) - 1];
        eprintln!(
            "dashboard, 200 apps x 4 environments: {size} bytes, median {median:.1} ms, p95 {p95:.1} ms over {} requests",
            times.len()
        );
        assert!(size < 200 * 1024, "the dashboard weighs {size} bytes");
        assert!(p95 < 2000.0, "the dashboard took {p95} ms (p95)");

        // A live update of one row: the script sends the page's fingerprints, one of which
        // (row-app-057) no longer matches, and gets that row alone.
        let page = ops.get("/").await;
        let have = fingerprints(&page.body);
        let mut pieces: Vec<&str> = have.split('.').collect();
        assert_eq!(pieces.len(), 3 + 200, "frame, waiting, rollouts, 200 rows");
        pieces[3 + 57] = "00000000";
        let stale = pieces.join(".");
        let mut times = Vec::new();
        let mut bytes = 0;
        for round in 0..23 {
            let started = std::time::Instant::now();
            let parts = ops.get(&format!("/dashboard/parts?have={stale}")).await;
            let took = started.elapsed();
            assert_eq!(parts.status, StatusCode::OK);
            assert!(parts.body.contains("<tr id=\"row-app-057\""), "{}", parts.body);
            assert_eq!(parts.body.matches("<tr ").count(), 1, "{}", parts.body);
            bytes = parts.body.len();
            if round >= 3 {
                times.push(took.as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        let median = times[times.len() / 2];
        let p95 = times[(times.len() * 95).div_ceil(100) - 1];
        eprintln!(
            "dashboard update of one row, 200 apps x 4 environments: {bytes} bytes (the page: {size}), median {median:.1} ms, p95 {p95:.1} ms over {} requests",
            times.len()
        );
        assert!(bytes * 50 < size, "one row's update weighs {bytes} bytes");
    })
    .await;
}

/// Reads a server-sent event stream until it ends; the stream's text, or None if it was
/// still open after `limit`.
async fn read_until_end(response: reqwest::Response, limit: Duration) -> Option<String> {
    use futures_util::StreamExt;
    let mut body = response.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => return None,
            Ok(None) | Ok(Some(Err(_))) => return Some(text),
            Ok(Some(Ok(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
        }
    }
}

/// A graceful stop (SIGTERM) ends the open event streams — `ferry status --watch`'s
/// `/watch`, the dashboard's `/live` and a deployment's live timeline — and the server
/// exits promptly instead of waiting for their clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn event_streams_end_when_the_server_stops() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let mut ferry = Ferry::start().await;
        let mut spec = Spec::new("streams");
        spec.replicas = 1;
        ferry
            .apply(&ferry.write_manifest(&spec, "ferry.yaml"))
            .await;
        add_person(&ferry, "ops", PASSWORD, &[("viewer", "streams", None)]).await;
        let id = ferry.deploy_id(&spec, "1.0.0").await;
        let (ops, _) = Browser::logged_in(&ferry, "ops").await;
        let open = |request: reqwest::RequestBuilder, what: &'static str| async move {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(response.status(), StatusCode::OK, "{what}");
            let kind = response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .to_string();
            assert!(kind.starts_with("text/event-stream"), "{what}: {kind}");
            response
        };
        // A client without a timeout: only the server can end these.
        let http = reqwest::Client::new();
        let watch = open(
            http.get(format!(
                "{}/v1/apps/streams/envs/production/watch",
                ferry.url
            ))
            .bearer_auth(&ferry.token),
            "/watch",
        )
        .await;
        let live = open(
            http.get(format!("{}/live", ferry.url))
                .header(header::COOKIE, ops.cookie_header()),
            "/live",
        )
        .await;
        let timeline = open(
            http.get(format!("{}/deployments/{id}/live?after=1000000", ferry.url))
                .header(header::COOKIE, ops.cookie_header()),
            "/deployments/ID/live",
        )
        .await;
        let started = Instant::now();
        let status = ferry.stop_server(Duration::from_secs(15)).await;
        let took = started.elapsed();
        assert!(
            status.is_some_and(|s| s.success()),
            "the server did not exit cleanly within 15 s of SIGTERM ({status:?})\n{}",
            ferry.server_logs()
        );
        eprintln!("server exited {took:?} after SIGTERM with three open event streams");
        for (what, stream) in [
            ("/watch", watch),
            ("/live", live),
            ("/deployments/ID/live", timeline),
        ] {
            let text = read_until_end(stream, Duration::from_secs(10)).await;
            assert!(text.is_some(), "{what} still open after the server stopped");
        }
        // The proxy (and replicas) outlive the control plane: start it again so the
        // harness tears everything down.
        ferry.start_server().await;
    })
    .await;
}

/// `ferry users login-link NAME` (manage_users): opening the link shows a "Sign in" button
/// and uses nothing up (a link-preview bot leaves it valid); the button logs that user into
/// the console once; used again it is refused and shows the login form; someone without manage_users
/// cannot make one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_time_login_links_work_once() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let vic = add_person(&ferry, "vic", PASSWORD, &[("viewer", "shop", None)]).await;
        let out = common::run(
            &ferry,
            &common::admin(&ferry),
            &["users", "login-link", "vic"],
            None,
        )
        .await;
        common::ok(&out, "users login-link");
        let link = out.stdout.trim().to_string();
        assert!(
            link.starts_with(&format!("{}/login/link/ferry_", ferry.url)),
            "{link}"
        );
        assert!(
            out.stderr.contains("opens the web console as vic once"),
            "{}",
            out.stderr
        );

        let path = &link[ferry.url.len()..];
        // A chat app's link-preview bot fetches the link (twice, without cookies): it gets a
        // page with a "Sign in" button, and the link stays valid.
        for _ in 0..2 {
            let mut bot = Browser::new(&ferry);
            let preview = bot.get(path).await;
            assert_eq!(preview.status, StatusCode::OK, "{}", preview.body);
            assert!(
                preview.body.contains(">Sign in</button>"),
                "{}",
                preview.body
            );
            assert!(
                preview.body.contains(&format!("action=\"{path}\"")),
                "the button posts the link: {}",
                preview.body
            );
            assert!(
                !bot.cookies.contains_key("ferry_session"),
                "a GET signs nobody in"
            );
        }
        let mut browser = Browser::new(&ferry);
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        // The button's POST is guarded like the login form: without the page's CSRF token
        // (another site's form) it is refused and uses nothing up.
        let forged = browser.post(path, &[("csrf", "0")]).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
        let first = browser.post(path, &[("csrf", &csrf(&page.body))]).await;
        assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.body);
        assert_eq!(first.location(), "/");
        let cookies = first.set_cookies();
        let session = cookies
            .iter()
            .find(|c| c.starts_with("ferry_session="))
            .expect("a session cookie");
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(session.contains(flag), "{session}");
        }
        let dashboard = browser.get("/").await;
        assert_eq!(dashboard.status, StatusCode::OK);
        assert!(dashboard.body.contains("vic"), "{}", dashboard.body);

        let mut other = Browser::new(&ferry);
        let page = other.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        let again = other.post(path, &[("csrf", &csrf(&page.body))]).await;
        assert_eq!(again.status, StatusCode::UNAUTHORIZED);
        assert!(again.body.contains("used already"), "{}", again.body);
        assert!(
            again.body.contains("name=\"password\""),
            "the login form: {}",
            again.body
        );
        assert!(
            other.get("/").await.status == StatusCode::SEE_OTHER,
            "no session"
        );

        let unknown = other
            .post("/login/link/ferry_0000", &[("csrf", &csrf(&page.body))])
            .await;
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);

        let refused = common::run(&ferry, &vic, &["users", "login-link", "vic"], None).await;
        assert_ne!(refused.code, 0, "a viewer makes no login link:\n{refused}");
        assert!(refused.stderr.contains("manage_users"), "{refused}");
    })
    .await;
}

/// A canary rolled back by its analysis: the API's deployment detail carries the analysis
/// as typed rows (metric, value, threshold, sample size, verdict), and the deployment page
/// shows them as a table, after the rollout ended too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deployment_page_shows_the_analysis_as_a_table() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 2;
        spec.prelude = "if [ \"$VERSION\" = 2.0.0 ]; then export DEMO_ERROR_RATE=0.5; fi;".into();
        spec.strategy = "{ canary: { steps: [{ weight: 50 }, { pause: 1m }], analysis: { interval: 1s, metrics: [{ name: errors, builtin: error_rate, max: 5% }] } } }".into();
        ferry.apply(&ferry.write_manifest(&spec, "ferry.yaml")).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        add_person(&ferry, "vic", PASSWORD, &[("viewer", "shop", None)]).await;
        let load = common::Load::start(&spec.listener(), 2);
        load.warm_up(20).await;
        let id = ferry.deploy_id_to("shop", "production", "2.0.0").await;
        wait_state(&ferry, id, "rolled-back", STATE_LIMIT).await;
        load.stop().await;

        let (status, detail) = ferry.api_get(&format!("/v1/deployments/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        let rows = detail["analysis"].as_array().expect("analysis rows");
        let errors = rows
            .iter()
            .find(|r| r["metric"] == "errors" && r["analysis"] == "background")
            .unwrap_or_else(|| panic!("no background errors row: {detail:#}"));
        assert!(errors["failures"].as_u64() >= Some(1), "{errors:#}");
        let last = &errors["last"];
        assert_eq!(last["verdict"], "fail", "{errors:#}");
        assert_eq!(last["unit"], "ratio");
        assert!(last["value"].as_f64().is_some_and(|v| v > 0.05), "{errors:#}");
        assert!(last["sample_size"].as_u64().is_some_and(|n| n > 0), "{errors:#}");
        assert!(last["threshold"].as_str().is_some_and(|t| !t.is_empty()), "{errors:#}");

        let (mut vic, _) = Browser::logged_in(&ferry, "vic").await;
        let page = vic.get(&format!("/deployments/{id}")).await;
        assert_eq!(page.status, StatusCode::OK);
        let table = page
            .body
            .split("<section id=\"analysis\"")
            .nth(1)
            .and_then(|rest| rest.split("</section>").next())
            .unwrap_or_else(|| panic!("no analysis section: {}", page.body));
        for needle in [
            "<th scope=\"col\">Threshold</th>",
            "<th scope=\"col\">Sample</th>",
            "<td>background</td>",
            "<td>errors",
            "<span class=\"state s-fail\">fail</span>",
            last["threshold"].as_str().unwrap_or_default(),
        ] {
            assert!(table.contains(needle), "{needle:?} in {table}");
        }
    })
    .await;
}

/// The flags page: per environment, a flag's state, strategies, rollout and guarded
/// rollout, text as text; the on/off forms only for who may manage that environment's
/// flags, judged again (and audited) by the API's gate; forged forms refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_flags_page_switches_flags_by_role_with_csrf() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.env = "staging".into();
        spec.replicas = 1;
        ferry
            .apply(&with_approved_production(&ferry, &spec, &spec.strategy))
            .await;
        let out = ferry
            .cli(&[
                "roles",
                "create",
                "flagger",
                "--permission",
                "manage_flags",
                "--permission",
                "view",
            ])
            .await;
        assert_eq!(out.code, 0, "roles create:\n{out}");
        add_person(
            &ferry,
            "fay",
            PASSWORD,
            &[
                ("flagger", "shop", Some("staging")),
                ("viewer", "shop", None),
            ],
        )
        .await;
        add_person(&ferry, "vic", PASSWORD, &[("viewer", "shop", None)]).await;
        let at = ["shop", "--env", "staging"];
        for args in [
            &[
                "flags",
                "create",
                at[0],
                at[1],
                at[2],
                "checkout",
                "--description",
                "<script>alert(1)</script> & co",
            ][..],
            &["flags", "rollout", at[0], at[1], at[2], "checkout", "25"],
            &["flags", "create", at[0], at[1], at[2], "beta"],
            &[
                "flags",
                "rollout",
                at[0],
                at[1],
                at[2],
                "beta",
                "--guarded",
                "--steps",
                "5,100",
                "--pause",
                "1h",
            ],
        ] {
            let out = ferry.cli(args).await;
            assert_eq!(out.code, 0, "{args:?}:\n{out}");
        }

        let (mut fay, fay_csrf) = Browser::logged_in(&ferry, "fay").await;
        let (mut vic, vic_csrf) = Browser::logged_in(&ferry, "vic").await;
        let app = fay.get("/apps/shop").await;
        assert!(
            app.body.contains("href=\"/apps/shop/flags\""),
            "{}",
            app.body
        );

        let page = fay.get("/apps/shop/flags?env=staging").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert_no_markup_from_users(&page.body);
        assert!(
            page.body
                .contains("&#60;script&#62;alert(1)&#60;/script&#62; &#38; co")
                || page
                    .body
                    .contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"),
            "the description as text: {}",
            page.body
        );
        assert!(page.body.contains("25 %"), "{}", page.body);
        assert!(page.body.contains("flexibleRollout"), "{}", page.body);
        // (With no traffic to judge, the first step holds: running, or paused once the
        // analysis stayed inconclusive for long.)
        assert!(
            page.body.contains(">running</span> step 1/2 at 5 %")
                || page.body.contains(">paused</span> step 1/2 at 5 %"),
            "{}",
            page.body
        );
        assert!(
            page.body.contains("id=\"switch-checkout\">Turn on<"),
            "{}",
            page.body
        );
        assert!(
            page.body
                .contains("id=\"switch-beta\">Turn off (kill switch)<"),
            "{}",
            page.body
        );
        // Fay manages staging's flags, not production's: no button there.
        let production = fay.get("/apps/shop/flags?env=production").await;
        assert_eq!(production.status, StatusCode::OK, "{}", production.body);
        assert!(
            !production.body.contains("id=\"switch-"),
            "{}",
            production.body
        );
        // A viewer sees the flags and no button.
        let as_vic = vic.get("/apps/shop/flags?env=staging").await;
        assert_eq!(as_vic.status, StatusCode::OK, "{}", as_vic.body);
        assert!(as_vic.body.contains("checkout"));
        assert!(!as_vic.body.contains("id=\"switch-"), "{}", as_vic.body);

        // The viewer's forged form (right CSRF token, no manage_flags): the API's gate
        // refuses it, 403, and audits it.
        let enable = "/apps/shop/envs/staging/flags/checkout/enable";
        let by_vic = vic
            .post(enable, &[("csrf", &vic_csrf), ("reason", "why not")])
            .await;
        assert_eq!(by_vic.status, StatusCode::FORBIDDEN, "{}", by_vic.body);
        let (_, audit) = ferry.api_get("/v1/audit?actor=user:vic").await;
        assert!(
            audit.as_array().expect("audit records").iter().any(|r| {
                r["action"] == "flags.enable"
                    && r["outcome"].as_str().unwrap_or("").starts_with("denied")
            }),
            "the viewer's forged switch is in the audit log: {audit}"
        );
        // Fay's form with a CSRF token that is not her session's: refused.
        let forged = fay.post(enable, &[("csrf", &vic_csrf)]).await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.body);
        assert!(forged.body.contains("CSRF"), "{}", forged.body);
        // Not in production, whatever the page shows.
        let elsewhere = fay
            .post(
                "/apps/shop/envs/production/flags/checkout/enable",
                &[("csrf", &fay_csrf)],
            )
            .await;
        assert_eq!(
            elsewhere.status,
            StatusCode::FORBIDDEN,
            "{}",
            elsewhere.body
        );
        let (_, shown) = ferry
            .api_get("/v1/apps/shop/envs/staging/flags/checkout")
            .await;
        assert_eq!(shown["summary"]["enabled"], false, "{shown}");

        // Fay turns it on, then off again (the kill switch), with a reason kept as text.
        let on = fay
            .post(enable, &[("csrf", &fay_csrf), ("reason", "<b>launch</b>")])
            .await;
        assert_eq!(on.status, StatusCode::SEE_OTHER, "{}", on.body);
        assert_eq!(on.location(), "/apps/shop/flags?env=staging");
        let page = fay.get("/apps/shop/flags?env=staging").await;
        assert!(
            page.body
                .contains("id=\"switch-checkout\">Turn off (kill switch)<"),
            "{}",
            page.body
        );
        let (_, shown) = ferry
            .api_get("/v1/apps/shop/envs/staging/flags/checkout")
            .await;
        assert_eq!(shown["summary"]["enabled"], true, "{shown}");
        assert_eq!(shown["changes"][0]["reason"], "<b>launch</b>", "{shown}");
        assert_eq!(shown["changes"][0]["actor"], "user:fay", "{shown}");
        let off = fay
            .post(
                "/apps/shop/envs/staging/flags/checkout/disable",
                &[("csrf", &fay_csrf)],
            )
            .await;
        assert_eq!(off.status, StatusCode::SEE_OTHER, "{}", off.body);
        let (_, shown) = ferry
            .api_get("/v1/apps/shop/envs/staging/flags/checkout")
            .await;
        assert_eq!(shown["summary"]["enabled"], false, "{shown}");
        // Only enable and disable are forms here.
        let archive = fay
            .post(
                "/apps/shop/envs/staging/flags/checkout/archive",
                &[("csrf", &fay_csrf)],
            )
            .await;
        assert_eq!(archive.status, StatusCode::NOT_FOUND, "{}", archive.body);
    })
    .await;
}

/// A real canary under load: the controller samples each version's traffic, the API's
/// deployment detail carries it (`series`), and the deployment page draws it — request
/// rate, error rate and p95 per version as SVG with a title, a description and the same
/// figures as a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_deployment_page_charts_each_versions_traffic() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 2;
        // the canary answers 20 % errors, 30 ms slower
        spec.prelude =
            "if [ \"$VERSION\" = 2.0.0 ]; then export DEMO_ERROR_RATE=0.2 DEMO_LATENCY_MS=30; fi;"
                .into();
        spec.strategy = "{ canary: { steps: [{ weight: 50 }, { pause: 10m }] } }".into();
        ferry
            .apply(&ferry.write_manifest(&spec, "ferry.yaml"))
            .await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        add_person(&ferry, "vic", PASSWORD, &[("viewer", "shop", None)]).await;
        let load = common::Load::start(&spec.listener(), 2);
        load.warm_up(20).await;
        let id = ferry.deploy_id(&spec, "2.0.0").await;
        // Wait until both versions have served in at least two sampled intervals.
        let deadline = Instant::now() + Duration::from_secs(60);
        let series = loop {
            let detail = ferry.deployment(id).await;
            let served = |version: &str| {
                detail
                    .series
                    .iter()
                    .find(|s| s.version == version)
                    .map_or(0, |s| s.points.iter().filter(|p| p.requests > 0).count())
            };
            if served("1.0.0") >= 2 && served("2.0.0") >= 2 {
                break detail.series;
            }
            assert!(
                Instant::now() < deadline,
                "no traffic sampled for both versions: {:?}",
                detail.series
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        load.stop().await;
        let canary = series
            .iter()
            .find(|s| s.version == "2.0.0")
            .expect("canary");
        let errors: u64 = canary.points.iter().map(|p| p.errors).sum();
        let requests: u64 = canary.points.iter().map(|p| p.requests).sum();
        assert!(errors > 0 && errors < requests, "{canary:?}");
        assert!(
            canary
                .points
                .iter()
                .any(|p| p.p95_us.is_some_and(|us| us >= 30_000)),
            "the canary's p95 shows its 30 ms: {canary:?}"
        );
        for s in &series {
            assert!(s.points.windows(2).all(|w| w[0].t_ms < w[1].t_ms), "{s:?}");
            assert!(
                s.points
                    .iter()
                    .all(|p| p.span_ms > 0 && p.errors <= p.requests)
            );
        }

        let (mut vic, _) = Browser::logged_in(&ferry, "vic").await;
        let page = vic.get(&format!("/deployments/{id}")).await;
        assert_eq!(page.status, StatusCode::OK);
        let section = page
            .body
            .split("<section id=\"charts\"")
            .nth(1)
            .and_then(|rest| rest.split("</section>").next())
            .unwrap_or_else(|| panic!("no charts section: {}", page.body));
        assert_eq!(section.matches("role=\"img\"").count(), 3, "{section}");
        // one line per version in each chart: the stable one (v0), the canary (v1)
        assert_eq!(
            section
                .matches("data-version=\"1.0.0\"><path class=\"line v0\"")
                .count(),
            3
        );
        assert_eq!(
            section
                .matches("data-version=\"2.0.0\"><path class=\"line v1\"")
                .count(),
            3
        );
        assert!(
            section.contains("<circle class=\"dot v1\""),
            "points drawn: {section}"
        );
        assert!(section.contains("2.0.0 peaks at"), "{section}");
        assert!(
            section.matches("<td>2.0.0</td>").count() >= 2,
            "the figures as a table: {section}"
        );
    })
    .await;
}

/// A rolling update of slow-starting replicas under load is charted too (sampled beside
/// the controller, while it progresses), and the deployment page's live parts come as a
/// fragment: what the console's script swaps in without a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_update_is_charted_and_its_parts_come_alone() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 3;
        // the new version warms up for 2 s before it listens, like a real server
        spec.prelude = "if [ \"$VERSION\" = 2.0.0 ]; then sleep 2; fi;".into();
        ferry
            .apply(&ferry.write_manifest(&spec, "ferry.yaml"))
            .await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        add_person(&ferry, "vic", PASSWORD, &[("viewer", "shop", None)]).await;
        let load = common::Load::start(&spec.listener(), 2);
        load.warm_up(20).await;
        let id = ferry.deploy_id(&spec, "2.0.0").await;
        wait_state(&ferry, id, "succeeded", STATE_LIMIT).await;
        load.stop().await;
        let series = ferry.deployment(id).await.series;
        let served = |version: &str| {
            series
                .iter()
                .find(|s| s.version == version)
                .map_or(0, |s| s.points.iter().filter(|p| p.requests > 0).count())
        };
        assert!(
            served("1.0.0") >= 1 && served("2.0.0") >= 1,
            "both versions' traffic during the roll: {series:?}"
        );

        let (mut vic, _) = Browser::logged_in(&ferry, "vic").await;
        let page = vic.get(&format!("/deployments/{id}")).await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(page.body.matches("role=\"img\"").count(), 3, "three charts");
        let parts = vic.get(&format!("/deployments/{id}/parts")).await;
        assert_eq!(parts.status, StatusCode::OK, "{}", parts.body);
        assert!(!parts.body.contains("<html") && !parts.body.contains("<header"));
        for part in [
            "summary", "rollout", "analysis", "charts", "actions", "gates", "hooks",
        ] {
            assert!(
                parts
                    .body
                    .contains(&format!("<section id=\"{part}\" data-live-part")),
                "{part}: {}",
                parts.body
            );
        }
        assert!(
            parts
                .body
                .contains("<span id=\"state\" class=\"state s-succeeded\"")
        );
        assert_eq!(parts.body.matches("role=\"img\"").count(), 3);
        let mut stranger = Browser::new(&ferry);
        let refused = stranger.get(&format!("/deployments/{id}/parts")).await;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "no session, no fragment"
        );
    })
    .await;
}

/// The alerts page: firing and pending alerts with their (escaped) summaries, a silence
/// form only for who may silence (`rollback`), forged and cross-session forms refused, a
/// silence made and lifted through the page, as the person, audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alerts_page_lists_alerts_and_silences_them_by_role_with_csrf() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        let path = ferry.write_manifest(&spec, "ferry.yaml");
        let mut yaml = std::fs::read_to_string(&path).expect("read manifest");
        yaml.push_str(
            "alerts:
  - name: few_replicas
    condition: replicas_ready < 5
    interval: 1s
    severity: critical
    annotations: { summary: '<script>alert(1)</script> only {{ $value }} ready' }
  - name: slowly
    condition: replicas_ready < 5
    for: 1h
    interval: 1s
",
        );
        std::fs::write(&path, yaml).expect("write manifest");
        ferry.apply(&path).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        add_person(&ferry, "dev", PASSWORD, &[("developer", "shop", None)]).await;
        add_person(&ferry, "vic", PASSWORD, &[("viewer", "shop", None)]).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, answer) = ferry.api_get("/v1/alerts?app=shop").await;
            let status = |name: &str| {
                answer["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["alert"] == name)
                    .map(|a| a["status"].as_str().unwrap_or_default().to_string())
            };
            if status("few_replicas").as_deref() == Some("firing")
                && status("slowly").as_deref() == Some("pending")
            {
                break;
            }
            assert!(Instant::now() < deadline, "alerts: {answer:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        let (mut dev, dev_csrf) = Browser::logged_in(&ferry, "dev").await;
        let (mut vic, vic_csrf) = Browser::logged_in(&ferry, "vic").await;
        let page = dev.get("/alerts?app=shop").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("href=\"/alerts\""), "in the nav");
        assert_no_markup_from_users(&page.body);
        assert!(
            page.body
                .contains("&#60;script&#62;alert(1)&#60;/script&#62; only 1 ready")
                || page
                    .body
                    .contains("&lt;script&gt;alert(1)&lt;/script&gt; only 1 ready"),
            "the summary as text: {}",
            page.body
        );
        assert!(page.body.contains(">firing</span>"), "{}", page.body);
        assert!(page.body.contains(">pending</span>"), "{}", page.body);
        let button = "id=\"silence-shop-production-few_replicas\"";
        assert!(page.body.contains(button), "{}", page.body);
        // A viewer sees the alerts, no form; a forged one is refused by the API's gate.
        let as_vic = vic.get("/alerts").await;
        assert_eq!(as_vic.status, StatusCode::OK, "{}", as_vic.body);
        assert!(as_vic.body.contains("few_replicas"), "{}", as_vic.body);
        assert!(!as_vic.body.contains("id=\"silence-"), "{}", as_vic.body);
        let silence = |csrf: &str| -> Vec<(&'static str, String)> {
            vec![
                ("csrf", csrf.to_string()),
                ("op", "silence".into()),
                ("app", "shop".into()),
                ("env", "production".into()),
                ("alert", "few_replicas".into()),
                ("for", "2h".into()),
                ("reason", "<b>known</b>, fix in #12".into()),
            ]
        };
        let by_vic = silence(&vic_csrf);
        let refs: Vec<(&str, &str)> = by_vic.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = vic.post("/alerts", &refs).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        let (_, audit) = ferry.api_get("/v1/audit?actor=user:vic").await;
        assert!(
            audit.as_array().expect("audit records").iter().any(|r| {
                r["action"] == "silences.create"
                    && r["outcome"].as_str().unwrap_or("").starts_with("denied")
            }),
            "the viewer's forged silence is audited: {audit}"
        );
        // The developer's form with the viewer's CSRF token: refused.
        let answer = dev.post("/alerts", &refs).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", answer.body);
        assert!(answer.body.contains("CSRF"), "{}", answer.body);

        // Silenced through the page, as the developer.
        let by_dev = silence(&dev_csrf);
        let refs: Vec<(&str, &str)> = by_dev.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let answer = dev.post("/alerts", &refs).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        assert_eq!(answer.location(), "/alerts?app=shop&env=production");
        let (_, silences) = ferry.api_get("/v1/silences?app=shop").await;
        let made = &silences[0];
        assert_eq!(made["created_by"], "user:dev", "{silences}");
        assert_eq!(made["reason"], "<b>known</b>, fix in #12", "{silences}");
        let page = dev.get("/alerts?app=shop&env=production").await;
        assert_no_markup_from_users(&page.body);
        assert!(page.body.contains("silenced by #"), "{}", page.body);
        assert!(
            !page.body.contains(button),
            "a silenced alert offers no second silence: {}",
            page.body
        );
        assert!(
            page.body.contains("&#60;b&#62;known&#60;/b&#62;")
                || page.body.contains("&lt;b&gt;known&lt;/b&gt;"),
            "the reason as text: {}",
            page.body
        );
        let id = made["id"].as_i64().expect("silence id").to_string();
        assert!(
            page.body.contains(&format!("id=\"lift-{id}\"")),
            "{}",
            page.body
        );

        // Lifted through the page.
        let answer = dev
            .post(
                "/alerts",
                &[
                    ("csrf", &dev_csrf),
                    ("op", "lift"),
                    ("app", "shop"),
                    ("env", "production"),
                    ("id", &id),
                ],
            )
            .await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let (_, silences) = ferry.api_get("/v1/silences?app=shop").await;
        assert_eq!(silences, serde_json::json!([]), "lifted");
        let (_, audit) = ferry.api_get("/v1/audit?actor=user:dev").await;
        for action in ["silences.create", "silences.delete"] {
            assert!(
                audit
                    .as_array()
                    .expect("audit records")
                    .iter()
                    .any(|r| r["action"] == action && r["outcome"] == "ok"),
                "{action} audited: {audit}"
            );
        }
    })
    .await;
}
