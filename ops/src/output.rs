//! How commands print: an aligned table (or lines) for people, JSON or YAML for scripts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns (or lines) for people.
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML; `None` for the table format (the caller renders its own).
pub fn structured<T: serde::Serialize>(format: Format, value: &T) -> anyhow::Result<Option<String>> {
    Ok(match format {
        Format::Table => None,
        Format::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Format::Yaml => Some(serde_yaml::to_string(value)?),
    })
}

/// Columns padded to their widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `3d4h`, `2h5m`, `4m10s`, `12s`: the two largest units.
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m{seconds}s"),
        (0, _, _) => format!("{hours}h{minutes}m"),
        _ => format!("{days}d{hours}h"),
    }
}

/// `5m ago` for a time in the past (unix seconds).
pub fn ago(unix: u64) -> String {
    format!("{} ago", short_duration(Duration::from_secs(now_unix().saturating_sub(unix))))
}

/// `in 23h59m` for a time to come, `EXPIRED 5m ago` for one gone.
pub fn until(unix: u64) -> String {
    let now = now_unix();
    if unix > now {
        format!("in {}", short_duration(Duration::from_secs(unix - now)))
    } else {
        format!("EXPIRED {}", ago(unix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_tables_read_well() {
        assert_eq!(short_duration(Duration::from_secs(12)), "12s");
        assert_eq!(short_duration(Duration::from_secs(250)), "4m10s");
        assert_eq!(short_duration(Duration::from_secs(7500)), "2h5m");
        assert_eq!(short_duration(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d4h");
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
