//! Field accounting for the conversion: every key of an Istio object is either taken by a converter or
//! reported, so nothing is dropped silently.

use serde_json::{Map, Value};

/// What happened to one field of the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The field's path in the input, e.g. `spec.http[0].mirror`.
    pub field: String,
    pub what: NoteKind,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteKind {
    /// Left out, and the mesh behaves differently than Istio would with it.
    Dropped,
    /// Left out with no effect on behaviour (Istio's default, or meaningless in Strait).
    Ignored,
    /// Converted to something close but not identical.
    Changed,
}

impl Note {
    pub fn changes_behaviour(&self) -> bool {
        matches!(self.what, NoteKind::Dropped | NoteKind::Changed)
    }
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.what {
            NoteKind::Dropped => "dropped",
            NoteKind::Ignored => "ignored",
            NoteKind::Changed => "changed",
        };
        write!(f, "{what} {}: {}", self.field, self.reason)
    }
}

/// Collects the notes of one resource.
#[derive(Debug, Default)]
pub struct Notes(pub Vec<Note>);

impl Notes {
    pub fn push(&mut self, field: impl Into<String>, what: NoteKind, reason: impl Into<String>) {
        self.0.push(Note { field: field.into(), what, reason: reason.into() });
    }
}

/// One JSON object being read: [`Fields::take`] marks a key as handled, [`Fields::finish`] reports the rest.
pub struct Fields {
    path: String,
    map: Map<String, Value>,
}

impl Fields {
    /// `value` at `path`; a value that is not an object is reported and read as empty.
    pub fn new(path: impl Into<String>, value: Value, notes: &mut Notes) -> Fields {
        let path = path.into();
        match value {
            Value::Object(map) => Fields { path, map },
            Value::Null => Fields { path, map: Map::new() },
            other => {
                notes.push(&path, NoteKind::Dropped, format!("expected an object, found {other}"));
                Fields { path, map: Map::new() }
            }
        }
    }

    pub fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    /// The nested object at `key` (empty when absent).
    pub fn object(&mut self, key: &str, notes: &mut Notes) -> Option<Fields> {
        let value = self.take(key)?;
        Some(Fields::new(self.path(key), value, notes))
    }

    /// The list at `key`, each element with its path.
    pub fn list(&mut self, key: &str, notes: &mut Notes) -> Vec<(String, Value)> {
        match self.take(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                items.into_iter().enumerate().map(|(i, v)| (format!("{}[{i}]", self.path(key)), v)).collect()
            }
            Some(other) => {
                notes.push(self.path(key), NoteKind::Dropped, format!("expected a list, found {other}"));
                Vec::new()
            }
        }
    }

    /// The keys not taken yet.
    pub fn keys(&self) -> Vec<String> {
        self.map.keys().cloned().collect()
    }

    /// Drops `key` with a note, when present.
    pub fn drop_field(&mut self, key: &str, what: NoteKind, reason: &str, notes: &mut Notes) {
        if self.take(key).is_some() {
            notes.push(self.path(key), what, reason);
        }
    }

    /// Reports every key nobody took as dropped: Strait does not know it.
    pub fn finish(self, notes: &mut Notes) {
        for key in self.map.keys() {
            let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            notes.push(path, NoteKind::Dropped, "not supported by Strait");
        }
    }
}
