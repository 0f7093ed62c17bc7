//! Provisioners: what actually builds, stops and deletes a workspace. Today there is one, [`exec`], which runs the
//! template's command as SPEC section 5 describes. The job workers call a provisioner with a [`BuildRequest`] and
//! get a [`BuildOutcome`]; they own leases, retries and the database, the provisioner owns the process.

pub mod exec;
pub mod process;

pub use exec::{BuildOutcome, BuildRequest, BuildResult, LOG_LIMIT};
