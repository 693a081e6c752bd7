//! Retries: the policy a route compiles to, and [`retry_loop`], which sends a request until it succeeds, the
//! policy gives up, or the budget runs out.
//!
//! Semantics follow Istio: `attempts` is the number of RETRIES (total tries = attempts + 1); `retryOn` names
//! Envoy's conditions. Only idempotent methods are retried unless `retryNonIdempotent` is set, except after a
//! connect failure: such a request never reached the server, so retrying it is always safe.
//!
//! gRPC conditions (`cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`) match a
//! trailers-only answer (the status in the response headers: the server failed the call before sending any
//! message, and nothing has reached the client yet) with that `grpc-status`. As in Envoy and gRPC's own retry
//! policy they apply whatever the method (every gRPC call is a POST): naming the code is the opt-in. A status
//! in trailers after messages cannot be retried (the response is already on its way).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Body;
use strait_api::{parse_duration, RetryPolicy as RetryPolicySpec};

use super::backoff::Backoff;
use super::body::{self, Prepared, RetryBody};
use super::budget::RetryBudget;

/// What became of one attempt, as far as retrying and outlier detection care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Response(StatusCode),
    /// The stream or connection was reset after the request may have been sent.
    Reset,
    /// No connection could be made: the request was never sent.
    ConnectFailure,
    /// The per-try timeout elapsed.
    Timeout,
}

impl Outcome {
    /// A 5xx or a locally-detected failure (what outlier detection counts as an error).
    pub fn is_failure(&self) -> bool {
        !matches!(self, Outcome::Response(status) if !status.is_server_error())
    }

    /// 502/503/504 or a locally-detected failure (Envoy's "gateway error").
    pub fn is_gateway_error(&self) -> bool {
        match self {
            Outcome::Response(status) => matches!(status.as_u16(), 502..=504),
            _ => true,
        }
    }
}

impl crate::balance::Failure for Outcome {
    fn is_failure(&self) -> bool {
        Outcome::is_failure(self)
    }

    fn is_gateway_error(&self) -> bool {
        Outcome::is_gateway_error(self)
    }
}

/// The `retryOn` conditions: a bitset plus explicit status codes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    bits: u8,
    codes: Vec<StatusCode>,
    /// gRPC status codes, bit n for code n.
    grpc: u32,
}

/// The gRPC conditions of `retryOn` and their status codes.
const GRPC_CONDITIONS: [(&str, u32); 5] =
    [("cancelled", 1), ("deadline-exceeded", 4), ("resource-exhausted", 8), ("internal", 13), ("unavailable", 14)];

/// The `grpc-status` of a trailers-only gRPC answer (in the response headers); `None` for anything else.
pub fn trailers_only_grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    // gRPC codes are 0..=16; anything else is not a status this proxy acts on.
    value.parse().ok().filter(|code| *code <= 16)
}

impl RetryOn {
    const FIVE_XX: u8 = 1;
    const GATEWAY_ERROR: u8 = 1 << 1;
    const RESET: u8 = 1 << 2;
    const CONNECT_FAILURE: u8 = 1 << 3;
    const RETRIABLE_4XX: u8 = 1 << 4;

    /// Parses Istio's comma-separated list. Returns the conditions and the tokens that were not understood
    /// (the caller logs them; the rest of the policy still applies). `refused-stream` is treated as `reset`
    /// (a refused stream is a reset the server promises it did not process).
    pub fn parse(text: &str) -> (RetryOn, Vec<String>) {
        let mut on = RetryOn::default();
        let mut ignored = Vec::new();
        for token in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token {
                "5xx" => on.bits |= Self::FIVE_XX,
                "gateway-error" => on.bits |= Self::GATEWAY_ERROR,
                "reset" | "refused-stream" => on.bits |= Self::RESET,
                "connect-failure" => on.bits |= Self::CONNECT_FAILURE,
                "retriable-4xx" => on.bits |= Self::RETRIABLE_4XX,
                // The explicit codes in the same list are what it enables.
                "retriable-status-codes" => {}
                grpc if GRPC_CONDITIONS.iter().any(|(name, _)| *name == grpc) => {
                    let code = GRPC_CONDITIONS.iter().find(|(name, _)| *name == grpc).map_or(0, |(_, c)| *c);
                    on.grpc |= 1 << code;
                }
                code => match code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()) {
                    Some(status) if !on.codes.contains(&status) => on.codes.push(status),
                    Some(_) => {}
                    None => ignored.push(code.to_string()),
                },
            }
        }
        (on, ignored)
    }

    /// Istio's default: `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` + 503.
    pub fn istio_default() -> Self {
        RetryOn {
            bits: Self::CONNECT_FAILURE | Self::RESET,
            codes: vec![StatusCode::SERVICE_UNAVAILABLE],
            grpc: 1 << 14 | 1 << 1,
        }
    }

    /// Whether a trailers-only gRPC answer with status `code` is to be retried.
    pub fn matches_grpc(&self, code: u32) -> bool {
        code < 32 && self.grpc & (1 << code) != 0
    }

    pub fn matches(&self, outcome: &Outcome) -> bool {
        let any = |bits: u8| self.bits & bits != 0;
        match outcome {
            Outcome::Response(status) => {
                (any(Self::FIVE_XX) && status.is_server_error())
                    || (any(Self::GATEWAY_ERROR) && matches!(status.as_u16(), 502..=504))
                    || (any(Self::RETRIABLE_4XX) && *status == StatusCode::CONFLICT)
                    || self.codes.contains(status)
            }
            // As Envoy: 5xx and gateway-error include failures that produced no response at all.
            Outcome::Reset | Outcome::Timeout => any(Self::FIVE_XX | Self::GATEWAY_ERROR | Self::RESET),
            Outcome::ConnectFailure => any(Self::FIVE_XX | Self::GATEWAY_ERROR | Self::RESET | Self::CONNECT_FAILURE),
        }
    }
}

/// A route's compiled retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    retries: u32,
    per_try_timeout: Option<Duration>,
    retry_on: RetryOn,
    retry_non_idempotent: bool,
    backoff: Backoff,
}

impl RetryPolicy {
    /// For operators (`strait why`, `/config_dump`): what the compiled policy retries, and how.
    pub fn describe(&self) -> String {
        let on = &self.retry_on;
        let mut conditions: Vec<String> = [
            (RetryOn::FIVE_XX, "5xx"),
            (RetryOn::GATEWAY_ERROR, "gateway-error"),
            (RetryOn::RESET, "reset"),
            (RetryOn::CONNECT_FAILURE, "connect-failure"),
            (RetryOn::RETRIABLE_4XX, "retriable-4xx"),
        ]
        .iter()
        .filter(|(bit, _)| on.bits & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect();
        conditions.extend(on.codes.iter().map(|c| c.as_u16().to_string()));
        let mut out = format!("up to {} retries on {}", self.retries, conditions.join(","));
        if let Some(t) = self.per_try_timeout {
            out.push_str(&format!(", {t:?} per try"));
        }
        if self.retry_non_idempotent {
            out.push_str(", non-idempotent requests too");
        }
        out
    }

    /// Compiles the spec. Errors make the policy unusable (a bad duration); the second value lists
    /// `retryOn` tokens that were ignored.
    pub fn from_spec(spec: &RetryPolicySpec) -> Result<(RetryPolicy, Vec<String>), String> {
        let per_try_timeout = spec
            .per_try_timeout
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|e| format!("perTryTimeout: {e}"))?;
        let (retry_on, ignored) = match spec.retry_on.as_deref() {
            Some(text) => RetryOn::parse(text),
            None => (RetryOn::istio_default(), Vec::new()),
        };
        let policy = RetryPolicy {
            retries: spec.attempts,
            per_try_timeout: per_try_timeout.filter(|d| !d.is_zero()),
            retry_on,
            retry_non_idempotent: spec.retry_non_idempotent.unwrap_or(false),
            backoff: Backoff::default(),
        };
        Ok((policy, ignored))
    }

    #[cfg(test)]
    pub fn new(retries: u32, retry_on: RetryOn) -> Self {
        RetryPolicy {
            retries,
            per_try_timeout: None,
            retry_on,
            retry_non_idempotent: false,
            backoff: Backoff::default(),
        }
    }

    #[cfg(test)]
    pub fn with_per_try_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.per_try_timeout = timeout;
        self
    }

    #[cfg(test)]
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    #[cfg(test)]
    pub fn with_retry_non_idempotent(mut self, yes: bool) -> Self {
        self.retry_non_idempotent = yes;
        self
    }

    /// Retries after the first try (Istio's `attempts`).
    #[cfg(test)]
    pub fn retries(&self) -> u32 {
        self.retries
    }

    #[cfg(test)]
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// Whether this outcome of a `method` request may be retried (ignoring attempts left and the budget);
    /// `grpc` is the status of a trailers-only gRPC answer.
    pub fn should_retry(&self, method: &Method, outcome: &Outcome, grpc: Option<u32>) -> bool {
        (self.retry_on.matches(outcome)
            && (*outcome == Outcome::ConnectFailure || self.retry_non_idempotent || is_idempotent(method)))
            || grpc.is_some_and(|code| self.retry_on.matches_grpc(code))
    }

    /// Whether `outcome` (and `grpc`) is a failure this policy retries at all.
    fn retries_on(&self, outcome: &Outcome, grpc: Option<u32>) -> bool {
        self.retry_on.matches(outcome) || grpc.is_some_and(|code| self.retry_on.matches_grpc(code))
    }
}

/// RFC 9110 §9.2.2: a request with one of these methods can be repeated with the same effect.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Counters for metrics; share one per destination (or per proxy) and export the values.
#[derive(Debug, Default)]
pub struct RetryStats {
    retries: AtomicU64,
    succeeded: AtomicU64,
    budget_exhausted: AtomicU64,
    per_try_timeouts: AtomicU64,
}

impl RetryStats {
    /// Retries sent (not counting first tries).
    pub fn retries(&self) -> u64 {
        self.retries.load(Relaxed)
    }
    /// Requests that were retried at least once and ended with an outcome the policy does not retry.
    pub fn succeeded(&self) -> u64 {
        self.succeeded.load(Relaxed)
    }
    /// Retries the policy wanted but the budget refused.
    pub fn budget_exhausted(&self) -> u64 {
        self.budget_exhausted.load(Relaxed)
    }
    /// Tries cut short by the per-try timeout.
    #[cfg(test)]
    pub fn per_try_timeouts(&self) -> u64 {
        self.per_try_timeouts.load(Relaxed)
    }
}

/// How [`retry_loop`] ended without a response.
#[derive(Debug, thiserror::Error)]
pub enum RetryError<E> {
    /// The last try failed in the sender (connect failure, reset, ...).
    #[error(transparent)]
    Upstream(E),
    /// The last try exceeded the per-try timeout: answer 504 (response flag `UT`).
    #[error("upstream did not answer within the per-try timeout of {0:?}")]
    PerTryTimeout(Duration),
    /// Reading the client's request body for replay failed.
    #[error("reading the request body: {0}")]
    RequestBody(Box<dyn std::error::Error + Send + Sync>),
}

/// Everything [`retry_loop`] reads besides the request.
#[derive(Clone, Copy)]
pub struct RetryParams<'a> {
    /// `None` (or zero retries): one try, no buffering, no per-try timeout.
    pub policy: Option<&'a RetryPolicy>,
    pub budget: &'a RetryBudget,
    pub stats: &'a RetryStats,
    /// Largest request body buffered for replay ([`body::DEFAULT_REPLAY_CAP`]).
    pub replay_cap: usize,
}

/// Sends `req` through `send`, retrying as the policy and the budget allow, with backoff between tries.
/// `classify` says what a sender error was (connect failure or reset). Returns the last response or error:
/// a retried 503 comes back as the 503 when the retries are exhausted, so the caller's status is honest.
/// The overall route timeout is the caller's: wrap this future in `tokio::time::timeout`.
pub async fn retry_loop<B, RB, E, S, F, C>(
    req: Request<B>,
    params: RetryParams<'_>,
    mut send: S,
    classify: C,
) -> Result<Response<RB>, RetryError<E>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S: FnMut(Request<RetryBody<B>>) -> F,
    F: Future<Output = Result<Response<RB>, E>>,
    C: Fn(&E) -> Outcome,
{
    let Some(policy) = params.policy.filter(|p| p.retries > 0) else {
        return send(req.map(RetryBody::once)).await.map_err(RetryError::Upstream);
    };
    params.budget.deposit();
    let (parts, body) = req.into_parts();
    // The first try's body: a replay, or the client's body teed (replayable afterwards if it ended in time).
    let (mut replay, mut first, tee) =
        match body::buffer(body, params.replay_cap).await.map_err(|e| RetryError::RequestBody(e.into()))? {
            Prepared::Replayable(replay) => (Some(replay), None, None),
            Prepared::Once(body) => return attempt(policy, params, &mut send, Request::from_parts(parts, body)).await,
            Prepared::Teed(body, tee) => (None, Some(body), Some(tee)),
        };
    let mut retry = 0;
    loop {
        let Some(body) = first.take().or_else(|| replay.as_ref().map(|r| r.body())) else {
            return Err(RetryError::RequestBody("no request body to send again".into()));
        };
        let result = attempt(policy, params, &mut send, Request::from_parts(parts.clone(), body)).await;
        let (outcome, grpc) = match &result {
            Ok(response) => (Outcome::Response(response.status()), trailers_only_grpc_status(response.headers())),
            Err(RetryError::Upstream(e)) => (classify(e), None),
            Err(RetryError::PerTryTimeout(_)) => (Outcome::Timeout, None),
            Err(RetryError::RequestBody(_)) => return result,
        };
        if retry >= policy.retries || !policy.should_retry(&parts.method, &outcome, grpc) {
            if retry > 0 && !policy.retries_on(&outcome, grpc) {
                params.stats.succeeded.fetch_add(1, Relaxed);
            }
            return result;
        }
        if replay.is_none() {
            // A teed body that has not ended (a stream still open) or went over the cap cannot be sent again.
            match tee.as_ref().and_then(body::Tee::replay) {
                Some(copy) => replay = Some(copy),
                None => return result,
            }
        }
        if !params.budget.try_withdraw() {
            params.stats.budget_exhausted.fetch_add(1, Relaxed);
            return result;
        }
        // Release the failed response (and its connection) before waiting.
        drop(result);
        let delay = policy.backoff.delay(retry, &mut rand::rng());
        tokio::time::sleep(delay).await;
        retry += 1;
        params.stats.retries.fetch_add(1, Relaxed);
    }
}

async fn attempt<B, RB, E, S, F>(
    policy: &RetryPolicy,
    params: RetryParams<'_>,
    send: &mut S,
    req: Request<RetryBody<B>>,
) -> Result<Response<RB>, RetryError<E>>
where
    S: FnMut(Request<RetryBody<B>>) -> F,
    F: Future<Output = Result<Response<RB>, E>>,
{
    let Some(limit) = policy.per_try_timeout else {
        return send(req).await.map_err(RetryError::Upstream);
    };
    match tokio::time::timeout(limit, send(req)).await {
        Ok(result) => result.map_err(RetryError::Upstream),
        Err(_) => {
            params.stats.per_try_timeouts.fetch_add(1, Relaxed);
            Err(RetryError::PerTryTimeout(limit))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::budget::BudgetConfig;
    use http_body_util::{BodyExt, Full};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::cell::RefCell;
    use std::convert::Infallible;

    fn spec(attempts: u32, retry_on: &str) -> RetryPolicySpec {
        RetryPolicySpec { attempts, retry_on: Some(retry_on.into()), ..Default::default() }
    }

    fn status(code: u16) -> Outcome {
        Outcome::Response(StatusCode::from_u16(code).expect("status"))
    }

    #[test]
    fn retry_on_parsing_and_matching() {
        let (on, ignored) = RetryOn::parse("5xx");
        assert!(ignored.is_empty());
        assert!(on.matches(&status(500)) && on.matches(&status(503)) && !on.matches(&status(429)));
        assert!(on.matches(&Outcome::Reset) && on.matches(&Outcome::Timeout) && on.matches(&Outcome::ConnectFailure));

        let (on, _) = RetryOn::parse("gateway-error");
        assert!(on.matches(&status(502)) && on.matches(&status(504)) && !on.matches(&status(500)));

        let (on, _) = RetryOn::parse("connect-failure");
        assert!(on.matches(&Outcome::ConnectFailure));
        assert!(!on.matches(&Outcome::Reset) && !on.matches(&Outcome::Timeout) && !on.matches(&status(503)));

        let (on, _) = RetryOn::parse("reset");
        assert!(on.matches(&Outcome::Reset) && on.matches(&Outcome::Timeout) && !on.matches(&status(503)));

        let (on, ignored) = RetryOn::parse(" retriable-status-codes, 503,429 ,unavailable,bogus");
        assert!(on.matches(&status(503)) && on.matches(&status(429)) && !on.matches(&status(500)));
        assert!(!on.matches(&Outcome::Reset));
        assert_eq!(ignored, ["bogus"]);
        assert!(on.matches_grpc(14) && !on.matches_grpc(1), "unavailable is a gRPC condition");

        assert!(!RetryOn::parse("").0.matches(&status(503)));
    }

    /// A trailers-only gRPC answer: HTTP 200 with the status in the headers.
    fn grpc_answer(code: &'static str) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::new()));
        response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(code));
        response
    }

    #[test]
    fn grpc_conditions_match_trailers_only_statuses_whatever_the_method() {
        let (on, ignored) = RetryOn::parse("unavailable,cancelled,deadline-exceeded,resource-exhausted,internal");
        assert!(ignored.is_empty(), "{ignored:?}");
        for code in [14, 1, 4, 8, 13] {
            assert!(on.matches_grpc(code), "code {code}");
        }
        for code in [0, 2, 3, 5, 12, 16, 31, 32, u32::MAX] {
            assert!(!on.matches_grpc(code), "code {code}");
        }
        assert!(!on.matches(&status(503)), "gRPC conditions are not HTTP ones");
        let (policy, _) = RetryPolicy::from_spec(&spec(2, "unavailable")).expect("valid");
        assert!(policy.should_retry(&Method::POST, &status(200), Some(14)), "gRPC calls are POSTs");
        assert!(!policy.should_retry(&Method::POST, &status(200), Some(13)));
        assert!(!policy.should_retry(&Method::POST, &status(200), None));
        // The status is read from the headers only, and only a gRPC code counts.
        assert_eq!(trailers_only_grpc_status(grpc_answer("14").headers()), Some(14));
        assert_eq!(trailers_only_grpc_status(grpc_answer("0").headers()), Some(0));
        assert_eq!(trailers_only_grpc_status(grpc_answer("99").headers()), None);
        assert_eq!(trailers_only_grpc_status(grpc_answer("unavailable").headers()), None);
        assert_eq!(trailers_only_grpc_status(&http::HeaderMap::new()), None);
        // Istio's default retries `unavailable` and `cancelled`.
        assert!(RetryOn::istio_default().matches_grpc(14) && RetryOn::istio_default().matches_grpc(1));
        assert!(!RetryOn::istio_default().matches_grpc(13));
    }

    #[tokio::test(start_paused = true)]
    async fn a_unary_grpc_call_answered_unavailable_is_retried_until_it_succeeds() {
        let policy = fast(RetryPolicy::new(2, RetryOn::parse("unavailable").0));
        let budget = RetryBudget::default();
        let stats = RetryStats::default();
        let params = RetryParams { policy: Some(&policy), budget: &budget, stats: &stats, replay_cap: 1024 };
        let tries = RefCell::new(Vec::new());
        let send = |req: Request<RetryBody<Full<Bytes>>>| {
            let n = tries.borrow().len();
            let body = async move { req.into_body().collect().await.map(|b| b.to_bytes()) };
            let answer = if n < 2 { grpc_answer("14") } else { grpc_answer("0") };
            let tries = &tries;
            async move {
                let body = body.await.map_err(|_| "body")?;
                tries.borrow_mut().push(body);
                Ok::<_, &'static str>(answer)
            }
        };
        let call = Request::post("/pkg.Svc/Method").body(Full::new(Bytes::from_static(b"\0\0\0\0\x01x"))).expect("req");
        let response = retry_loop(call, params, send, classify).await.expect("an answer");
        assert_eq!(trailers_only_grpc_status(response.headers()), Some(0));
        assert_eq!(tries.borrow().len(), 3);
        assert!(tries.borrow().iter().all(|b| &b[..] == b"\0\0\0\0\x01x"), "every try sends the message");
        assert_eq!((stats.retries(), stats.succeeded()), (2, 1));

        // A body still arriving when the call is routed (no length, as gRPC clients send it) is teed: the
        // first try streams it, and once it has ended the retry replays the copy.
        let stats = RetryStats::default();
        let params = RetryParams { policy: Some(&policy), budget: &budget, stats: &stats, replay_cap: 1024 };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
        let late = http_body_util::StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let _ = tx.send(Ok(hyper::body::Frame::data(Bytes::from_static(b"late")))).await;
        });
        let tries = RefCell::new(Vec::new());
        let send = |req: Request<RetryBody<_>>| {
            let tries = &tries;
            async move {
                let body = req.into_body().collect().await.map_err(|_| "body")?.to_bytes();
                let n = {
                    let mut tries = tries.borrow_mut();
                    tries.push(body);
                    tries.len()
                };
                Ok::<_, &'static str>(if n == 1 { grpc_answer("14") } else { grpc_answer("0") })
            }
        };
        let call = Request::post("/pkg.Svc/Method").body(late).expect("req");
        let response = retry_loop(call, params, send, classify).await.expect("an answer");
        assert_eq!(trailers_only_grpc_status(response.headers()), Some(0));
        assert_eq!(tries.borrow().iter().map(|b| &b[..]).collect::<Vec<_>>(), [b"late", b"late"]);

        // INTERNAL is not in the list: answered as it is, no retry.
        let stats = RetryStats::default();
        let params = RetryParams { policy: Some(&policy), budget: &budget, stats: &stats, replay_cap: 1024 };
        let send = |_req| std::future::ready(Ok::<_, &'static str>(grpc_answer("13")));
        let call = Request::post("/pkg.Svc/Method").body(Full::new(Bytes::new())).expect("req");
        let response = retry_loop(call, params, send, classify).await.expect("an answer");
        assert_eq!(trailers_only_grpc_status(response.headers()), Some(13));
        assert_eq!(stats.retries(), 0);
    }

    #[test]
    fn the_spec_compiles_with_istio_defaults() {
        let (policy, ignored) = RetryPolicy::from_spec(&RetryPolicySpec {
            attempts: 3,
            per_try_timeout: Some("2s".into()),
            ..Default::default()
        })
        .expect("valid");
        assert!(ignored.is_empty());
        assert_eq!(policy.retries(), 3);
        assert_eq!(policy.per_try_timeout(), Some(Duration::from_secs(2)));
        assert!(policy.should_retry(&Method::GET, &status(503), None));
        assert!(!policy.should_retry(&Method::GET, &status(500), None));
        assert!(policy.should_retry(&Method::GET, &Outcome::ConnectFailure, None));
        let bad = RetryPolicySpec { attempts: 1, per_try_timeout: Some("2 parsecs".into()), ..Default::default() };
        assert!(RetryPolicy::from_spec(&bad).is_err());
    }

    #[test]
    fn non_idempotent_methods_are_retried_only_when_never_sent_or_allowed() {
        let (policy, _) = RetryPolicy::from_spec(&spec(2, "5xx")).expect("valid");
        assert!(policy.should_retry(&Method::PUT, &status(503), None));
        assert!(!policy.should_retry(&Method::POST, &status(503), None));
        assert!(!policy.should_retry(&Method::PATCH, &Outcome::Reset, None));
        assert!(policy.should_retry(&Method::POST, &Outcome::ConnectFailure, None));
        let policy = policy.with_retry_non_idempotent(true);
        assert!(policy.should_retry(&Method::POST, &status(503), None));
    }

    #[test]
    fn outcomes_classify_failures() {
        assert!(status(500).is_failure() && !status(404).is_failure() && Outcome::Reset.is_failure());
        assert!(status(503).is_gateway_error() && !status(500).is_gateway_error());
    }

    type Resp = Response<Full<Bytes>>;

    fn respond(code: u16) -> Result<Resp, &'static str> {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::from_u16(code).map_err(|_| "bad status")?;
        Ok(response)
    }

    fn classify(e: &&'static str) -> Outcome {
        if *e == "connect" {
            Outcome::ConnectFailure
        } else {
            Outcome::Reset
        }
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/").body(Full::new(Bytes::new())).expect("request")
    }

    fn fast(policy: RetryPolicy) -> RetryPolicy {
        policy.with_backoff(Backoff::new(Duration::from_millis(1), Duration::from_millis(1)))
    }

    /// Sends `n` requests, 10 ms apart, to a service failing with probability `p`; returns (successes, stats).
    async fn run(n: u32, p: f64, policy: &RetryPolicy, budget: &RetryBudget) -> (u32, RetryStats) {
        let stats = RetryStats::default();
        let rng = RefCell::new(StdRng::seed_from_u64(42));
        let mut ok = 0;
        for _ in 0..n {
            let params = RetryParams { policy: Some(policy), budget, stats: &stats, replay_cap: 1024 };
            let send = |_req| {
                let code = if rng.borrow_mut().random_bool(p) { 503 } else { 200 };
                std::future::ready(respond(code))
            };
            let result = retry_loop(get(), params, send, classify).await;
            if result.is_ok_and(|r| r.status() == StatusCode::OK) {
                ok += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok, stats)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_mask_occasional_failures_within_the_default_budget() {
        let policy = fast(RetryPolicy::new(3, RetryOn::parse("5xx").0));
        let budget = RetryBudget::default();
        let (ok, stats) = run(5000, 0.1, &policy, &budget).await;
        // Without retries ~90 %; with 3 retries 1 - 0.1^4 = 99.99 %, and ~11 % retries fit the 20 % budget.
        assert!(ok >= 4990, "{ok}/5000 succeeded");
        assert_eq!(stats.budget_exhausted(), 0);
        assert!((450..=650).contains(&stats.retries()), "{} retries", stats.retries());
        assert!(stats.succeeded() > 400, "{} recovered", stats.succeeded());
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_failing_service_is_masked_as_far_as_the_arithmetic_allows() {
        let policy = fast(RetryPolicy::new(3, RetryOn::parse("5xx").0));
        // A budget large enough not to interfere: four tries of a 50 % coin all fail 1/16 of the time.
        let budget = RetryBudget::new(BudgetConfig { retry_ratio: 10.0, ..Default::default() });
        let (ok, _) = run(4000, 0.5, &policy, &budget).await;
        let rate = f64::from(ok) / 4000.0;
        assert!((0.925..=0.95).contains(&rate), "success rate {rate}, theory 0.9375");
        // Seven retries push it past 99 %.
        let policy = fast(RetryPolicy::new(7, RetryOn::parse("5xx").0));
        let (ok, _) = run(4000, 0.5, &policy, &budget).await;
        assert!(ok > 3960, "{ok}/4000 with 7 retries");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_service_gets_no_more_retries_than_the_budget() {
        let policy = fast(RetryPolicy::new(3, RetryOn::parse("5xx").0));
        let budget = RetryBudget::default();
        let start = tokio::time::Instant::now();
        let (ok, stats) = run(2000, 1.0, &policy, &budget).await;
        assert_eq!(ok, 0);
        let seconds = start.elapsed().as_secs_f64();
        // The budget's share of the requests plus its minimum rate for each 10 s window the run touched (the
        // reserve refills per window).
        let config = super::super::budget::BudgetConfig::default();
        let per_window = f64::from(config.min_retries_per_second) * 10.0;
        let bound = config.retry_ratio * 2000.0 + per_window * (seconds / 10.0).ceil();
        let retries = stats.retries() as f64;
        assert!(retries <= bound, "{retries} retries over {seconds:.1} s, bound {bound}");
        assert!(retries >= config.retry_ratio * 2000.0, "{retries} retries: the budget should be used");
        assert!(stats.budget_exhausted() > 1000, "{}", stats.budget_exhausted());
        assert_eq!(stats.succeeded(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_response_is_returned_and_posts_are_not_retried() {
        let policy = fast(RetryPolicy::new(2, RetryOn::parse("5xx").0));
        let budget = RetryBudget::default();
        let stats = RetryStats::default();
        let params = RetryParams { policy: Some(&policy), budget: &budget, stats: &stats, replay_cap: 1024 };
        let tries = RefCell::new(0);
        let send = |_req| {
            *tries.borrow_mut() += 1;
            std::future::ready(respond(503))
        };
        let result = retry_loop(get(), params, send, classify).await;
        assert_eq!(result.map(|r| r.status()).ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(*tries.borrow(), 3, "attempts=2 means three tries");

        *tries.borrow_mut() = 0;
        let post = Request::post("/").body(Full::new(Bytes::from_static(b"x"))).expect("request");
        let result = retry_loop(post, params, send, classify).await;
        assert_eq!(result.map(|r| r.status()).ok(), Some(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(*tries.borrow(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn each_try_sends_the_same_body() {
        let policy = fast(RetryPolicy::new(2, RetryOn::parse("reset").0).with_retry_non_idempotent(true));
        let (budget, stats) = (RetryBudget::default(), RetryStats::default());
        let params = RetryParams { policy: Some(&policy), budget: &budget, stats: &stats, replay_cap: 1024 };
        let bodies = RefCell::new(Vec::new());
        let send = |req: Request<RetryBody<Full<Bytes>>>| {
            let bodies = &bodies;
            async move {
                let data = req.into_body().collect().await.map_err(|_: Infallible| "body")?.to_bytes();
                bodies.borrow_mut().push(data);
                if bodies.borrow().len() < 3 {
                    Err("reset")
                } else {
                    respond(200)
                }
            }
        };
        let post = Request::post("/").body(Full::new(Bytes::from_static(b"payload"))).expect("request");
        let result = retry_loop(post, params, send, classify).await;
        assert_eq!(result.map(|r| r.status()).ok(), Some(StatusCode::OK));
        assert_eq!(*bodies.borrow(), vec![Bytes::from_static(b"payload"); 3]);
        assert_eq!((stats.retries(), stats.succeeded()), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeouts_are_retried_and_reported() {
        let policy =
            fast(RetryPolicy::new(1, RetryOn::parse("5xx").0)).with_per_try_timeout(Some(Duration::from_millis(100)));
        let (budget, stats) = (RetryBudget::default(), RetryStats::default());
        let params = RetryParams { policy: Some(&policy), budget: &budget, stats: &stats, replay_cap: 1024 };
        // Hangs on the first try, answers on the second.
        let tries = RefCell::new(0);
        let send = |_req| {
            *tries.borrow_mut() += 1;
            let hang = *tries.borrow() == 1;
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                respond(200)
            }
        };
        let start = tokio::time::Instant::now();
        let result = retry_loop(get(), params, send, classify).await;
        assert_eq!(result.map(|r| r.status()).ok(), Some(StatusCode::OK));
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert_eq!(stats.per_try_timeouts(), 1);

        // Always hanging: the error says so after 1 + 1 tries.
        let send = |_req| std::future::pending::<Result<Resp, &'static str>>();
        let result = retry_loop(get(), params, send, classify).await;
        assert!(matches!(result, Err(RetryError::PerTryTimeout(d)) if d == Duration::from_millis(100)));
        assert_eq!(stats.per_try_timeouts(), 3);
    }

    #[test]
    fn the_loop_is_send_when_its_parts_are() {
        fn assert_send<T: Send>(_: T) {}
        let (policy, budget, stats) =
            (RetryPolicy::new(1, RetryOn::default()), RetryBudget::default(), RetryStats::default());
        let params = RetryParams { policy: Some(&policy), budget: &budget, stats: &stats, replay_cap: 1 };
        assert_send(retry_loop(get(), params, |_req| std::future::ready(respond(200)), classify));
    }
}
