//! Approvals and rejections of deployments waiting at their gates.

use ferry_core::gates::Approval;
use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, StoreError, get};

impl Store {
    /// Records a decision, with its notifications in the same transaction. A person has at
    /// most one live decision per deployment: a new one replaces (withdraws) their previous
    /// one.
    pub async fn record_approval(
        &self,
        deployment_id: i64,
        approval: &Approval,
        notifications: &[ferry_core::notify::Notification],
    ) -> Result<()> {
        let op = || {
            format!(
                "recording {}'s decision on deployment {deployment_id}",
                approval.approver
            )
        };
        let roles = serde_json::to_string(&approval.roles)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut tx = self.pool.begin().await.ctx(op)?;
        sqlx::query(
            "UPDATE approvals SET withdrawn_at_ms = $1 \
             WHERE deployment_id = $2 AND approver = $3 AND withdrawn_at_ms IS NULL",
        )
        .bind(approval.at_ms)
        .bind(deployment_id)
        .bind(&approval.approver)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        sqlx::query(
            "INSERT INTO approvals (deployment_id, approver, roles, approved, reason, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(deployment_id)
        .bind(&approval.approver)
        .bind(roles)
        .bind(i64::from(approval.approved))
        .bind(approval.reason.as_deref())
        .bind(approval.at_ms)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        for n in notifications {
            crate::notify::enqueue(&mut tx, n, approval.at_ms).await?;
        }
        tx.commit().await.ctx(op)?;
        if !notifications.is_empty() {
            self.outbox_committed();
        }
        Ok(())
    }

    /// Withdraws `approver`'s live decision. `NotFound` when there is none.
    pub async fn withdraw_approval(
        &self,
        deployment_id: i64,
        approver: &str,
        now_ms: i64,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE approvals SET withdrawn_at_ms = $1 \
             WHERE deployment_id = $2 AND approver = $3 AND withdrawn_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(deployment_id)
        .bind(approver)
        .execute(&self.pool)
        .await
        .ctx(|| format!("withdrawing {approver}'s decision on deployment {deployment_id}"))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "a live decision of {approver} on deployment {deployment_id}"
            )));
        }
        Ok(())
    }

    /// The live (not withdrawn) decisions on a deployment, oldest first.
    pub async fn approvals(&self, deployment_id: i64) -> Result<Vec<Approval>> {
        let rows = sqlx::query(
            "SELECT approver, roles, approved, reason, at_ms FROM approvals \
             WHERE deployment_id = $1 AND withdrawn_at_ms IS NULL ORDER BY id",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the decisions on deployment {deployment_id}"))?;
        rows.iter()
            .map(|row| approval_from_row(row, deployment_id))
            .collect()
    }
}

fn approval_from_row(row: &AnyRow, deployment_id: i64) -> Result<Approval> {
    let what = || format!("approval of deployment {deployment_id}");
    let roles: String = get(row, "roles", &what)?;
    let approved: i64 = get(row, "approved", &what)?;
    Ok(Approval {
        approver: get(row, "approver", &what)?,
        roles: serde_json::from_str(&roles)
            .map_err(|e| StoreError::Corrupt(format!("{}: roles: {e}", what())))?,
        approved: approved != 0,
        reason: get(row, "reason", &what)?,
        at_ms: get(row, "at_ms", &what)?,
    })
}
