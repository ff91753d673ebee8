//! Gates a deployment must pass before it starts: for now, approvals by role (with
//! separation of duties). Pure: the approvals and the requester come in, a verdict comes out.

use serde::{Deserialize, Serialize};

use crate::manifest::ApprovalRule;

/// One person's decision on a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `user:alice`, or `token:NAME` for a token without an owner.
    pub approver: String,
    /// The approver's roles in the deployment's app/environment when they decided.
    pub roles: Vec<String>,
    pub approved: bool,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// Where the approval gate stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateVerdict {
    /// Every rule has its approvals.
    Passed,
    /// Still waiting; one line per unmet rule, e.g. `1 more approval from role product-owner`.
    Waiting(Vec<String>),
    /// Someone rejected it.
    Rejected { by: String, reason: String },
}

/// Judges `rules` against `approvals`. The requester never counts (separation of duties);
/// a person counts once per rule whose role they hold.
pub fn evaluate(rules: &[ApprovalRule], approvals: &[Approval], requester: &str) -> GateVerdict {
    if let Some(rejection) = approvals.iter().find(|a| !a.approved) {
        return GateVerdict::Rejected {
            by: rejection.approver.clone(),
            reason: rejection
                .reason
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        };
    }
    let mut unmet = Vec::new();
    for rule in rules {
        let mut people: Vec<&str> = approvals
            .iter()
            .filter(|a| a.approved && !same_person(&a.approver, requester))
            .filter(|a| a.roles.contains(&rule.role))
            .map(|a| a.approver.as_str())
            .collect();
        people.sort_unstable();
        people.dedup();
        let have = u32::try_from(people.len()).unwrap_or(u32::MAX);
        if have < rule.count {
            let missing = rule.count - have;
            unmet.push(format!(
                "{missing} more approval{} from role {} (not {requester})",
                if missing == 1 { "" } else { "s" },
                rule.role
            ));
        }
    }
    if unmet.is_empty() {
        GateVerdict::Passed
    } else {
        GateVerdict::Waiting(unmet)
    }
}

/// Principals compare without case and surrounding space (`user:Alice` is `user:alice`).
pub fn same_person(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(role: &str, count: u32) -> ApprovalRule {
        ApprovalRule {
            role: role.into(),
            count,
        }
    }

    fn approval(who: &str, roles: &[&str], approved: bool) -> Approval {
        Approval {
            approver: who.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            approved,
            reason: (!approved).then(|| "not ready".into()),
            at_ms: 0,
        }
    }

    #[test]
    fn waits_until_every_rule_has_its_people() {
        let rules = [rule("tech-lead", 1), rule("product-owner", 2)];
        let requester = "user:alice";
        assert_eq!(
            evaluate(&rules, &[], requester),
            GateVerdict::Waiting(vec![
                "1 more approval from role tech-lead (not user:alice)".into(),
                "2 more approvals from role product-owner (not user:alice)".into(),
            ])
        );
        let some = [approval("user:bob", &["tech-lead", "product-owner"], true)];
        assert_eq!(
            evaluate(&rules, &some, requester),
            GateVerdict::Waiting(vec![
                "1 more approval from role product-owner (not user:alice)".into()
            ])
        );
        let all = [
            approval("user:bob", &["tech-lead", "product-owner"], true),
            approval("user:carol", &["product-owner"], true),
        ];
        assert_eq!(evaluate(&rules, &all, requester), GateVerdict::Passed);
    }

    #[test]
    fn the_requester_never_counts_and_nobody_counts_twice() {
        let rules = [rule("approver", 2)];
        let approvals = [
            approval("user:Alice", &["approver"], true),
            approval("user:bob", &["approver"], true),
            approval("user:bob", &["approver"], true),
        ];
        assert_eq!(
            evaluate(&rules, &approvals, "user:alice"),
            GateVerdict::Waiting(vec![
                "1 more approval from role approver (not user:alice)".into()
            ])
        );
    }

    #[test]
    fn a_rejection_ends_it_with_its_reason() {
        let rules = [rule("approver", 1)];
        let approvals = [
            approval("user:bob", &["approver"], true),
            approval("user:carol", &["approver"], false),
        ];
        assert_eq!(
            evaluate(&rules, &approvals, "user:alice"),
            GateVerdict::Rejected {
                by: "user:carol".into(),
                reason: "not ready".into()
            }
        );
    }

    #[test]
    fn roles_must_match() {
        let rules = [rule("product-owner", 1)];
        let approvals = [approval("user:bob", &["developer"], true)];
        assert!(matches!(
            evaluate(&rules, &approvals, "user:alice"),
            GateVerdict::Waiting(_)
        ));
        assert_eq!(evaluate(&[], &[], "user:alice"), GateVerdict::Passed);
    }
}
