//! The `pgsat` binary; everything lives in the library (`pgsat::cli`).

fn main() -> std::process::ExitCode {
    pgsat::cli::main()
}
