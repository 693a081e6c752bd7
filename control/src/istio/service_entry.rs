//! `networking.istio.io` ServiceEntry -> an external host the proxies recognise by address
//! (`strait_api::ExternalService`). Only hosts outside the mesh (`location: MESH_EXTERNAL`) and resolutions that
//! name addresses (`NONE`, `STATIC`) are read; a ServiceEntry Strait cannot apply is refused naming the field.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;
use strait_api::{ExternalEndpoint, ExternalPort, ExternalService, Resolution};

use super::fields::{Fields, NoteKind, Notes};

pub fn service_entry(mut spec: Fields, notes: &mut Notes) -> Result<ExternalService, String> {
    let hosts: Vec<String> = strings(spec.take("hosts"), &spec.path("hosts"))?;
    if hosts.is_empty() {
        return Err(format!("{}: at least one host is required", spec.path("hosts")));
    }
    match spec.take("location").as_ref().and_then(Value::as_str) {
        None | Some("MESH_EXTERNAL") => {}
        Some(other) => {
            return Err(format!(
                "{}: {other} is not supported: workloads inside the mesh are pods (or the Mesh file's workloads), \
                 only MESH_EXTERNAL hosts are registered",
                spec.path("location")
            ))
        }
    }
    let resolution = match spec.take("resolution").as_ref().and_then(Value::as_str) {
        None | Some("NONE") => Resolution::None,
        Some("STATIC") => Resolution::Static,
        Some(other) => {
            return Err(format!(
                "{}: {other} is not supported: the proxies recognise external traffic by the address the pod \
                 connects to; list the addresses (NONE) or the endpoints' addresses (STATIC)",
                spec.path("resolution")
            ))
        }
    };
    for key in ["workloadSelector", "subjectAltNames"] {
        if spec.take(key).is_some() {
            return Err(format!(
                "{}: is not supported ({})",
                spec.path(key),
                if key == "workloadSelector" {
                    "selects mesh workloads, which Strait discovers itself"
                } else {
                    "Strait does not originate TLS to external hosts, so it could not check the names"
                }
            ));
        }
    }
    let addresses = strings(spec.take("addresses"), &spec.path("addresses"))?;
    let mut ports = Vec::new();
    for (path, port) in spec.list("ports", notes) {
        let mut port = Fields::new(path.clone(), port, notes);
        let number = port_number(port.take("number"), &port.path("number"))?;
        let target_port = match port.take("targetPort") {
            None => None,
            Some(v) => Some(port_number(Some(v), &port.path("targetPort"))?),
        };
        let text = |v: Option<Value>| v.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let name = text(port.take("name"));
        let protocol = text(port.take("protocol"));
        port.finish(notes);
        ports.push(ExternalPort { number, name, protocol, target_port });
    }
    let mut endpoints = Vec::new();
    for (path, endpoint) in spec.list("endpoints", notes) {
        let mut endpoint = Fields::new(path.clone(), endpoint, notes);
        let field = endpoint.path("address");
        let address = endpoint.take("address").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let address: IpAddr = address.parse().map_err(|_| {
            format!("{field}: {address:?} is not an IP address (host names need DNS resolution, not supported)")
        })?;
        let mut endpoint_ports = BTreeMap::new();
        if let Some(map) = endpoint.take("ports") {
            let Value::Object(map) = map else { return Err(format!("{}: expected a map", endpoint.path("ports"))) };
            for (name, number) in map {
                let number = port_number(Some(number), &format!("{}.{name}", endpoint.path("ports")))?;
                endpoint_ports.insert(name, number);
            }
        }
        endpoint.drop_field("labels", NoteKind::Ignored, "used only by DestinationRule subsets", notes);
        for key in ["weight", "locality", "network", "serviceAccount"] {
            endpoint.drop_field(key, NoteKind::Dropped, "not supported: endpoints are picked uniformly", notes);
        }
        endpoint.finish(notes);
        endpoints.push(ExternalEndpoint { address, ports: endpoint_ports });
    }
    super::networking::exported(&mut spec, notes);
    spec.finish(notes);
    Ok(ExternalService { hosts, addresses, ports, resolution, endpoints })
}

fn strings(value: Option<Value>, field: &str) -> Result<Vec<String>, String> {
    match value {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v).map_err(|e| format!("{field}: {e}")),
    }
}

fn port_number(value: Option<Value>, field: &str) -> Result<u16, String> {
    value
        .as_ref()
        .and_then(Value::as_u64)
        .and_then(|n| u16::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{field}: a port number (1-65535) is required"))
}
