//! Request normalization: done once at each proxy's L7 entry, before routing (source side) and before
//! authorization (destination side), and the backend receives exactly the normalized request. A policy can
//! only be as good as the agreement between what it matched and what the pod acts on; every spelling that a
//! backend might read as `/admin` must therefore either become `/admin` here or be refused.
//!
//! The path (the query is left alone: neither policies nor path matches read it):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other escape is kept with
//!   upper-case hex, so `/%61dmin` and `/%2e%2e/` cannot hide a name or a dot segment;
//! - repeated slashes are merged, then dot segments removed (RFC 3986 5.2.4). Merging first means an empty
//!   segment cannot absorb a `..` (`/admin//../x` is `/x`, as a file system reads it);
//! - refused (400): `%2F`, `%5C` (a backend that decodes them sees segments the policy did not; a host's
//!   TrafficRoute may opt in to keeping them, [`EscapedSlashes::Keep`]), a raw `\`
//!   (some servers treat it as `/`), NUL and other control characters, `;` raw or as `%3B` (path parameters:
//!   Tomcat and friends strip `;x` from a segment, so `/admin;x` would reach `/admin` past an exact DENY, and
//!   `/..;/` is a traversal), `%25` followed by two hex digits (double encoding: a second decode by the
//!   backend would produce what the policy never saw), a malformed escape, and anything that is not UTF-8
//!   once decoded (overlong forms such as `%C0%AE` for `.`);
//! - case is kept: paths are case-sensitive (RFC 3986 6.2.2.1), as Istio matches them.
//!
//! The method must be an upper-case token: RFC 9110 makes methods case-sensitive and rules match them exactly,
//! but some frameworks fold `delete` into `DELETE`; refusing lower-case letters leaves no spelling that a rule
//! reads as one method and the backend as another.
//!
//! Identity headers the proxies set (`x-forwarded-client-cert`, anything `x-strait-*`) are removed from what
//! the client sent, and upgrades other than WebSocket are stripped ([`super::upgrade`]).

use std::borrow::Cow;

use http::{HeaderMap, Method, Request, Uri};
pub use strait_api::EscapedSlashes;

#[cfg(test)]
mod tests;

/// Istio's header for the caller's identity as the destination proxy verified it.
pub const XFCC: &str = "x-forwarded-client-cert";
/// Headers with this prefix are the proxies' to set; a client's are dropped.
const RESERVED_PREFIX: &str = "x-strait-";

/// Why a request was refused with 400 before routing or authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the path contains an encoded slash (%2F)")]
    EncodedSlash,
    #[error("the path contains an encoded backslash (%5C)")]
    EncodedBackslash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL")]
    Nul,
    #[error("the path contains a control character")]
    ControlCharacter,
    #[error("the path contains a path parameter (`;`)")]
    PathParameter,
    #[error("the path contains a malformed percent-encoding")]
    MalformedEscape,
    #[error("the path is percent-encoded twice (%25 followed by an escape)")]
    DoubleEncoding,
    #[error("the path is not UTF-8 once percent-decoded")]
    InvalidUtf8,
    #[error("the request target is not an absolute path")]
    NotAbsolutePath,
    #[error("the method contains lower-case letters (methods are case-sensitive upper-case tokens)")]
    MethodCase,
    #[error("the normalized request target is not valid")]
    InvalidTarget,
}

impl Rejection {
    /// A stable, low-cardinality name for access lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::EncodedSlash => "encoded_slash",
            Rejection::EncodedBackslash => "encoded_backslash",
            Rejection::Backslash => "backslash",
            Rejection::Nul => "nul",
            Rejection::ControlCharacter => "control_character",
            Rejection::PathParameter => "path_parameter",
            Rejection::MalformedEscape => "malformed_escape",
            Rejection::DoubleEncoding => "double_encoding",
            Rejection::InvalidUtf8 => "invalid_utf8",
            Rejection::NotAbsolutePath => "not_absolute_path",
            Rejection::MethodCase => "method_case",
            Rejection::InvalidTarget => "invalid_target",
        }
    }
}

/// Normalizes `request` in place (method checked, path normalized, identity headers and unsupported upgrades
/// stripped), or says why it must be refused. `slashes` is the destination host's choice for `%2F` and `%5C`.
pub fn request<B>(request: &mut Request<B>, slashes: EscapedSlashes) -> Result<(), Rejection> {
    method(request.method())?;
    if let Some(uri) = normalize_uri(request.uri(), slashes)? {
        *request.uri_mut() = uri;
    }
    strip_identity_headers(request.headers_mut());
    super::upgrade::strip_unsupported(request);
    Ok(())
}

/// Refuses methods with lower-case letters (see the module documentation); the token grammar itself is
/// enforced by the HTTP parsers.
pub fn method(method: &Method) -> Result<(), Rejection> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Rejection::MethodCase);
    }
    Ok(())
}

/// The URI with its path normalized, `None` when it already was.
fn normalize_uri(uri: &Uri, slashes: EscapedSlashes) -> Result<Option<Uri>, Rejection> {
    let path = uri.path();
    let Cow::Owned(normalized) = path_of(path, slashes)? else { return Ok(None) };
    let path_and_query = match uri.query() {
        Some(query) => format!("{normalized}?{query}"),
        None => normalized,
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| Rejection::InvalidTarget)?);
    Uri::from_parts(parts).map(Some).map_err(|_| Rejection::InvalidTarget)
}

/// The normalized form of a request path (without its query); borrowed when the path is already normal.
/// `*` (the asterisk form of `OPTIONS *`) is left as it is.
pub fn path_of(path: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, Rejection> {
    if path == "*" {
        return Ok(Cow::Borrowed(path));
    }
    if !path.starts_with('/') {
        return Err(Rejection::NotAbsolutePath);
    }
    let decoded = decode_unreserved(path, slashes)?;
    let normalized = merge_and_remove_dots(&decoded);
    if normalized == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normalized))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Decodes escapes of unreserved characters and upper-cases the hex of the others, refusing what the module
/// documentation lists. The result is ASCII escapes plus the input's own (valid UTF-8) bytes. A kept `%2F` is
/// an escape like any other: dot removal and slash merging only ever see raw slashes.
fn decode_unreserved(path: &str, slashes: EscapedSlashes) -> Result<String, Rejection> {
    let keep_slashes = slashes == EscapedSlashes::Keep;
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    // Every byte the path stands for, escapes decoded: it must be UTF-8.
    let mut meaning = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let escape =
                    bytes.get(i + 1).copied().and_then(hex_value).zip(bytes.get(i + 2).copied().and_then(hex_value));
                let Some((high, low)) = escape else { return Err(Rejection::MalformedEscape) };
                let value = high << 4 | low;
                match value {
                    0 => return Err(Rejection::Nul),
                    b'/' if !keep_slashes => return Err(Rejection::EncodedSlash),
                    b'\\' if !keep_slashes => return Err(Rejection::EncodedBackslash),
                    b';' => return Err(Rejection::PathParameter),
                    v if is_unreserved(v) => out.push(v),
                    v => out.extend_from_slice(&[b'%', HEX[usize::from(v >> 4)], HEX[usize::from(v & 0xF)]]),
                }
                meaning.push(value);
                i += 3;
                continue;
            }
            b'\\' => return Err(Rejection::Backslash),
            0 => return Err(Rejection::Nul),
            b';' => return Err(Rejection::PathParameter),
            b if b < 0x20 || b == 0x7F => return Err(Rejection::ControlCharacter),
            b => {
                out.push(b);
                meaning.push(b);
            }
        }
        i += 1;
    }
    // Checked on the output, where decoding may have completed one (`%25%41a` becomes `%25Aa`).
    let double =
        out.windows(5).any(|w| w.starts_with(b"%25") && hex_value(w[3]).is_some() && hex_value(w[4]).is_some());
    if double {
        return Err(Rejection::DoubleEncoding);
    }
    if std::str::from_utf8(&meaning).is_err() {
        return Err(Rejection::InvalidUtf8);
    }
    // Only ASCII was added to the input's own UTF-8, so this cannot fail; refusing is still the safe answer.
    String::from_utf8(out).map_err(|_| Rejection::InvalidUtf8)
}

/// Merges repeated slashes and removes `.` and `..` segments (RFC 3986 5.2.4); `..` above the root stays at
/// the root. A path ending in a slash, `.` or `..` keeps a trailing slash, as the RFC's algorithm does.
fn merge_and_remove_dots(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        match segment {
            "" => trailing_slash = true,
            "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            name => {
                kept.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || kept.is_empty() {
        out.push('/');
    }
    out
}

/// Removes what only the proxies may say: the caller's verified identity and the proxies' own headers.
pub fn strip_identity_headers(headers: &mut HeaderMap) {
    let reserved: Vec<http::HeaderName> =
        headers.keys().filter(|name| is_identity_header(name.as_str())).cloned().collect();
    for name in reserved {
        headers.remove(&name);
    }
}

fn is_identity_header(name: &str) -> bool {
    name == XFCC || name.starts_with(RESERVED_PREFIX)
}
