//! The `patless` binary: parse the command line, then hand over to the library.

/// jemalloc, which returns freed memory to the system within about a second (its settings:
/// `.cargo/config.toml`): with glibc's allocator, 4,000 idle connections kept ~14 KiB each of
/// memory already freed, and RSS stayed at its peak after they closed (bench/README.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    patless::cli::main()
}
