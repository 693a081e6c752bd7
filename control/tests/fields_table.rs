//! docs/FIELDS.md lists every field of every Strait CRD schema (deploy/crds) with its state and its test: a
//! field added to a spec type (and so to the regenerated schema) without a row there fails here.

use std::path::Path;

use serde_yaml::Value;

/// Every property path below `spec`, as the table writes it: `http[].match[].headers.*.exact`.
fn fields(schema: &Value, path: &str, out: &mut Vec<String>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_mapping) else { return };
    for (name, child) in properties {
        let name = name.as_str().expect("property names are strings");
        let field = if path.is_empty() { name.to_string() } else { format!("{path}.{name}") };
        out.push(field.clone());
        match child.get("items") {
            Some(items) if child.get("type").and_then(Value::as_str) == Some("array") => {
                fields(items, &format!("{field}[]"), out)
            }
            _ => fields(child, &field, out),
        }
        if let Some(values) = child.get("additionalProperties").filter(|v| v.is_mapping()) {
            fields(values, &format!("{field}.*"), out);
        }
    }
}

#[test]
fn every_schema_field_has_a_row_in_the_field_table() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let table = std::fs::read_to_string(root.join("docs/FIELDS.md")).expect("docs/FIELDS.md");
    let mut missing = Vec::new();
    let mut kinds = 0;
    for entry in std::fs::read_dir(root.join("deploy/crds")).expect("deploy/crds") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).expect("a CRD")).expect("YAML");
        let kind = crd["spec"]["names"]["kind"].as_str().expect("a kind").to_string();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let section_start =
            table.find(&format!("### Strait {kind} ")).unwrap_or_else(|| panic!("no section for {kind}"));
        let section = &table[section_start..];
        let section = &section[..section[4..].find("\n### ").map(|i| i + 4).unwrap_or(section.len())];
        let mut all = Vec::new();
        fields(spec, "", &mut all);
        assert!(!all.is_empty(), "{kind}: no fields read from the schema");
        for field in all {
            if !section.contains(&format!("| `{field}` |")) {
                missing.push(format!("{kind} {field}"));
            }
        }
        kinds += 1;
    }
    assert_eq!(kinds, 3, "TrafficRoute, DestinationPolicy, AuthorizationPolicy");
    assert!(missing.is_empty(), "fields without a row in docs/FIELDS.md: {missing:#?}");
}
