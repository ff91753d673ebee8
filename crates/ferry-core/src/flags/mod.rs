//! Feature flags: Unleash's client-features model, the one evaluation engine (used by
//! OFREP; Unleash SDKs evaluate the same JSON themselves), validation and edits, and the
//! bodies of the SDK endpoints.

pub mod edit;
mod eval;
pub mod guard;
pub mod metrics;
mod model;
pub mod ofrep;

pub use eval::{Engine, EvalEnv, Reason, Resolution, VariantHit, normalized_hash};
pub use model::{
    ClientFeatures, Constraint, Context, DeltaEvent, Dependency, Feature, Operator, Override,
    Payload, Segment, Strategy, Variant, apply_delta,
};
