//! Shared by the bench binaries.

use q2q_prior::tools::synth;

/// The value of `--name N` on the command line, or `default`. Cargo's own `--bench` flag and
/// anything unknown are ignored.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

/// Runs `synth` to completion on a runtime of its own.
pub fn generate_blocking(
    generate: impl std::future::Future<Output = q2q_prior::Result<synth::SynthOutput>>,
) -> synth::SynthOutput {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(generate)
        .expect("synth")
}
