//! Several kcache processes on one sqlite file at once: no "database is locked", no lost write.

use crate::util::{BIN, Env, rows};
use std::process::Stdio;

fn spawn_all(env: &Env, scripts: Vec<Vec<Vec<String>>>) -> Vec<(i32, String)> {
    // Each worker is a shell loop of kcache calls, so that the processes really overlap.
    let children: Vec<_> = scripts
        .into_iter()
        .map(|cmds| {
            let mut script = String::from("set -u\nrc=0\n");
            for args in cmds {
                let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
                script.push_str(&format!("\"$KCACHE\" {} || rc=$?\n", quoted.join(" ")));
            }
            script.push_str("exit $rc\n");
            let mut c = env.command();
            c.env("KCACHE", BIN).args(["-c", &script]);
            let mut cmd = std::process::Command::new("sh");
            cmd.env_clear();
            for (k, v) in c.get_envs() {
                if let Some(v) = v {
                    cmd.env(k, v);
                }
            }
            cmd.arg("-c").arg(&script).current_dir(env.dir.path()).stdout(Stdio::null()).stderr(Stdio::piped());
            cmd.spawn().expect("spawn worker")
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("wait");
            (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .collect()
}

#[test]
fn many_processes_write_one_file_without_errors_or_lost_writes() {
    let env = Env::new();
    let workers = 8;
    let per_worker = 40;
    let scripts = (0..workers)
        .map(|w| {
            (0..per_worker)
                .map(|i| {
                    if i % 4 == 3 {
                        vec!["expire".into(), format!("w{w}k{}", i - 1), "600".into()]
                    } else {
                        vec!["set".into(), format!("w{w}k{i}"), format!("value {w} {i}"), "600".into()]
                    }
                })
                .collect()
        })
        .collect();
    for (status, stderr) in spawn_all(&env, scripts) {
        assert_eq!(status, 0, "a worker failed:\n{stderr}");
        assert!(!stderr.contains("locked"), "{stderr}");
    }
    let expected = workers * (per_worker - per_worker / 4);
    assert_eq!(rows(&env.default_db()), expected as i64, "every write landed");
    env.run(&["get", "w7k38"]).ok().stdout_is("value 7 38\n");
}

#[test]
fn writers_and_a_flusher_at_once() {
    let env = Env::new();
    env.run(&["migrate"]).ok();
    let mut scripts: Vec<Vec<Vec<String>>> = (0..6)
        .map(|w| (0..30).map(|i| vec!["set".into(), format!("k{}", i % 5), format!("{w}"), "60".into()]).collect())
        .collect();
    scripts.push((0..15).map(|_| vec!["flush".to_string()]).collect());
    scripts.push((0..30).map(|i| vec!["get".to_string(), format!("k{}", i % 5)]).collect());
    let results = spawn_all(&env, scripts);
    for (i, (status, stderr)) in results.iter().enumerate() {
        // The reader may see missing keys (status 1) after a flush; nothing else may fail.
        let allowed = if i == results.len() - 1 { [0, 1].as_slice() } else { [0].as_slice() };
        assert!(allowed.contains(status), "worker {i} ended with {status}:\n{stderr}");
        assert!(!stderr.contains("locked"), "{stderr}");
    }
    // Every surviving value is one that a writer wrote.
    for k in 0..5 {
        let out = env.run(&["get", &format!("k{k}")]);
        if out.status == 0 {
            let v: u32 = out.stdout.trim().parse().expect("a writer's number");
            assert!(v < 6);
        }
    }
}
