//! What the `sockloop stress` test files share: running the binary to its
//! end, reading its JSON lines, and checking every field against the
//! README's appendix.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

use crate::support::run_with_input;

/// What one `sockloop stress ...` run left behind.
pub struct Outcome {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
    /// The last JSON line of stdout (the summary), parsed.
    pub json: Option<Value>,
}

/// Runs `sockloop ARGS` to the end (killed after `within`) and collects its output.
pub fn run(args: &[&str], within: Duration) -> Outcome {
    let (code, stdout, stderr) = run_with_input(args, Vec::new(), within);
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    // The summary is the last JSON line (interval lines may come before it).
    let json = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("the --json line is JSON"));
    Outcome {
        code: Some(code).filter(|c| *c >= 0),
        stdout,
        stderr,
        json,
    }
}

impl Outcome {
    pub fn json(&self) -> &Value {
        self.json.as_ref().unwrap_or_else(|| {
            panic!(
                "no JSON line on stdout {:?}; stderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// A number at a `/`-separated path of the JSON line, e.g.
    /// `"connect/failures/total"` (a number indexes an array: `"logs/0/count"`).
    pub fn num(&self, path: &str) -> f64 {
        let mut v = self.json();
        for key in path.split('/') {
            v = key
                .parse::<usize>()
                .ok()
                .and_then(|i| v.get(i))
                .or_else(|| v.get(key))
                .unwrap_or_else(|| panic!("JSON has no {path:?}: {}", self.stdout.trim()));
        }
        v.as_f64()
            .unwrap_or_else(|| panic!("JSON {path:?} is not a number: {v}"))
    }
}

/// Every field of the JSON line, at any depth, is described in the README's JSON appendix.
pub fn assert_documented(value: &Value) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut stack = vec![value];
    while let Some(Value::Object(map)) = stack.pop() {
        for (key, inner) in map {
            assert!(
                doc.contains(&format!("`{key}`"))
                    || doc.contains(&format!(".{key}`"))
                    || doc.contains(&format!("`{key}.")),
                "field {key:?} is not documented in the README's JSON appendix"
            );
            stack.push(inner);
        }
    }
}

/// Every `{...}` line of a run's stdout, parsed.
pub fn json_lines(outcome: &Outcome) -> Vec<Value> {
    outcome
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect()
}

/// A fresh, empty directory for one test's files (removed first if a
/// previous run left it).
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sockloop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
