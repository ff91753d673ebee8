//! RBAC: the role × permission × scope table, reasons, unknown roles, separation of
//! duties and the login throttle.

use std::collections::BTreeSet;

use ferry_core::rbac::{
    Binding, Permission, Role, Scope, Target, Throttle, ThrottlePolicy, builtin_role,
    builtin_roles, decide, is_builtin_role_name, may_approve, permissions_on, validate_role_name,
};

use Permission::*;

/// The built-in roles as the product defines them, written out independently of
/// `builtin_roles()`.
fn expected_role_permissions(role: &str) -> BTreeSet<Permission> {
    let perms: &[Permission] = match role {
        "admin" => &Permission::ALL,
        "developer" => &[
            Deploy,
            Promote,
            Rollback,
            Abort,
            View,
            ViewLogs,
            ViewMetrics,
            ManageApps,
            ManageConfig,
        ],
        "deployer" => &[Deploy, Promote, View, ViewLogs],
        "approver" => &[Approve, View, ViewLogs, ViewMetrics],
        "viewer" => &[View, ViewLogs, ViewMetrics],
        other => panic!("unexpected role {other}"),
    };
    perms.iter().copied().collect()
}

#[test]
fn builtin_roles_are_as_documented() {
    let roles = builtin_roles();
    let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["admin", "developer", "deployer", "approver", "viewer"]
    );
    for role in &roles {
        assert!(role.builtin);
        assert!(!role.description.is_empty());
        assert_eq!(role.permissions, expected_role_permissions(&role.name));
        assert!(is_builtin_role_name(&role.name));
        assert_eq!(builtin_role(&role.name).as_ref(), Some(role));
        validate_role_name(&role.name).expect("builtin names are valid");
    }
    assert!(!is_builtin_role_name("release-manager"));
    assert!(builtin_role("root").is_none());
}

#[test]
fn permission_names_round_trip() {
    assert_eq!(Permission::ALL.len(), 16);
    let unique: BTreeSet<Permission> = Permission::ALL.into_iter().collect();
    assert_eq!(unique.len(), 16);
    for p in Permission::ALL {
        assert_eq!(p.to_string(), p.as_str());
        assert_eq!(p.as_str().parse::<Permission>(), Ok(p));
        assert_eq!(
            serde_json::to_string(&p).expect("serialise"),
            format!("\"{}\"", p.as_str())
        );
        assert_eq!(
            serde_json::from_str::<Permission>(&format!("\"{}\"", p.as_str())).expect("parse"),
            p
        );
    }
    assert_eq!("view-logs".parse::<Permission>(), Ok(ViewLogs));
    assert_eq!("Manage_Server".parse::<Permission>(), Ok(ManageServer));
    let err = "monitor".parse::<Permission>().expect_err("unknown");
    assert!(err.contains("\"monitor\""), "{err}");
    for p in Permission::ALL {
        assert!(err.contains(p.as_str()), "{err} should list {p}");
    }
}

#[test]
fn permission_classes() {
    let read: Vec<Permission> = Permission::ALL
        .into_iter()
        .filter(|p| p.is_read_only())
        .collect();
    assert_eq!(read, [View, ViewLogs, ViewMetrics]);
    let global: Vec<Permission> = Permission::ALL
        .into_iter()
        .filter(|p| p.is_global())
        .collect();
    assert_eq!(global, [ManageUsers, ManageRoles, ManageServer]);
}

#[derive(Debug, Clone, Copy)]
enum Bound {
    /// all apps, all environments
    Everything,
    /// app shop, all environments
    Shop,
    /// app shop, environments dev and staging
    ShopDevStaging,
    /// all apps, environment dev only
    AllAppsDev,
}

impl Bound {
    fn scope(self) -> Scope {
        match self {
            Bound::Everything => Scope::all(),
            Bound::Shop => Scope::app("shop"),
            Bound::ShopDevStaging => Scope::app_envs("shop", ["dev", "staging"]),
            Bound::AllAppsDev => Scope {
                app: None,
                envs: vec!["dev".to_string()],
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Aim {
    ShopDev,
    ShopProduction,
    ShopAppWide,
    BillingDev,
    Global,
}

impl Aim {
    fn target(self) -> Target<'static> {
        match self {
            Aim::ShopDev => Target::env("shop", "dev"),
            Aim::ShopProduction => Target::env("shop", "production"),
            Aim::ShopAppWide => Target::app("shop"),
            Aim::BillingDev => Target::env("billing", "dev"),
            Aim::Global => Target::global(),
        }
    }
}

/// Which of the role's permissions a binding with some scope gives on some target.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// The role's permissions all apply.
    All,
    /// Nothing applies.
    None,
    /// Applies except for global permissions (manage_users, manage_roles, manage_server).
    NotGlobal,
    /// Only view, view_logs, view_metrics.
    ReadOnly,
}

impl Rule {
    fn applies(self, p: Permission) -> bool {
        match self {
            Rule::All => true,
            Rule::None => false,
            Rule::NotGlobal => !p.is_global(),
            Rule::ReadOnly => p.is_read_only(),
        }
    }
}

/// The scope table, decided by hand.
const TABLE: &[(Bound, Aim, Rule)] = &[
    (Bound::Everything, Aim::ShopDev, Rule::All),
    (Bound::Everything, Aim::ShopProduction, Rule::All),
    (Bound::Everything, Aim::ShopAppWide, Rule::All),
    (Bound::Everything, Aim::BillingDev, Rule::All),
    (Bound::Everything, Aim::Global, Rule::All),
    (Bound::Shop, Aim::ShopDev, Rule::NotGlobal),
    (Bound::Shop, Aim::ShopProduction, Rule::NotGlobal),
    (Bound::Shop, Aim::ShopAppWide, Rule::NotGlobal),
    (Bound::Shop, Aim::BillingDev, Rule::None),
    (Bound::Shop, Aim::Global, Rule::None),
    (Bound::ShopDevStaging, Aim::ShopDev, Rule::NotGlobal),
    (Bound::ShopDevStaging, Aim::ShopProduction, Rule::None),
    (Bound::ShopDevStaging, Aim::ShopAppWide, Rule::ReadOnly),
    (Bound::ShopDevStaging, Aim::BillingDev, Rule::None),
    (Bound::ShopDevStaging, Aim::Global, Rule::None),
    (Bound::AllAppsDev, Aim::ShopDev, Rule::NotGlobal),
    (Bound::AllAppsDev, Aim::ShopProduction, Rule::None),
    (Bound::AllAppsDev, Aim::ShopAppWide, Rule::ReadOnly),
    (Bound::AllAppsDev, Aim::BillingDev, Rule::NotGlobal),
    (Bound::AllAppsDev, Aim::Global, Rule::ReadOnly),
];

#[test]
fn every_role_every_permission_every_scope() {
    let roles = builtin_roles();
    let mut checked = 0;
    for role in &roles {
        let has = expected_role_permissions(&role.name);
        for &(bound, aim, rule) in TABLE {
            let bindings = [Binding {
                id: 7,
                role: role.name.clone(),
                scope: bound.scope(),
            }];
            for p in Permission::ALL {
                let want = has.contains(&p) && rule.applies(p);
                let d = decide(&roles, &bindings, p, aim.target());
                assert_eq!(
                    d.allowed, want,
                    "{} {bound:?} {p} on {aim:?}: {}",
                    role.name, d.reason
                );
                if want {
                    assert_eq!(d.granted_by, Some(7));
                    assert!(d.reason.starts_with("allowed: binding #7 gives role "));
                    assert!(d.reason.contains(&role.name), "{}", d.reason);
                } else {
                    assert_eq!(d.granted_by, None);
                    assert!(d.reason.starts_with("denied: "), "{}", d.reason);
                    assert!(
                        d.reason.contains(&format!("#7 {}", role.name)),
                        "{}",
                        d.reason
                    );
                    assert!(d.reason.contains(p.as_str()), "{}", d.reason);
                }
                let listed = permissions_on(&roles, &bindings, aim.target());
                assert_eq!(listed.contains(&p), want);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * TABLE.len() * 16);
}

#[test]
fn reasons_explain_grants_and_denials() {
    let roles = builtin_roles();
    let dev = [Binding {
        id: 3,
        role: "developer".into(),
        scope: Scope::app_envs("shop", ["dev", "staging"]),
    }];

    let d = decide(&roles, &dev, Deploy, Target::env("shop", "staging"));
    assert_eq!(
        d.reason,
        "allowed: binding #3 gives role developer on app shop, environments dev, staging"
    );

    let d = decide(&roles, &dev, Deploy, Target::env("shop", "production"));
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "denied: no binding gives deploy on shop/production; bindings: #3 developer on shop \
         [dev, staging] (production not in scope)"
    );

    let d = decide(&roles, &dev, Deploy, Target::env("billing", "dev"));
    assert!(
        d.reason.contains("(app billing not in scope)"),
        "{}",
        d.reason
    );

    let d = decide(&roles, &dev, Approve, Target::env("shop", "dev"));
    assert!(
        d.reason.contains("(developer lacks approve)"),
        "{}",
        d.reason
    );

    let d = decide(&roles, &dev, ManageApps, Target::app("shop"));
    assert!(!d.allowed);
    assert!(
        d.reason.contains(
            "(manage_apps app-wide needs all environments; binding limited to dev, staging)"
        ),
        "{}",
        d.reason
    );

    let d = decide(&roles, &dev, View, Target::app("shop"));
    assert!(d.allowed, "{}", d.reason);

    let d = decide(&roles, &[], View, Target::app("shop"));
    assert_eq!(
        d.reason,
        "denied: no binding gives view on shop; no bindings"
    );

    let admin_all = [Binding {
        id: 1,
        role: "admin".into(),
        scope: Scope::all(),
    }];
    let d = decide(&roles, &admin_all, ManageUsers, Target::global());
    assert_eq!(
        d.reason,
        "allowed: binding #1 gives role admin on all apps, all environments"
    );
}

#[test]
fn app_scoped_admin_cannot_act_globally() {
    let roles = builtin_roles();
    let b = [Binding {
        id: 9,
        role: "admin".into(),
        scope: Scope::app("shop"),
    }];
    // A global permission is judged globally even if the caller names an app.
    for target in [
        Target::global(),
        Target::app("shop"),
        Target::env("shop", "dev"),
    ] {
        let d = decide(&roles, &b, ManageUsers, target);
        assert!(!d.allowed);
        assert_eq!(
            d.reason,
            "denied: no binding gives manage_users globally; bindings: #9 admin on shop \
             [all environments] (manage_users is global; binding limited to app shop)"
        );
    }
    assert!(decide(&roles, &b, ManageSecrets, Target::env("shop", "production")).allowed);
    assert!(
        decide(
            &roles,
            &b,
            OverrideFreeze,
            Target::env("shop", "production")
        )
        .allowed
    );
    assert!(!decide(&roles, &b, View, Target::global()).allowed);
}

#[test]
fn unknown_role_grants_nothing_and_says_so() {
    let roles = builtin_roles();
    let b = [Binding {
        id: 4,
        role: "ghost".into(),
        scope: Scope::all(),
    }];
    for p in Permission::ALL {
        let d = decide(&roles, &b, p, Target::env("shop", "dev"));
        assert!(!d.allowed);
        assert!(d.reason.contains("#4 ghost"), "{}", d.reason);
        assert!(d.reason.contains("(unknown role ghost)"), "{}", d.reason);
    }
    // A role deleted from the list stops granting.
    let without_dev: Vec<Role> = roles
        .iter()
        .filter(|r| r.name != "developer")
        .cloned()
        .collect();
    let b = [Binding {
        id: 5,
        role: "developer".into(),
        scope: Scope::all(),
    }];
    assert!(decide(&roles, &b, Deploy, Target::env("shop", "dev")).allowed);
    let d = decide(&without_dev, &b, Deploy, Target::env("shop", "dev"));
    assert!(!d.allowed);
    assert!(d.reason.contains("unknown role developer"), "{}", d.reason);
}

#[test]
fn first_granting_binding_wins_and_all_denials_are_listed() {
    let mut roles = builtin_roles();
    roles.push(Role {
        name: "release-manager".into(),
        description: "custom".into(),
        permissions: [Deploy, Approve, OverrideFreeze].into_iter().collect(),
        builtin: false,
    });
    let bindings = [
        Binding {
            id: 10,
            role: "viewer".into(),
            scope: Scope::all(),
        },
        Binding {
            id: 11,
            role: "developer".into(),
            scope: Scope::app_envs("shop", ["dev"]),
        },
        Binding {
            id: 12,
            role: "release-manager".into(),
            scope: Scope::app_envs("shop", ["production"]),
        },
        Binding {
            id: 13,
            role: "admin".into(),
            scope: Scope::all(),
        },
    ];
    let d = decide(&roles, &bindings, Deploy, Target::env("shop", "production"));
    assert_eq!(d.granted_by, Some(12));
    let d = decide(&roles, &bindings, View, Target::env("shop", "production"));
    assert_eq!(d.granted_by, Some(10));
    let d = decide(
        &roles,
        &bindings[..3],
        Rollback,
        Target::env("shop", "production"),
    );
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "denied: no binding gives rollback on shop/production; bindings: #10 viewer on all apps \
         [all environments] (viewer lacks rollback); #11 developer on shop [dev] (production \
         not in scope); #12 release-manager on shop [production] (release-manager lacks rollback)"
    );
    let on_prod = permissions_on(&roles, &bindings[..3], Target::env("shop", "production"));
    assert_eq!(
        on_prod,
        [Deploy, Approve, View, ViewLogs, ViewMetrics, OverrideFreeze]
            .into_iter()
            .collect()
    );
}

#[test]
fn decision_and_binding_serde() {
    let b = Binding {
        id: 2,
        role: "deployer".into(),
        scope: Scope::app_envs("shop", ["staging"]),
    };
    let json = serde_json::to_value(&b).expect("serialise");
    assert_eq!(
        json,
        serde_json::json!({"id": 2, "role": "deployer", "scope": {"app": "shop", "envs": ["staging"]}})
    );
    let back: Binding = serde_json::from_value(json).expect("parse");
    assert_eq!(back, b);
    let d = decide(
        &builtin_roles(),
        &[b],
        Deploy,
        Target::env("shop", "staging"),
    );
    let back: ferry_core::rbac::Decision =
        serde_json::from_str(&serde_json::to_string(&d).expect("serialise")).expect("parse");
    assert_eq!(back, d);
}

#[test]
fn role_names() {
    for ok in ["a", "admin", "release-manager", "team_2", &"x".repeat(63)] {
        assert_eq!(validate_role_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "Admin",
        "2fast",
        "-x",
        "with space",
        "dévelopeur",
        "a.b",
        &"x".repeat(64),
    ] {
        assert!(
            validate_role_name(bad).is_err(),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn separation_of_duties() {
    // The requester can never approve, whatever their roles.
    let err = may_approve("user:alice", "user:alice", &["admin"], None).expect_err("self");
    assert!(
        err.contains("user:alice") && err.contains("cannot approve"),
        "{err}"
    );
    assert!(may_approve("user:alice", " User:Alice ", &["admin"], None).is_err());
    assert!(may_approve("user:alice", "", &["admin"], None).is_err());

    // Someone else may.
    assert_eq!(
        may_approve("user:alice", "user:bob", &["approver"], None),
        Ok(())
    );
    assert_eq!(
        may_approve("token:ci", "user:bob", &["developer"], None),
        Ok(())
    );

    // Production may require a role the requester lacks.
    let requester_roles: &[&str] = &["developer"];
    let err = may_approve(
        "user:alice",
        "user:bob",
        &["developer"],
        Some(requester_roles),
    )
    .expect_err("same role");
    assert!(err.contains("role the requester lacks"), "{err}");
    assert!(err.contains("[developer]"), "{err}");
    assert!(may_approve("user:alice", "user:bob", &[], Some(requester_roles)).is_err());
    assert_eq!(
        may_approve(
            "user:alice",
            "user:bob",
            &["developer", "approver"],
            Some(requester_roles)
        ),
        Ok(())
    );
    assert_eq!(
        may_approve(
            "user:alice",
            "user:carol",
            &["admin"],
            Some(&["developer", "approver"])
        ),
        Ok(())
    );
    // Requirement met but same person: still refused.
    assert!(
        may_approve(
            "user:alice",
            "user:alice",
            &["approver"],
            Some(requester_roles)
        )
        .is_err()
    );
}

const MIN: i64 = 60_000;

#[test]
fn throttle_locks_on_the_fifth_failure_in_the_window() {
    let mut t = Throttle::new();
    assert_eq!(t.policy, ThrottlePolicy::default());
    for i in 0..4 {
        t.failed("user:alice", i * 1000);
        assert_eq!(t.check("user:alice", i * 1000), Ok(()));
    }
    t.failed("user:alice", 10_000);
    assert_eq!(t.check("user:alice", 10_000), Err(60_000));
    assert_eq!(t.check("user:alice", 10_000 + MIN - 1), Err(1));
    assert_eq!(t.check("user:alice", 10_000 + MIN), Ok(()));
    // Other keys are unaffected.
    assert_eq!(t.check("user:bob", 10_000), Ok(()));
    assert_eq!(t.check("addr:10.0.0.7", 10_000), Ok(()));
}

#[test]
fn throttle_window_is_sliding_and_exclusive_at_five_minutes() {
    let mut t = Throttle::new();
    for i in 0..4 {
        t.failed("k", i * 1000);
    }
    // The failure at t=0 is exactly 5 minutes old: no longer counted (4 in the window).
    t.failed("k", 5 * MIN);
    assert_eq!(t.check("k", 5 * MIN), Ok(()));
    // The one at t=1000 is still inside: 1000, 2000, 3000, 5:00.000, 5:00.001 = five.
    t.failed("k", 5 * MIN + 1);
    assert_eq!(t.check("k", 5 * MIN + 1), Err(60_000));
}

fn lock_now(t: &mut Throttle, key: &str, at: i64) -> u64 {
    for i in 0..5 {
        t.failed(key, at + i);
    }
    t.check(key, at + 4).expect_err("locked")
}

#[test]
fn throttle_backoff_doubles_and_caps_at_fifteen_minutes() {
    let mut t = Throttle::new();
    let mut at = 0;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let wait = lock_now(&mut t, "k", at);
        seen.push(wait);
        at += 4 + i64::try_from(wait).expect("fits");
        assert_eq!(t.check("k", at), Ok(()));
    }
    assert_eq!(
        seen,
        [MIN, 2 * MIN, 4 * MIN, 8 * MIN, 15 * MIN, 15 * MIN].map(|m| m as u64)
    );

    // An hour without failures forgets the streak.
    let wait = lock_now(&mut t, "k", at + 60 * MIN);
    assert_eq!(wait, 60_000);
}

#[test]
fn throttle_ignores_failures_while_locked_and_success_clears() {
    let mut t = Throttle::new();
    lock_now(&mut t, "k", 0);
    for i in 0..20 {
        t.failed("k", 100 + i);
    }
    assert_eq!(t.check("k", 4), Err(60_000));
    assert_eq!(t.check("k", MIN + 4), Ok(()));
    // After the lock the count starts again: four failures are still fine.
    for i in 0..4 {
        t.failed("k", MIN + 10 + i);
    }
    assert_eq!(t.check("k", MIN + 20), Ok(()));

    t.succeeded("k");
    assert!(t.keys.is_empty());
    // Success forgets the streak too: the next lock is 1 minute again.
    lock_now(&mut t, "k", 2 * MIN);
    t.succeeded("k");
    assert_eq!(lock_now(&mut t, "k", 3 * MIN), 60_000);
    // succeeded releases a lock (the caller only calls it after a login was allowed).
    t.succeeded("k");
    assert_eq!(t.check("k", 3 * MIN + 5), Ok(()));
}

#[test]
fn throttle_prune_and_serde() {
    let mut t = Throttle::new();
    t.failed("old", 0);
    lock_now(&mut t, "locked", 10 * MIN);
    t.failed("recent", 10 * MIN);
    t.prune(61 * MIN);
    assert_eq!(
        t.keys.keys().map(String::as_str).collect::<Vec<_>>(),
        ["locked", "recent"]
    );
    assert!(t.check("locked", 10 * MIN + 30_000).is_err());

    let json = serde_json::to_string(&t).expect("serialise");
    let back: Throttle = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, t);

    // A clock going backwards neither panics nor unlocks early.
    let mut t = Throttle::new();
    lock_now(&mut t, "k", 1_000_000);
    assert!(t.check("k", 0).is_err());
    t.failed("k", -5);
}

#[test]
fn throttle_custom_policy() {
    let policy = ThrottlePolicy {
        max_failures: 3,
        window_ms: 1000,
        base_lock_ms: 100,
        max_lock_ms: 250,
        forget_after_ms: 10_000,
    };
    assert_eq!(policy.lock_ms(1), 100);
    assert_eq!(policy.lock_ms(2), 200);
    assert_eq!(policy.lock_ms(3), 250);
    assert_eq!(policy.lock_ms(200), 250);
    let mut t = Throttle::with_policy(policy);
    t.failed("k", 0);
    t.failed("k", 1);
    assert_eq!(t.check("k", 1), Ok(()));
    t.failed("k", 2);
    assert_eq!(t.check("k", 2), Err(100));
}

#[test]
fn a_scope_naming_what_does_not_exist_is_reported() {
    use ferry_core::rbac::{UnknownName, unknown_in_scope};
    use std::collections::BTreeMap;
    let apps: BTreeMap<String, Vec<String>> = [
        ("shop", vec!["staging", "production"]),
        ("blog", vec!["dev"]),
    ]
    .into_iter()
    .map(|(a, envs)| (a.to_string(), envs.into_iter().map(String::from).collect()))
    .collect();
    // everything exists
    assert!(unknown_in_scope(&Scope::all(), &apps).is_empty());
    assert!(unknown_in_scope(&Scope::app_envs("shop", ["production"]), &apps).is_empty());
    let all_apps_dev = Scope {
        app: None,
        envs: vec!["dev".into()],
    };
    assert!(unknown_in_scope(&all_apps_dev, &apps).is_empty());
    // a typo in the app: named, with the near miss; its environments are not judged
    let unknown = unknown_in_scope(&Scope::app_envs("shp", ["whatever"]), &apps);
    assert_eq!(
        unknown,
        vec![UnknownName::App {
            app: "shp".into(),
            near: Some("shop".into())
        }]
    );
    assert_eq!(
        unknown[0].to_string(),
        "no app named \"shp\" (did you mean shop?)"
    );
    // a typo in an environment, and one with nothing near
    let unknown = unknown_in_scope(&Scope::app_envs("shop", ["prodution", "qa"]), &apps);
    let shown: Vec<String> = unknown.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "app shop has no environment \"prodution\" (did you mean production?)",
            "app shop has no environment \"qa\" (its environments: staging, production)",
        ]
    );
    // all apps: the environment must exist somewhere
    let all_apps_qa = Scope {
        app: None,
        envs: vec!["qa".into()],
    };
    let shown: Vec<String> = unknown_in_scope(&all_apps_qa, &apps)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["no app has an environment \"qa\""]);
}
