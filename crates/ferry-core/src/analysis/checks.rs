//! Pure helpers around the external checks: templating what the controller sends, and
//! turning what came back into an [`Observation`].

use super::spec::{HttpCheck, MetricSpec};
use super::stats::Observation;

/// Placeholders substituted in queries, URLs, headers, bodies and commands.
pub const TEMPLATE_PLACEHOLDERS: [&str; 3] = ["version", "env", "app"];

/// Values of the `{{version}}`, `{{env}}` and `{{app}}` placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateVars<'a> {
    pub app: &'a str,
    pub env: &'a str,
    /// The new version (canary or green).
    pub version: &'a str,
}

impl TemplateVars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        match name {
            "version" => Some(self.version),
            "env" => Some(self.env),
            "app" => Some(self.app),
            _ => None,
        }
    }
}

/// Replaces `{{version}}`, `{{env}}` and `{{app}}` (spaces inside the braces allowed:
/// `{{ version }}`). Anything else, unknown names included, is left as written (validation
/// reports unknown placeholders). One pass: substituted values are not scanned again.
pub fn substitute(template: &str, vars: &TemplateVars<'_>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match vars.get(name) {
                    Some(value) => out.push_str(value),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Names of the `{{…}}` placeholders in a text, trimmed, in order (known or not).
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                out.push(after[..end].trim());
                rest = &after[end + 2..];
            }
            None => break,
        }
    }
    out
}

impl MetricSpec {
    /// This metric with every templated text substituted: the Prometheus query, the HTTP
    /// URL, headers and body, the command's arguments.
    pub fn with_vars(&self, vars: &TemplateVars<'_>) -> MetricSpec {
        let mut m = self.clone();
        if let Some(p) = &mut m.prometheus {
            p.query = substitute(&p.query, vars);
        }
        if let Some(h) = &mut m.http {
            h.url = substitute(&h.url, vars);
            for value in h.headers.values_mut() {
                *value = substitute(value, vars);
            }
            if let Some(body) = &mut h.body {
                *body = substitute(body, vars);
            }
        }
        if let Some(c) = &mut m.command {
            for arg in &mut c.run {
                *arg = substitute(arg, vars);
            }
        }
        m
    }
}

/// At most `max` characters of a text, on one line, with `…` when cut.
fn snippet(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let one_line = one_line.trim();
    if one_line.chars().count() <= max {
        one_line.to_string()
    } else {
        let cut: String = one_line.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// Judges an HTTP answer against an `http` check: status (`expect_status`, else any 2xx),
/// then `body_contains`, then `json_field`. A numeric `json_field` without `equals` gives
/// [`Observation::Value`]. Connection errors and timeouts are the controller's
/// [`Observation::Error`].
pub fn observe_http(check: &HttpCheck, status: u16, body: &str) -> Observation {
    match check.expect_status {
        Some(expected) if status != expected => {
            return Observation::FailedWith(format!("status {status}, expected {expected}"));
        }
        None if !(200..300).contains(&status) => {
            return Observation::FailedWith(format!("status {status}, expected 2xx"));
        }
        _ => {}
    }
    if let Some(text) = &check.body_contains
        && !body.contains(text.as_str())
    {
        return Observation::FailedWith(format!(
            "body does not contain {text:?} (body: {:?})",
            snippet(body, 80)
        ));
    }
    let Some(field) = &check.json_field else {
        return Observation::Passed;
    };
    let json: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return Observation::FailedWith(format!(
                "body is not JSON ({e}), expected a field {}",
                field.path
            ));
        }
    };
    let Some(found) = json_path(&json, &field.path) else {
        return Observation::FailedWith(format!("no field {} in the JSON body", field.path));
    };
    match &field.equals {
        Some(expected) if found == expected => Observation::Passed,
        Some(expected) => Observation::FailedWith(format!(
            "{} = {}, expected {expected}",
            field.path,
            snippet(&found.to_string(), 80)
        )),
        None => match found.as_f64() {
            Some(v) => Observation::Value(v),
            None => Observation::FailedWith(format!(
                "{} = {}, expected a number",
                field.path,
                snippet(&found.to_string(), 80)
            )),
        },
    }
}

/// The value at a dotted path (`a.b.0.c`; numeric segments index arrays).
pub fn json_path<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    let mut cur = value;
    for seg in path.split('.').filter(|s| !s.is_empty()) {
        cur = match cur {
            serde_json::Value::Object(map) => map.get(seg)?,
            serde_json::Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Judges a finished command: exit code 0 passes; another code fails, quoting the last
/// non-empty line of its output; `None` (killed by a signal) fails. Timeouts and commands
/// that could not start are the controller's [`Observation::Error`].
pub fn observe_command(exit_code: Option<i32>, output: &str) -> Observation {
    let last = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| snippet(l, 120));
    let why = match exit_code {
        Some(0) => return Observation::Passed,
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".to_string(),
    };
    match last {
        Some(line) => Observation::FailedWith(format!("{why}: {line}")),
        None => Observation::FailedWith(why),
    }
}

/// Reads the body of Prometheus's `GET /api/v1/query`: a scalar, or a vector with exactly
/// one series, gives [`Observation::Value`] (possibly NaN, which the judge treats as no
/// data); an error answer, no series, several series or a range vector give
/// [`Observation::Error`].
pub fn observe_prometheus(body: &str) -> Observation {
    let json: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return Observation::Error(format!(
                "prometheus answer is not JSON ({e}): {:?}",
                snippet(body, 80)
            ));
        }
    };
    if json.get("status").and_then(|s| s.as_str()) != Some("success") {
        let kind = json
            .get("errorType")
            .and_then(|s| s.as_str())
            .unwrap_or("error");
        let msg = json
            .get("error")
            .and_then(|s| s.as_str())
            .unwrap_or("no error message");
        return Observation::Error(format!("prometheus {kind}: {}", snippet(msg, 160)));
    }
    let data = json.get("data");
    let kind = data
        .and_then(|d| d.get("resultType"))
        .and_then(|t| t.as_str())
        .unwrap_or("");
    let result = data.and_then(|d| d.get("result"));
    let sample = match kind {
        "scalar" => result,
        "vector" => {
            let series = result.and_then(|r| r.as_array()).map_or(&[][..], |v| v);
            match series.len() {
                0 => {
                    return Observation::Error(
                        "query returned no series (no data yet, or a label that does not \
                         match the version)"
                            .to_string(),
                    );
                }
                1 => series[0].get("value"),
                n => {
                    return Observation::Error(format!(
                        "query returned {n} series, expected one — aggregate it, e.g. sum(…)"
                    ));
                }
            }
        }
        other => {
            return Observation::Error(format!(
                "query returned a {} result, expected a scalar or a one-series vector \
                 (use an instant query)",
                if other.is_empty() { "missing" } else { other }
            ));
        }
    };
    let text = sample
        .and_then(|s| s.as_array())
        .and_then(|pair| pair.get(1))
        .and_then(|v| v.as_str());
    match text.map(|t| t.parse::<f64>()) {
        Some(Ok(v)) => Observation::Value(v),
        _ => Observation::Error("prometheus sample has no readable value".to_string()),
    }
}
