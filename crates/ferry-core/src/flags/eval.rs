//! The evaluation engine: the same answers as Unleash's SDKs, verified by the Unleash
//! client specification (`tests/flags_spec.rs` runs all of its cases). Pure: the clock
//! (`now`) and the randomness of `random` stickiness are passed in.

use std::collections::HashMap;
use std::net::IpAddr;

use jiff::Timestamp;
use serde::Serialize;

use super::model::{
    ClientFeatures, Constraint, Context, Feature, Operator, Payload, Strategy, Variant,
};

/// The seed Unleash hashes variant stickiness with (strategies use 0).
const VARIANT_SEED: u32 = 86_028_157;

/// What an evaluation may not compute by itself.
pub struct EvalEnv<'r> {
    pub now: Timestamp,
    /// Any u32, uniformly distributed: the source of `random` stickiness.
    pub random: &'r mut dyn FnMut() -> u32,
}

/// Why a flag resolved as it did (the OpenFeature reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    /// The flag is switched off (or a dependency is not satisfied).
    Disabled,
    /// On for everyone: no strategy, or a `default` strategy without constraints.
    Static,
    /// A strategy with a rule matched this context.
    TargetingMatch,
    /// The variant was chosen by hashing the context (a weighted split).
    Split,
    /// On, but no strategy matched this context.
    Default,
}

/// The outcome for one flag and one context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub enabled: bool,
    pub variant: Option<VariantHit>,
    pub reason: Reason,
}

/// The variant an enabled flag gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantHit {
    pub name: String,
    pub payload: Option<Payload>,
}

/// A flag state indexed for evaluation.
pub struct Engine {
    state: ClientFeatures,
    by_name: HashMap<String, usize>,
    segments: HashMap<i64, usize>,
    regexes: HashMap<String, Option<regex::Regex>>,
}

/// Patterns longer than this never match (a constraint is bounded before it is compiled).
const MAX_REGEX_LEN: usize = 1024;

impl Engine {
    pub fn new(state: ClientFeatures) -> Self {
        let by_name = state
            .features
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let segments = state
            .segments
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        let mut regexes = HashMap::new();
        let all_constraints = state
            .features
            .iter()
            .flat_map(|f| f.strategies.iter().flat_map(|s| s.constraints.iter()))
            .chain(state.segments.iter().flat_map(|s| s.constraints.iter()));
        for c in all_constraints {
            if c.operator == Operator::Regex {
                let pattern = c.value.clone().unwrap_or_default();
                let key = regex_key(&pattern, c.case_insensitive);
                regexes
                    .entry(key)
                    .or_insert_with(|| compile_regex(&pattern, c.case_insensitive));
            }
        }
        Engine {
            state,
            by_name,
            segments,
            regexes,
        }
    }

    pub fn state(&self) -> &ClientFeatures {
        &self.state
    }

    pub fn feature(&self, name: &str) -> Option<&Feature> {
        self.by_name.get(name).map(|&i| &self.state.features[i])
    }

    /// `isEnabled`: false for an unknown flag.
    pub fn is_enabled(&self, name: &str, ctx: &Context, env: &mut EvalEnv) -> bool {
        self.resolve(name, ctx, env).is_some_and(|r| r.enabled)
    }

    /// Full resolution; `None` when no flag has this name.
    pub fn resolve(&self, name: &str, ctx: &Context, env: &mut EvalEnv) -> Option<Resolution> {
        let feature = self.feature(name)?;
        Some(self.resolve_feature(feature, ctx, env, true))
    }

    fn resolve_feature(
        &self,
        feature: &Feature,
        ctx: &Context,
        env: &mut EvalEnv,
        follow_dependencies: bool,
    ) -> Resolution {
        let off = Resolution {
            enabled: false,
            variant: None,
            reason: Reason::Disabled,
        };
        if !feature.enabled {
            return off;
        }
        if !feature.dependencies.is_empty() {
            // Only one level: a parent that has parents of its own never satisfies.
            if !follow_dependencies || !self.dependencies_met(feature, ctx, env) {
                return off;
            }
        }
        let mut hit: Option<&Strategy> = None;
        if !feature.strategies.is_empty() {
            hit = feature
                .strategies
                .iter()
                .find(|s| self.strategy_on(feature, s, ctx, env));
            if hit.is_none() {
                return Resolution {
                    enabled: false,
                    variant: None,
                    reason: Reason::Default,
                };
            }
        }
        let reason = match hit {
            None => Reason::Static,
            Some(s) if s.name == "default" && s.constraints.is_empty() && s.segments.is_empty() => {
                Reason::Static
            }
            Some(_) => Reason::TargetingMatch,
        };
        // Strategy variants win over the flag's own.
        let (variants, group, stickiness) = match hit {
            Some(s) if !s.variants.is_empty() => (
                &s.variants,
                s.param("groupId").unwrap_or_else(|| feature.name.clone()),
                s.param("stickiness"),
            ),
            _ => (&feature.variants, feature.name.clone(), None),
        };
        match pick_variant(variants, &group, stickiness.as_deref(), ctx, env) {
            Some((v, by_override)) => Resolution {
                enabled: true,
                variant: Some(VariantHit {
                    name: v.name.clone(),
                    payload: v.payload.clone(),
                }),
                reason: if by_override || variants.len() == 1 {
                    reason
                } else {
                    Reason::Split
                },
            },
            None => Resolution {
                enabled: true,
                variant: None,
                reason,
            },
        }
    }

    fn dependencies_met(&self, feature: &Feature, ctx: &Context, env: &mut EvalEnv) -> bool {
        feature.dependencies.iter().all(|dep| {
            let Some(parent) = self.feature(&dep.feature) else {
                return false;
            };
            if !parent.dependencies.is_empty() {
                return false;
            }
            let r = self.resolve_feature(parent, ctx, env, false);
            if dep.enabled == Some(false) {
                return !r.enabled;
            }
            if !r.enabled {
                return false;
            }
            match &dep.variants {
                Some(names) if !names.is_empty() => {
                    let name = r.variant.as_ref().map_or("disabled", |v| v.name.as_str());
                    names.iter().any(|n| n == name)
                }
                _ => true,
            }
        })
    }

    fn strategy_on(
        &self,
        feature: &Feature,
        s: &Strategy,
        ctx: &Context,
        env: &mut EvalEnv,
    ) -> bool {
        for id in &s.segments {
            let Some(&i) = self.segments.get(id) else {
                return false;
            };
            if !self.state.segments[i]
                .constraints
                .iter()
                .all(|c| self.constraint_holds(c, ctx, env))
            {
                return false;
            }
        }
        if !s
            .constraints
            .iter()
            .all(|c| self.constraint_holds(c, ctx, env))
        {
            return false;
        }
        strategy_rule(feature, s, ctx, env)
    }

    fn constraint_holds(&self, c: &Constraint, ctx: &Context, env: &mut EvalEnv) -> bool {
        let value = ctx.field(&c.context_name);
        let result = match c.operator {
            Operator::In => value.is_some_and(|v| c.values.iter().any(|x| x == v)),
            Operator::NotIn => !value.is_some_and(|v| c.values.iter().any(|x| x == v)),
            Operator::StrContains | Operator::StrStartsWith | Operator::StrEndsWith => {
                value.is_some_and(|v| string_op(c, v))
            }
            Operator::NumEq
            | Operator::NumGt
            | Operator::NumGte
            | Operator::NumLt
            | Operator::NumLte => value.is_some_and(|v| number_op(c, v)),
            Operator::DateAfter | Operator::DateBefore => {
                let at = match value {
                    Some(v) => v.parse::<Timestamp>().ok(),
                    None => Some(env.now),
                };
                at.is_some_and(|at| date_op(c, at))
            }
            Operator::SemverEq
            | Operator::SemverGt
            | Operator::SemverGte
            | Operator::SemverLt
            | Operator::SemverLte => value.is_some_and(|v| semver_op(c, v)),
            Operator::Regex => value.is_some_and(|v| {
                let pattern = c.value.as_deref().unwrap_or_default();
                self.regexes
                    .get(&regex_key(pattern, c.case_insensitive))
                    .and_then(Option::as_ref)
                    .is_some_and(|re| re.is_match(v))
            }),
            Operator::InCidr => value
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
                .is_some_and(|ip| c.values.iter().any(|range| ip_in(range, ip))),
            Operator::Unknown => return false,
        };
        result != c.inverted
    }
}

fn regex_key(pattern: &str, case_insensitive: bool) -> String {
    format!("{}{pattern}", if case_insensitive { 'i' } else { 's' })
}

/// A pattern that does not compile (or is too long) never matches.
fn compile_regex(pattern: &str, case_insensitive: bool) -> Option<regex::Regex> {
    if pattern.len() > MAX_REGEX_LEN {
        return None;
    }
    regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(1 << 20)
        .build()
        .ok()
}

fn string_op(c: &Constraint, v: &str) -> bool {
    let fold = |s: &str| {
        if c.case_insensitive {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let v = fold(v);
    c.values.iter().map(|x| fold(x)).any(|x| match c.operator {
        Operator::StrContains => v.contains(&x),
        Operator::StrStartsWith => v.starts_with(&x),
        _ => v.ends_with(&x),
    })
}

fn number_op(c: &Constraint, v: &str) -> bool {
    let (Ok(v), Some(Ok(x))) = (
        v.trim().parse::<f64>(),
        c.value.as_deref().map(|x| x.trim().parse::<f64>()),
    ) else {
        return false;
    };
    match c.operator {
        Operator::NumEq => v == x,
        Operator::NumGt => v > x,
        Operator::NumGte => v >= x,
        Operator::NumLt => v < x,
        _ => v <= x,
    }
}

fn date_op(c: &Constraint, at: Timestamp) -> bool {
    let Some(Ok(x)) = c.value.as_deref().map(str::parse::<Timestamp>) else {
        return false;
    };
    match c.operator {
        Operator::DateAfter => at > x,
        _ => at < x,
    }
}

fn semver_op(c: &Constraint, v: &str) -> bool {
    let (Ok(v), Some(Ok(x))) = (
        semver::Version::parse(v),
        c.value.as_deref().map(semver::Version::parse),
    ) else {
        return false;
    };
    match c.operator {
        Operator::SemverEq => v == x,
        Operator::SemverGt => v > x,
        Operator::SemverGte => v >= x,
        Operator::SemverLt => v < x,
        _ => v <= x,
    }
}

/// An address or a CIDR range (`10.0.0.0/8`, `2001:db8::/32`); anything else never matches.
fn ip_in(range: &str, ip: IpAddr) -> bool {
    let range = range.trim();
    if range.contains('/') {
        range
            .parse::<ipnet::IpNet>()
            .is_ok_and(|net| net.contains(&ip))
    } else {
        range.parse::<IpAddr>().is_ok_and(|a| a == ip)
    }
}

/// Unleash's normalized hash: murmur3 (x86, 32 bit) of `group:id`, into `1..=modulus`.
pub fn normalized_hash(group: &str, id: &str, modulus: u32, seed: u32) -> u32 {
    let key = format!("{group}:{id}");
    let hash = murmur3::murmur3_32(&mut key.as_bytes(), seed).unwrap_or(0);
    hash % modulus.max(1) + 1
}

fn percentage(s: &Strategy, key: &str) -> Option<u32> {
    let raw = s.param(key)?;
    let value = raw.trim().parse::<f64>().ok()?;
    Some(value.clamp(0.0, 100.0) as u32)
}

fn random_percent(env: &mut EvalEnv) -> u32 {
    (env.random)() % 100 + 1
}

/// A strategy's own rule (its constraints already hold). Unknown strategies are off.
fn strategy_rule(feature: &Feature, s: &Strategy, ctx: &Context, env: &mut EvalEnv) -> bool {
    let group = |s: &Strategy| s.param("groupId").unwrap_or_default();
    let within = |id: Option<&str>, group: &str, pct: Option<u32>| match (id, pct) {
        (Some(id), Some(pct)) => pct > 0 && normalized_hash(group, id, 100, 0) <= pct,
        _ => false,
    };
    match s.name.as_str() {
        "default" => true,
        "userWithId" => match (ctx.user_id.as_deref(), s.param("userIds")) {
            (Some(id), Some(list)) => list.split(',').any(|x| x.trim() == id),
            _ => false,
        },
        "gradualRolloutUserId" => within(
            ctx.user_id.as_deref(),
            &group(s),
            percentage(s, "percentage"),
        ),
        "gradualRolloutSessionId" => within(
            ctx.session_id.as_deref(),
            &group(s),
            percentage(s, "percentage"),
        ),
        "gradualRolloutRandom" => {
            percentage(s, "percentage").is_some_and(|p| p > 0 && random_percent(env) <= p)
        }
        "flexibleRollout" => {
            let Some(pct) = percentage(s, "rollout") else {
                return false;
            };
            let group = s.param("groupId").unwrap_or_else(|| feature.name.clone());
            let stickiness = s.param("stickiness").unwrap_or_else(|| "default".into());
            match stickiness.as_str() {
                "default" => match ctx.user_id.as_deref().or(ctx.session_id.as_deref()) {
                    Some(id) => within(Some(id), &group, Some(pct)),
                    None => pct > 0 && random_percent(env) <= pct,
                },
                "random" => pct > 0 && random_percent(env) <= pct,
                field => within(ctx.field(field), &group, Some(pct)),
            }
        }
        "remoteAddress" => match (ctx.remote_address.as_deref(), s.param("IPs")) {
            (Some(addr), Some(list)) => list.split(',').any(|range| {
                let range = range.trim();
                range == addr || addr.parse::<IpAddr>().is_ok_and(|ip| ip_in(range, ip))
            }),
            _ => false,
        },
        _ => false,
    }
}

/// The variant for this context: an override first, then the weighted hash of the
/// stickiness value. The bool says whether an override chose it.
fn pick_variant<'v>(
    variants: &'v [Variant],
    group: &str,
    strategy_stickiness: Option<&str>,
    ctx: &Context,
    env: &mut EvalEnv,
) -> Option<(&'v Variant, bool)> {
    let total: u32 = variants.iter().map(|v| v.weight).sum();
    if total == 0 {
        return None;
    }
    for v in variants {
        let overridden = v.overrides.iter().any(|o| {
            ctx.field(&o.context_name)
                .is_some_and(|x| o.values.iter().any(|y| y == x))
        });
        if overridden {
            return Some((v, true));
        }
    }
    let stickiness = variants[0]
        .stickiness
        .as_deref()
        .or(strategy_stickiness)
        .unwrap_or("default");
    let seed_value = match stickiness {
        "default" => ctx
            .user_id
            .as_deref()
            .or(ctx.session_id.as_deref())
            .or(ctx.remote_address.as_deref())
            .map(str::to_string),
        "random" => None,
        field => ctx.field(field).map(str::to_string),
    };
    let target = match seed_value {
        Some(id) => normalized_hash(group, &id, total, VARIANT_SEED),
        None => (env.random)() % total + 1,
    };
    let mut counter = 0;
    for v in variants {
        if v.weight == 0 {
            continue;
        }
        counter += v.weight;
        if counter >= target {
            return Some((v, false));
        }
    }
    None
}
