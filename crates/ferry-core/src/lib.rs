//! Ferry's pure core: the manifest, the domain vocabulary, the API bodies and the rollout
//! decisions. Nothing here does I/O or reads a clock; callers pass `now` in.

pub mod analysis;
pub mod api;
pub mod apply;
pub mod audit;
// console:
pub mod console;
pub mod dora;
pub mod duration;
pub mod flags;
pub mod gates;
pub mod manifest;
pub mod model;
pub mod progressive;
pub mod rbac;
// releases:
pub mod release;
pub mod rollout;
// config:
pub mod config;
// hooks:
pub mod hooks;
