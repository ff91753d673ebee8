//! `traffic: gateway`: the weights of a Gateway API `HTTPRoute`, as a pure function of the
//! route as it is on the cluster and the canary's share.
//!
//! The route belongs to the user (or their GitOps tool): its parents, hostnames, matches,
//! filters and timeouts are theirs. Ferry only moves traffic between the two Services it
//! manages for a service, `SERVICE-stable` and `SERVICE-canary`, by setting the `weight`
//! of the backendRefs that name them, in basis points (`stable + canary = 10000`, so steps
//! of 0.01 % are exact).
//!
//! In the Gateway API CRDs `spec.rules` and each rule's `backendRefs` are *atomic* lists
//! (`x-kubernetes-list-type: atomic`), so a server-side apply cannot own a single field
//! inside them: an apply that sets a weight sends the whole `spec.rules`. This module
//! therefore builds that body from the live rules with nothing but the weights changed
//! (every other field is copied as read), carries the `resourceVersion` it read (so a
//! concurrent change by someone else is a 409 and Ferry reads again instead of
//! overwriting it), and says [`WeightsPatch::Unchanged`] — no request at all — when the
//! live weights already are the desired ones.

use serde_json::{Value, json};

use crate::names;

/// The total of the two weights: a weight is in basis points.
pub const TOTAL_WEIGHT: u32 = 10_000;
/// The weight Gateway API implementations assume when a backendRef has none.
const DEFAULT_WEIGHT: u64 = 1;

/// What to do to the route.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightsPatch {
    /// The live weights are the desired ones: send nothing.
    Unchanged,
    /// Server-side apply this body (field manager `ferry`, forced: see the module doc).
    Apply(Value),
}

/// Why the weights cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("the canary weight {0} is more than {TOTAL_WEIGHT} basis points")]
    Weight(u32),
    #[error("HTTPRoute {route} has no spec.rules")]
    NoRules { route: String },
    #[error(
        "HTTPRoute {route} has no backendRef to Service {missing} (each rule that serves {service} must list {stable} and {canary})"
    )]
    MissingBackend {
        route: String,
        service: String,
        missing: String,
        stable: String,
        canary: String,
    },
    #[error("the object read is not an HTTPRoute with a name and a namespace")]
    NotARoute,
}

/// The body that gives `service`'s canary `canary` basis points (and its stable Service
/// the rest) in the live route `live`, or [`WeightsPatch::Unchanged`].
pub fn weights_patch(
    live: &Value,
    service: &str,
    canary: u32,
) -> Result<WeightsPatch, GatewayError> {
    if canary > TOTAL_WEIGHT {
        return Err(GatewayError::Weight(canary));
    }
    let metadata = live.get("metadata").ok_or(GatewayError::NotARoute)?;
    let name = metadata
        .get("name")
        .and_then(Value::as_str)
        .ok_or(GatewayError::NotARoute)?;
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .ok_or(GatewayError::NotARoute)?;
    if live.get("kind").and_then(Value::as_str) != Some("HTTPRoute") {
        return Err(GatewayError::NotARoute);
    }
    let api_version = live
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("gateway.networking.k8s.io/v1");
    let Some(rules) = live.pointer("/spec/rules").and_then(Value::as_array) else {
        return Err(GatewayError::NoRules {
            route: name.to_string(),
        });
    };
    let stable = names::gateway_backend(service, "stable");
    let canary_name = names::gateway_backend(service, "canary");
    let desired = [
        (stable.as_str(), u64::from(TOTAL_WEIGHT - canary)),
        (canary_name.as_str(), u64::from(canary)),
    ];
    let mut rules = rules.clone();
    let mut found = [false, false];
    let mut changed = false;
    for rule in &mut rules {
        let Some(refs) = rule.get_mut("backendRefs").and_then(Value::as_array_mut) else {
            continue;
        };
        for backend in refs {
            if !is_service(backend) {
                continue;
            }
            let Some(index) = desired
                .iter()
                .position(|(n, _)| backend.get("name").and_then(Value::as_str) == Some(*n))
            else {
                continue;
            };
            found[index] = true;
            let want = desired[index].1;
            let have = backend
                .get("weight")
                .and_then(Value::as_u64)
                .unwrap_or(DEFAULT_WEIGHT);
            if have != want {
                changed = true;
                backend["weight"] = json!(want);
            }
        }
    }
    if let Some(index) = found.iter().position(|f| !f) {
        return Err(GatewayError::MissingBackend {
            route: name.to_string(),
            service: service.to_string(),
            missing: desired[index].0.to_string(),
            stable: stable.clone(),
            canary: canary_name.clone(),
        });
    }
    if !changed {
        return Ok(WeightsPatch::Unchanged);
    }
    let mut metadata = json!({ "name": name, "namespace": namespace });
    if let Some(version) = live.pointer("/metadata/resourceVersion") {
        metadata["resourceVersion"] = version.clone();
    }
    Ok(WeightsPatch::Apply(json!({
        "apiVersion": api_version,
        "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": { "rules": rules },
    })))
}

/// A backendRef to a core Service (`group` empty or absent, `kind` Service or absent).
fn is_service(backend: &Value) -> bool {
    backend
        .get("group")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
        && backend
            .get("kind")
            .and_then(Value::as_str)
            .is_none_or(|k| k == "Service")
}

/// The canary weight (basis points) the live route gives `service`, when both of its
/// backends are found in one rule — what a restarted server reads back.
pub fn live_canary_weight(live: &Value, service: &str) -> Option<u32> {
    let stable = names::gateway_backend(service, "stable");
    let canary = names::gateway_backend(service, "canary");
    for rule in live.pointer("/spec/rules")?.as_array()? {
        let refs = rule.get("backendRefs")?.as_array()?;
        let weight = |name: &str| {
            refs.iter()
                .find(|b| is_service(b) && b.get("name").and_then(Value::as_str) == Some(name))
                .map(|b| {
                    b.get("weight")
                        .and_then(Value::as_u64)
                        .unwrap_or(DEFAULT_WEIGHT)
                })
        };
        if let (Some(s), Some(c)) = (weight(&stable), weight(&canary))
            && s + c > 0
        {
            let share = (c * u64::from(TOTAL_WEIGHT) + (s + c) / 2) / (s + c);
            return u32::try_from(share).ok();
        }
    }
    None
}

/// How one service's traffic maps onto its two gateway Services: which version each
/// selects, and the canary's weight (basis points).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The version `SERVICE-stable` selects.
    pub stable: String,
    /// The version `SERVICE-canary` selects (the stable one when a single version serves).
    pub canary: String,
    /// `SERVICE-canary`'s weight; `SERVICE-stable` gets the rest of [`TOTAL_WEIGHT`].
    pub canary_weight: u32,
}

/// The [`Split`] of one service from the controller's route table: `shares` are (version,
/// basis points) of the versions with ready replicas, `new` the version being rolled out.
/// A Gateway route holds two sides, so: one version serving → both Services select it and
/// the canary weighs 0; the new version beside others → it is the canary, the heaviest
/// other version the stable one, and the canary's weight is its share of the two. `None`:
/// no version is ready, and the route is left as it is (a weight never points at a side
/// without ready pods).
pub fn split(shares: &[(String, u32)], new: Option<&str>) -> Option<Split> {
    let heaviest = |skip: Option<&str>| {
        shares
            .iter()
            .filter(|(version, _)| Some(version.as_str()) != skip)
            .fold(None::<&(String, u32)>, |best, share| match best {
                Some(best) if best.1 >= share.1 => Some(best),
                _ => Some(share),
            })
    };
    let top = heaviest(None)?;
    let canary = new
        .and_then(|new| shares.iter().find(|(version, _)| version == new))
        .unwrap_or_else(|| heaviest(Some(&top.0)).unwrap_or(top));
    let Some(stable) = heaviest(Some(&canary.0)) else {
        return Some(Split {
            stable: canary.0.clone(),
            canary: canary.0.clone(),
            canary_weight: 0,
        });
    };
    let total = u64::from(stable.1) + u64::from(canary.1);
    let canary_weight = (u64::from(canary.1) * u64::from(TOTAL_WEIGHT) + total / 2)
        .checked_div(total)
        .map_or(0, |share| u32::try_from(share).unwrap_or(TOTAL_WEIGHT));
    Some(Split {
        stable: stable.0.clone(),
        canary: canary.0.clone(),
        canary_weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(v, w)| (v.to_string(), *w)).collect()
    }

    fn sides(split: Option<Split>) -> Option<(String, String, u32)> {
        split.map(|s| (s.stable, s.canary, s.canary_weight))
    }

    #[test]
    fn a_route_table_splits_into_a_stable_and_a_canary_side() {
        let both = |stable: &str, canary: &str, weight| {
            Some((stable.to_string(), canary.to_string(), weight))
        };
        // One version serving: both Services select it, the canary weighs nothing.
        assert_eq!(
            sides(split(&shares(&[("1", 10_000)]), None)),
            both("1", "1", 0)
        );
        assert_eq!(
            sides(split(&shares(&[("1", 10_000)]), Some("2"))),
            both("1", "1", 0),
            "the new version has no ready replica yet"
        );
        // A canary step, whatever the order of the shares.
        assert_eq!(
            sides(split(&shares(&[("2", 1_000), ("1", 9_000)]), Some("2"))),
            both("1", "2", 1_000)
        );
        assert_eq!(
            sides(split(&shares(&[("1", 9_000), ("2", 1_000)]), Some("2"))),
            both("1", "2", 1_000)
        );
        // All traffic on the new version while the old one still has ready replicas.
        assert_eq!(
            sides(split(&shares(&[("2", 10_000), ("1", 0)]), Some("2"))),
            both("1", "2", 10_000)
        );
        // A rolling update splits by replica counts; a third version left over is dropped
        // and the two sides are renormalised.
        assert_eq!(
            sides(split(
                &shares(&[("1", 5_000), ("0", 1_000), ("2", 4_000)]),
                Some("2")
            )),
            both("1", "2", 4_444)
        );
        // No deployment in progress: the heaviest version is the stable one.
        assert_eq!(
            sides(split(&shares(&[("1", 2_500), ("2", 7_500)]), None)),
            both("2", "1", 2_500)
        );
        assert_eq!(split(&[], Some("2")), None, "nothing ready: no change");
    }

    fn route() -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {
                "name": "shop",
                "namespace": "shop-production",
                "resourceVersion": "41",
                "annotations": { "argocd.argoproj.io/tracking-id": "shop:HTTPRoute" },
                "managedFields": [{ "manager": "argocd-controller", "operation": "Apply" }]
            },
            "spec": {
                "parentRefs": [{ "name": "public", "namespace": "gateways" }],
                "hostnames": ["shop.example.com"],
                "rules": [
                    {
                        "matches": [{ "path": { "type": "PathPrefix", "value": "/api" } }],
                        "filters": [{ "type": "RequestHeaderModifier",
                                      "requestHeaderModifier": { "set": [{ "name": "x-env", "value": "prod" }] } }],
                        "timeouts": { "request": "10s" },
                        "backendRefs": [
                            { "group": "", "kind": "Service", "name": "web-stable", "port": 80, "weight": 10000 },
                            { "name": "web-canary", "port": 80, "weight": 0 }
                        ]
                    },
                    {
                        "matches": [{ "path": { "type": "PathPrefix", "value": "/static" } }],
                        "backendRefs": [{ "name": "cdn", "port": 80 }]
                    }
                ]
            },
            "status": { "parents": [] }
        })
    }

    #[test]
    fn only_the_two_weights_change_and_everything_else_is_copied() {
        let live = route();
        let WeightsPatch::Apply(body) = weights_patch(&live, "web", 125).unwrap() else {
            panic!("expected a write");
        };
        let mut expected_rules = live["spec"]["rules"].clone();
        expected_rules[0]["backendRefs"][0]["weight"] = json!(9875);
        expected_rules[0]["backendRefs"][1]["weight"] = json!(125);
        assert_eq!(
            body,
            json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": { "name": "shop", "namespace": "shop-production", "resourceVersion": "41" },
                "spec": { "rules": expected_rules }
            }),
            "no parentRefs, hostnames, annotations, status or managedFields: the GitOps tool keeps owning them"
        );
        assert_eq!(live_canary_weight(&body, "web"), Some(125));
    }

    #[test]
    fn the_same_weights_are_no_write() {
        let live = route();
        assert_eq!(
            weights_patch(&live, "web", 0).unwrap(),
            WeightsPatch::Unchanged
        );
        let WeightsPatch::Apply(moved) = weights_patch(&live, "web", 5000).unwrap() else {
            panic!("expected a write");
        };
        // What the cluster holds after the write, as read back: no second write.
        let mut after = live.clone();
        after["spec"]["rules"] = moved["spec"]["rules"].clone();
        assert_eq!(
            weights_patch(&after, "web", 5000).unwrap(),
            WeightsPatch::Unchanged
        );
    }

    #[test]
    fn a_gitops_reapply_of_the_rest_of_the_route_keeps_ferry_weights() {
        // Ferry moved the canary to 20 %.
        let mut live = route();
        let WeightsPatch::Apply(moved) = weights_patch(&live, "web", 2000).unwrap() else {
            panic!("expected a write");
        };
        live["spec"]["rules"] = moved["spec"]["rules"].clone();
        // The GitOps tool re-applies its route: new hostname, new timeout, a new rule — and
        // (as Argo CD does with RespectIgnoreDifferences on the weights) the live weights.
        live["spec"]["hostnames"] = json!(["shop.example.com", "www.shop.example.com"]);
        live["spec"]["rules"][0]["timeouts"] = json!({ "request": "30s" });
        live["spec"]["rules"]
            .as_array_mut()
            .unwrap()
            .push(json!({ "backendRefs": [{ "name": "admin", "port": 80 }] }));
        assert_eq!(
            weights_patch(&live, "web", 2000).unwrap(),
            WeightsPatch::Unchanged,
            "Ferry's next pass writes nothing"
        );
        // The next step keeps the GitOps tool's changes.
        let WeightsPatch::Apply(next) = weights_patch(&live, "web", 5000).unwrap() else {
            panic!("expected a write");
        };
        assert_eq!(
            next["spec"]["rules"][0]["timeouts"],
            json!({ "request": "30s" })
        );
        assert_eq!(next["spec"]["rules"][2], live["spec"]["rules"][2]);
        assert!(next["spec"].get("hostnames").is_none());
        // A re-apply that put Git's weights back is corrected by one write.
        live["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(10000);
        live["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(0);
        assert!(matches!(
            weights_patch(&live, "web", 2000).unwrap(),
            WeightsPatch::Apply(_)
        ));
    }

    #[test]
    fn a_missing_weight_counts_as_the_default_and_unknown_backends_are_left_alone() {
        let mut live = route();
        live["spec"]["rules"][0]["backendRefs"][1]
            .as_object_mut()
            .unwrap()
            .remove("weight");
        live["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(9999);
        assert_eq!(
            weights_patch(&live, "web", 1).unwrap(),
            WeightsPatch::Unchanged
        );
        let WeightsPatch::Apply(body) = weights_patch(&live, "web", 0).unwrap() else {
            panic!("expected a write");
        };
        assert_eq!(body["spec"]["rules"][1], live["spec"]["rules"][1]);
    }

    #[test]
    fn bad_routes_are_named() {
        let mut live = route();
        live["spec"]["rules"][0]["backendRefs"][1]["name"] = json!("web-preview");
        let error = weights_patch(&live, "web", 10).unwrap_err();
        assert_eq!(
            error.to_string(),
            "HTTPRoute shop has no backendRef to Service web-canary (each rule that serves web must list web-stable and web-canary)"
        );
        // A backendRef of another kind with the same name is not Ferry's Service.
        let mut other = route();
        other["spec"]["rules"][0]["backendRefs"][1]["kind"] = json!("ServiceImport");
        assert!(weights_patch(&other, "web", 10).is_err());
        assert_eq!(
            weights_patch(&route(), "web", 10_001).unwrap_err(),
            GatewayError::Weight(10_001)
        );
        let mut no_rules = route();
        no_rules["spec"].as_object_mut().unwrap().remove("rules");
        assert!(matches!(
            weights_patch(&no_rules, "web", 10),
            Err(GatewayError::NoRules { .. })
        ));
    }
}
