//! `x-forwarded-client-cert` (Envoy's format, as Istio sets it): the destination proxy tells the pod who the
//! verified caller is. The proxies only write it (and strip any a client sent, see `normalize`); the decoder is
//! for pods that read it, such as `strait demo-backend`, and is strict: the caller is the `URI` of the last
//! element (the hop that reached the pod), and it must be a valid SPIFFE identity.
//!
//! Grammar: elements separated by `,`, each a `;`-separated list of `Key=Value`; a value containing `,`, `;`
//! or `=` is double-quoted, with `\"` for a quote inside. Identities cannot contain any of those characters
//! (`strait_certs::Identity` admits DNS-label characters only), so what the proxy writes needs no quoting and a
//! peer's certificate cannot smuggle in a second element.

use http::HeaderValue;
use strait_certs::Identity;

/// Longer values are refused by the decoder: headers are bounded at 64 KiB in total, one element is < 1 KiB.
pub const MAX_DECODED_LEN: usize = 16 * 1024;

/// The value the destination proxy sets: `By=<destination>;URI=<caller>` (`By` omitted when the destination
/// has no identity). `None` only if an identity held a character a header cannot carry, which
/// `Identity`'s validation rules out.
pub fn encode(destination: Option<&Identity>, caller: &Identity) -> Option<HeaderValue> {
    let value = match destination {
        Some(by) => format!("By={};URI={}", by.uri(), caller.uri()),
        None => format!("URI={}", caller.uri()),
    };
    HeaderValue::from_str(&value).ok()
}

/// The caller the last element names, if it has a `URI` that is a valid identity.
pub fn caller(value: &str) -> Option<Identity> {
    if value.len() > MAX_DECODED_LEN {
        return None;
    }
    let last = split_unquoted(value, b',').pop()?;
    split_unquoted(last, b';').into_iter().find_map(|pair| {
        let (key, raw) = pair.trim().split_once('=')?;
        if !key.trim().eq_ignore_ascii_case("uri") {
            return None;
        }
        Identity::parse(&unquote(raw.trim())?).ok()
    })
}

/// Splits `value` at every `separator` outside double quotes (a `\` inside quotes escapes the next byte).
fn split_unquoted(value: &str, separator: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in value.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b if b == separator && !quoted => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// A value with its quotes and escapes removed; `None` for an unterminated quote.
fn unquote(raw: &str) -> Option<String> {
    let Some(inner) = raw.strip_prefix('"') else { return Some(raw.to_string()) };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(uri: &str) -> Identity {
        Identity::parse(uri).expect("a valid identity")
    }

    #[test]
    fn the_caller_is_the_uri_of_the_last_element() {
        let caller = |v: &str| super::caller(v).map(|i| i.uri());
        assert_eq!(
            caller("By=spiffe://cluster.local/ns/demo/sa/reviews;URI=spiffe://cluster.local/ns/demo/sa/client")
                .as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/client")
        );
        assert_eq!(
            caller("By=a;URI=spiffe://td/ns/x/sa/first,By=b;Hash=00;URI=\"spiffe://td/ns/y/sa/last\"").as_deref(),
            Some("spiffe://td/ns/y/sa/last")
        );
        // A quoted earlier element may hold separators; they do not split it.
        assert_eq!(
            caller("By=\"x,URI=spiffe://td/ns/evil/sa/e;\";URI=spiffe://td/ns/a/sa/b").as_deref(),
            Some("spiffe://td/ns/a/sa/b")
        );
        assert_eq!(caller("By=spiffe://td/ns/x/sa/y"), None, "no URI");
        assert_eq!(caller("URI=spiffe://td/ns/x/sa/y,By=z"), None, "the last element names nobody");
        assert_eq!(caller("URI=https://td/ns/x/sa/y"), None, "not a SPIFFE identity");
        assert_eq!(caller("URI=\"spiffe://td/ns/x/sa/y"), None, "unterminated quote");
        assert_eq!(caller(""), None);
        assert_eq!(caller(&"URI=".repeat(MAX_DECODED_LEN)), None);
    }

    #[test]
    fn what_the_proxy_writes_is_what_a_pod_reads() {
        let by = id("spiffe://cluster.local/ns/shop/sa/reviews");
        let from = id("spiffe://cluster.local/ns/shop/sa/client");
        let value = encode(Some(&by), &from).expect("a header value");
        assert_eq!(value, "By=spiffe://cluster.local/ns/shop/sa/reviews;URI=spiffe://cluster.local/ns/shop/sa/client");
        assert_eq!(caller(value.to_str().expect("ASCII")), Some(from.clone()));
        let value = encode(None, &from).expect("a header value");
        assert_eq!(caller(value.to_str().expect("ASCII")), Some(from));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        #[test]
        fn the_decoder_never_panics(value in ".{0,300}") {
            let _ = caller(&value);
        }

        #[test]
        fn the_decoder_never_panics_on_xfcc_shaped_input(value in "([A-Za-z]{1,4}=(\"|,|;|=|\\\\|[a-z:/.]){0,20}[,;]?){0,12}") {
            let _ = caller(&value);
        }

        /// Any identity a certificate can carry round-trips, and no identity can inject an element or a key:
        /// whatever well-formed elements came before (earlier hops), the pod reads the last hop's caller.
        #[test]
        fn every_valid_identity_round_trips_and_cannot_inject(
            trust_domain in "[a-z0-9.:_-]{1,30}",
            namespace in "[a-zA-Z0-9.,;=\"_-]{1,30}",
            account in "[a-zA-Z0-9.,;=\"_-]{1,30}",
            earlier in "(By=[a-z:/]{0,10};URI=(\"[a-z:/,;=]{0,20}\"|[a-z:/]{0,20}),){0,3}",
        ) {
            let Ok(from) = Identity::new(trust_domain, namespace, account) else { return Ok(()) };
            let by = id("spiffe://cluster.local/ns/shop/sa/reviews");
            let value = encode(Some(&by), &from).expect("every valid identity fits a header");
            let text = value.to_str().expect("ASCII");
            prop_assert_eq!(split_unquoted(text, b',').len(), 1);
            prop_assert_eq!(split_unquoted(text, b';').len(), 2);
            prop_assert_eq!(caller(text), Some(from.clone()));
            prop_assert_eq!(caller(&format!("{earlier}{text}")), Some(from));
        }
    }
}
