//! Rollout decisions (placeholder)
