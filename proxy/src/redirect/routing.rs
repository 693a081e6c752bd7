//! Policy routing for TPROXY: packets marked by the rules are delivered locally, to the proxy's transparent
//! listeners, whatever their destination address.

use super::{RedirectError, RedirectSpec, Runner};

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    fn everything(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

pub(super) fn install(runner: &Runner, spec: &RedirectSpec) -> Result<(), RedirectError> {
    install_family(runner, spec, Family::V4)?;
    // A node without IPv6 rejects `ip -6`; it has no IPv6 pods either.
    if spec.local_pods.iter().any(|ip| ip.to_canonical().is_ipv6()) {
        install_family(runner, spec, Family::V6)?;
    }
    Ok(())
}

fn install_family(runner: &Runner, spec: &RedirectSpec, family: Family) -> Result<(), RedirectError> {
    let mark = format!("{:#x}", spec.tproxy_mark);
    let table = spec.tproxy_table.to_string();
    // The kernel accepts duplicate rules, so look before adding.
    let shown = ip(runner, &[family.flag(), "rule", "show"])?;
    if !has_rule(&shown, spec.tproxy_mark, spec.tproxy_table) {
        ip(runner, &[family.flag(), "rule", "add", "fwmark", &mark, "lookup", &table])?;
    }
    ip(runner, &[family.flag(), "route", "replace", "local", family.everything(), "dev", "lo", "table", &table])?;
    Ok(())
}

pub(super) fn remove(runner: &Runner, spec: &RedirectSpec) -> Result<(), RedirectError> {
    let mark = format!("{:#x}", spec.tproxy_mark);
    let table = spec.tproxy_table.to_string();
    for family in [Family::V4, Family::V6] {
        // Delete duplicates too (left by other tools), with a bound in case deletion silently does nothing.
        for _ in 0..16 {
            if !ip_absent_ok(runner, &[family.flag(), "rule", "del", "fwmark", &mark, "lookup", &table])? {
                break;
            }
        }
        ip_absent_ok(
            runner,
            &[family.flag(), "route", "del", "local", family.everything(), "dev", "lo", "table", &table],
        )?;
    }
    Ok(())
}

fn ip(runner: &Runner, args: &[&str]) -> Result<String, RedirectError> {
    let out = runner.run("ip", args, None)?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(runner.failure(&format!("ip {}", args.join(" ")), out.stderr))
    }
}

/// `Ok(true)` when something was deleted, `Ok(false)` when there was nothing to delete (or no IPv6 at all).
fn ip_absent_ok(runner: &Runner, args: &[&str]) -> Result<bool, RedirectError> {
    let out = runner.run("ip", args, None)?;
    if out.success {
        return Ok(true);
    }
    let absent =
        ["No such file or directory", "No such process", "FIB table does not exist", "Address family not supported"];
    if absent.iter().any(|a| out.stderr.contains(a)) {
        Ok(false)
    } else {
        Err(runner.failure(&format!("ip {}", args.join(" ")), out.stderr))
    }
}

/// Whether `ip rule show` lists `fwmark <mark> lookup <table>` (a mask, if shown, must be the full one).
fn has_rule(shown: &str, mark: u32, table: u32) -> bool {
    shown.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        let after = |key: &str| words.windows(2).find(|w| w[0] == key).map(|w| w[1]);
        let mark_matches = after("fwmark").is_some_and(|m| {
            let (value, mask) = m.split_once('/').unwrap_or((m, "0xffffffff"));
            parse_hex(value) == Some(mark) && parse_hex(mask) == Some(u32::MAX)
        });
        let table_matches = after("lookup").is_some_and(|t| t.parse::<u32>() == Ok(table));
        mark_matches && table_matches
    })
}

fn parse_hex(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0x")?;
    u32::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_rule_in_ip_rule_show() {
        let shown =
            "0:\tfrom all lookup local\n32765:\tfrom all fwmark 0x111 lookup 133\n32766:\tfrom all lookup main\n";
        assert!(has_rule(shown, 0x111, 133));
        assert!(!has_rule(shown, 0x111, 134));
        assert!(!has_rule(shown, 0x112, 133));
        assert!(has_rule("100:\tfrom all fwmark 0x111/0xffffffff lookup 133\n", 0x111, 133));
        assert!(!has_rule("100:\tfrom all fwmark 0x111/0xfff lookup 133\n", 0x111, 133));
        assert!(!has_rule("0:\tfrom all lookup local\n", 0x111, 133));
        assert!(!has_rule("", 0x111, 133));
    }
}
