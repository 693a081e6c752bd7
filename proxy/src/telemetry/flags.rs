//! Envoy's response flags, as Istio's metrics and access logs carry them: one short code saying why a
//! connection or request ended the way it did. One enum, so a flag cannot be misspelt at one call site.

use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ResponseFlag {
    /// `-`: nothing to report.
    #[default]
    None,
    /// `UF`: the upstream connection (or the tunnel to it) could not be opened.
    UpstreamConnectionFailure,
    /// `UC`: the upstream connection ended before the exchange completed.
    UpstreamConnectionTermination,
    /// `UO`: a connection-pool limit refused the request or connection (circuit breaking).
    UpstreamOverflow,
    /// `UH`: no healthy upstream (no ready endpoint, or every one ejected).
    NoHealthyUpstream,
    /// `UT`: the request (or one try) timed out.
    UpstreamRequestTimeout,
    /// `URX`: retries were made and the last answer was still a failure.
    UpstreamRetryLimitExceeded,
    /// `NR`: no route or destination for the request or connection.
    NoRouteFound,
    /// `UAEX`: refused by authorization policy (or by the namespace's mTLS mode).
    Unauthorized,
    /// `DPE`: the downstream spoke a malformed request.
    DownstreamProtocolError,
    /// `DI`: a delay was injected by a fault rule.
    DelayInjected,
    /// `FI`: the request was aborted by a fault rule.
    FaultInjected,
}

impl ResponseFlag {
    pub const ALL: [ResponseFlag; 12] = [
        ResponseFlag::None,
        ResponseFlag::UpstreamConnectionFailure,
        ResponseFlag::UpstreamConnectionTermination,
        ResponseFlag::UpstreamOverflow,
        ResponseFlag::NoHealthyUpstream,
        ResponseFlag::UpstreamRequestTimeout,
        ResponseFlag::UpstreamRetryLimitExceeded,
        ResponseFlag::NoRouteFound,
        ResponseFlag::Unauthorized,
        ResponseFlag::DownstreamProtocolError,
        ResponseFlag::DelayInjected,
        ResponseFlag::FaultInjected,
    ];

    /// The code as Envoy and Istio spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseFlag::None => "-",
            ResponseFlag::UpstreamConnectionFailure => "UF",
            ResponseFlag::UpstreamConnectionTermination => "UC",
            ResponseFlag::UpstreamOverflow => "UO",
            ResponseFlag::NoHealthyUpstream => "UH",
            ResponseFlag::UpstreamRequestTimeout => "UT",
            ResponseFlag::UpstreamRetryLimitExceeded => "URX",
            ResponseFlag::NoRouteFound => "NR",
            ResponseFlag::Unauthorized => "UAEX",
            ResponseFlag::DownstreamProtocolError => "DPE",
            ResponseFlag::DelayInjected => "DI",
            ResponseFlag::FaultInjected => "FI",
        }
    }
}

impl fmt::Display for ResponseFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ResponseFlag;

    #[test]
    fn every_flag_has_its_own_code() {
        let mut codes: Vec<&str> = ResponseFlag::ALL.iter().map(|f| f.as_str()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ResponseFlag::ALL.len());
        assert!(codes.iter().all(|c| *c == "-" || c.chars().all(|ch| ch.is_ascii_uppercase())));
    }
}
