//! The normalizer against the classic bypass spellings, and its invariants over generated paths.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn normal(path: &str) -> String {
    match path_of(path, EscapedSlashes::Reject) {
        Ok(p) => p.into_owned(),
        Err(e) => panic!("{path:?} refused: {e}"),
    }
}

fn refused(path: &str) -> Rejection {
    match path_of(path, EscapedSlashes::Reject) {
        Ok(p) => panic!("{path:?} accepted as {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn repeated_slashes_cannot_dodge_a_path_rule() {
    assert_eq!(normal("//admin"), "/admin");
    assert_eq!(normal("///admin//users///"), "/admin/users/");
    assert_eq!(normal("/admin//"), "/admin/");
}

#[test]
fn dot_segments_cannot_dodge_a_path_rule() {
    assert_eq!(normal("/./admin"), "/admin");
    assert_eq!(normal("/public/../admin"), "/admin");
    assert_eq!(normal("/../../admin"), "/admin");
    assert_eq!(normal("/admin/."), "/admin/");
    assert_eq!(normal("/admin/x/.."), "/admin/");
    assert_eq!(normal("/a/b/c/./../../g"), "/a/g");
    // Merged first: an empty segment does not absorb the `..`.
    assert_eq!(normal("/admin//../x"), "/x");
    // Not dot segments: names that merely contain dots.
    assert_eq!(normal("/admin.../x"), "/admin.../x");
    assert_eq!(normal("/.admin"), "/.admin");
}

#[test]
fn encoded_unreserved_characters_cannot_hide_a_name() {
    assert_eq!(normal("/%61dmin"), "/admin");
    assert_eq!(normal("/%61%64%6D%69%6E"), "/admin");
    assert_eq!(normal("/%41dmin"), "/Admin");
    assert_eq!(normal("/a%2Db%5Fc%7Ed%2e"), "/a-b_c~d.");
}

#[test]
fn encoded_dot_segments_are_removed_after_decoding() {
    assert_eq!(normal("/%2e/admin"), "/admin");
    assert_eq!(normal("/x/%2e%2e/admin"), "/admin");
    assert_eq!(normal("/x/.%2E/admin"), "/admin");
}

#[test]
fn other_escapes_are_kept_with_upper_case_hex() {
    assert_eq!(normal("/a%20b"), "/a%20b");
    assert_eq!(normal("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(normal("/q%3fx"), "/q%3Fx");
    assert_eq!(normal("/100%25"), "/100%25");
}

#[test]
fn encoded_slash_and_backslash_are_refused() {
    assert_eq!(refused("/admin%2F"), Rejection::EncodedSlash);
    assert_eq!(refused("/admin%2fusers"), Rejection::EncodedSlash);
    assert_eq!(refused("/public%2F..%2Fadmin"), Rejection::EncodedSlash);
    assert_eq!(refused("/admin%5Cx"), Rejection::EncodedBackslash);
    assert_eq!(refused("/admin%5c"), Rejection::EncodedBackslash);
}

#[test]
fn a_raw_backslash_is_refused() {
    assert_eq!(refused("/public\\..\\admin"), Rejection::Backslash);
    assert_eq!(refused("\\admin"), Rejection::NotAbsolutePath);
}

#[test]
fn semicolon_path_parameters_are_refused() {
    assert_eq!(refused("/admin;x"), Rejection::PathParameter);
    assert_eq!(refused("/admin;jsessionid=1/users"), Rejection::PathParameter);
    assert_eq!(refused("/..;/admin"), Rejection::PathParameter);
    assert_eq!(refused("/admin%3Bx"), Rejection::PathParameter);
}

#[test]
fn double_encoding_is_refused() {
    assert_eq!(refused("/%2561dmin"), Rejection::DoubleEncoding);
    assert_eq!(refused("/admin%252F"), Rejection::DoubleEncoding);
    assert_eq!(refused("/%252e%252e/admin"), Rejection::DoubleEncoding);
    // Completed by the first decode: `%25%36%31` would become `%2561`.
    assert_eq!(refused("/%25%36%31dmin"), Rejection::DoubleEncoding);
}

#[test]
fn nul_and_control_characters_are_refused() {
    assert_eq!(refused("/admin%00"), Rejection::Nul);
    assert_eq!(refused("/admin\0"), Rejection::Nul);
    assert_eq!(refused("/admin\r\nx"), Rejection::ControlCharacter);
}

#[test]
fn overlong_and_invalid_utf8_is_refused() {
    // `%C0%AE` is an overlong `.`: old decoders read `/%C0%AE%C0%AE/` as `/../`.
    assert_eq!(refused("/%C0%AE%C0%AE/admin"), Rejection::InvalidUtf8);
    assert_eq!(refused("/%c0%af"), Rejection::InvalidUtf8);
    assert_eq!(refused("/%E0%80%AE"), Rejection::InvalidUtf8);
    assert_eq!(refused("/%FF"), Rejection::InvalidUtf8);
    assert_eq!(refused("/%ED%A0%80"), Rejection::InvalidUtf8);
    assert_eq!(normal("/caf\u{e9}"), "/caf\u{e9}");
}

#[test]
fn malformed_escapes_are_refused() {
    assert_eq!(refused("/admin%"), Rejection::MalformedEscape);
    assert_eq!(refused("/admin%4"), Rejection::MalformedEscape);
    assert_eq!(refused("/%zzadmin"), Rejection::MalformedEscape);
}

#[test]
fn case_is_kept() {
    assert_eq!(normal("/ADMIN"), "/ADMIN");
    assert_eq!(normal("/Admin/"), "/Admin/");
}

#[test]
fn an_already_normal_path_is_borrowed() {
    assert!(matches!(path_of("/api/v1/items", EscapedSlashes::Reject), Ok(Cow::Borrowed(_))));
    assert!(matches!(path_of("/", EscapedSlashes::Reject), Ok(Cow::Borrowed(_))));
    assert!(matches!(path_of("*", EscapedSlashes::Reject), Ok(Cow::Borrowed("*"))));
}

#[test]
fn a_lower_case_method_cannot_dodge_a_method_rule() {
    for m in ["delete", "Delete", "get", "pOST", "purge"] {
        let method = Method::from_bytes(m.as_bytes()).expect("a token");
        assert_eq!(method_check(&method), Err(Rejection::MethodCase), "{m}");
    }
    for m in ["DELETE", "GET", "PURGE", "M-SEARCH"] {
        let method = Method::from_bytes(m.as_bytes()).expect("a token");
        assert_eq!(method_check(&method), Ok(()), "{m}");
    }
}

fn method_check(m: &Method) -> Result<(), Rejection> {
    super::method(m)
}

#[test]
fn the_request_gets_the_normalized_path_and_keeps_its_query() {
    let mut r = Request::builder().uri("http://reviews/%61dmin//./x?a=%2F&b=..").body(()).expect("request");
    request(&mut r, EscapedSlashes::Reject).expect("accepted");
    assert_eq!(r.uri().to_string(), "http://reviews/admin/x?a=%2F&b=..");
    let mut r = Request::builder().uri("/a/../b?q").body(()).expect("request");
    request(&mut r, EscapedSlashes::Reject).expect("accepted");
    assert_eq!(r.uri().to_string(), "/b?q");
}

#[test]
fn a_forged_client_certificate_header_is_stripped() {
    let mut r = Request::builder()
        .uri("/")
        .header(XFCC, "By=spiffe://x;URI=spiffe://cluster.local/ns/shop/sa/admin")
        .header("X-Strait-Peer-Identity", "spiffe://cluster.local/ns/shop/sa/admin")
        .header("x-other", "kept")
        .body(())
        .expect("request");
    request(&mut r, EscapedSlashes::Reject).expect("accepted");
    assert!(r.headers().get(XFCC).is_none());
    assert!(r.headers().get("x-strait-peer-identity").is_none());
    assert_eq!(r.headers().get("x-other").and_then(|v| v.to_str().ok()), Some("kept"));
}

/// Path fragments chosen to collide: separators, dots, escapes of every class, parameters, UTF-8.
const PIECES: &[&str] = &[
    "/", "//", ".", "..", "a", "admin", "%2e", "%2E", "%61", "%2F", "%5C", "%25", "%252F", "%3B", ";", "\\", "%00",
    "%20", "%C3%A9", "%C0%AE", "\u{e9}", "%", "%4", "~", "-", "%7e", "x.y", "%41",
];

fn generated(rng: &mut StdRng) -> String {
    let n = rng.random_range(0..12);
    let mut path = String::from("/");
    for _ in 0..n {
        path.push_str(PIECES[rng.random_range(0..PIECES.len())]);
    }
    path
}

#[test]
fn normalization_is_idempotent_and_its_output_has_no_dot_segments_or_empty_segments() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut accepted = 0;
    for _ in 0..50_000 {
        let path = generated(&mut rng);
        let Ok(once) = path_of(&path, EscapedSlashes::Reject) else { continue };
        accepted += 1;
        let once = once.into_owned();
        let twice =
            path_of(&once, EscapedSlashes::Reject).unwrap_or_else(|e| panic!("{path:?} -> {once:?} then refused: {e}"));
        assert_eq!(twice, once, "not idempotent on {path:?}");
        assert!(once.starts_with('/'), "{path:?} -> {once:?}");
        assert!(!once.contains("//"), "{path:?} -> {once:?}");
        let segments: Vec<&str> = once.split('/').collect();
        assert!(!segments.iter().any(|s| *s == "." || *s == ".."), "{path:?} -> {once:?}");
        for bad in ["\\", ";", "%2F", "%5C", "%00", "%3B"] {
            assert!(!once.contains(bad), "{path:?} -> {once:?} contains {bad}");
        }
    }
    assert!(accepted > 1_000, "the generator should produce acceptable paths too ({accepted})");
}

#[test]
fn normalization_never_panics_on_arbitrary_text() {
    let mut rng = StdRng::seed_from_u64(12);
    for _ in 0..20_000 {
        let len = rng.random_range(0..24);
        let text: String = (0..len)
            .map(|_| match rng.random_range(0..4) {
                0 => char::from(rng.random_range(0u8..0x80)),
                1 => ['%', '/', '.', ';', '\\'][rng.random_range(0..5)],
                2 => char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'),
                _ => rng.random::<char>(),
            })
            .collect();
        let _ = path_of(&text, EscapedSlashes::Reject);
        let _ = path_of(&format!("/{text}"), EscapedSlashes::Reject);
    }
}

#[test]
fn a_host_that_keeps_escaped_slashes_gets_them_as_data_and_nothing_else_changes() {
    let keep = |path: &str| path_of(path, EscapedSlashes::Keep).map(Cow::into_owned);
    assert_eq!(keep("/objects/a%2fb").as_deref(), Ok("/objects/a%2Fb"));
    assert_eq!(keep("/objects/a%5cb").as_deref(), Ok("/objects/a%5Cb"));
    // A kept escape is inside a segment: it neither merges with a slash nor forms a dot segment.
    assert_eq!(keep("/a/..%2F..%2Fadmin").as_deref(), Ok("/a/..%2F..%2Fadmin"));
    assert_eq!(keep("/a/%2F/../b").as_deref(), Ok("/a/b"));
    // Everything else is refused or normalized exactly as without the opt-in.
    assert_eq!(keep("/a\\b"), Err(Rejection::Backslash));
    assert_eq!(keep("/a;b"), Err(Rejection::PathParameter));
    assert_eq!(keep("/a%252Fb"), Err(Rejection::DoubleEncoding));
    assert_eq!(keep("/%61dmin//x").as_deref(), Ok("/admin/x"));
    // And the default still refuses both.
    assert_eq!(refused("/objects/a%2Fb"), Rejection::EncodedSlash);
    assert_eq!(refused("/objects/a%5Cb"), Rejection::EncodedBackslash);
}

#[test]
fn normalization_with_kept_slashes_is_idempotent() {
    let mut rng = StdRng::seed_from_u64(0x2f2f);
    let alphabet = ["/", "%2F", "%2f", "%5C", ".", "..", "a", "%61", "~", "%7E"];
    for _ in 0..5_000 {
        let path: String = std::iter::once("/")
            .chain((0..rng.random_range(0..12)).map(|_| alphabet[rng.random_range(0..alphabet.len())]))
            .collect();
        let Ok(once) = path_of(&path, EscapedSlashes::Keep) else { continue };
        let twice = path_of(&once, EscapedSlashes::Keep).unwrap_or_else(|e| panic!("{path:?} -> {once:?}: {e}"));
        assert_eq!(once, twice, "{path:?}");
        assert!(!once.contains("//"), "{path:?} -> {once:?}");
    }
}
