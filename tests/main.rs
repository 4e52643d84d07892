//! The one integration test binary. Every file of tests/ is a module here; a test below checks
//! that none was forgotten.

mod batch;
mod cli_config;
mod cli_ops;
mod cli_usage;
mod concurrency;
mod conformance;
mod faults;
mod hostile;
mod load;
mod memcached;
mod postgresql;
mod redis;
mod rig;
mod servers;
mod util;

#[test]
fn no_forgotten_test_files() {
    let main = include_str!("main.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    for entry in std::fs::read_dir(&dir).expect("tests dir") {
        let path = entry.expect("entry").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        let is_module = path.extension().is_some_and(|e| e == "rs") || path.join("mod.rs").exists();
        if is_module && stem != "main" {
            assert!(main.contains(&format!("mod {stem};")), "tests/{stem} is not declared in tests/main.rs");
        }
    }
}
