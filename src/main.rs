//! The `pgsat` binary; everything lives in the library (`pgsat::cli`).

/// jemalloc instead of glibc malloc: the per-transaction filter and
/// delivery path allocates and frees many small objects across threads.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    pgsat::cli::main()
}
