//! The `warmpool` binary. Exit statuses: 0 success, 1 failure, 2 usage or invalid input, 3 pool empty.

fn main() -> std::process::ExitCode {
    warmpool::cli::run()
}
