//! Matching one request against a rule's `match` entries: path, method, headers, query parameters.

use std::borrow::Cow;
use std::cell::OnceCell;

use http::request::Parts;
use http::HeaderName;
use regex::Regex;
use strait_api::{self as api};

#[derive(Debug)]
pub(super) enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    /// `present: true` = any value; `present: false` = the header or parameter must be absent.
    Present(bool),
}

impl StrMatch {
    pub(super) fn compile(sm: &api::StringMatch) -> Result<StrMatch, String> {
        match (&sm.exact, &sm.prefix, &sm.regex, sm.present) {
            (Some(exact), None, None, None) => Ok(StrMatch::Exact(exact.clone())),
            (None, Some(prefix), None, None) => Ok(StrMatch::Prefix(prefix.clone())),
            (None, None, Some(pattern), None) => Regex::new(&format!("^(?:{pattern})$"))
                .map(StrMatch::Regex)
                .map_err(|e| format!("regex {pattern:?}: {}", e.to_string().lines().last().unwrap_or_default())),
            (None, None, None, Some(present)) => Ok(StrMatch::Present(present)),
            _ => Err("exactly one of exact, prefix, regex, present is required".into()),
        }
    }

    pub(super) fn matches(&self, value: &str) -> bool {
        match self {
            StrMatch::Exact(exact) => value == exact,
            StrMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
            StrMatch::Regex(regex) => regex.is_match(value),
            StrMatch::Present(present) => *present,
        }
    }

    /// For headers and query parameters, which may be absent or repeated: any value may match.
    pub(super) fn matches_any<'v>(&self, mut values: impl Iterator<Item = &'v str>) -> bool {
        match self {
            StrMatch::Present(present) => values.next().is_some() == *present,
            _ => values.any(|v| self.matches(v)),
        }
    }
}

#[derive(Debug)]
pub(super) struct Match {
    path: Option<StrMatch>,
    method: Option<StrMatch>,
    headers: Vec<(HeaderName, StrMatch)>,
    query: Vec<(String, StrMatch)>,
}

impl Match {
    pub(super) fn compile(m: &api::HttpMatch) -> Result<Match, String> {
        let path = m.uri.as_ref().map(StrMatch::compile).transpose().map_err(|e| format!("uri: {e}"))?;
        let method = m.method.as_ref().map(StrMatch::compile).transpose().map_err(|e| format!("method: {e}"))?;
        let mut headers = Vec::with_capacity(m.headers.len());
        for (name, sm) in &m.headers {
            let header =
                HeaderName::try_from(name.as_str()).map_err(|_| format!("headers: {name:?} is not a header name"))?;
            headers.push((header, StrMatch::compile(sm).map_err(|e| format!("headers.{name}: {e}"))?));
        }
        let mut query = Vec::with_capacity(m.query_params.len());
        for (name, sm) in &m.query_params {
            query.push((name.clone(), StrMatch::compile(sm).map_err(|e| format!("queryParams.{name}: {e}"))?));
        }
        Ok(Match { path, method, headers, query })
    }

    pub(super) fn matches(&self, request: &Parts, query: &QueryParams) -> bool {
        self.path.as_ref().is_none_or(|m| m.matches(request.uri.path()))
            && self.method.as_ref().is_none_or(|m| m.matches(request.method.as_str()))
            && self.headers.iter().all(|(name, m)| {
                // Values that are not UTF-8 cannot match a string; they still count as present.
                m.matches_any(
                    request
                        .headers
                        .get_all(name)
                        .iter()
                        .map(|v| std::str::from_utf8(v.as_bytes()).unwrap_or("\u{fffd}")),
                )
            })
            && self.query.iter().all(|(name, m)| m.matches_any(query.values(name)))
    }
}

/// A request's query string, split and decoded at most once per request, and only if a rule looks at it.
pub(super) struct QueryParams<'a> {
    raw: Option<&'a str>,
    decoded: OnceCell<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
}

impl<'a> QueryParams<'a> {
    pub(super) fn new(raw: Option<&'a str>) -> Self {
        QueryParams { raw, decoded: OnceCell::new() }
    }

    pub(super) fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        let pairs = self.decoded.get_or_init(|| {
            let pairs = self.raw.into_iter().flat_map(|q| q.split('&')).filter(|pair| !pair.is_empty());
            pairs.map(|pair| pair.split_once('=').unwrap_or((pair, ""))).map(|(k, v)| (decode(k), decode(v))).collect()
        });
        pairs.iter().filter(move |(key, _)| key == name).map(|(_, value)| value.as_ref())
    }
}

/// Form decoding of one query component (`+` is a space, `%XX` a byte); invalid escapes stay as written.
pub(super) fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16)).map(|d| d as u8);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}
