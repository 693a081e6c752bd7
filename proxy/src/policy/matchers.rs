//! The compiled matchers of one rule: sources (principals, namespaces, IP blocks) and operations (ports,
//! methods, paths), each field with its negated form.

use std::net::IpAddr;

use ipnet::IpNet;
use strait_api::{Operation, Source};

use super::{Request, L7, SPIFFE_SCHEME};

/// A field users may leave empty. `None`: not set, matches everything. `Some(list)`: one entry must match.
type Field<T> = Option<Vec<T>>;

/// Compiles every entry of the field `name`, or says which one is wrong: an entry that cannot be compiled is
/// an error, never silently dropped (a dropped `notIpBlocks` entry would widen a DENY's exception).
fn field<T, U>(name: &str, entries: &[T], compile: impl Fn(&T) -> Result<U, String>) -> Result<Field<U>, String> {
    if entries.is_empty() {
        return Ok(None);
    }
    let compiled = entries.iter().enumerate().map(|(i, e)| compile(e).map_err(|m| format!("{name}[{i}]: {m}")));
    compiled.collect::<Result<Vec<U>, String>>().map(Some)
}

fn must_match<T>(field: &Field<T>, matches: impl Fn(&T) -> bool) -> bool {
    field.as_ref().is_none_or(|entries| entries.iter().any(matches))
}

fn must_not_match<T>(field: &Field<T>, matches: impl Fn(&T) -> bool) -> bool {
    field.as_ref().is_none_or(|entries| !entries.iter().any(matches))
}

#[derive(Clone, Debug)]
pub(super) struct SourceMatch {
    principals: Field<Pattern>,
    not_principals: Field<Pattern>,
    namespaces: Field<Pattern>,
    not_namespaces: Field<Pattern>,
    ip_blocks: Field<IpNet>,
    not_ip_blocks: Field<IpNet>,
}

impl SourceMatch {
    pub(super) fn compile(source: &Source) -> Result<Self, String> {
        let principal = |p: &String| Pattern::parse(p.strip_prefix(SPIFFE_SCHEME).unwrap_or(p));
        let pattern = |p: &String| Pattern::parse(p);
        Ok(SourceMatch {
            principals: field("principals", &source.principals, principal)?,
            not_principals: field("notPrincipals", &source.not_principals, principal)?,
            namespaces: field("namespaces", &source.namespaces, pattern)?,
            not_namespaces: field("notNamespaces", &source.not_namespaces, pattern)?,
            ip_blocks: field("ipBlocks", &source.ip_blocks, |b| parse_ip_block(b))?,
            not_ip_blocks: field("notIpBlocks", &source.not_ip_blocks, |b| parse_ip_block(b))?,
        })
    }

    pub(super) fn matches(&self, request: &Request<'_>) -> bool {
        let principal = request.source_principal.map(|p| p.strip_prefix(SPIFFE_SCHEME).unwrap_or(p));
        // A source without an identity matches no principal or namespace pattern, not even `*`, and therefore
        // passes every negated one.
        fn identity<'v>(value: Option<&'v str>) -> impl Fn(&Pattern) -> bool + 'v {
            move |p| value.is_some_and(|v| p.matches(v))
        }
        let namespace = request.source_namespace;
        must_match(&self.principals, identity(principal))
            && must_not_match(&self.not_principals, identity(principal))
            && must_match(&self.namespaces, identity(namespace))
            && must_not_match(&self.not_namespaces, identity(namespace))
            && must_match(&self.ip_blocks, |net| net.contains(&request.source_ip))
            && must_not_match(&self.not_ip_blocks, |net| net.contains(&request.source_ip))
    }
}

/// As `strait_api`'s validation parses ipBlocks: a CIDR or a single address.
fn parse_ip_block(block: &str) -> Result<IpNet, String> {
    let trimmed = block.trim();
    trimmed
        .parse::<IpNet>()
        .ok()
        .or_else(|| trimmed.parse::<IpAddr>().ok().map(IpNet::from))
        .ok_or_else(|| format!("`{block}` is neither a CIDR nor an IP address"))
}

#[derive(Clone, Debug)]
pub(super) struct OperationMatch {
    ports: Field<u16>,
    not_ports: Field<u16>,
    methods: Field<String>,
    not_methods: Field<String>,
    paths: Field<Pattern>,
    not_paths: Field<Pattern>,
    pub(super) has_l7: bool,
}

impl OperationMatch {
    pub(super) fn compile(op: &Operation) -> Result<Self, String> {
        let pattern = |p: &String| Pattern::parse(p);
        Ok(OperationMatch {
            ports: field("ports", &op.ports, |p| Ok(*p))?,
            not_ports: field("notPorts", &op.not_ports, |p| Ok(*p))?,
            methods: field("methods", &op.methods, |m| Ok(m.clone()))?,
            not_methods: field("notMethods", &op.not_methods, |m| Ok(m.clone()))?,
            paths: field("paths", &op.paths, pattern)?,
            not_paths: field("notPaths", &op.not_paths, pattern)?,
            has_l7: !(op.methods.is_empty()
                && op.not_methods.is_empty()
                && op.paths.is_empty()
                && op.not_paths.is_empty()),
        })
    }

    pub(super) fn matches(&self, request: &Request<'_>, l7: L7<'_>) -> bool {
        let port = request.destination_port;
        let l4 = must_match(&self.ports, |p| *p == port) && must_not_match(&self.not_ports, |p| *p == port);
        l4 && match l7 {
            L7::Request(http) => {
                let path = http.path.split_once('?').map_or(http.path, |(path, _query)| path);
                must_match(&self.methods, |m| m == http.method)
                    && must_not_match(&self.not_methods, |m| m == http.method)
                    && must_match(&self.paths, |p| p.matches(path))
                    && must_not_match(&self.not_paths, |p| p.matches(path))
            }
            L7::Ignore => true,
            L7::Unmatchable => !self.has_l7,
        }
    }
}

/// Istio's string patterns: exact, `prefix*`, `*suffix`, or `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    pub(super) fn parse(pattern: &str) -> Result<Self, String> {
        if pattern == "*" {
            return Ok(Pattern::Any);
        }
        let invalid = || format!("`{pattern}`: a pattern is exact, `prefix*`, `*suffix` or `*`");
        if pattern.is_empty() {
            return Err(invalid());
        }
        match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
            (None, None) if !pattern.contains('*') => Ok(Pattern::Exact(pattern.to_string())),
            (Some(suffix), None) if !suffix.contains('*') => Ok(Pattern::Suffix(suffix.to_string())),
            (None, Some(prefix)) if !prefix.contains('*') => Ok(Pattern::Prefix(prefix.to_string())),
            _ => Err(invalid()),
        }
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            Pattern::Any => true,
            Pattern::Exact(exact) => value == exact,
            Pattern::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Pattern::Suffix(suffix) => value.ends_with(suffix.as_str()),
        }
    }
}
