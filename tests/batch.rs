//! `kcache batch` through the real binary: the protocol, order, per-key order under --jobs,
//! barriers, --keep-going, exit status, bad lines; on every backend the rig provides.

use crate::util::Env;
use crate::util::servers::replies;
use serde_json::Value;

fn protocol(backend: &str) {
    let Some((env, _guard)) = crate::util::rig::backend_env(backend) else { return };
    let input = r#"set a "hello world" 60
# a comment, then a blank line

get a
set --json j '{"q": "say \"hi\"", "u": "é😀", "n": "l1\nl2"}' 60
get j
ttl j
ttl --ms nope
expire a 2h
ttl a
delete a
get a
bogus line
set k - 10
"#;
    let out = env.run_stdin(&["batch", "--keep-going"], Some(input.as_bytes()));
    out.code(2);
    let r = replies(&out.stdout);
    let lines: Vec<u64> = r.iter().map(|v| v["line"].as_u64().expect("line")).collect();
    assert_eq!(lines, vec![1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], "input order, comments skipped");
    assert_eq!(r[0]["status"], 0);
    assert!(r[0].get("value").is_none(), "set has no value");
    assert_eq!(r[1]["value"], "hello world");
    assert_eq!(r[3]["value"]["q"], "say \"hi\"");
    assert_eq!(r[3]["value"]["u"], "é😀");
    assert_eq!(r[3]["value"]["n"], "l1\nl2", "a JSON escape in the line is a newline in the value");
    assert_eq!(r[4]["value"], 60);
    assert_eq!((r[5]["status"].as_u64(), r[5]["value"].as_i64()), (Some(1), Some(-2)));
    assert_eq!(r[7]["value"], 7200);
    assert_eq!(r[8]["value"], "hello world", "delete returns the value");
    assert_eq!(r[9]["status"], 1);
    assert!(r[9].get("value").is_none());
    for bad in [&r[10], &r[11]] {
        assert_eq!(bad["status"], 2);
        let e = bad["error"].as_str().expect("error message");
        assert!(e.starts_with("line 13") || e.starts_with("line 14"), "{e}");
    }
}

fn stops_at_the_first_error_without_keep_going(backend: &str) {
    let Some((env, _guard)) = crate::util::rig::backend_env(backend) else { return };
    let out = env.run_stdin(&["batch"], Some(b"set a 1 60\nset b 2 10x\nset c 3 60\n"));
    out.code(2);
    let r = replies(&out.stdout);
    assert_eq!(r.len(), 2, "{}", out.stdout);
    assert_eq!(r[1]["status"], 2);
    if backend == "memory" {
        return; // the next process has a memory of its own
    }
    let out = env.run_stdin(&["batch"], Some(b"get c\nget a\n"));
    out.code(0);
    let r = replies(&out.stdout);
    assert_eq!(r[0]["status"], 1, "the line after the failure never ran");
    assert_eq!(r[1]["value"], "1");
}

fn status_is_0_when_only_misses(backend: &str) {
    let Some((env, _guard)) = crate::util::rig::backend_env(backend) else { return };
    env.run_stdin(&["batch"], Some(b"get nope\ndelete nope\nexpire nope 5\n")).code(0);
}

fn jobs_keep_per_key_order_and_barriers(backend: &str) {
    let Some((env, _guard)) = crate::util::rig::backend_env(backend) else { return };
    let mut input = String::new();
    for i in 0..600 {
        input.push_str(&format!("set k{} v{i} 60\nget k{}\n", i % 13, i % 13));
    }
    input.push_str("ping\n");
    for k in 0..13 {
        input.push_str(&format!("get k{k}\n"));
    }
    let out = env.run_stdin(&["batch", "--jobs", "4"], Some(input.as_bytes()));
    out.ok();
    let r = replies(&out.stdout);
    assert_eq!(r.len(), 1200 + 1 + 13);
    for (i, v) in r.iter().enumerate() {
        assert_eq!(v["line"].as_u64(), Some(i as u64 + 1), "input order");
    }
    for i in 0..600 {
        // Each get follows its own key's set: it sees exactly that value.
        assert_eq!(r[2 * i + 1]["value"], format!("v{i}"), "line {}", 2 * i + 2);
    }
    for k in 0..13 {
        let last = (0..600).filter(|i| i % 13 == k).max().expect("some");
        assert_eq!(r[1201 + k]["value"], format!("v{last}"));
    }
    // flush is a barrier: every set before it is gone, every set after it stays.
    let out = env.run_stdin(
        &["batch", "-j", "3"],
        Some(b"set a 1 60\nset b 1 60\nset c 1 60\nflush\nget a\nget b\nset c 2 60\nget c\n"),
    );
    let r = replies(&out.stdout);
    if backend == "memcached" {
        // A prefixed flush is refused there (status 2), and the batch stops at it.
        out.code(2);
        assert_eq!((r.len(), &r[3]["status"]), (4, &Value::from(2)));
        return;
    }
    out.ok();
    assert_eq!(r[4]["status"], 1);
    assert_eq!(r[5]["status"], 1);
    assert_eq!(r[7]["value"], "2");
}

fn keep_going_with_jobs_reports_every_line(backend: &str) {
    let Some((env, _guard)) = crate::util::rig::backend_env(backend) else { return };
    let mut input = String::new();
    for i in 0..50 {
        input.push_str(&format!("set k{i} v 60\n"));
        input.push_str("set x y nope\n");
    }
    let out = env.run_stdin(&["batch", "-j", "2", "-k"], Some(input.as_bytes()));
    out.code(2);
    let r = replies(&out.stdout);
    assert_eq!(r.len(), 100);
    assert_eq!(r.iter().filter(|v| v["status"] == 2).count(), 50);
}

macro_rules! batch_tests {
    ($($backend:ident),*) => {
        $( mod $backend {
            #[test] fn protocol() { super::protocol(stringify!($backend)) }
            #[test] fn stops_at_the_first_error_without_keep_going() {
                super::stops_at_the_first_error_without_keep_going(stringify!($backend))
            }
            #[test] fn status_is_0_when_only_misses() { super::status_is_0_when_only_misses(stringify!($backend)) }
            #[test] fn jobs_keep_per_key_order_and_barriers() {
                super::jobs_keep_per_key_order_and_barriers(stringify!($backend))
            }
            #[test] fn keep_going_with_jobs_reports_every_line() {
                super::keep_going_with_jobs_reports_every_line(stringify!($backend))
            }
        } )*
    };
}

batch_tests!(sqlite, memory, postgresql, memcached, redis);

#[test]
fn memory_lives_for_the_whole_batch() {
    let env = Env::new().var("KINTO_CACHE_BACKEND", "memory");
    let out = env.run_stdin(&["batch"], Some(b"set a 1 60\nget a\n"));
    out.ok();
    assert_eq!(replies(&out.stdout)[1]["value"], "1");
}

#[test]
fn many_lines_stream_through() {
    // 200,000 lines written while the replies are read: nothing waits for the end of the
    // input. (Peak memory over a million lines is measured by scripts/bench.)
    let env = Env::new().var("KINTO_CACHE_BACKEND", "memory");
    let mut cmd = env.command();
    cmd.args(["batch", "-j", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        use std::io::Write;
        let mut buf = String::new();
        for i in 0..200_000 {
            buf.push_str(&format!("set k{} v{i} 60\n", i % 1000));
            if buf.len() > 64 * 1024 {
                stdin.write_all(buf.as_bytes()).expect("write");
                buf.clear();
            }
        }
        stdin.write_all(buf.as_bytes()).expect("write");
    });
    let mut count = 0u64;
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut stdout, &mut line).expect("read") > 0 {
        count += 1;
        assert!(line.starts_with(&format!("{{\"line\":{count},\"status\":0")), "{line}");
        line.clear();
    }
    feeder.join().expect("feeder");
    assert!(child.wait().expect("wait").success());
    assert_eq!(count, 200_000);
}

#[test]
fn answers_arrive_before_the_input_ends() {
    // A coprocess: each reply must come back before the next line is written.
    use std::io::{BufRead, Write};
    for jobs in ["1", "3"] {
        let env = Env::new().var("KINTO_CACHE_BACKEND", "memory");
        let mut cmd = env.command();
        cmd.args(["batch", "-j", jobs])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("spawn");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        for (i, cmdline) in ["set a 1 60", "get a", "ping", "delete a"].iter().enumerate() {
            writeln!(stdin, "{cmdline}").expect("write");
            stdin.flush().expect("flush");
            let mut reply = String::new();
            stdout.read_line(&mut reply).expect("read");
            let v: Value = serde_json::from_str(&reply).expect("json");
            assert_eq!(v["line"], i as u64 + 1, "jobs {jobs}: {reply}");
        }
        drop(stdin);
        assert!(child.wait().expect("wait").success());
    }
}

/// A line over the 16 MiB limit is refused (status 2, naming its length) without being held in
/// memory, and the batch goes on with the next line; a message never repeats a huge word.
#[test]
fn an_overlong_line_is_refused_briefly_and_the_batch_goes_on() {
    let env = Env::new();
    let mut input = b"set a 1 60\nset b ".to_vec();
    input.extend(std::iter::repeat_n(b'x', 20 << 20));
    input.extend_from_slice(b" 60\nget a\n");
    let huge_word = "y".repeat(1 << 20);
    input.extend_from_slice(format!("{huge_word} k\nset k v {huge_word}\n").as_bytes());
    let out = env.run_stdin(&["batch", "--keep-going"], Some(&input));
    out.code(2);
    assert!(out.stdout.len() < 2000, "no message repeats the input: {} bytes", out.stdout.len());
    let r = crate::util::servers::replies(&out.stdout);
    let statuses: Vec<u64> = r.iter().map(crate::util::servers::status).collect();
    assert_eq!(statuses, [0, 2, 0, 2, 2], "{}", out.stdout);
    let error = r[1]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("the line is {} bytes long", (20 << 20) + 9)), "{error}");
    assert!(error.contains("at most 16 MiB"), "{error}");
    assert_eq!(r[2]["value"], "1");
    for reply in &r[3..] {
        assert!(reply["error"].as_str().unwrap_or_default().contains("(1048576 bytes)"), "{reply}");
    }
    env.run(&["get", "b"]).code(1);
}

/// `set KEY - TTL` with standard input closed (`<&-`) is refused: it would store an empty value.
/// An empty input (`< /dev/null`) is an empty value, as before.
#[test]
fn set_from_a_closed_standard_input_is_refused() {
    let env = Env::new();
    let kcache = env.command();
    let mut sh = std::process::Command::new("sh");
    sh.env_clear()
        .envs(kcache.get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .env("KCACHE_BIN", kcache.get_program())
        .current_dir(kcache.get_current_dir().expect("a folder"))
        .args(["-c", "exec \"$KCACHE_BIN\" set k - 60 <&-"]);
    let out = crate::util::run_command(sh, &[], None);
    out.code(2).stderr_has("standard input is closed").one_error_line();
    env.run(&["get", "k"]).code(1);
    env.run_stdin(&["set", "k", "-", "60"], Some(b"")).ok();
    env.run(&["get", "--json", "k"]).ok().stdout_is("\"\"\n");
}
