//! One module per subcommand.

pub mod check;
pub mod client;
pub mod plan;
pub mod provisioner;
pub mod serve;
pub mod token;

/// Exit status for usage errors and invalid input (SPEC section 7).
pub const EXIT_INVALID: u8 = 2;
