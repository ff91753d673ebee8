//! Facts for the promotion gates: the latest result of each gate check of a deployment, and
//! the gates lifted for one deployment (freeze overrides).

use ferry_core::gates::{CheckResult, GateRow, Override};

use crate::{Ctx, Result, Store, StoreError, get};

impl Store {
    /// Keeps `result` as the latest result of its check on the deployment (replacing the
    /// previous one).
    pub async fn record_check_result(
        &self,
        deployment_id: i64,
        result: &CheckResult,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO gate_check_results (deployment_id, name, passed, explanation, at_ms) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (deployment_id, name) DO UPDATE SET \
             passed = excluded.passed, explanation = excluded.explanation, at_ms = excluded.at_ms",
        )
        .bind(deployment_id)
        .bind(&result.name)
        .bind(i64::from(result.passed))
        .bind(&result.explanation)
        .bind(result.at_ms)
        .execute(&self.pool)
        .await
        .ctx(|| {
            format!(
                "recording the result of check {} on deployment {deployment_id}",
                result.name
            )
        })?;
        Ok(())
    }

    /// The latest result of every check run on a deployment, by name.
    pub async fn check_results(&self, deployment_id: i64) -> Result<Vec<CheckResult>> {
        let rows = sqlx::query(
            "SELECT name, passed, explanation, at_ms FROM gate_check_results \
             WHERE deployment_id = $1 ORDER BY name",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the check results of deployment {deployment_id}"))?;
        let what = || format!("check result of deployment {deployment_id}");
        rows.iter()
            .map(|row| {
                let passed: i64 = get(row, "passed", &what)?;
                Ok(CheckResult {
                    name: get(row, "name", &what)?,
                    passed: passed != 0,
                    explanation: get(row, "explanation", &what)?,
                    at_ms: get(row, "at_ms", &what)?,
                })
            })
            .collect()
    }

    /// Records that `lifted.by` lifted gate `lifted.gate` for the deployment.
    pub async fn record_override(&self, deployment_id: i64, lifted: &Override) -> Result<()> {
        sqlx::query(
            "INSERT INTO gate_overrides (deployment_id, gate, by_principal, reason, at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(deployment_id)
        .bind(&lifted.gate)
        .bind(&lifted.by)
        .bind(&lifted.reason)
        .bind(lifted.at_ms)
        .execute(&self.pool)
        .await
        .ctx(|| {
            format!(
                "recording {}'s override of gate {} on deployment {deployment_id}",
                lifted.by, lifted.gate
            )
        })?;
        Ok(())
    }

    /// The overrides of a deployment, oldest first.
    pub async fn overrides(&self, deployment_id: i64) -> Result<Vec<Override>> {
        let rows = sqlx::query(
            "SELECT gate, by_principal, reason, at_ms FROM gate_overrides \
             WHERE deployment_id = $1 ORDER BY id",
        )
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the overrides of deployment {deployment_id}"))?;
        let what = || format!("override of deployment {deployment_id}");
        rows.iter()
            .map(|row| {
                Ok(Override {
                    gate: get(row, "gate", &what)?,
                    by: get(row, "by_principal", &what)?,
                    reason: get(row, "reason", &what)?,
                    at_ms: get(row, "at_ms", &what)?,
                })
            })
            .collect()
    }

    /// Keeps the gate rows of a deployment as they stood when it passed its gates.
    pub async fn record_passed_gates(
        &self,
        deployment_id: i64,
        rows: &[GateRow],
        at_ms: i64,
    ) -> Result<()> {
        let json = serde_json::to_string(rows).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO gate_reports (deployment_id, rows_json, at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (deployment_id) DO UPDATE SET rows_json = excluded.rows_json, at_ms = excluded.at_ms",
        )
        .bind(deployment_id)
        .bind(json)
        .bind(at_ms)
        .execute(&self.pool)
        .await
        .ctx(|| format!("recording the passed gates of deployment {deployment_id}"))?;
        Ok(())
    }

    /// The gate rows recorded when the deployment passed its gates, and when.
    pub async fn passed_gates(&self, deployment_id: i64) -> Result<Option<(Vec<GateRow>, i64)>> {
        let row = sqlx::query("SELECT rows_json, at_ms FROM gate_reports WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_optional(&self.pool)
            .await
            .ctx(|| format!("reading the passed gates of deployment {deployment_id}"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let what = || format!("passed gates of deployment {deployment_id}");
        let json: String = get(&row, "rows_json", &what)?;
        let rows = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("{}: {e}", what())))?;
        Ok(Some((rows, get(&row, "at_ms", &what)?)))
    }
}
