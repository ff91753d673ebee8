//! Turning serde-saphyr's errors into [`ManifestError`]s: position, field path, and a hint
//! (closest known field, allowed values, or an example of the expected type).

use serde_saphyr::{DefaultMessageFormatter, Error as YamlError, MessageFormatter};

use super::ManifestError;
use super::tree::{Node, Pos, Seg, path_string};

/// Converts a syntax or type error. `tree` (when the YAML itself parsed) names the field.
pub(super) fn from_yaml(err: &YamlError, tree: Option<&Node>, file: &str) -> ManifestError {
    let mut inner = err;
    while let YamlError::AliasError { error, .. } | YamlError::WithSnippet { error, .. } = inner {
        inner = error;
    }
    let mut pos = err.location().map(Pos::from_location).unwrap_or_default();
    let (path, found) = match tree {
        Some(tree) if pos.is_known() => {
            let path = tree.path_at(pos);
            // A wrong value reported at its key: point at the value itself.
            let points_at_key = !matches!(
                inner,
                YamlError::SerdeUnknownField { .. } | YamlError::DuplicateMappingKey { .. }
            );
            if points_at_key && !path.is_empty() && tree.locate(&path, false) == pos {
                pos = tree.locate(&path, true);
            }
            let found = tree.get(&path).map(Node::describe);
            (path, found)
        }
        _ => (Vec::new(), None),
    };
    let (message, hint) = describe(inner, &path, found, tree.is_none());
    ManifestError {
        file: file.to_string(),
        line: pos.line,
        column: pos.column,
        path: path_string(&path),
        message,
        hint,
    }
}

/// One error per key written twice in the same mapping.
pub(super) fn duplicates(tree: &Node, file: &str) -> Vec<ManifestError> {
    tree.duplicates()
        .into_iter()
        .map(|(path, at, first)| {
            let key = match path.last() {
                Some(Seg::Key(k)) => k.as_str(),
                _ => "",
            };
            let parent = match path.as_slice() {
                [Seg::Key(p), _] if p == "environments" => "environment",
                [Seg::Key(p), _] if p == "services" => "service",
                _ => "key",
            };
            ManifestError {
                file: file.to_string(),
                line: at.line,
                column: at.column,
                path: path_string(&path),
                message: format!(
                    "duplicate {parent} `{key}`, first written at line {}",
                    first.line
                ),
                hint: Some(
                    "a key may appear only once in a mapping; merge the two or rename one".into(),
                ),
            }
        })
        .collect()
}

fn write_like(path: &[Seg]) -> Option<String> {
    example(path).map(|e| format!("write it like `{e}`"))
}

/// Plain words for the type names serde-saphyr reports.
fn type_words(ty: &str) -> &str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "f32" | "f64" => "a number",
        "bool" => "true or false",
        "sequence start" => "a list",
        "mapping start" => "a map",
        "string scalar" | "string" => "a string",
        other => other,
    }
}

fn describe(
    err: &YamlError,
    path: &[Seg],
    found: Option<String>,
    syntax: bool,
) -> (String, Option<String>) {
    let found_suffix = found.map(|f| format!(", found {f}")).unwrap_or_default();
    match err {
        YamlError::SerdeUnknownField {
            field, expected, ..
        } => {
            let message = format!("unknown field `{field}`");
            if expected.is_empty() {
                return (
                    message,
                    Some("this takes no settings; write it as `{}` or leave it empty".into()),
                );
            }
            let allowed = expected
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let hint = match closest(field, expected) {
                Some(best) => format!("did you mean `{best}`? allowed fields: {allowed}"),
                None => format!("allowed fields: {allowed}"),
            };
            (message, Some(hint))
        }
        YamlError::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let what = if last_key(path) == Some("strategy") || parent_key(path) == Some("strategy")
            {
                "strategy"
            } else {
                "value"
            };
            let message = format!("unknown {what} `{variant}`");
            let allowed = expected
                .iter()
                .map(|f| format!("`{f}`"))
                .collect::<Vec<_>>()
                .join(", ");
            let hint = match closest(variant, expected) {
                Some(best) => format!("did you mean `{best}`? expected one of: {allowed}"),
                None => format!("expected one of: {allowed}"),
            };
            (message, Some(hint))
        }
        YamlError::SerdeInvalidType {
            unexpected,
            expected,
            ..
        }
        | YamlError::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => (
            format!("expected {expected}, found {unexpected}"),
            write_like(path),
        ),
        YamlError::InvalidScalar { ty, .. } => (
            format!("expected {}{found_suffix}", type_words(ty)),
            write_like(path),
        ),
        YamlError::Unexpected { expected, .. } if path.is_empty() && !syntax => (
            format!("expected {}{found_suffix}", type_words(expected)),
            Some("a manifest is a map with `app`, `services` and `environments`".into()),
        ),
        YamlError::Unexpected { expected, .. } if !syntax => (
            format!("expected {}{found_suffix}", type_words(expected)),
            write_like(path),
        ),
        YamlError::DuplicateMappingKey { key, .. } => (
            match key {
                Some(key) => format!("duplicate key `{key}`"),
                None => "duplicate key".to_string(),
            },
            Some("a key may appear only once in a mapping; merge or rename one of them".into()),
        ),
        YamlError::MultipleDocuments { .. } => (
            "a manifest is a single YAML document, but a second one starts here".to_string(),
            Some("remove the `---` line and what follows, or put each app in its own file".into()),
        ),
        YamlError::Message { msg, .. } => {
            // Messages from our own types (durations, percentages) already carry an example.
            let hint = if msg.contains("write it like") || msg.contains(" like ") {
                None
            } else {
                write_like(path)
            };
            (msg.clone(), hint)
        }
        other => {
            let text: String = DefaultMessageFormatter
                .format_message(other)
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if syntax {
                (
                    format!("YAML syntax error: {text}"),
                    Some("check indentation (spaces, not tabs), brackets and quotes on this line and the one before".into()),
                )
            } else {
                (text, write_like(path))
            }
        }
    }
}

fn last_key(path: &[Seg]) -> Option<&str> {
    path.iter().rev().find_map(|s| match s {
        Seg::Key(k) => Some(k.as_str()),
        Seg::Index(_) => None,
    })
}

fn parent_key(path: &[Seg]) -> Option<&str> {
    match path {
        [.., Seg::Key(parent), Seg::Key(_)] => Some(parent),
        _ => None,
    }
}

/// An example of a well-written value for the field at `path`.
pub(super) fn example(path: &[Seg]) -> Option<&'static str> {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    let example = match keys.as_slice() {
        [] => "app: shop",
        ["app"] => "app: shop",
        ["services"] => "services: { api: { run: [\"./api\", \"--port\", \"${PORT}\"] } }",
        ["services", _] => "api: { run: [\"./api\", \"--port\", \"${PORT}\"], replicas: 2 }",
        ["environments"] => "environments: { staging: { listen: 127.0.0.1:8080 } }",
        ["environments", _] => "staging: { listen: 127.0.0.1:8080 }",
        [.., "run"] => "run: [\"./server\", \"--port\", \"${PORT}\"]",
        [.., "cwd"] => "cwd: ./api",
        [.., "env"] => "env: { LOG_LEVEL: info }",
        [.., "vars"] => "vars: { LOG_LEVEL: info }",
        [.., "replicas"] => "replicas: 3",
        [.., "route"] => "route: /api",
        [.., "health"] => "health: { path: /health, interval: 1s, timeout: 500ms }",
        [.., "path"] => "path: /health",
        [.., "interval"] => "interval: 1s",
        [.., "timeout"] => "timeout: 500ms",
        [.., "stop_timeout"] => "stop_timeout: 10s",
        [.., "drain_timeout"] => "drain_timeout: 60s",
        [.., "upstream_timeout"] => "upstream_timeout: 60s",
        [.., "access_log"] => "access_log: /var/log/ferry/shop-production.access.log",
        [.., "start_timeout"] => "start_timeout: 30s",
        [.., "healthy_threshold"] => "healthy_threshold: 2",
        [.., "unhealthy_threshold"] => "unhealthy_threshold: 3",
        [.., "listen"] => "listen: 127.0.0.1:8080",
        [.., "strategy"] | [.., "strategy", _] => {
            "strategy: recreate` or `strategy: { rolling: { max_surge: 1, max_unavailable: 0 } }"
        }
        [.., "max_surge"] => "max_surge: 1` or `max_surge: \"25%\"",
        [.., "max_unavailable"] => "max_unavailable: 0` or `max_unavailable: \"25%\"",
        [.., "rolling"] => "rolling: { max_surge: 1, max_unavailable: 0 }",
        ["services", _, "env", _] | ["environments", _, "vars", _] => "LOG_LEVEL: info",
        _ => return None,
    };
    Some(example)
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a typo.
///
/// Words and candidates longer than [`MAX_SUGGESTED`] are never compared (the distance costs
/// the product of the lengths), nor candidates whose length alone puts them too far.
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    if word.len() > MAX_SUGGESTED {
        return None;
    }
    let word_lower = word.to_ascii_lowercase();
    let chars = word.chars().count();
    candidates
        .iter()
        .filter(|c| {
            // The distance is at least the difference in length.
            c.len() <= MAX_SUGGESTED
                && (c.chars().count().abs_diff(chars) <= (c.len().max(word.len()) / 3).max(1)
                    || c.starts_with(&word_lower))
        })
        .map(|c| (edit_distance(&word_lower, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1) || c.starts_with(&word_lower))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Longest word [`closest`] looks for a typo in.
const MAX_SUGGESTED: usize = 128;

/// Levenshtein distance over chars.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("replica", "replicas"), 1);
        assert_eq!(edit_distance("intervall", "interval"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn closest_finds_typos_only() {
        let fields = [
            "run",
            "cwd",
            "env",
            "replicas",
            "route",
            "health",
            "stop_timeout",
        ];
        assert_eq!(closest("replica", &fields), Some("replicas"));
        assert_eq!(closest("helth", &fields), Some("health"));
        assert_eq!(closest("Replicas", &fields), Some("replicas"));
        assert_eq!(closest("image", &fields), None);
    }
}
