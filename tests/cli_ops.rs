//! Every command and every exit status through the real binary, on the sqlite default.

use crate::util::{Env, db, rows};
use std::time::Duration;

#[test]
fn set_then_get_prints_the_raw_string() {
    let env = Env::new();
    env.run(&["set", "greeting", "hello world", "60"]).ok().stdout_is("");
    env.run(&["get", "greeting"]).ok().stdout_is("hello world\n");
    env.run(&["get", "-n", "greeting"]).ok().stdout_is("hello world");
    env.run(&["get", "--json", "greeting"]).ok().stdout_is("\"hello world\"\n");
}

#[test]
fn values_are_stored_as_kinto_writes_them() {
    let env = Env::new();
    env.run(&["set", "s", "é☃", "60"]).ok();
    env.run(&["set", "--json", "j", r#"{ "b": 1.0, "a": [true, null, "ü"] }"#, "60"]).ok();
    let conn = db(&env.default_db());
    let stored = |k: &str| -> String {
        conn.query_row("SELECT value FROM cache WHERE key = ?1", [k], |r| r.get(0)).expect("row")
    };
    assert_eq!(stored("s"), r#""\u00E9\u2603""#);
    assert_eq!(stored("j"), r#"{"b":1.0,"a":[true,null,"\u00FC"]}"#);
    env.run(&["get", "s"]).ok().stdout_is("é☃\n");
    env.run(&["get", "j"]).ok().stdout_is("{\"b\":1.0,\"a\":[true,null,\"ü\"]}\n");
}

/// A value nested 200 levels deep (as Kinto, through Python's `json`, writes and reads it) is
/// read by one-shot commands and by a batch alike; past kcache's limit both refuse it.
#[test]
fn deeply_nested_values_read_the_same_one_shot_and_in_a_batch() {
    let env = Env::new();
    for levels in [200, 995] {
        let doc = format!("{}\"x\"{}", "[".repeat(levels), "]".repeat(levels));
        env.run(&["set", "--json", "deep", &doc, "60"]).ok();
        env.run(&["get", "deep"]).ok().stdout_is(&format!("{doc}\n"));
        let out = env.run_stdin(&["batch"], Some(b"get deep\ndelete deep\n"));
        out.ok().stdout_is(&format!(
            "{{\"line\":1,\"status\":0,\"value\":{doc}}}\n{{\"line\":2,\"status\":0,\"value\":{doc}}}\n"
        ));
    }
    let too_deep = format!("{}1{}", "[".repeat(2049), "]".repeat(2049));
    env.run(&["set", "--json", "deep", &too_deep, "60"]).code(2).stderr_has("nest more than 2048 levels");
    db(&env.default_db())
        .execute("INSERT INTO cache (key, value, ttl) VALUES ('deep', ?1, NULL)", [&too_deep])
        .expect("insert");
    env.run(&["get", "deep"]).code(4).stderr_has("nest more than 2048 levels");
    let out = env.run_stdin(&["batch"], Some(b"get deep\n"));
    out.code(4);
    assert!(out.stdout.contains("\"status\":4") && out.stdout.contains("nest more than 2048"), "{}", out.stdout);
}

#[test]
fn stdin_value_is_read_byte_for_byte() {
    let env = Env::new();
    let text = "line 1\n\tline \"2\"\n\n";
    env.run_stdin(&["set", "k", "-", "60"], Some(text.as_bytes())).ok();
    env.run(&["get", "-n", "k"]).ok().stdout_is(text);
    env.run_stdin(&["set", "--json", "j", "-", "60"], Some(b"[1, 2]\n")).ok();
    env.run(&["get", "j"]).ok().stdout_is("[1,2]\n");
}

#[test]
fn missing_key_is_status_1_with_nothing_on_stdout() {
    let env = Env::new();
    env.run(&["get", "nope"]).code(1).stdout_is("");
    env.run(&["delete", "nope"]).code(1).stdout_is("");
    env.run(&["expire", "nope", "10"]).code(1).stdout_is("");
    env.run(&["ttl", "nope"]).code(1).stdout_is("-2\n");
    assert!(!env.default_db().exists(), "reads never create the file");
}

#[test]
fn ttl_rounds_up_and_ms_is_exact() {
    let env = Env::new();
    env.run(&["set", "k", "v", "3600"]).ok();
    env.run(&["ttl", "k"]).ok().stdout_is("3600\n");
    let ms: u64 = env.run(&["ttl", "--ms", "k"]).ok().stdout.trim().parse().expect("number");
    assert!((3_590_000..=3_600_000).contains(&ms), "{ms}");
    env.run(&["set", "k", "v", "0.25"]).ok();
    env.run(&["ttl", "k"]).ok().stdout_is("1\n");
    env.run(&["set", "k", "v", "2h"]).ok();
    env.run(&["ttl", "k"]).ok().stdout_is("7200\n");
}

#[test]
fn a_row_without_expiry_reports_minus_1() {
    let env = Env::new();
    env.run(&["set", "k", "v", "60"]).ok();
    db(&env.default_db()).execute("UPDATE cache SET ttl = NULL WHERE key = 'k'", []).expect("update");
    env.run(&["ttl", "k"]).ok().stdout_is("-1\n");
    env.run(&["get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn expire_changes_the_ttl_and_zero_expires_now() {
    let env = Env::new();
    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["expire", "k", "15m"]).ok().stdout_is("");
    env.run(&["ttl", "k"]).ok().stdout_is("900\n");
    env.run(&["expire", "k", "0"]).ok();
    env.run(&["get", "k"]).code(1);
    env.run(&["expire", "k", "60"]).code(1);
}

#[test]
fn set_with_ttl_zero_removes_the_key() {
    let env = Env::new();
    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["set", "k", "v", "0"]).ok();
    env.run(&["get", "k"]).code(1);
    assert_eq!(rows(&env.default_db()), 0);
}

#[test]
fn delete_prints_the_old_value() {
    let env = Env::new();
    env.run(&["set", "--json", "k", "[1]", "60"]).ok();
    env.run(&["delete", "k"]).ok().stdout_is("[1]\n");
    env.run(&["delete", "k"]).code(1).stdout_is("");
}

#[test]
fn expired_entries_are_missing_everywhere_and_get_never_writes() {
    let env = Env::new();
    env.run(&["set", "k", "v", "0.2"]).ok();
    std::thread::sleep(Duration::from_millis(300));
    env.run(&["get", "k"]).code(1);
    env.run(&["ttl", "k"]).code(1).stdout_is("-2\n");
    assert_eq!(rows(&env.default_db()), 1, "get and ttl never write (the expired row is still there)");
    env.run(&["expire", "k", "60"]).code(1);
    env.run(&["get", "k"]).code(1);
    env.run(&["delete", "k"]).code(1);
}

#[test]
fn purge_removes_expired_rows_only() {
    let env = Env::new();
    env.run(&["set", "live", "v", "60"]).ok();
    env.run(&["set", "dead", "v", "0.1"]).ok();
    std::thread::sleep(Duration::from_millis(200));
    env.run(&["purge"]).ok().stdout_is("");
    assert_eq!(rows(&env.default_db()), 1);
    env.run(&["-v", "purge"]).ok().stderr_has("removed 0 expired entries");
    env.run(&["get", "live"]).ok();
}

#[test]
fn set_removes_a_bounded_batch_of_expired_rows() {
    let env = Env::new();
    env.run(&["migrate"]).ok();
    let conn = db(&env.default_db());
    for i in 0..250 {
        conn.execute("INSERT INTO cache (key, value, ttl) VALUES (?1, '\"x\"', 1.0)", [format!("old{i}")])
            .expect("insert");
    }
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(rows(&env.default_db()), 150 + 1, "one set removes 100 expired rows");
    env.run(&["set", "k", "v", "60"]).ok();
    env.run(&["set", "k", "v", "60"]).ok();
    assert_eq!(rows(&env.default_db()), 1);
}

#[test]
fn flush_respects_the_prefix() {
    let env = Env::new();
    env.run(&["--prefix", "a:", "set", "k", "1", "60"]).ok();
    env.run(&["--prefix", "b:", "set", "k", "2", "60"]).ok();
    env.run(&["--prefix", "a%", "set", "k", "3", "60"]).ok();
    env.run(&["--prefix", "a:", "flush"]).ok().stdout_is("");
    env.run(&["--prefix", "a:", "get", "k"]).code(1);
    env.run(&["--prefix", "b:", "get", "k"]).ok().stdout_is("2\n");
    env.run(&["--prefix", "a%", "get", "k"]).ok().stdout_is("3\n");
    env.run(&["--prefix", "b:", "flush", "--all"]).ok();
    assert_eq!(rows(&env.default_db()), 0);
    env.run(&["set", "k", "1", "60"]).ok();
    env.run(&["flush"]).ok();
    assert_eq!(rows(&env.default_db()), 0);
}

#[test]
fn ping_prints_ok_and_leaves_no_key() {
    let env = Env::new();
    env.run(&["ping"]).ok().stdout_is("ok\n");
    assert_eq!(rows(&env.default_db()), 0);
}

#[test]
fn migrate_dry_run_prints_sql_and_changes_nothing() {
    let env = Env::new();
    let out = env.run(&["migrate", "--dry-run"]);
    out.ok();
    assert!(out.stdout.contains("CREATE TABLE IF NOT EXISTS cache"), "{}", out.stdout);
    assert!(out.stdout.contains("CREATE INDEX IF NOT EXISTS idx_cache_ttl"), "{}", out.stdout);
    assert!(!env.default_db().exists(), "dry-run creates nothing");
    env.run(&["migrate"]).ok().stdout_is("");
    env.run(&["migrate", "--dry-run"]).ok().stdout_is("-- the schema is up to date\n");
    env.run(&["-v", "migrate"]).ok().stderr_has("the schema is up to date");
    db(&env.default_db()).execute_batch("DROP INDEX idx_cache_ttl").expect("drop index");
    let out = env.run(&["migrate", "--dry-run"]);
    assert!(out.stdout.contains("idx_cache_ttl") && !out.stdout.contains("TABLE"), "{}", out.stdout);
    env.run(&["-v", "migrate"]).ok().stderr_has("ran: CREATE INDEX");
}

#[test]
fn memory_backend_lives_for_one_process() {
    let env = Env::new();
    env.run(&["-b", "memory", "set", "k", "v", "60"]).ok();
    env.run(&["-b", "memory", "get", "k"]).code(1);
    env.run(&["-b", "memory", "ping"]).ok().stdout_is("ok\n");
    assert!(!env.default_db().exists());
}

#[test]
fn broken_pipe_is_quiet_success() {
    let env = Env::new();
    let big = "x".repeat(200_000);
    env.run_stdin(&["set", "k", "-", "60"], Some(big.as_bytes())).ok();
    let mut cmd = env.command();
    cmd.args(["get", "k"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take()); // the reader goes away before kcache writes
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Runs `args` with standard output on `/dev/full` (every write fails: no space left).
fn run_to_dev_full(env: &Env, args: &[&str], stdin: Option<&[u8]>) -> crate::util::Out {
    use std::process::Stdio;
    let mut cmd = env.command();
    cmd.args(args)
        .stdout(std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full"))
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().expect("spawn kcache");
    let feeder = stdin.map(|bytes| {
        let (bytes, mut pipe) = (bytes.to_vec(), child.stdin.take().expect("stdin"));
        std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut pipe, &bytes);
        })
    });
    let out = child.wait_with_output().expect("wait");
    if let Some(f) = feeder {
        let _ = f.join();
    }
    crate::util::Out {
        status: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|a| a.to_string()).collect(),
    }
}

/// The line number in "no command after line N was run".
fn ran_up_to(stderr: &str) -> u64 {
    let tail = stderr.split("no command after line ").nth(1).unwrap_or_else(|| panic!("no line number: {stderr}"));
    tail.split(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no line number: {stderr}"))
}

/// Output that fails after the backend was changed is status 5, never 0 (`| head -1`) or 2
/// ("nothing was sent"): the batch stops reading at once and says how far it got; `delete` says
/// the entry is gone. A read-only command whose output is full is 5 too; one whose pipe was
/// closed stays a quiet 0 (`broken_pipe_is_quiet_success`).
#[test]
fn output_that_fails_after_a_change_is_status_5_and_says_how_far_it_got() {
    let sets: String = (0..20_000).map(|i| format!("set k{i} v 600\n")).collect();
    for jobs in ["1", "2"] {
        // `| head -1`: the reader takes one line and goes away.
        let env = Env::new();
        env.run(&["migrate"]).ok();
        let mut cmd = env.command();
        cmd.args(["batch", "--jobs", jobs])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = sets.clone();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, input.as_bytes());
        });
        let mut first = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut first)
            .expect("one line");
        assert_eq!(first, "{\"line\":1,\"status\":0}\n");
        let out = child.wait_with_output().expect("wait");
        let _ = feeder.join();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(5), "jobs {jobs}: {stderr}");
        assert!(stderr.starts_with("kcache: error: batch: standard output failed"), "{stderr}");
        let ran = ran_up_to(&stderr);
        assert!(ran < 20_000, "jobs {jobs}: it stopped reading at once: {stderr}");
        let stored = rows(&env.default_db());
        assert!(stored >= 1 && stored as u64 <= ran, "jobs {jobs}: {stored} rows, ran up to {ran}");

        // `> /dev/full`: the same, with the cause.
        let env = Env::new();
        env.run(&["migrate"]).ok();
        let out = run_to_dev_full(&env, &["batch", "--jobs", jobs], Some(sets.as_bytes()));
        out.code(5).stderr_has("No space left on device").one_error_line();
        let ran = ran_up_to(&out.stderr);
        assert!(ran < 20_000 && rows(&env.default_db()) as u64 <= ran, "jobs {jobs}: {}", out.stderr);
    }

    let env = Env::new();
    env.run_stdin(&["set", "big", "-", "600"], Some("x".repeat(100_000).as_bytes())).ok();
    run_to_dev_full(&env, &["get", "big"], None).code(5).stderr_has("No space left on device");
    let out = run_to_dev_full(&env, &["delete", "big"], None);
    out.code(5).one_error_line().stderr_has("the entry was removed, but its value could not be written");
    env.run(&["get", "big"]).code(1);

    // A closed pipe after `delete`: 5 as well (the entry is gone), where `get` ends quietly.
    env.run_stdin(&["set", "big", "-", "600"], Some("x".repeat(200_000).as_bytes())).ok();
    let mut cmd = env.command();
    cmd.args(["delete", "big"]).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    env.run(&["get", "big"]).code(1);
}

// ---- bad input: status 2, one line naming the culprit, nothing written --------------------

#[test]
fn bad_input_is_status_2_and_writes_nothing() {
    let env = Env::new();
    env.run(&["set", "keep", "v", "60"]).ok();
    type Case<'a> = (&'a [&'a str], Option<&'a [u8]>, &'a str);
    let cases: &[Case] = &[
        (&["set", "", "v", "60"], None, "the key is empty"),
        (&["set", "a\u{1}b", "v", "60"], None, "control character"),
        (&["set", "a\nb", "v", "60"], None, "control character"),
        (&["get", "a\u{1b}[2Jb"], None, "control character"),
        (&["set", "k", "-", "60"], Some(b"\xff\xfe"), "not valid UTF-8"),
        (&["set", "--json", "k", "{not json", "60"], None, "not a JSON document"),
        (&["set", "--json", "k", "NaN", "60"], None, "not a JSON document"),
        (&["set", "--json", "k", "1e999", "60"], None, "out of range"),
        (&["set", "--json", "k", "-", "60"], Some(b"[1,"), "standard input"),
        (&["--backend", "mongodb", "set", "k", "v", "60"], None, "unknown backend 'mongodb'"),
    ];
    for (args, stdin, needle) in cases {
        env.run_stdin(args, *stdin).code(2).stdout_is("").one_error_line().stderr_has(needle);
    }
    assert_eq!(rows(&env.default_db()), 1, "nothing was written");
    // A hostile key never reaches the terminal raw.
    let out = env.run(&["get", "a\u{1b}[2Jb"]);
    assert!(!out.stderr.contains('\u{1b}'), "{:?}", out.stderr);
}

#[test]
fn bad_ttls_are_usage_errors() {
    let env = Env::new();
    for ttl in ["-1", "", "abc", "10x", "1e999", "NaN", "1e3"] {
        let out = env.run(&["set", "k", "v", ttl]);
        out.code(2).stdout_is("");
        assert!(out.stderr.contains("TTL") || out.stderr.contains("ttl"), "{ttl}: {}", out.stderr);
        env.run(&["expire", "k", ttl]).code(2);
    }
    assert!(!env.default_db().exists());
}

#[test]
fn a_directory_where_the_file_should_be_is_status_2() {
    let env = Env::new();
    std::fs::create_dir_all(env.default_db()).expect("mkdir");
    env.run(&["set", "k", "v", "60"]).code(2).one_error_line().stderr_has("is a directory");
    env.run(&["get", "k"]).code(2).one_error_line();
}

#[test]
fn a_read_only_file_is_status_4_and_stays_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.run(&["set", "k", "v", "60"]).ok();
    let path = env.default_db();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).expect("chmod");
    env.run(&["set", "k", "w", "60"]).code(4).one_error_line().stderr_has("read-only");
    env.run(&["delete", "k"]).code(4);
    env.run(&["flush"]).code(4);
    env.run(&["get", "k"]).ok().stdout_is("v\n");
}

#[test]
fn a_file_that_is_not_a_database_is_status_4() {
    let env = Env::new();
    let path = env.default_db();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, "this is not sqlite, just text that is long enough to have a header........").expect("write");
    env.run(&["get", "k"]).code(4).one_error_line();
    env.run(&["set", "k", "v", "60"]).code(4).one_error_line();
}

#[test]
fn a_lock_held_too_long_is_status_3() {
    let env = Env::new();
    env.run(&["set", "k", "v", "60"]).ok();
    let config = env.write("c.toml", "[cache]\npool_timeout = 0.2\n");
    let conn = db(&env.default_db());
    conn.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    env.run(&["-c", config.to_str().expect("utf8"), "set", "k", "w", "60"])
        .code(3)
        .one_error_line()
        .stderr_has("locked");
    conn.execute_batch("ROLLBACK").expect("unlock");
    env.run(&["-c", config.to_str().expect("utf8"), "set", "k", "w", "60"]).ok();
}

/// `keys` and `flush --match` through the binary: formats, statuses, and bad input refused
/// (status 2) before anything is removed.
#[test]
fn keys_and_flush_match_through_the_binary() {
    let env = Env::new();
    for k in ["user:1", "user:2", "user:10", "sess:a"] {
        env.run(&["set", k, "v", "600"]).ok();
    }
    env.run(&["set", "--json", "forever", "1", "600"]).ok();
    db(&env.default_db()).execute("UPDATE cache SET ttl = NULL WHERE key = 'forever'", []).expect("update");
    let sorted = |s: &str| {
        let mut v: Vec<&str> = s.lines().collect();
        v.sort();
        v.join("\n")
    };
    let out = env.run(&["keys", "user:?"]);
    assert_eq!(sorted(&out.ok().stdout), "user:1\nuser:2");
    let out = env.run(&["keys", "--ttl", "forever"]);
    out.ok().stdout_is("forever\t-1\n");
    let out = env.run(&["keys", "--ttl", "sess:*"]);
    out.ok().stdout_is("sess:a\t600\n");
    let out = env.run(&["keys", "--json", "forever"]);
    out.ok().stdout_is("{\"key\":\"forever\",\"ttl\":null}\n");
    let out = env.run(&["keys", "-0", "user:1*"]);
    assert_eq!(sorted(&out.ok().stdout.replace('\0', "\n")), "user:1\nuser:10");
    assert_eq!(env.run(&["keys", "--limit", "2"]).ok().stdout.lines().count(), 2);
    env.run(&["keys", "nothing*"]).code(1).stdout_is("");

    // Bad input: status 2, nothing removed.
    env.run(&["keys", "[abc"]).code(2).one_error_line().stderr_has("never closed");
    env.run(&["flush", "--match", "user:\\"]).code(2).stderr_has("lone");
    env.run(&["flush", "--match", "user:*", "--all"]).code(2);
    env.run(&["keys", "--limit", "0"]).code(2);
    env.run(&["keys", "--json", "-0"]).code(2);
    env.run(&["flush", "--dry-run"]).code(2);
    let out = env.run_stdin(&["batch"], Some(b"flush --match 'user:*'\n"));
    out.code(2);
    assert!(out.stdout.contains("not allowed in a batch"), "{}", out.stdout);
    assert_eq!(rows(&env.default_db()), 5, "nothing was removed");

    let out = env.run(&["flush", "--match", "user:*", "--dry-run"]);
    assert_eq!(sorted(&out.ok().stdout), "user:1\nuser:10\nuser:2");
    assert_eq!(rows(&env.default_db()), 5);
    env.run(&["-v", "flush", "--match", "user:*"]).ok().stdout_is("").stderr_has("removed 3 entries");
    assert_eq!(sorted(&env.run(&["keys"]).ok().stdout), "forever\nsess:a");
}

/// Every one-shot command rebuilds the WAL's index from the WAL, and no single process saw a
/// checkpoint through: without a writer that empties a WAL past 256 KB as it closes, 200 one-shot
/// `set`s left 2.4 MB of WAL for every later command to read (and 1,200 left 15 MB).
#[test]
fn one_shot_writes_keep_the_sqlite_wal_small() {
    let env = Env::new();
    let mut wal = env.default_db().into_os_string();
    wal.push("-wal");
    let mut largest = 0;
    for i in 0..200 {
        env.run(&["set", &format!("key{i}"), &"v".repeat(500), "1h"]).ok();
        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
    }
    assert!(largest > 0, "the file is in WAL mode");
    assert!(largest < 400 * 1024, "the WAL reached {largest} bytes");
    env.run(&["get", "key0"]).ok().stdout_is(&format!("{}\n", "v".repeat(500)));
    env.run(&["get", "key199"]).ok();
}
