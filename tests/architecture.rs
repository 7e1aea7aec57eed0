//! The layering docs/ARCHITECTURE.md describes, checked on the sources: every module uses only
//! modules below it in [`LAYERS`], so there is no import circle. A new module must be given its
//! place here.

use std::path::Path;

/// Bottom to top. A module may use the modules before it, never one after it.
const LAYERS: [&str; 27] = [
    "redact",
    "error",
    "hash",
    "process",
    "formula",
    "config",
    "normalize",
    "reference",
    "udf",
    "io::storage",
    "io::checks",
    "io::tables",
    "io::sink",
    "pipeline",
    "session",
    "job",
    "backfill",
    "cluster",
    "shell",
    "tools::labels",
    "tools::feature_table",
    "tools::validate",
    "tools::evaluate",
    "tools::export",
    "tools::mine",
    "tools::synth",
    "cli",
];

/// The module a source file belongs to: its top-level module, or `io::x` / `tools::x`.
fn module_of(relative: &str) -> String {
    let parts: Vec<&str> = relative.split('/').collect();
    let name = |s: &str| s.trim_end_matches(".rs").to_string();
    match parts.as_slice() {
        [group @ ("io" | "tools"), rest, ..] if *rest != "mod.rs" => {
            format!("{group}::{}", name(rest))
        }
        [first, ..] => name(first),
        [] => unreachable!(),
    }
}

fn rank(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|m| *m == module)
        .unwrap_or_else(|| panic!("module {module} has no place in LAYERS"))
}

/// `crate::a` or `crate::io::b` / `crate::tools::b` paths in `code` (comments and the unit tests
/// left out: tests may use anything).
fn uses(code: &str) -> Vec<String> {
    let code = code
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let path: Vec<&str> = line[at + "crate::".len()..]
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .next()
                .unwrap_or_default()
                .split("::")
                .collect();
            let module = match path.as_slice() {
                [group @ ("io" | "tools"), name, ..] if !name.is_empty() => {
                    format!("{group}::{name}")
                }
                [name, ..] if !name.is_empty() => name.to_string(),
                _ => continue,
            };
            // `crate::Error` / `crate::Result`: the error module's re-exports
            let module = match module.as_str() {
                "Error" | "Result" => "error".to_string(),
                _ => module,
            };
            found.push(module);
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut upward = Vec::new();
    let mut checked = 0;
    for file in &files {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if relative == "lib.rs" || relative == "main.rs" {
            continue;
        }
        let module = module_of(&relative);
        for used in uses(&std::fs::read_to_string(file).unwrap()) {
            checked += 1;
            if used != module && rank(&used) > rank(&module) {
                upward.push(format!("{relative} ({module}) uses {used}"));
            }
        }
    }
    assert!(
        checked > 200,
        "only {checked} uses found: is the scan broken?"
    );
    assert!(
        upward.is_empty(),
        "uses of a higher layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_scan_sees_an_upward_use() {
    // the check above can fail: a config file that used the cluster would be reported
    let found = uses("use crate::cluster::parse_url;\n// crate::job in a comment\n");
    assert_eq!(found, vec!["cluster".to_string()]);
    assert!(rank("cluster") > rank(&module_of("config.rs")));
    assert_eq!(module_of("io/sink/parts.rs"), "io::sink");
    assert_eq!(module_of("tools/evaluate/report.rs"), "tools::evaluate");
    assert_eq!(module_of("pipeline/merge/exec.rs"), "pipeline");
}
