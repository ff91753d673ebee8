//! Warnings: manifests that are valid but probably not what their author meant. Each is
//! located like an error (`file:line:column: path: message (hint: …)`); none stops an apply.

use std::collections::BTreeSet;

use super::tree::{self, Seg, path_string};
use super::{Manifest, ManifestError, RUN_PLACEHOLDERS};
use crate::config::BUILTINS;

/// Most warnings one manifest gets (the rest would say the same).
pub const MAX_WARNINGS: usize = 50;

/// Shells whose `-c` script expands `$NAME` itself (from the replica's environment).
const SHELLS: [&str; 6] = ["sh", "bash", "dash", "zsh", "ksh", "ash"];

/// The warnings of `manifest` (parsed from `text`, valid): `$NAME` without braces in a
/// templated field where `${NAME}` would be expanded — `run` arguments (not a shell's `-c`
/// script, which expands `$NAME` itself), service `env` and `vars` values (in `image`, a `$`
/// is an error: Docker refuses it).
pub fn warnings(text: &str, file_name: &str, manifest: &Manifest) -> Vec<ManifestError> {
    let Ok(tree) = tree::parse(text) else {
        return Vec::new();
    };
    let mut found: Vec<(Vec<Seg>, String)> = Vec::new();
    // Names `${...}` stands for in variable values.
    let mut known: BTreeSet<&str> = BUILTINS.into_iter().collect();
    known.extend(manifest.vars.keys().map(String::as_str));
    for (_, env) in manifest.environments.iter() {
        known.extend(env.vars.keys().map(String::as_str));
    }
    let key =
        |parts: &[&str]| -> Vec<Seg> { parts.iter().map(|p| Seg::Key(p.to_string())).collect() };
    for (name, service) in &manifest.services {
        let script = shell_script_index(&service.run);
        for (i, arg) in service.run.iter().enumerate() {
            if Some(i) == script {
                continue;
            }
            for var in unbraced(arg, &RUN_PLACEHOLDERS) {
                let mut path = key(&["services", name, "run"]);
                path.push(Seg::Index(i));
                found.push((path, var));
            }
        }
        for (var_name, value) in &service.env {
            for var in unbraced(value, &known.iter().copied().collect::<Vec<_>>()) {
                found.push((key(&["services", name, "env", var_name]), var));
            }
        }
    }
    let known: Vec<&str> = known.into_iter().collect();
    for (var_name, value) in &manifest.vars {
        for var in unbraced(value, &known) {
            found.push((key(&["vars", var_name]), var));
        }
    }
    for (env_name, env) in manifest.environments.iter() {
        for (var_name, value) in &env.vars {
            for var in unbraced(value, &known) {
                found.push((key(&["environments", env_name, "vars", var_name]), var));
            }
        }
    }
    let mut warnings: Vec<ManifestError> = found
        .into_iter()
        .take(MAX_WARNINGS)
        .map(|(path, var)| {
            let pos = tree.locate(&path, true);
            ManifestError {
                file: file_name.to_string(),
                line: pos.line,
                column: pos.column,
                path: path_string(&path),
                message: format!(
                    "`${var}` is passed on as it is: did you mean `${{{var}}}`? only `${{...}}` is expanded"
                ),
                hint: Some(format!("write `${{{var}}}`, or `$${{{var}}}` for a literal `${{{var}}}`")),
            }
        })
        .collect();
    // notify: the old webhook list still works, compiled into receivers and routes
    if !manifest.notifications.is_empty() && warnings.len() < MAX_WARNINGS {
        let path = key(&["notifications"]);
        let pos = tree.locate(&path, false);
        warnings.push(ManifestError {
            file: file_name.to_string(),
            line: pos.line,
            column: pos.column,
            path: path_string(&path),
            message: "`notifications:` is deprecated (it still works, unchanged)".to_string(),
            hint: Some(
                "move each webhook to `receivers:` and a `routes:` entry (docs/notifications.md)"
                    .to_string(),
            ),
        });
    }
    warnings.sort_by_key(|w| (w.line, w.column));
    warnings
}

/// The index of the script in `run` when it runs a shell with `-c` (`sh -c 'exec app
/// --port $PORT'`): the shell expands `$PORT` from the environment, as meant.
fn shell_script_index(run: &[String]) -> Option<usize> {
    let program = run.first()?;
    let base = program.rsplit('/').next().unwrap_or(program);
    if !SHELLS.contains(&base) {
        return None;
    }
    run.iter()
        .skip(1)
        .position(|arg| arg.starts_with('-') && !arg.starts_with("--") && arg.contains('c'))
        .map(|option| option + 2)
}

/// The names in `known` that `text` writes as `$NAME` (no braces), each once, in order.
/// `$$` is skipped (a literal dollar in a template).
fn unbraced(text: &str, known: &[&str]) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found: Vec<String> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            i += 2;
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end] == b'_'
                || bytes[end].is_ascii_alphabetic()
                || (end > start && bytes[end].is_ascii_digit()))
        {
            end += 1;
        }
        let name = &text[start..end];
        if !name.is_empty() && known.contains(&name) && !found.iter().any(|f| f == name) {
            found.push(name.to_string());
        }
        i = end.max(i + 1);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warn(yaml: &str) -> Vec<String> {
        let manifest = super::super::parse(yaml, "ferry.yaml").expect("valid manifest");
        warnings(yaml, "ferry.yaml", &manifest)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn unbraced_names_are_found_once_and_dollars_skipped() {
        let known = ["PORT", "VERSION"];
        assert_eq!(unbraced("--port=$PORT:$PORT", &known), vec!["PORT"]);
        assert_eq!(
            unbraced("${PORT} $$PORT $PORTS $OTHER $", &known),
            Vec::<String>::new()
        );
        assert_eq!(unbraced("v$VERSION-$PORT", &known), vec!["VERSION", "PORT"]);
    }

    #[test]
    fn run_image_env_and_vars_warn_with_their_place() {
        let yaml = "app: shop
vars:
  DB_HOST: db.internal
  DB_URL: postgres://$DB_HOST/shop
services:
  api:
    run: [./api, --port, $PORT, '--version=${VERSION}']
    image: shop/api:${VERSION}
    env:
      GREETING: hello from $FERRY_ENV
  worker:
    run: [sh, -c, 'exec ./worker --port $PORT']
    route: /worker
environments:
  prod:
    listen: 127.0.0.1:8080
    vars:
      NAME: $UNKNOWN costs $$5
";
        let warnings = warn(yaml);
        assert_eq!(
            warnings,
            vec![
                "ferry.yaml:4:11: vars.DB_URL: `$DB_HOST` is passed on as it is: did you mean `${DB_HOST}`? only `${...}` is expanded (hint: write `${DB_HOST}`, or `$${DB_HOST}` for a literal `${DB_HOST}`)",
                "ferry.yaml:7:26: services.api.run[2]: `$PORT` is passed on as it is: did you mean `${PORT}`? only `${...}` is expanded (hint: write `${PORT}`, or `$${PORT}` for a literal `${PORT}`)",
                "ferry.yaml:10:17: services.api.env.GREETING: `$FERRY_ENV` is passed on as it is: did you mean `${FERRY_ENV}`? only `${...}` is expanded (hint: write `${FERRY_ENV}`, or `$${FERRY_ENV}` for a literal `${FERRY_ENV}`)",
            ]
        );
    }

    #[test]
    fn a_clean_manifest_has_no_warnings() {
        let yaml = "app: shop
services:
  api:
    run: [./api, --port, '${PORT}']
environments:
  prod:
    listen: 127.0.0.1:8080
";
        assert!(warn(yaml).is_empty());
    }

    #[test]
    fn the_old_notifications_list_is_deprecated_with_a_location() {
        let yaml = "app: shop\nservices:\n  web:\n    run: [\"x\"]\nenvironments:\n  prod: { listen: \"127.0.0.1:8080\" }\nnotifications:\n  - webhook: http://127.0.0.1:9/x\n";
        let found = warn(yaml);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("ferry.yaml:7:1: notifications: `notifications:` is deprecated"),
            "{found:?}"
        );
        assert!(found[0].contains("receivers"), "{found:?}");
    }
}
