//! Kubernetes names and label values derived from Ferry's names, deterministically.
//!
//! Ferry's app, service and environment names are already DNS labels; a version is not
//! (`1.2.0+build.7`, `2026-01-01_RC`): it is turned into a label-safe slug, and whenever the
//! slug had to change or cut it, a short hash of the original keeps two versions apart.

use sha2::{Digest, Sha256};

/// Longest DNS label (namespace, Service, Job and pod-template names; label values).
pub const MAX_LABEL: usize = 63;

/// The first `len` hex digits of SHA-256 over `parts` (each followed by a NUL).
pub fn short_hash(parts: &[&str], len: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let mut hex = String::with_capacity(64);
    for byte in hasher.finalize() {
        hex.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        hex.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    hex.truncate(len);
    hex
}

/// A DNS label made of `text`: lowercase, every run of other characters turned into one `-`,
/// no `-` at either end. When that changed anything but case and punctuation-free text, or
/// the result is longer than `max`, it is cut and suffixed with `-` + 8 hex digits of
/// `text`'s hash, so different inputs never meet on one name.
pub fn label(text: &str, max: usize) -> String {
    let mut slug = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-').to_string();
    let exact = slug == text && slug.len() <= max;
    if exact {
        return slug;
    }
    let hash = short_hash(&[text], 8);
    let keep = max.saturating_sub(hash.len() + 1);
    let head = slug[..slug.len().min(keep)].trim_end_matches('-');
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// A label value for `text` (label values allow `.`, `_` and upper case): `text` itself
/// when it is one, else [`label`] of it.
pub fn label_value(text: &str) -> String {
    let valid = text.len() <= MAX_LABEL
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && text
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && text
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        text.to_string()
    } else {
        label(text, MAX_LABEL)
    }
}

/// The Deployment (and its Service) of one version of a service: `SERVICE-VERSION`, a DNS
/// label (pods are named after it; kept at most 47 so the pod suffixes fit in 63).
pub fn workload(service: &str, version: &str) -> String {
    label(&format!("{service}-{version}"), 47)
}

/// The Secret holding the environment's Ferry secrets.
pub fn secret(app: &str, env: &str) -> String {
    label(&format!("{app}-{env}-ferry-secrets"), MAX_LABEL)
}

/// The Job of one hook attempt: derived from the deployment, the phase, the hook and the
/// attempt only, so a retried or restarted server finds the same Job instead of starting
/// a second one.
pub fn hook_job(deployment: i64, phase: &str, hook: &str, attempt: u32) -> String {
    let readable = format!("hook-{deployment}-{hook}-{attempt}");
    let hash = short_hash(
        &[&deployment.to_string(), phase, hook, &attempt.to_string()],
        8,
    );
    // The Job controller puts the name in the `job-name` label: at most 63.
    let head = label(&readable, MAX_LABEL - 9);
    format!("{head}-{hash}")
}

/// The Job of a one-off task named `task` by the server (e.g. `hook-migrate-17`, one name
/// per attempt): the same task gets the same Job, so it never runs twice.
pub fn task_job(task: &str) -> String {
    label(task, MAX_LABEL)
}

/// The Service that `traffic: gateway` routes to as `stable` or `canary`.
pub fn gateway_backend(service: &str, role: &str) -> String {
    format!("{service}-{role}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_version_keeps_its_name() {
        assert_eq!(workload("web", "1-2-0"), "web-1-2-0");
        assert_eq!(label("shop-production", 63), "shop-production");
    }

    #[test]
    fn versions_that_collapse_to_one_slug_stay_apart() {
        let a = workload("web", "1.2.0");
        let b = workload("web", "1-2.0");
        let c = workload("web", "1.2.0+build.7");
        assert_ne!(a, b);
        assert_ne!(a, c);
        for name in [&a, &b, &c] {
            assert!(name.len() <= 47, "{name}");
            assert!(name.starts_with("web-1-2-0"), "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "{name}"
            );
        }
    }

    #[test]
    fn long_names_are_cut_to_a_label() {
        let long = "v".repeat(200);
        let name = workload("service-with-a-rather-long-name", &long);
        assert!(name.len() <= 47, "{name}");
        assert!(!name.ends_with('-'));
        assert_eq!(label_value("1.2.0"), "1.2.0");
        let value = label_value("1.2.0+build");
        assert!(value.len() <= 63 && !value.contains('+'), "{value}");
    }

    #[test]
    fn a_hook_job_name_is_stable_and_distinct_per_attempt() {
        let first = hook_job(42, "pre_deploy", "migrate", 1);
        assert_eq!(first, hook_job(42, "pre_deploy", "migrate", 1));
        assert_ne!(first, hook_job(42, "pre_deploy", "migrate", 2));
        assert_ne!(first, hook_job(42, "post_deploy", "migrate", 1));
        assert_ne!(first, hook_job(43, "pre_deploy", "migrate", 1));
        assert!(first.starts_with("hook-42-migrate-1-"), "{first}");
        let long = hook_job(i64::MAX, "pre_deploy", &"m".repeat(63), u32::MAX);
        assert!(long.len() <= 63, "{long}");
    }
}
