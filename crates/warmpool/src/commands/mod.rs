//! One module per subcommand.

pub mod check;
pub mod plan;
pub mod serve;

/// Exit status for usage errors and invalid input (SPEC section 7).
pub const EXIT_INVALID: u8 = 2;
