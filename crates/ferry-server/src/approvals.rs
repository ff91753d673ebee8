//! Approving or rejecting a deployment that waits at its environment's gates, with
//! separation of duties: the requester never approves, and (when the environment asks for
//! it) the approver holds a role the requester lacks.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use ferry_core::api::gates::{ApprovalStatus, ApproveRequest};
use ferry_core::gates::{self, Approval, GateVerdict};
use ferry_core::manifest::{Gates, Manifest};
use ferry_core::model::{DeploymentState, EventKind};
use ferry_core::notify::{self, Kind, Notification, Severity};
use ferry_core::rbac::{self, Binding};

use crate::access::{Access, AuditSlot};
use crate::api::{ApiFailure, ApiResult, AppState};
use crate::clock::now_ms;

/// `GET /v1/deployments/{id}/approvals`
pub async fn list(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<ApprovalStatus>> {
    status(&state, id).await.map(Json)
}

/// `POST /v1/deployments/{id}/approve`
pub async fn decide(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Option<Json<ApproveRequest>>,
) -> ApiResult<Json<ApprovalStatus>> {
    let mut request = body.map(|Json(b)| b).unwrap_or_default();
    if request.reason.is_none() {
        request.reason = crate::access::reason_header(&headers);
    }
    slot.with(|n| n.target = Some(format!("deployment {id}")));
    let deployment = state.store.get_deployment(id).await?.ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("deployment {id} not found"),
        )
    })?;
    // Approvals may come in while other gates still hold it (`blocked`, e.g. frozen).
    if !matches!(
        deployment.state,
        DeploymentState::AwaitingApproval | DeploymentState::Blocked
    ) {
        return Err(conflict(format!(
            "deployment #{id} is {}; only a deployment waiting at its gates (awaiting-approval or blocked) can be approved or rejected",
            deployment.state
        )));
    }
    let reason = request
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if request.reject && reason.is_none() {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "a rejection needs a reason (`--reason \"…\"`)",
        ));
    }
    let gates = gates_of(&state, &deployment.app, &deployment.env).await?;
    let approver = access.caller.principal();
    let mine = roles_in_scope(&access.caller.bindings, &deployment.app, &deployment.env);
    let requester_roles = match (
        gates.separate_approver_role,
        deployment.requested_by.strip_prefix("user:"),
    ) {
        (true, Some(user)) => {
            let bindings = crate::auth::user_bindings(&state.store, user)
                .await
                .map_err(crate::api::internal)?;
            Some(roles_in_scope(&bindings, &deployment.app, &deployment.env))
        }
        _ => None,
    };
    let mine_refs: Vec<&str> = mine.iter().map(String::as_str).collect();
    let theirs: Option<Vec<&str>> = requester_roles
        .as_ref()
        .map(|r| r.iter().map(String::as_str).collect());
    rbac::may_approve(
        &deployment.requested_by,
        &approver,
        &mine_refs,
        theirs.as_deref(),
    )
    .map_err(|why| ApiFailure::new(StatusCode::FORBIDDEN, "forbidden", why))?;
    if !request.reject && !gates.approvals.iter().any(|rule| mine.contains(&rule.role)) {
        let wanted: Vec<&str> = gates.approvals.iter().map(|r| r.role.as_str()).collect();
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "approving {}/{} needs the role {}; you hold {} there",
                deployment.app,
                deployment.env,
                wanted.join(" or "),
                if mine.is_empty() {
                    "none".to_string()
                } else {
                    mine.join(", ")
                }
            ),
        ));
    }
    let decision = Approval {
        approver: approver.clone(),
        roles: mine,
        approved: !request.reject,
        reason: reason.clone(),
        at_ms: now_ms(),
    };
    let line = match (&decision.approved, &reason) {
        (true, _) => format!("approved by {approver} ({})", decision.roles.join(", ")),
        (false, Some(reason)) => format!("rejected by {approver}: {reason}"),
        (false, None) => format!("rejected by {approver}"),
    };
    let notification = Notification::new(
        notify::key_approval_given(id, &approver, decision.at_ms),
        Kind::ApprovalGiven,
        &deployment.app,
        &deployment.env,
        Severity::Info,
        format!(
            "{}/{}: deployment #{id} of {} {line}",
            deployment.app, deployment.env, deployment.version
        ),
        decision.at_ms,
    )
    .label(
        "state",
        if decision.approved {
            "approved"
        } else {
            "rejected"
        },
    )
    .label("version", &deployment.version)
    .label("deployment", id.to_string());
    state
        .store
        .record_approval(id, &decision, &[notification])
        .await?;
    if let Some(controller) = &state.controller {
        controller.note(id, EventKind::Approval, &line).await;
    }
    status(&state, id).await.map(Json)
}

/// `DELETE /v1/deployments/{id}/approve`: withdraws the caller's own decision.
pub async fn withdraw(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path(id): Path<i64>,
) -> ApiResult<Json<ApprovalStatus>> {
    slot.with(|n| n.target = Some(format!("deployment {id}")));
    let approver = access.caller.principal();
    let deployment = state.store.get_deployment(id).await?;
    if deployment.is_none_or(|d| {
        !matches!(
            d.state,
            DeploymentState::AwaitingApproval | DeploymentState::Blocked
        )
    }) {
        return Err(conflict(format!(
            "deployment #{id} is not waiting at its gates"
        )));
    }
    state
        .store
        .withdraw_approval(id, &approver, now_ms())
        .await
        .map_err(|e| match e {
            ferry_store::StoreError::NotFound(_) => conflict(format!(
                "{approver} has no decision on deployment #{id} to withdraw"
            )),
            other => ApiFailure::from(other),
        })?;
    if let Some(controller) = &state.controller {
        controller
            .note(
                id,
                EventKind::Approval,
                &format!("{approver} withdrew their decision"),
            )
            .await;
    }
    status(&state, id).await.map(Json)
}

async fn status(state: &AppState, id: i64) -> ApiResult<ApprovalStatus> {
    let deployment = state.store.get_deployment(id).await?.ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("deployment {id} not found"),
        )
    })?;
    let approvals = state.store.approvals(id).await?;
    let gates = gates_of(state, &deployment.app, &deployment.env).await?;
    let (waiting_for, rejected) =
        match gates::evaluate(&gates.approvals, &approvals, &deployment.requested_by) {
            GateVerdict::Passed => (Vec::new(), None),
            GateVerdict::Waiting(unmet) => (unmet, None),
            GateVerdict::Rejected { by, reason } => {
                (Vec::new(), Some(format!("rejected by {by}: {reason}")))
            }
        };
    let rows = crate::gates::report_for(&state.store, &deployment, &gates, state.now_ms())
        .await?
        .rows;
    Ok(ApprovalStatus {
        deployment: deployment.view(),
        approvals,
        waiting_for,
        rejected,
        gates: rows,
    })
}

async fn gates_of(state: &AppState, app: &str, env: &str) -> ApiResult<Gates> {
    let record = state.store.get_app(app).await?;
    let manifest: Option<Manifest> =
        record.and_then(|r| serde_json::from_str(&r.manifest_json).ok());
    Ok(manifest
        .and_then(|m| m.environments.get(env).and_then(|e| e.gates.clone()))
        .unwrap_or_default())
}

/// The role names of `bindings` that apply to app/env.
fn roles_in_scope(bindings: &[Binding], app: &str, env: &str) -> Vec<String> {
    let mut roles: Vec<String> = bindings
        .iter()
        .filter(|b| b.scope.app.as_deref().is_none_or(|a| a == app))
        .filter(|b| b.scope.envs.is_empty() || b.scope.envs.iter().any(|e| e == env))
        .map(|b| b.role.clone())
        .collect();
    roles.sort();
    roles.dedup();
    roles
}

fn conflict(message: String) -> ApiFailure {
    ApiFailure::new(StatusCode::CONFLICT, "conflict", message)
}
