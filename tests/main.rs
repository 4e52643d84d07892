//! The one integration test binary. Every file of tests/ is a module here; a test below checks
//! that none was forgotten.

//!
//! A backend's own tests build only with its cargo feature (`cargo test --no-default-features
//! --features sqlite` builds and runs the rest); the fault tests need every networked backend.

mod batch;
mod cli_config;
mod cli_ops;
mod cli_usage;
mod concurrency;
mod conformance;
#[cfg(all(feature = "postgresql", feature = "redis", feature = "memcached"))]
mod faults;
mod hostile;
mod load;
#[cfg(feature = "memcached")]
mod memcached;
mod memo;
#[cfg(feature = "redis")]
mod past_one_server;
#[cfg(feature = "postgresql")]
mod postgresql;
#[cfg(feature = "redis")]
mod redis;
mod rig;
mod stats;
#[cfg(all(feature = "postgresql", feature = "redis", feature = "memcached"))]
mod transfer;
#[cfg(all(feature = "postgresql", feature = "redis", feature = "memcached"))]
mod transfer_faults;
mod util;

/// Every file of tests/ is a module of tests/main.rs, and every file of tests/util/ one of
/// tests/util/mod.rs.
#[test]
fn no_forgotten_test_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (dir, declaring) in [("tests", "main.rs"), ("tests/util", "mod.rs")] {
        let dir = root.join(dir);
        let declared = std::fs::read_to_string(dir.join(declaring)).expect("the declaring file");
        for entry in std::fs::read_dir(&dir).expect("tests dir") {
            let path = entry.expect("entry").path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            let is_module = path.extension().is_some_and(|e| e == "rs") || path.join("mod.rs").exists();
            if is_module && format!("{stem}.rs") != declaring {
                let name = path.display();
                assert!(declared.contains(&format!("mod {stem};")), "{name} is not declared in {declaring}");
            }
        }
    }
}

/// Every test the README's Guarantees section names exists (`*` in a name matches any run of
/// characters; `module::tests::name` is a unit test in `src/module.rs` or `src/module/mod.rs`,
/// `a::b::tests::name` one in `src/a/b.rs`).
#[test]
fn the_readme_guarantees_name_tests_that_exist() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Guarantees")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Guarantees section in the README");
    let mut named = 0;
    for quoted in section.split('`').skip(1).step_by(2) {
        let Some((module, pattern)) = quoted.split_once("::") else { continue };
        if !quoted.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_:*".contains(c)) {
            continue;
        }
        let (file, pattern) = match quoted.split_once("::tests::") {
            Some((path, unit)) => {
                let module = root.join("src").join(path.replace("::", "/"));
                let file = module.with_extension("rs");
                (if file.exists() { file } else { module.join("mod.rs") }, unit)
            }
            None => (root.join("tests").join(format!("{module}.rs")), pattern),
        };
        let source = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{quoted}: {}: {e}", file.display()));
        let found = source
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("fn "))
            .map(|rest| rest.split(['(', '<']).next().unwrap_or_default())
            .any(|name| glob(pattern, name));
        assert!(found, "the README's Guarantees name {quoted}, which matches no test");
        named += 1;
    }
    assert!(named >= 10, "only {named} test names found in the Guarantees section");
}

/// `pattern` with `*` wildcards matches the whole of `name`.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => name
            .strip_prefix(head)
            .is_some_and(|tail| (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))),
    }
}
