//! `networking.istio.io` VirtualService -> TrafficRoute and DestinationRule -> DestinationPolicy. The shapes
//! are close (Strait's kinds were modelled on them); what differs is renamed, flattened or reported.

use serde_json::{json, Map, Value};

use super::fields::{Fields, NoteKind, Notes};

/// The spec of a TrafficRoute for the VirtualService `spec`.
pub fn virtual_service(spec: Fields, notes: &mut Notes) -> Value {
    let mut spec = spec;
    let mut out = Map::new();
    let hosts: Vec<Value> = spec
        .list("hosts", notes)
        .into_iter()
        .filter_map(|(path, host)| match host.as_str() {
            Some(h) if h.contains('*') => {
                notes.push(path, NoteKind::Dropped, "wildcard hosts are not supported: name each service");
                None
            }
            Some(_) => Some(host),
            None => {
                notes.push(path, NoteKind::Dropped, "a host is a string");
                None
            }
        })
        .collect();
    out.insert("hosts".into(), Value::Array(hosts));
    if let Some(gateways) = spec.take("gateways") {
        let only_mesh = gateways.as_array().is_some_and(|g| g.iter().all(|g| g.as_str() == Some("mesh")));
        let what = if only_mesh { NoteKind::Ignored } else { NoteKind::Dropped };
        notes.push(spec.path("gateways"), what, "Strait routes traffic inside the mesh only (gateway `mesh`)");
    }
    exported(&mut spec, notes);
    let rules: Vec<Value> =
        spec.list("http", notes).into_iter().map(|(path, rule)| http_rule(&path, rule, notes)).collect();
    out.insert("http".into(), Value::Array(rules));
    spec.drop_field(
        "tcp",
        NoteKind::Dropped,
        "TCP routes are not supported: TCP services are balanced over all endpoints",
        notes,
    );
    spec.drop_field("tls", NoteKind::Dropped, "TLS (SNI) routes are not supported", notes);
    spec.finish(notes);
    Value::Object(out)
}

pub fn exported(spec: &mut Fields, notes: &mut Notes) {
    if let Some(export) = spec.take("exportTo") {
        let everywhere = export.as_array().is_some_and(|e| e.iter().all(|n| n.as_str() == Some("*")));
        let what = if everywhere { NoteKind::Ignored } else { NoteKind::Changed };
        notes.push(
            spec.path("exportTo"),
            what,
            "Strait applies it to callers in every namespace (Istio's default `*`)",
        );
    }
}

fn http_rule(path: &str, rule: Value, notes: &mut Notes) -> Value {
    let mut rule = Fields::new(path, rule, notes);
    let mut out = Map::new();
    if let Some(name) = rule.take("name") {
        out.insert("name".into(), name);
    }
    let matches: Vec<Value> =
        rule.list("match", notes).into_iter().map(|(path, m)| http_match(&path, m, notes)).collect();
    if !matches.is_empty() {
        out.insert("match".into(), Value::Array(matches));
    }
    let routes: Vec<Value> =
        rule.list("route", notes).into_iter().map(|(path, r)| destination_weight(&path, r, notes)).collect();
    if !routes.is_empty() {
        out.insert("route".into(), Value::Array(routes));
    }
    if let Some(timeout) = rule.take("timeout") {
        out.insert("timeout".into(), timeout);
    }
    if let Some(mut retries) = rule.object("retries", notes) {
        let mut r = Map::new();
        for key in ["attempts", "perTryTimeout", "retryOn"] {
            if let Some(v) = retries.take(key) {
                r.insert(key.into(), v);
            }
        }
        retries.drop_field("retryRemoteLocalities", NoteKind::Ignored, "Strait has no localities", notes);
        if let Some(v) = retries.take("retryIgnorePreviousHosts") {
            let what = if v == Value::Bool(false) { NoteKind::Changed } else { NoteKind::Ignored };
            notes.push(
                retries.path("retryIgnorePreviousHosts"),
                what,
                "a Strait retry always prefers a host not tried yet",
            );
        }
        retries.finish(notes);
        out.insert("retries".into(), Value::Object(r));
    }
    if let Some(headers) = rule.object("headers", notes) {
        out.insert("headers".into(), header_operations(headers, notes));
    }
    if let Some(mut fault) = rule.object("fault", notes) {
        let mut f = Map::new();
        if let Some(mut delay) = fault.object("delay", notes) {
            let mut d = Map::new();
            if let Some(v) = delay.take("fixedDelay") {
                d.insert("fixedDelay".into(), v);
            }
            d.insert("percentage".into(), percentage(&mut delay, notes));
            delay.drop_field("exponentialDelay", NoteKind::Dropped, "not supported", notes);
            delay.finish(notes);
            f.insert("delay".into(), Value::Object(d));
        }
        if let Some(mut abort) = fault.object("abort", notes) {
            let mut a = Map::new();
            if let Some(v) = abort.take("httpStatus") {
                a.insert("httpStatus".into(), v);
            }
            a.insert("percentage".into(), percentage(&mut abort, notes));
            abort.drop_field("grpcStatus", NoteKind::Dropped, "gRPC aborts are not supported: use httpStatus", notes);
            abort.drop_field("http2Error", NoteKind::Dropped, "not supported", notes);
            abort.finish(notes);
            f.insert("abort".into(), Value::Object(a));
        }
        fault.finish(notes);
        out.insert("fault".into(), Value::Object(f));
    }
    if let Some(mut redirect) = rule.object("redirect", notes) {
        let mut r = Map::new();
        for key in ["uri", "authority", "redirectCode"] {
            if let Some(v) = redirect.take(key) {
                r.insert(key.into(), v);
            }
        }
        redirect.finish(notes);
        out.insert("redirect".into(), Value::Object(r));
    }
    if let Some(mut direct) = rule.object("directResponse", notes) {
        let mut d = Map::new();
        if let Some(v) = direct.take("status") {
            d.insert("status".into(), v);
        }
        if let Some(mut body) = direct.object("body", notes) {
            if let Some(text) = body.take("string") {
                d.insert("body".into(), text);
            }
            body.finish(notes);
        }
        direct.finish(notes);
        out.insert("directResponse".into(), Value::Object(d));
    }
    for (key, reason) in [
        ("rewrite", "URI and authority rewrites are not supported"),
        ("mirror", "traffic mirroring is not supported"),
        ("mirrorPercentage", "traffic mirroring is not supported"),
        ("mirrors", "traffic mirroring is not supported"),
        ("corsPolicy", "CORS is the backend's job in Strait"),
        ("delegate", "delegation is not supported"),
    ] {
        rule.drop_field(key, NoteKind::Dropped, reason, notes);
    }
    rule.finish(notes);
    Value::Object(out)
}

/// Istio's `percentage: {value: 12.5}` (100 when absent, as Istio reads an absent percentage).
fn percentage(fields: &mut Fields, notes: &mut Notes) -> Value {
    if let Some(mut p) = fields.object("percentage", notes) {
        let value = p.take("value").unwrap_or(json!(0.0));
        p.finish(notes);
        return value;
    }
    if let Some(percent) = fields.take("percent") {
        notes.push(fields.path("percent"), NoteKind::Ignored, "deprecated integer percent, read as percentage.value");
        return percent;
    }
    json!(100.0)
}

fn http_match(path: &str, m: Value, notes: &mut Notes) -> Value {
    let mut m = Fields::new(path, m, notes);
    let mut out = Map::new();
    for key in ["uri", "method"] {
        if let Some(value) = m.object(key, notes) {
            out.insert(key.into(), string_match(value, notes));
        }
    }
    for key in ["headers", "queryParams"] {
        if let Some(mut map) = m.object(key, notes) {
            let mut o = Map::new();
            let names: Vec<String> = map.keys();
            for name in names {
                if let Some(value) = map.object(&name, notes) {
                    o.insert(name, string_match(value, notes));
                }
            }
            map.finish(notes);
            out.insert(key.into(), Value::Object(o));
        }
    }
    m.drop_field("name", NoteKind::Ignored, "match names are informational", notes);
    m.drop_field("gateways", NoteKind::Ignored, "Strait routes inside the mesh only", notes);
    for (key, reason) in [
        ("ignoreUriCase", "paths match case-sensitively in Strait"),
        ("sourceLabels", "matching on the caller's labels is not supported: use an AuthorizationPolicy"),
        ("sourceNamespace", "matching on the caller's namespace is not supported: use an AuthorizationPolicy"),
        ("port", "matching on the port is not supported"),
        ("withoutHeaders", "negative header matches are not supported"),
        ("authority", "matching on the authority is not supported"),
        ("scheme", "matching on the scheme is not supported"),
        ("statPrefix", "not supported"),
    ] {
        m.drop_field(key, NoteKind::Dropped, reason, notes);
    }
    m.finish(notes);
    Value::Object(out)
}

fn string_match(mut value: Fields, notes: &mut Notes) -> Value {
    let mut out = Map::new();
    for key in ["exact", "prefix", "regex"] {
        if let Some(v) = value.take(key) {
            out.insert(key.into(), v);
        }
    }
    value.finish(notes);
    Value::Object(out)
}

fn destination_weight(path: &str, route: Value, notes: &mut Notes) -> Value {
    let mut route = Fields::new(path, route, notes);
    let mut out = Map::new();
    if let Some(mut destination) = route.object("destination", notes) {
        let mut d = Map::new();
        for key in ["host", "subset"] {
            if let Some(v) = destination.take(key) {
                d.insert(key.into(), v);
            }
        }
        if let Some(mut port) = destination.object("port", notes) {
            if let Some(number) = port.take("number") {
                d.insert("port".into(), number);
            }
            port.finish(notes);
        }
        destination.finish(notes);
        out.insert("destination".into(), Value::Object(d));
    }
    if let Some(weight) = route.take("weight") {
        out.insert("weight".into(), weight);
    }
    route.drop_field(
        "headers",
        NoteKind::Dropped,
        "per-destination header operations are not supported: set them on the rule",
        notes,
    );
    route.finish(notes);
    Value::Object(out)
}

/// `headers: {request: {set, add, remove}, response: {...}}`: the same shape in both.
fn header_operations(mut headers: Fields, notes: &mut Notes) -> Value {
    let mut out = Map::new();
    for side in ["request", "response"] {
        if let Some(mut changes) = headers.object(side, notes) {
            let mut c = Map::new();
            for key in ["set", "add", "remove"] {
                if let Some(v) = changes.take(key) {
                    c.insert(key.into(), v);
                }
            }
            changes.finish(notes);
            out.insert(side.into(), Value::Object(c));
        }
    }
    headers.finish(notes);
    Value::Object(out)
}

/// The spec of a DestinationPolicy for the DestinationRule `spec`.
pub fn destination_rule(mut spec: Fields, notes: &mut Notes) -> Value {
    let mut out = Map::new();
    if let Some(host) = spec.take("host") {
        out.insert("host".into(), host);
    }
    let subsets: Vec<Value> = spec
        .list("subsets", notes)
        .into_iter()
        .map(|(path, subset)| {
            let mut subset = Fields::new(path, subset, notes);
            let mut s = Map::new();
            for key in ["name", "labels"] {
                if let Some(v) = subset.take(key) {
                    s.insert(key.into(), v);
                }
            }
            subset.drop_field(
                "trafficPolicy",
                NoteKind::Dropped,
                "per-subset traffic policies are not supported: the DestinationRule's own trafficPolicy applies to every subset",
                notes,
            );
            subset.finish(notes);
            Value::Object(s)
        })
        .collect();
    if !subsets.is_empty() {
        out.insert("subsets".into(), Value::Array(subsets));
    }
    if let Some(policy) = spec.object("trafficPolicy", notes) {
        traffic_policy(policy, &mut out, notes);
    }
    exported(&mut spec, notes);
    spec.drop_field("workloadSelector", NoteKind::Dropped, "a DestinationPolicy applies to every caller", notes);
    spec.finish(notes);
    Value::Object(out)
}

fn traffic_policy(mut policy: Fields, out: &mut Map<String, Value>, notes: &mut Notes) {
    if let Some(mut lb) = policy.object("loadBalancer", notes) {
        let mut l = Map::new();
        if let Some(simple) = lb.take("simple") {
            match simple.as_str() {
                Some(s @ ("ROUND_ROBIN" | "LEAST_REQUEST" | "RANDOM")) => {
                    l.insert("simple".into(), json!(s));
                }
                Some("LEAST_CONN") => {
                    notes.push(
                        lb.path("simple"),
                        NoteKind::Ignored,
                        "LEAST_CONN is Istio's old name for LEAST_REQUEST",
                    );
                    l.insert("simple".into(), json!("LEAST_REQUEST"));
                }
                Some("UNSPECIFIED") => {}
                _ => notes.push(lb.path("simple"), NoteKind::Dropped, format!("{simple} is not supported")),
            }
        }
        if let Some(mut hash) = lb.object("consistentHash", notes) {
            let mut h = Map::new();
            if let Some(v) = hash.take("httpHeaderName") {
                h.insert("httpHeaderName".into(), v);
            }
            if let Some(mut cookie) = hash.object("httpCookie", notes) {
                if let Some(name) = cookie.take("name") {
                    h.insert("httpCookie".into(), name);
                }
                for key in ["ttl", "path", "attributes"] {
                    cookie.drop_field(
                        key,
                        NoteKind::Changed,
                        "Strait hashes on the cookie when present and never sets it",
                        notes,
                    );
                }
                cookie.finish(notes);
            }
            for key in ["useSourceIp", "httpQueryParameterName"] {
                if let Some(v) = hash.take(key) {
                    h.insert(key.into(), v);
                }
            }
            // Strait's consistent hash is a ring hash: Istio's ringHash converts, its deprecated top-level
            // minimumRingSize moves into it, and maglev becomes a ring (the same affinity, another mapping).
            if let Some(mut ring) = hash.object("ringHash", notes) {
                if let Some(size) = ring.take("minimumRingSize") {
                    h.insert("ringHash".into(), json!({"minimumRingSize": size}));
                }
                ring.finish(notes);
            }
            if let Some(size) = hash.take("minimumRingSize") {
                notes.push(
                    hash.path("minimumRingSize"),
                    NoteKind::Ignored,
                    "Istio's deprecated spelling of ringHash.minimumRingSize, written as that",
                );
                h.entry("ringHash").or_insert_with(|| json!({"minimumRingSize": size}));
            }
            hash.drop_field(
                "maglev",
                NoteKind::Changed,
                "Strait's consistent hash is a ring hash: the same keys stay together, on other endpoints than Maglev would pick",
                notes,
            );
            hash.finish(notes);
            l.insert("consistentHash".into(), Value::Object(h));
        }
        lb.drop_field("localityLbSetting", NoteKind::Dropped, "Strait has no localities", notes);
        lb.drop_field("warmupDurationSecs", NoteKind::Dropped, "slow start is not supported", notes);
        lb.drop_field("warmup", NoteKind::Dropped, "slow start is not supported", notes);
        lb.finish(notes);
        if !l.is_empty() {
            out.insert("loadBalancer".into(), Value::Object(l));
        }
    }
    if let Some(mut pool) = policy.object("connectionPool", notes) {
        let mut p = Map::new();
        if let Some(mut tcp) = pool.object("tcp", notes) {
            let mut t = Map::new();
            for key in ["maxConnections", "connectTimeout"] {
                if let Some(v) = tcp.take(key) {
                    t.insert(key.into(), v);
                }
            }
            for key in ["tcpKeepalive", "maxConnectionDuration", "idleTimeout"] {
                tcp.drop_field(key, NoteKind::Dropped, "not supported", notes);
            }
            tcp.finish(notes);
            p.insert("tcp".into(), Value::Object(t));
        }
        if let Some(mut http) = pool.object("http", notes) {
            let mut h = Map::new();
            for (from, to) in [
                ("http1MaxPendingRequests", "maxPendingRequests"),
                ("http2MaxRequests", "maxRequests"),
                ("maxRequestsPerConnection", "maxRequestsPerConnection"),
                ("idleTimeout", "idleTimeout"),
                ("useClientProtocol", "useClientProtocol"),
            ] {
                if let Some(v) = http.take(from) {
                    h.insert(to.into(), v);
                }
            }
            http.drop_field(
                "maxRetries",
                NoteKind::Dropped,
                "Strait caps retries with a budget (DestinationPolicy retryBudget), not a count of concurrent retries",
                notes,
            );
            for key in ["h2UpgradePolicy", "maxConcurrentStreams"] {
                http.drop_field(key, NoteKind::Dropped, "not supported", notes);
            }
            http.finish(notes);
            p.insert("http".into(), Value::Object(h));
        }
        pool.finish(notes);
        out.insert("connectionPool".into(), Value::Object(p));
    }
    if let Some(mut outlier) = policy.object("outlierDetection", notes) {
        let mut o = Map::new();
        for key in
            ["consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime", "maxEjectionPercent"]
        {
            if let Some(v) = outlier.take(key) {
                o.insert(key.into(), v);
            }
        }
        if let Some(v) = outlier.take("consecutiveErrors") {
            notes.push(
                outlier.path("consecutiveErrors"),
                NoteKind::Ignored,
                "Istio's deprecated name: it counts 502, 503 and 504, which is consecutiveGatewayErrors",
            );
            o.entry("consecutiveGatewayErrors").or_insert(v);
        }
        if let Some(v) = outlier.take("minHealthPercent") {
            // Istio's default 0 keeps ejecting however few hosts are healthy, as Strait does.
            let what = if v.as_u64() == Some(0) { NoteKind::Ignored } else { NoteKind::Dropped };
            notes.push(outlier.path("minHealthPercent"), what, "ejection is bounded by maxEjectionPercent only");
        }
        for key in ["splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures"] {
            outlier.drop_field(key, NoteKind::Dropped, "not supported", notes);
        }
        outlier.finish(notes);
        out.insert("outlierDetection".into(), Value::Object(o));
    }
    if let Some(mut tls) = policy.object("tls", notes) {
        let mode = tls.take("mode");
        let mutual = mode.as_ref().and_then(Value::as_str) == Some("ISTIO_MUTUAL");
        let what = if mutual { NoteKind::Ignored } else { NoteKind::Changed };
        notes.push(tls.path("mode"), what, "Strait's proxies always talk mutual TLS with mesh certificates");
        let _ = tls.keys().into_iter().map(|k| tls.take(&k)).count();
        tls.finish(notes);
    }
    policy.drop_field("portLevelSettings", NoteKind::Dropped, "per-port policies are not supported", notes);
    policy.drop_field("tunnel", NoteKind::Dropped, "not supported", notes);
    policy.drop_field("proxyProtocol", NoteKind::Dropped, "not supported", notes);
    policy.finish(notes);
}
