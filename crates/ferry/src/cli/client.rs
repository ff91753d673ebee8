//! The one place that talks to the Ferry API: bearer token, timeouts, and API errors mapped
//! to exit codes with a clear message.

use std::time::Duration;

/// What `X-Ferry-Reason` escapes: controls, `%` itself and (always) every non-ASCII byte.
const REASON_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

use anyhow::Context;
use ferry_core::api::{ApiError, MAX_REQUEST_BYTES};
use ferry_core::endpoint::Endpoint;
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::config::Connection;
use super::{Failure, exit};

/// Timeout of ordinary requests (long polls add their wait to it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than its `wait_ms` a long poll's request may take: the server answers
/// at the end of the wait, so a request timeout of exactly the wait fires first.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(5);

pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    /// Sent as `X-Ferry-Reason` (recorded in the audit log).
    reason: Option<String>,
}

impl Client {
    pub fn new(conn: &Connection) -> anyhow::Result<Client> {
        let base = Url::parse(&conn.url).map_err(|e| {
            Failure::new(
                exit::INVALID,
                format!(
                    "invalid Ferry URL {:?}: {e} (write it like http://127.0.0.1:7070)",
                    conn.url
                ),
            )
        })?;
        if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
            return Err(Failure::new(
                exit::INVALID,
                format!(
                    "invalid Ferry URL {:?}: expected http://HOST:PORT",
                    conn.url
                ),
            )
            .into());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("ferry-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base,
            token: conn.token.clone(),
            reason: None,
        })
    }

    /// Sends `reason` as `X-Ferry-Reason` with every request (the audit log records it).
    /// One line of at most 1000 characters, any language: it travels percent-encoded
    /// (UTF-8), which the server decodes; `Err` says what is wrong with it.
    pub fn with_reason(mut self, reason: Option<String>) -> anyhow::Result<Client> {
        if let Some(reason) = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
        {
            if reason.chars().any(char::is_control) || reason.chars().count() > 1000 {
                return Err(Failure::new(
                    exit::INVALID,
                    "--reason must be one line of at most 1000 characters",
                )
                .into());
            }
            self.reason = Some(reason);
        }
        Ok(self)
    }

    pub fn base_url(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// URL of `segments` (each one escaped) under the base URL, with query pairs.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, self.url(segments, query));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some(reason) = &self.reason {
            let encoded = percent_encoding::utf8_percent_encode(reason, REASON_ESCAPED);
            req = req.header("x-ferry-reason", encoded.to_string());
        }
        req
    }

    /// Sends and maps every failure (transport or API) to a `Failure`.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Option<Duration>,
    ) -> anyhow::Result<reqwest::Response> {
        let req = match timeout {
            Some(t) => req.timeout(t),
            None => req,
        };
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.api_error(resp).await.into())
    }

    pub fn transport_error(&self, e: &reqwest::Error) -> Failure {
        let url = self.base_url();
        if e.is_connect() {
            Failure::new(
                exit::ERROR,
                format!("cannot reach Ferry at {url} — is `ferry server` running?"),
            )
            .with_details(vec![
                "set the address with --url or FERRY_URL (default http://127.0.0.1:7070)".into(),
            ])
            .transient()
        } else if e.is_timeout() {
            Failure::new(
                exit::ERROR,
                format!("Ferry at {url} did not answer in time"),
            )
            .transient()
        } else {
            Failure::new(
                exit::ERROR,
                format!("request to Ferry at {url} failed: {}", error_chain(e)),
            )
            .transient()
        }
    }

    async fn api_error(&self, resp: reqwest::Response) -> Failure {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp.bytes().await.unwrap_or_default();
        let parsed: Option<ApiError> = serde_json::from_slice(&body).ok();
        let (code_name, message, mut details) = match parsed {
            Some(e) => (e.code, e.message, e.details),
            None => {
                let text = String::from_utf8_lossy(&body).trim().to_string();
                let message = if text.is_empty() {
                    format!("the server answered {status}")
                } else {
                    format!("the server answered {status}: {text}")
                };
                (String::new(), message, Vec::new())
            }
        };
        let code = exit_code_for(&code_name, status);
        if status == StatusCode::TOO_MANY_REQUESTS
            && let Some(secs) = retry_after
        {
            return Failure::new(code, format!("too many failed logins, retry in {secs}s"));
        }
        if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            details.push(
                "no API token given: run `ferry login` (user and password), pass --token, set \
                 FERRY_TOKEN, or run `ferry login --token TOKEN` (the admin token is in \
                 DATA_DIR/admin.token)"
                    .into(),
            );
        }
        Failure::new(code, message).with_details(details)
    }

    /// Calls a declared endpoint ([`ferry_core::endpoint`]): its path parameters in order,
    /// query pairs, and its request body (sent for POST and PUT; `()` for none). The answer
    /// is the endpoint's declared response type.
    pub async fn call<E: Endpoint>(
        &self,
        endpoint: E,
        params: &[&str],
        query: &[(&str, String)],
        body: &E::Request,
    ) -> anyhow::Result<E::Response> {
        self.call_within(endpoint, params, query, body, REQUEST_TIMEOUT)
            .await
    }

    /// [`Client::call`] with its own timeout (a long poll: the server's wait plus margin).
    pub async fn call_within<E: Endpoint>(
        &self,
        _: E,
        params: &[&str],
        query: &[(&str, String)],
        body: &E::Request,
        timeout: Duration,
    ) -> anyhow::Result<E::Response> {
        let resp = self
            .send(self.endpoint::<E>(params, query, body)?, Some(timeout))
            .await?;
        self.decode(resp).await
    }

    /// The request of a declared endpoint, its body attached for POST and PUT.
    fn endpoint<E: Endpoint>(
        &self,
        params: &[&str],
        query: &[(&str, String)],
        body: &E::Request,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let spec = E::SPEC;
        let segments = spec.segments(params).map_err(anyhow::Error::msg)?;
        let (method, with_body) = match spec.method {
            ferry_core::endpoint::Method::Get => (Method::GET, false),
            ferry_core::endpoint::Method::Post => (Method::POST, true),
            ferry_core::endpoint::Method::Put => (Method::PUT, true),
            ferry_core::endpoint::Method::Delete => (Method::DELETE, false),
        };
        let req = self.request(method, &segments, query);
        Ok(if with_body {
            req.header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(json_body(body)?)
        } else {
            req
        })
    }

    /// A declared endpoint whose answer is read as it comes (no overall timeout): logs,
    /// server-sent events.
    pub async fn open<E: Endpoint<Request = ()>>(
        &self,
        _: E,
        params: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        self.send(self.endpoint::<E>(params, query, &())?, None)
            .await
    }

    /// A declared endpoint's answer as text (Markdown, JSON lines), whatever its
    /// declared response: e.g. a change record asked for as Markdown.
    pub async fn text<E: Endpoint<Request = ()>>(
        &self,
        _: E,
        params: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<String> {
        let resp = self
            .send(
                self.endpoint::<E>(params, query, &())?,
                Some(REQUEST_TIMEOUT),
            )
            .await?;
        resp.text()
            .await
            .map_err(|e| self.transport_error(&e).into())
    }

    async fn decode<T: DeserializeOwned>(&self, resp: reqwest::Response) -> anyhow::Result<T> {
        let url = resp.url().clone();
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&body).map_err(|e| {
            Failure::new(
                exit::ERROR,
                format!(
                    "unexpected answer from {} ({e}); is {} a Ferry server of the same version?",
                    url.path(),
                    self.base_url()
                ),
            )
            .into()
        })
    }
}

/// `body` as JSON, refused here when the server would refuse it for its size
/// ([`MAX_REQUEST_BYTES`], the limit both sides share).
fn json_body<B: Serialize + ?Sized>(body: &B) -> anyhow::Result<Vec<u8>> {
    let bytes = serde_json::to_vec(body).context("cannot encode the request")?;
    if bytes.len() > MAX_REQUEST_BYTES {
        return Err(Failure::new(
            exit::INVALID,
            format!(
                "the request is too large to send: {} bytes, the server accepts at most {MAX_REQUEST_BYTES}; nothing was sent",
                bytes.len()
            ),
        )
        .into());
    }
    Ok(bytes)
}

/// Exit code of an API error code (falling back to the HTTP status).
pub fn exit_code_for(code: &str, status: StatusCode) -> u8 {
    match code {
        "unauthorized" | "forbidden" | "disabled" | "throttled" => exit::UNAUTHORIZED,
        "not_found" => exit::NOT_FOUND,
        "invalid_manifest" | "bad_request" => exit::INVALID,
        "conflict" => exit::CONFLICT,
        "internal" => exit::ERROR,
        _ => match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                exit::UNAUTHORIZED
            }
            StatusCode::NOT_FOUND => exit::NOT_FOUND,
            StatusCode::CONFLICT => exit::CONFLICT,
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => exit::INVALID,
            _ => exit::ERROR,
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_codes_map_to_exit_codes() {
        assert_eq!(exit_code_for("unauthorized", StatusCode::UNAUTHORIZED), 5);
        assert_eq!(exit_code_for("forbidden", StatusCode::FORBIDDEN), 5);
        assert_eq!(exit_code_for("not_found", StatusCode::NOT_FOUND), 6);
        assert_eq!(
            exit_code_for("invalid_manifest", StatusCode::UNPROCESSABLE_ENTITY),
            2
        );
        assert_eq!(exit_code_for("conflict", StatusCode::CONFLICT), 7);
        assert_eq!(exit_code_for("", StatusCode::BAD_GATEWAY), 1);
        assert_eq!(exit_code_for("", StatusCode::NOT_FOUND), 6);
    }

    /// Every CLI call takes its method and path from the endpoint declarations
    /// (`ferry_core::endpoint`): no command builds an API path by hand.
    #[test]
    fn no_command_writes_an_api_path() {
        let cli = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cli");
        let mut files = vec![cli.with_extension("rs")];
        for entry in std::fs::read_dir(&cli).expect("src/cli") {
            files.push(entry.expect("a directory entry").path());
        }
        let mut found = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("client.rs")) {
            let text = std::fs::read_to_string(file).expect("a source file");
            for (n, line) in text.lines().enumerate() {
                if line.contains("\"v1\"") || line.contains("/v1/") {
                    found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(
            found.is_empty(),
            "call the API through `Client::call(e::Endpoint, …)` (its path comes from the \
             declaration), not by writing the path:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn urls_escape_segments_and_keep_a_base_path() {
        let client = Client::new(&Connection {
            url: "http://127.0.0.1:7070/ferry".into(),
            token: None,
        })
        .unwrap();
        let url = client.url(&["v1", "apps", "a b"], &[("env", "prod".into())]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7070/ferry/v1/apps/a%20b?env=prod"
        );
    }
}
