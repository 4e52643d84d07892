//! The command-line surface: help, version, usage errors and completion scripts (SPEC "Commands"
//! and "Output and exit status").

use crate::util::{Env, Out};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The commands SPEC lists that every build has (`batch` is checked through the help listing).
const COMMANDS: &[&str] =
    &["migrate", "get", "set", "ttl", "expire", "delete", "flush", "ping", "purge", "completions"];

/// The names listed under "Commands:" in `kcache --help`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Asserts SPEC's usage error: status 2, clap's message on stderr, nothing on stdout, nothing
/// written.
#[track_caller]
fn usage_error(env: &Env, args: &[&str]) -> Out {
    let out = env.run(args);
    out.code(2);
    assert!(
        out.stderr.contains("Usage:") || out.stderr.contains("error:"),
        "kcache {args:?}: no clap message on stderr:\n{}",
        out.stderr
    );
    assert_eq!(out.stdout, "", "kcache {args:?} printed on stdout");
    assert!(!env.default_db().exists(), "kcache {args:?} created {}", env.default_db().display());
    out
}

#[test]
fn top_level_help_has_an_example() {
    let env = Env::new();
    let out = env.run(&["-h"]);
    out.ok();
    assert!(out.stdout.contains("Usage:"), "{}", out.stdout);
    let out = env.run(&["--help"]);
    out.ok();
    assert!(out.stdout.contains("Usage:"), "{}", out.stdout);
    assert_eq!(out.stderr, "");
    assert!(out.stdout.contains("Example"), "kcache --help shows no example:\n{}", out.stdout);
}

#[test]
fn every_command_has_help_with_an_example() {
    let env = Env::new();
    let help = env.run(&["--help"]);
    help.ok();
    let listed = listed_commands(&help.stdout);
    for c in COMMANDS {
        assert!(listed.iter().any(|l| l == c), "kcache --help does not list {c}: {listed:?}");
    }
    // Every listed command, including those added later (batch), has an example.
    for c in &listed {
        let out = env.run(&[c, "--help"]);
        out.ok();
        assert!(out.stdout.contains("Usage: kcache"), "kcache {c} --help:\n{}", out.stdout);
        assert!(out.stdout.contains("Example"), "kcache {c} --help shows no example:\n{}", out.stdout);
        assert_eq!(out.stderr, "", "kcache {c} --help");
    }
    assert!(!env.default_db().exists(), "help wrote the sqlite file");
}

#[test]
fn help_needs_no_config() {
    let env = Env::new();
    let garbage = env.write("garbage.toml", "this is [not toml\n");
    let env = env.var("KCACHE_CONFIG", garbage.to_str().unwrap());
    env.run(&["--help"]).ok();
    env.run(&["set", "--help"]).ok();
    env.run(&["--version"]).ok();
}

#[test]
fn version_lists_the_compiled_backends() {
    let env = Env::new();
    let out = env.run(&["--version"]);
    out.ok();
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", out.stdout);
    assert!(out.stdout.starts_with("kcache "), "{}", out.stdout);
    assert!(out.stdout.contains("backends:"), "{}", out.stdout);
    assert!(out.stdout.contains("+sqlite"), "{}", out.stdout);
    assert!(out.stdout.contains("+memory"), "{}", out.stdout);
    for b in ["postgresql", "memcached", "redis"] {
        assert!(
            out.stdout.contains(&format!("+{b}")) || out.stdout.contains(&format!("-{b}")),
            "--version does not say whether {b} is built: {}",
            out.stdout
        );
    }
    let short = env.run(&["-V"]);
    short.ok();
    assert!(short.stdout.contains(env!("CARGO_PKG_VERSION")), "{}", short.stdout);
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let env = Env::new();
    let out = usage_error(&env, &["--frobnicate", "get", "k"]);
    out.stderr_has("--frobnicate");
    usage_error(&env, &["get", "--frobnicate", "k"]).stderr_has("--frobnicate");
    usage_error(&env, &["set", "--jsn", "k", "v", "60"]);
}

#[test]
fn missing_arguments_are_usage_errors() {
    let env = Env::new();
    usage_error(&env, &[]);
    usage_error(&env, &["get"]).stderr_has("Usage:");
    usage_error(&env, &["set", "k", "v"]).stderr_has("<TTL>");
    usage_error(&env, &["set"]);
    usage_error(&env, &["expire", "k"]).stderr_has("<TTL>");
    usage_error(&env, &["ttl"]);
    usage_error(&env, &["delete"]);
    usage_error(&env, &["completions"]);
    usage_error(&env, &["--prefix"]);
    usage_error(&env, &["get", "k", "extra"]);
}

#[test]
fn unknown_command_is_a_usage_error() {
    let env = Env::new();
    usage_error(&env, &["frobnicate"]).stderr_has("frobnicate");
    // clap suggests the near miss.
    usage_error(&env, &["expir", "k", "60"]).stderr_has("expire");
    usage_error(&env, &["completions", "tcsh"]).stderr_has("tcsh");
}

#[test]
fn bad_ttls_are_usage_errors() {
    let env = Env::new();
    for ttl in ["10x", "-1", "1e999", "abc", "", "NaN", "inf", "1.2.3", "-5m", "10y", "ms"] {
        let out = usage_error(&env, &["set", "k", "v", ttl]);
        out.stderr_has("error:");
        let out = usage_error(&env, &["expire", "k", ttl]);
        out.stderr_has("error:");
    }
    // More seconds than any backend can hold.
    usage_error(&env, &["set", "k", "v", "99999999999999999999999999"]);
}

#[test]
fn good_ttls_are_accepted() {
    let env = Env::new();
    for ttl in ["0", "60", "0.25", "500ms", "15m", "2h", "30d", "1s"] {
        env.run(&["set", "k", "v", ttl]).ok();
    }
    env.run(&["get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn verbose_and_quiet_together_are_a_usage_error() {
    let env = Env::new();
    usage_error(&env, &["-v", "-q", "get", "k"]).stderr_has("--quiet");
    usage_error(&env, &["--quiet", "set", "k", "v", "60", "--verbose"]);
}

#[test]
fn global_options_go_after_the_command_too() {
    let env = Env::new();
    env.run(&["set", "k", "v", "60", "--prefix", "p:"]).ok();
    env.run(&["--prefix", "p:", "get", "k"]).ok().stdout_is("v\n");
    env.run(&["get", "k"]).code(1);
}

// ---------------------------------------------------------------------------------------------
// Completions

fn completion_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("completions").join(name)
}

/// `kcache completions <shell>` equals the committed file (`SNAPSHOTS=overwrite` rewrites it).
fn completion_matches(shell: &str, file: &str) -> String {
    let out = Env::new().run(&["completions", shell]);
    out.ok();
    assert_eq!(out.stderr, "", "kcache completions {shell}");
    assert!(out.stdout.contains("kcache"), "{}", out.stdout);
    snapbox::assert_data_eq!(out.stdout.clone(), snapbox::Data::read_from(&completion_file(file), None).raw());
    out.stdout
}

fn installed(shell: &str) -> bool {
    Command::new(shell).arg("-c").arg("exit 0").output().is_ok_and(|o| o.status.success())
}

/// Runs `shell <check args> <script>`; prints a skip line when the shell is not installed.
fn syntax_check(shell: &str, check: &[&str], script: &str) {
    if !installed(shell) {
        eprintln!("skipped: {shell} not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(format!("kcache.{shell}"));
    std::fs::write(&path, script).expect("write script");
    let out = Command::new(shell).args(check).arg(&path).output().expect("run shell");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{shell} {check:?} rejects the completion script:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn completions_bash() {
    let script = completion_matches("bash", "kcache.bash");
    assert!(script.contains("complete "), "{script}");
    syntax_check("bash", &["-n"], &script);
}

#[test]
fn completions_zsh() {
    let script = completion_matches("zsh", "_kcache");
    assert!(script.starts_with("#compdef kcache"), "{script}");
    syntax_check("zsh", &["-n"], &script);
}

#[test]
fn completions_fish() {
    let script = completion_matches("fish", "kcache.fish");
    assert!(script.contains("complete -c kcache"), "{script}");
    syntax_check("fish", &["--no-execute"], &script);
}

#[test]
fn completions_list_every_command() {
    let env = Env::new();
    let help = env.run(&["--help"]);
    let script = env.run(&["completions", "bash"]);
    script.ok();
    for c in listed_commands(&help.stdout) {
        assert!(script.stdout.contains(&c), "the bash completion lacks {c}");
    }
}

#[test]
fn completions_for_the_other_shells() {
    let env = Env::new();
    for shell in ["elvish", "powershell"] {
        let out = env.run(&["completions", shell]);
        out.ok();
        assert!(out.stdout.contains("kcache"), "{shell}: {}", out.stdout);
    }
}

#[test]
fn completions_need_no_config() {
    let env = Env::new();
    let garbage = env.write("garbage.toml", "[cache\nthis is = = not toml\n\u{0}");
    let expected = env.run(&["completions", "bash"]);
    expected.ok();

    // A broken file named by KCACHE_CONFIG, by --config, a missing one, a directory, and a broken
    // default config file: none of them is read.
    let env = env.var("KCACHE_CONFIG", garbage.to_str().unwrap());
    env.write("config/kcache/config.toml", "not = [valid");
    let out = env.run(&["completions", "bash"]);
    out.ok().stdout_is(&expected.stdout);
    assert_eq!(out.stderr, "");
    env.run(&["--config", "/nonexistent/kinto.ini", "completions", "bash"]).ok().stdout_is(&expected.stdout);
    env.run(&["--config", env.path("config").to_str().unwrap(), "completions", "zsh"]).ok();
    // Nor is a broken environment.
    let env = env.var("KINTO_CACHE_POOL_SIZE", "ten").var("KINTO_CACHE_BACKEND", "mongodb");
    env.run(&["completions", "fish"]).ok();
    assert!(!env.default_db().exists(), "completions wrote the sqlite file");
}
