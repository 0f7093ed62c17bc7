//! warmpool's pure core: ids, the snapshot model, the planner and its plan, schedules and durations.
//!
//! Invariants: nothing here does I/O, spawns, or reads a clock (`now` is always an argument; clippy's
//! `disallowed-methods` enforces it), and nothing panics on input. The crate depends on neither the store nor the
//! binary, so the planner can be tested, benchmarked and run by `warmpool plan` without a database.

pub mod duration;
pub mod ids;
pub mod model;
pub mod plan;
pub mod planner;
pub mod schedule;
pub mod snapshot_json;
pub mod template;

pub use duration::Duration;
pub use ids::{PresetId, WorkspaceId};
pub use model::{PREBUILDS_OWNER, Snapshot};
pub use plan::Plan;
pub use planner::plan;
