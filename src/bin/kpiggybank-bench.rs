//! `kpiggybank-bench`: the load generator; everything lives in `kpiggybank::bench`.

fn main() -> std::process::ExitCode {
    kpiggybank::bench::main()
}
