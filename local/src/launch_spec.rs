//! How each workload of the Mesh file runs under `strait local`: `run: [cmd, args...]` (a process it starts,
//! supervises and logs), `external: true` (the user starts it), or neither (a demo backend, for the workloads a
//! service selects). The control plane ignores these two fields ([`strait_control::files::LAUNCH_FIELDS`]);
//! this module reads them from the same files and refuses bad values naming the file and the field.

use std::collections::BTreeMap;

use anyhow::bail;
use serde_yaml::Value;
use strait_control::files::FileContents;

/// At most this many words in a `run` command line.
pub const MAX_RUN_WORDS: usize = 256;
/// At most this many bytes in one word of a `run` command line.
pub const MAX_RUN_WORD: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launch {
    /// `strait local` starts the program with these arguments.
    Run(Vec<String>),
    /// The user starts it; `strait local` waits for its ports and says when they are not listening.
    External,
}

/// (namespace, name) of a workload -> how it runs, for the workloads that say.
pub type Launches = BTreeMap<(String, String), Launch>;

/// Reads `run` / `external` of every workload in the `kind: Mesh` documents of `files`. Documents and entries
/// that do not parse are the control plane's to report (it reads the same files); a `run` or `external` that
/// is there but wrong is an error here, naming the file and the field.
pub fn read(files: &FileContents) -> anyhow::Result<Launches> {
    let mut out = Launches::new();
    for (file, bytes) in files {
        let Ok(bytes) = bytes else { continue };
        let Ok(text) = std::str::from_utf8(bytes) else { continue };
        for (doc, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let Ok(value) = <Value as serde::Deserialize>::deserialize(document) else { break };
            if value.get("kind").and_then(Value::as_str) != Some("Mesh") {
                continue;
            }
            let Some(workloads) = value.get("spec").and_then(|s| s.get("workloads")).and_then(Value::as_sequence)
            else {
                continue;
            };
            for (i, entry) in workloads.iter().enumerate() {
                let field = format!("{file}: document {}: spec.workloads[{i}]", doc + 1);
                let Some(launch) = entry_launch(entry, &field)? else { continue };
                let name = entry.get("name").and_then(Value::as_str).unwrap_or_default();
                let namespace = entry.get("namespace").and_then(Value::as_str).unwrap_or_default();
                out.insert((namespace.to_string(), name.to_string()), launch);
            }
        }
    }
    Ok(out)
}

fn entry_launch(entry: &Value, field: &str) -> anyhow::Result<Option<Launch>> {
    let run = entry.get("run");
    let external = match entry.get("external") {
        None => false,
        Some(Value::Bool(yes)) => *yes,
        Some(other) => bail!("{field}.external: must be true or false, not {}", short(other)),
    };
    let Some(run) = run else { return Ok(external.then_some(Launch::External)) };
    if external {
        bail!(
            "{field}: `run` and `external: true` are both given; choose one (run: strait local starts the \
             process; external: you start it)"
        );
    }
    let Some(words) = run.as_sequence() else {
        bail!("{field}.run: must be a list [command, arguments...], not {}", short(run))
    };
    if words.is_empty() {
        bail!("{field}.run: is empty; give the command to start, e.g. run: [./my-server, --flag]");
    }
    if words.len() > MAX_RUN_WORDS {
        bail!("{field}.run: {} words, at most {MAX_RUN_WORDS}", words.len());
    }
    let mut argv = Vec::with_capacity(words.len());
    for (j, word) in words.iter().enumerate() {
        let text = match word {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => bail!("{field}.run[{j}]: must be a string, not {}", short(other)),
        };
        if text.len() > MAX_RUN_WORD {
            bail!("{field}.run[{j}]: {} bytes, at most {MAX_RUN_WORD}", text.len());
        }
        if text.contains('\0') {
            bail!("{field}.run[{j}]: contains a NUL byte");
        }
        if j == 0 && text.trim().is_empty() {
            bail!("{field}.run[0]: the command is empty");
        }
        argv.push(text);
    }
    Ok(Some(Launch::Run(argv)))
}

/// A value for an error message, cut short.
fn short(value: &Value) -> String {
    let text = serde_yaml::to_string(value).unwrap_or_default();
    let text = text.trim();
    match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launches(workloads: &str) -> anyhow::Result<Launches> {
        let text = format!("apiVersion: strait.dev/v1alpha1\nkind: Mesh\nspec:\n  workloads:\n{workloads}");
        read(&FileContents::from([("mesh.yaml".to_string(), Ok(text.into_bytes()))]))
    }

    fn key(name: &str) -> (String, String) {
        ("demo".to_string(), name.to_string())
    }

    #[test]
    fn reads_run_and_external() {
        let got = launches(
            "  - {name: api, namespace: demo, run: [./target/debug/api, --port, 9000, true]}\n  - {name: db, \
             namespace: demo, external: true}\n  - {name: demo, namespace: demo}\n  - {name: off, namespace: \
             demo, external: false}\n",
        )
        .expect("valid");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[&key("api")],
            Launch::Run(vec!["./target/debug/api".into(), "--port".into(), "9000".into(), "true".into()])
        );
        assert_eq!(got[&key("db")], Launch::External);
    }

    #[test]
    fn bad_values_are_refused_naming_the_field() {
        for (entry, expected) in [
            ("{name: a, run: [x], external: true}", "spec.workloads[0]: `run` and `external: true` are both given"),
            ("{name: a, run: ./server}", "spec.workloads[0].run: must be a list"),
            ("{name: a, run: []}", "spec.workloads[0].run: is empty"),
            ("{name: a, run: [\"\"]}", "spec.workloads[0].run[0]: the command is empty"),
            ("{name: a, run: [x, {a: b}]}", "spec.workloads[0].run[1]: must be a string"),
            ("{name: a, external: yes please}", "spec.workloads[0].external: must be true or false"),
        ] {
            let error = format!("{:#}", launches(&format!("  - {entry}\n")).expect_err(entry));
            assert!(error.contains("mesh.yaml: document 1: ") && error.contains(expected), "{entry}: {error}");
        }
        let long = format!("  - {{name: a, run: [{}]}}\n", vec!["w"; MAX_RUN_WORDS + 1].join(", "));
        assert!(format!("{:#}", launches(&long).expect_err("too long")).contains("at most 256"));
        let wide = format!("  - {{name: a, run: [{}]}}\n", "w".repeat(MAX_RUN_WORD + 1));
        assert!(format!("{:#}", launches(&wide).expect_err("too wide")).contains("run[0]: 4097 bytes, at most 4096"));
    }
}
