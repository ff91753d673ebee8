//! `ferry-demo`: the small HTTP service of the quickstart, tests and benchmarks
//! (also reachable as `ferry demo`).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = ferry_demo::DemoArgs::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(ferry_demo::serve(args))
}
