//! `labelSelector` and `fieldSelector` query parameters, enough of each for what clients send.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector` or `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Requirement>,
    /// `path=value` / `path!=value` on dotted paths of the object (`metadata.name`, `spec.nodeName`).
    fields: Vec<(String, String, bool)>,
}

impl Selector {
    pub fn parse(label_selector: Option<&str>, field_selector: Option<&str>) -> Result<Self, String> {
        let mut selector = Selector::default();
        if let Some(text) = label_selector.filter(|s| !s.trim().is_empty()) {
            for part in split_top_level(text) {
                selector.labels.push(parse_requirement(part.trim())?);
            }
        }
        if let Some(text) = field_selector.filter(|s| !s.trim().is_empty()) {
            for part in text.split(',') {
                let (path, value, equal) = if let Some((p, v)) = part.split_once("!=") {
                    (p, v, false)
                } else if let Some((p, v)) = part.split_once("==") {
                    (p, v, true)
                } else if let Some((p, v)) = part.split_once('=') {
                    (p, v, true)
                } else {
                    return Err(format!("invalid field selector {part:?}"));
                };
                selector.fields.push((path.trim().to_string(), value.trim().to_string(), equal));
            }
        }
        Ok(selector)
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        });
        labels_match
            && self.fields.iter().all(|(path, value, equal)| {
                let pointer = format!("/{}", path.replace('.', "/"));
                let found = match object.pointer(&pointer) {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Null) | None => String::new(),
                    Some(other) => other.to_string(),
                };
                (found == *value) == *equal
            })
    }
}

/// Splits on commas that are not inside `in (a,b)` parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, String> {
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("invalid label selector {part:?}"))?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    if let Some(key) = part.strip_prefix('!') {
        return Ok(Requirement::NotExists(key.trim().to_string()));
    }
    if let Some((k, v)) = part.split_once("!=") {
        return Ok(Requirement::NotEquals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
        return Ok(Requirement::Equals(k.trim().into(), v.trim().into()));
    }
    if let Some((k, rest)) = part.split_once(" notin ") {
        return Ok(Requirement::NotIn(k.trim().into(), set(rest)?));
    }
    if let Some((k, rest)) = part.split_once(" in ") {
        return Ok(Requirement::In(k.trim().into(), set(rest)?));
    }
    if part.is_empty() || part.contains(' ') {
        return Err(format!("invalid label selector {part:?}"));
    }
    Ok(Requirement::Exists(part.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_field_selectors() {
        let pod = json!({"metadata": {"name": "a", "labels": {"app": "x", "tier": "web"}}, "spec": {"nodeName": "n1"}});
        let sel = |l: Option<&str>, f: Option<&str>| Selector::parse(l, f).expect("parses").matches(&pod);
        assert!(sel(Some("app=x,tier in (web, db)"), None));
        assert!(!sel(Some("app=x,!tier"), None));
        assert!(sel(Some("app,env notin (prod)"), Some("spec.nodeName=n1")));
        assert!(!sel(None, Some("metadata.name!=a")));
        assert!(sel(None, None));
    }
}
