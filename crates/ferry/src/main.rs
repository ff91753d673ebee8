//! `ferry`: the Ferry server, its proxy and the command line, in one binary.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
