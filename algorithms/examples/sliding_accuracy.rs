//! The `quorate-bench sliding-accuracy` measurement, built without the load generator's
//! network stack: it compiles the same source file (`bench/src/accuracy.rs`) against this
//! crate alone, so a release build takes a minute instead of the whole gRPC tree.
//!
//! `cargo run --release -p quorate-algorithms --example sliding_accuracy -- [--keys N]
//! [--minutes M] [--precisions 1,4,10,20,60] [--seed S]`
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../bench/src/accuracy.rs"]
mod accuracy;

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let mut config = accuracy::AccuracyConfig {
        keys: 4_000,
        duration: Duration::from_secs(30 * 60),
        limit: 100,
        window: 60 * quorate_algorithms::SECOND,
        precisions: vec![1, 4, 10, 20, 60],
        seed: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            anyhow::bail!("flags take a value: {pair:?}");
        };
        match flag.as_str() {
            "--keys" => config.keys = value.parse()?,
            "--minutes" => config.duration = Duration::from_secs(value.parse::<u64>()? * 60),
            "--limit" => config.limit = value.parse()?,
            "--seed" => config.seed = value.parse()?,
            "--precisions" => {
                config.precisions = value.split(',').map(str::parse).collect::<Result<_, _>>()?
            }
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    print!("{}", accuracy::run(&config)?);
    Ok(())
}
