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
