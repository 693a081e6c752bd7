//! Mesh workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! Parsing is strict: the only accepted shape is the Istio-style SPIFFE ID above. Anything else
//! is refused with an [`IdentityError`] that says exactly what is wrong.

use std::fmt;
use std::str::FromStr;

/// The URI scheme of every mesh identity.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// SPIFFE limits a trust domain name to 255 bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// SPIFFE limits a whole SPIFFE ID to 2048 bytes.
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// A mesh workload identity (a SPIFFE ID of the form
/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a valid mesh identity (or a part of one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("{input:?} is not a mesh identity: it must start with \"spiffe://\" (found scheme {found:?}); expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    WrongScheme { input: String, found: String },

    #[error("{input:?} is not a mesh identity: the trust domain is empty; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    EmptyTrustDomain { input: String },

    #[error("{input:?} is not a mesh identity: it is missing {missing}; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    MissingPart { input: String, missing: &'static str },

    #[error("{input:?} is not a mesh identity: unexpected extra path segment(s) {extra:?} after the service account; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    ExtraSegments { input: String, extra: String },

    #[error("{input:?} is not a mesh identity: expected the path segment {expected:?} but found {found:?}; expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    UnexpectedSegment { input: String, expected: &'static str, found: String },

    #[error("{input:?} is not a mesh identity: the {part} is empty (two slashes in a row or a trailing slash?)")]
    EmptySegment { input: String, part: &'static str },

    #[error("invalid {part} {value:?}: character {ch:?} is not allowed ({allowed})")]
    InvalidCharacter { part: &'static str, value: String, ch: char, allowed: &'static str },

    #[error("invalid {part} {value:?}: \".\" and \"..\" are not allowed as path segments")]
    DotSegment { part: &'static str, value: String },

    #[error("invalid {part}: it is empty")]
    Empty { part: &'static str },

    #[error("invalid {part}: {len} bytes is longer than the maximum of {max}")]
    TooLong { part: &'static str, len: usize, max: usize },
}

const TRUST_DOMAIN_ALLOWED: &str = "lowercase letters, digits, '.', '-' and '_'";
const SEGMENT_ALLOWED: &str = "letters, digits, '.', '-' and '_'";

/// Checks that `td` is a valid SPIFFE trust domain name.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    const PART: &str = "trust domain";
    if td.is_empty() {
        return Err(IdentityError::Empty { part: PART });
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdentityError::TooLong { part: PART, len: td.len(), max: MAX_TRUST_DOMAIN_LEN });
    }
    if let Some(ch) =
        td.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdentityError::InvalidCharacter {
            part: PART,
            value: td.to_string(),
            ch,
            allowed: TRUST_DOMAIN_ALLOWED,
        });
    }
    Ok(())
}

fn validate_segment(part: &'static str, value: &str) -> Result<(), IdentityError> {
    if value.is_empty() {
        return Err(IdentityError::Empty { part });
    }
    if value == "." || value == ".." {
        return Err(IdentityError::DotSegment { part, value: value.to_string() });
    }
    if let Some(ch) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))) {
        return Err(IdentityError::InvalidCharacter { part, value: value.to_string(), ch, allowed: SEGMENT_ALLOWED });
    }
    Ok(())
}

impl Identity {
    /// Builds an identity from its parts, validating each of them.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        validate_trust_domain(&id.trust_domain)?;
        validate_segment("namespace", &id.namespace)?;
        validate_segment("service account", &id.service_account)?;
        let len = id.uri_len();
        if len > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong { part: "SPIFFE ID", len, max: MAX_SPIFFE_ID_LEN });
        }
        Ok(id)
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn parse(input: &str) -> Result<Self, IdentityError> {
        let owned = || input.to_string();
        if input.len() > MAX_SPIFFE_ID_LEN {
            return Err(IdentityError::TooLong { part: "SPIFFE ID", len: input.len(), max: MAX_SPIFFE_ID_LEN });
        }
        let Some(rest) = input.strip_prefix(SPIFFE_SCHEME) else {
            let found = match input.find("://") {
                Some(i) => input[..i].to_string(),
                None => match input.find(':') {
                    Some(i) => input[..i].to_string(),
                    None => String::new(),
                },
            };
            return Err(IdentityError::WrongScheme { input: owned(), found });
        };
        let mut segments = rest.split('/');
        // `split` always yields at least one item.
        let trust_domain = segments.next().unwrap_or_default();
        if trust_domain.is_empty() {
            return Err(IdentityError::EmptyTrustDomain { input: owned() });
        }
        validate_trust_domain(trust_domain)?;

        let mut take = |expected_literal: Option<&'static str>,
                        part: &'static str,
                        missing: &'static str|
         -> Result<String, IdentityError> {
            let seg = segments.next().ok_or_else(|| IdentityError::MissingPart { input: owned(), missing })?;
            if seg.is_empty() {
                return Err(IdentityError::EmptySegment { input: owned(), part });
            }
            if let Some(lit) = expected_literal {
                if seg != lit {
                    return Err(IdentityError::UnexpectedSegment {
                        input: owned(),
                        expected: lit,
                        found: seg.to_string(),
                    });
                }
            }
            Ok(seg.to_string())
        };
        take(Some("ns"), "\"ns\" path segment", "the \"/ns/<namespace>\" part")?;
        let namespace = take(None, "namespace", "the namespace after \"/ns/\"")?;
        take(Some("sa"), "\"sa\" path segment", "the \"/sa/<service-account>\" part")?;
        let service_account = take(None, "service account", "the service account after \"/sa/\"")?;
        let extra: Vec<&str> = segments.collect();
        if !extra.is_empty() {
            return Err(IdentityError::ExtraSegments { input: owned(), extra: format!("/{}", extra.join("/")) });
        }
        validate_segment("namespace", &namespace)?;
        validate_segment("service account", &service_account)?;
        Ok(Identity { trust_domain: trust_domain.to_string(), namespace, service_account })
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes-style namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The Istio-style principal: the SPIFFE ID without its scheme,
    /// `<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }

    /// The SPIFFE ID as a URI string (same as `to_string()`).
    pub fn uri(&self) -> String {
        self.to_string()
    }

    fn uri_len(&self) -> usize {
        SPIFFE_SCHEME.len()
            + self.trust_domain.len()
            + "/ns/".len()
            + self.namespace.len()
            + "/sa/".len()
            + self.service_account.len()
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_SCHEME}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Identity::parse(s)
    }
}

impl TryFrom<&str> for Identity {
    type Error = IdentityError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Identity::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_round_trips() {
        let s = "spiffe://cluster.local/ns/default/sa/web-frontend";
        let id: Identity = s.parse().unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web-frontend");
        assert_eq!(id.to_string(), s);
        assert_eq!(id.uri(), s);
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/web-frontend");
        assert_eq!(Identity::new("cluster.local", "default", "web-frontend").unwrap(), id);
    }

    #[test]
    fn new_validates_parts() {
        assert!(matches!(
            Identity::new("Cluster.local", "a", "b"),
            Err(IdentityError::InvalidCharacter { part: "trust domain", ch: 'C', .. })
        ));
        assert!(matches!(Identity::new("td", "", "b"), Err(IdentityError::Empty { part: "namespace" })));
        assert!(matches!(
            Identity::new("td", "a", "b/c"),
            Err(IdentityError::InvalidCharacter { part: "service account", ch: '/', .. })
        ));
        assert!(matches!(Identity::new("td", "..", "b"), Err(IdentityError::DotSegment { .. })));
    }

    #[test]
    fn malformed_ids_are_rejected_with_clear_errors() {
        // (input, substring the error message must contain)
        let cases: &[(&str, &str)] = &[
            ("", "must start with \"spiffe://\""),
            ("cluster.local/ns/a/sa/b", "must start with \"spiffe://\""),
            ("https://cluster.local/ns/a/sa/b", "found scheme \"https\""),
            ("SPIFFE://cluster.local/ns/a/sa/b", "found scheme \"SPIFFE\""),
            ("spiffe:/cluster.local/ns/a/sa/b", "must start with"),
            ("spiffe://", "trust domain is empty"),
            ("spiffe:///ns/a/sa/b", "trust domain is empty"),
            ("spiffe://cluster.local", "missing the \"/ns/<namespace>\" part"),
            ("spiffe://cluster.local/ns", "missing the namespace"),
            ("spiffe://cluster.local/ns/a", "missing the \"/sa/<service-account>\" part"),
            ("spiffe://cluster.local/ns/a/sa", "missing the service account"),
            ("spiffe://cluster.local/ns/a/sa/b/c", "extra path segment(s) \"/c\""),
            ("spiffe://cluster.local/ns/a/sa/b/", "extra path segment(s) \"/\""),
            ("spiffe://cluster.local/ns//sa/b", "the namespace is empty"),
            ("spiffe://cluster.local//ns/a/sa/b", "the \"ns\" path segment is empty"),
            ("spiffe://cluster.local/ns/a/sa/", "the service account is empty"),
            ("spiffe://cluster.local/namespace/a/sa/b", "expected the path segment \"ns\" but found \"namespace\""),
            ("spiffe://cluster.local/ns/a/serviceaccount/b", "expected the path segment \"sa\""),
            ("spiffe://Cluster.local/ns/a/sa/b", "invalid trust domain \"Cluster.local\": character 'C'"),
            ("spiffe://cluster.local:8080/ns/a/sa/b", "character ':'"),
            ("spiffe://user@cluster.local/ns/a/sa/b", "character '@'"),
            ("spiffe://cluster.local/ns/a%20b/sa/b", "invalid namespace \"a%20b\": character '%'"),
            ("spiffe://cluster.local/ns/a/sa/b?x=1", "invalid service account \"b?x=1\": character '?'"),
            ("spiffe://cluster.local/ns/a/sa/b#frag", "character '#'"),
            ("spiffe://cluster.local/ns/../sa/b", "\".\" and \"..\" are not allowed"),
            ("spiffe://cluster.local/ns/ä/sa/b", "character 'ä'"),
            ("spiffe://cluster.local/ns/a b/sa/c", "character ' '"),
        ];
        for (input, want) in cases {
            let err = Identity::parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains(want), "input {input:?}: error {msg:?} does not contain {want:?}");
        }
    }

    #[test]
    fn too_long_is_rejected() {
        let long = "a".repeat(2100);
        let err = Identity::parse(&format!("spiffe://td/ns/{long}/sa/b")).unwrap_err();
        assert!(matches!(err, IdentityError::TooLong { .. }), "{err}");
        let td = "a".repeat(256);
        let err = Identity::parse(&format!("spiffe://{td}/ns/a/sa/b")).unwrap_err();
        assert!(matches!(err, IdentityError::TooLong { part: "trust domain", .. }), "{err}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Parts drawn mostly from the allowed characters, sometimes from the ones that must be refused.
        fn part(max: usize) -> impl Strategy<Value = String> {
            prop_oneof![
                4 => proptest::string::string_regex(&format!("[a-z0-9._-]{{0,{max}}}")).expect("a valid regex"),
                1 => proptest::string::string_regex(&format!("[A-Za-z0-9._:@%?# ä-]{{0,{max}}}")).expect("a valid regex"),
                1 => prop::sample::select(&["", ".", "..", "ns", "sa"][..]).prop_map(str::to_string),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Any text: an identity or a typed error, never a panic; what parses is exactly its own rendering.
            #[test]
            fn arbitrary_text_parses_or_is_refused(
                text in prop_oneof![
                    any::<String>(),
                    "(spiffe|SPIFFE|https)?(:|://|:/)?[a-z.]{0,6}(/(ns|sa|x|\\.\\.|)){0,6}(/[a-z%?#]{0,4}){0,3}",
                ]
            ) {
                if let Ok(id) = Identity::parse(&text) {
                    prop_assert_eq!(id.to_string(), text);
                }
            }

            /// Building from parts and parsing the rendered URI agree, and a valid identity survives the round trip.
            #[test]
            fn new_and_parse_agree(td in part(300), ns in part(80), sa in part(80), pad in 0usize..2100) {
                // Sometimes long enough to pass the 2048-byte bound of a whole SPIFFE ID.
                let sa = if pad > 1900 && !sa.contains('/') { format!("{sa}{}", "s".repeat(pad)) } else { sa };
                let built = Identity::new(td.clone(), ns.clone(), sa.clone());
                let parsed = Identity::parse(&format!("spiffe://{td}/ns/{ns}/sa/{sa}"));
                prop_assert_eq!(built.is_ok(), parsed.is_ok(), "{:?} / {:?}", built, parsed);
                if let Ok(id) = built {
                    prop_assert_eq!(Identity::parse(&id.to_string()), Ok(id.clone()));
                    prop_assert_eq!(parsed, Ok(id));
                }
            }
        }
    }

    #[test]
    fn ordering_and_hashing_are_by_parts() {
        let a: Identity = "spiffe://td/ns/a/sa/x".parse().unwrap();
        let b: Identity = "spiffe://td/ns/b/sa/a".parse().unwrap();
        assert!(a < b);
        let set: std::collections::HashSet<_> = [a.clone(), a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 2);
    }
}
