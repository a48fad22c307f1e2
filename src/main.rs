//! The `chronicle` binary: the node and the operator CLI (see `chronicle --help`).

fn main() -> std::process::ExitCode {
    chronicle::cli::main()
}
