//! The README's examples come from files the suite runs: its rules snippet
//! is docs/rules.yaml, and its `walbust explain` example is that command's
//! real output on that file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The first fenced block of kind `kind` after `heading`.
fn block(text: &str, heading: &str, kind: &str) -> String {
    let section = text
        .split_once(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README has no {heading:?}"))
        .1;
    let body = section
        .split_once(&format!("```{kind}\n"))
        .unwrap_or_else(|| panic!("no {kind} block under {heading:?}"))
        .1;
    body.split_once("```")
        .expect("an unterminated block")
        .0
        .to_owned()
}

/// A command line as a shell reads it: `\` + newline continues it, single
/// quotes hold spaces and double quotes.
fn shell_words(line: &str) -> Vec<String> {
    let line = line.replace("\\\n", " ");
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    words.extend(word);
    words
}

#[test]
fn the_rules_snippet_is_docs_rules_yaml() {
    let file = std::fs::read_to_string(repo().join("docs/rules.yaml")).unwrap();
    assert_eq!(block(&readme(), "## Rules", "yaml"), file);
}

#[test]
fn the_explain_example_is_what_walbust_explain_prints() {
    let example = block(&readme(), "### Trying rules: explain and tail", "console");
    let command_end = example
        .lines()
        .position(|l| !l.ends_with('\\'))
        .expect("a command");
    let lines: Vec<&str> = example.lines().collect();
    let command = lines[..=command_end].join("\n");
    let shown: String = lines[command_end + 1..]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    let words = shell_words(command.strip_prefix("$ ").expect("a `$ ` prompt"));
    assert_eq!(words[0], "walbust", "{command}");
    let out = Command::new(env!("CARGO_BIN_EXE_walbust"))
        .args(&words[1..])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), shown, "{command}");
}

#[test]
fn fenced_fills_document_every_function_and_setting() {
    let text = readme();
    let section = text
        .split_once("\n## Fenced fills\n")
        .expect("README has \"## Fenced fills\"")
        .1
        .split_once("\n## ")
        .expect("a section after it")
        .0;
    let out = Command::new(env!("CARGO_BIN_EXE_walbust"))
        .arg("redis-functions")
        .output()
        .unwrap();
    assert!(out.status.success());
    let library = String::from_utf8(out.stdout).unwrap();
    let registered: Vec<&str> = library
        .split("register_function('")
        .skip(1)
        .chain(library.split("function_name = '").skip(1))
        .map(|rest| rest.split_once('\'').expect("a quoted name").0)
        .collect();
    assert_eq!(registered.len(), 3, "{registered:?}");
    for function in registered {
        assert!(
            section.contains(&format!("FCALL {function} ")),
            "README, Fenced fills: {function}"
        );
    }
    for key in [
        "sinks.redis.leases",
        "sinks.redis.lease_ttl_ms",
        "sinks.redis.watermark",
    ] {
        assert!(section.contains(key), "README, Fenced fills: {key}");
        let field = key.rsplit('.').next().unwrap();
        assert!(
            text.contains(&format!("\n    {field}: ")),
            "README, Configuration: {field}"
        );
    }
}

/// Functions and methods the README's Rust subscriber example calls that belong to other
/// crates (rdkafka, tokio, std).
const NOT_THE_SUBSCRIBERS: &[&str] = &["set", "clone", "spawn", "from_secs"];

/// Every `name(` the snippet calls (after `.` or `::`).
fn calls(code: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in code.match_indices('(') {
        let name: String = code[..i]
            .chars()
            .rev()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let before = &code[..i - name.len()];
        if !name.is_empty() && (before.ends_with('.') || before.ends_with("::")) {
            names.push(name);
        }
    }
    names
}

/// The Rust example under "Subscribing" is not compiled; this keeps it from naming what the
/// crate does not have (a renamed method, a removed type).
#[test]
fn the_rust_subscriber_example_calls_what_the_crate_defines() {
    let example = block(&readme(), "### Rust", "rust");
    let dir = repo().join("crates/subscriber/src");
    let source: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    let called = calls(&example);
    assert!(called.len() >= 8, "{called:?}");
    for name in called {
        if NOT_THE_SUBSCRIBERS.contains(&name.as_str()) {
            continue;
        }
        assert!(
            source.contains(&format!("fn {name}(")) || source.contains(&format!("fn {name}<")),
            "the README's Rust example calls `{name}`, which crates/subscriber does not define"
        );
    }
    for ty in ["MokaCache", "KafkaSubscriber", "RedisSubscriber"] {
        assert!(example.contains(ty), "{ty}");
        assert!(source.contains(&format!("pub struct {ty}")), "{ty}");
    }
}
