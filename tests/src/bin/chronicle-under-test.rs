//! The `chronicle` command line, built inside the tests package so process tests
//! can start real nodes (`CARGO_BIN_EXE_chronicle-under-test`).

fn main() -> std::process::ExitCode {
    chronicle::cli::main()
}
