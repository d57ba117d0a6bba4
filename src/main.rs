//! The `tokend` binary: everything lives in the library (see `tokend::cli`).

fn main() -> std::process::ExitCode {
    tokend::cli::main()
}
