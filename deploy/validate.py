#!/usr/bin/env python3
"""Validates the Kubernetes manifests under deploy/ without a cluster (run through deploy/validate.sh).

1. Built-in kinds (Namespace, RBAC, Deployment, DaemonSet, Service, CustomResourceDefinition) against the
   Kubernetes OpenAPI schemas bundled with kubernetes-validate, strictly (unknown fields are errors).
2. Strait resources (deploy/examples/) against the openAPIV3Schema of the generated CRDs in deploy/crds/:
   the JSON-schema part with jsonschema (unknown fields refused, as `kubectl apply` does), then every
   `x-kubernetes-validations` CEL rule evaluated with cel-python, and list-type=map keys checked for
   uniqueness, as the API server would.
3. Deliberately broken resources must be refused, so a rule that stops working fails this check.
4. kustomization.yaml lists files that exist, and every manifest here is listed (but examples/, the
   optional observability/ extras, whose monitors need the Prometheus Operator's CRDs, and uninstall/).
5. observability/: PodMonitor / ServiceMonitor select the proxies' metrics port; dashboards query only metric
   families the proxy exports.

What it cannot do: the API server's CEL cost estimation (the lists under CEL rules carry maxItems for it).
"""

import copy
import glob
import json
import os
import re
import sys

import celpy
import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"  # the k8s-openapi version feature the control plane is built with
DEPLOY = os.path.dirname(os.path.abspath(__file__))
# deploy/local/ is the local mesh's input for the files provider (kind: Mesh), not Kubernetes objects.
NOT_MANIFESTS = {"local"}
# deploy/observability/ holds optional extras (Prometheus Operator monitors, a Grafana dashboard): built-in kinds
# there are validated like the rest, the Operator's kinds structurally, and none is in the kustomization.
OPTIONAL = "observability"
MONITOR_KINDS = {"PodMonitor", "ServiceMonitor"}

problems = []


def fail(where, message):
    problems.append(f"{where}: {message}")


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def manifest_files():
    files = []
    for path in sorted(glob.glob(os.path.join(DEPLOY, "**", "*.yaml"), recursive=True)):
        rel = os.path.relpath(path, DEPLOY)
        if rel.split(os.sep)[0] in NOT_MANIFESTS or os.path.basename(rel) == "kustomization.yaml":
            continue
        files.append(rel)
    return files


# ---------------------------------------------------------------------------------------------------------
# Strait resources against the generated CRDs
# ---------------------------------------------------------------------------------------------------------


def crd_schemas():
    schemas = {}
    for path in sorted(glob.glob(os.path.join(DEPLOY, "crds", "*.yaml"))):
        for crd in documents(path):
            spec = crd["spec"]
            for version in spec["versions"]:
                api_version = f"{spec['group']}/{version['name']}"
                schemas[(api_version, spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict(schema, top=True):
    """The CRD schema as plain JSON schema that refuses unknown fields (kubectl's default field validation)."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if not isinstance(node, dict):
            return
        props = node.get("properties")
        if isinstance(props, dict):
            for child in props.values():
                visit(child)
            node.setdefault("additionalProperties", False)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                visit(node[key])

    visit(schema)
    if top:
        schema["properties"].update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
        )
    return schema


CEL = celpy.Environment()
PROGRAMS = {}


def cel_ok(rule, value):
    if rule not in PROGRAMS:
        PROGRAMS[rule] = CEL.program(CEL.compile(rule))
    result = PROGRAMS[rule].evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, celpy.CELEvalError):
        raise result
    return bool(result)


def server_side_rules(schema, value, path, errors):
    """x-kubernetes-validations and list-type=map keys, walking the value along the schema."""
    if not isinstance(schema, dict):
        return
    for v in schema.get("x-kubernetes-validations", []):
        try:
            ok = cel_ok(v["rule"], value)
        except celpy.CELEvalError as e:
            # The API server refuses an object on which a rule fails to evaluate (a duration overflowing, say).
            errors.append(f"{path}: {v.get('message', v['rule'])} (the rule could not be evaluated: {e.args[0]})")
            continue
        if not ok:
            errors.append(f"{path}: {v.get('message', v['rule'])}")
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                server_side_rules(child, value[name], f"{path}.{name}", errors)
        if isinstance(schema.get("additionalProperties"), dict):
            for name, child in value.items():
                server_side_rules(schema["additionalProperties"], child, f"{path}.{name}", errors)
    if isinstance(value, list):
        if schema.get("x-kubernetes-list-type") == "map":
            keys = schema["x-kubernetes-list-map-keys"]
            seen = set()
            for i, item in enumerate(value):
                key = tuple(item.get(k) for k in keys)
                if key in seen:
                    errors.append(f"{path}[{i}]: duplicate {', '.join(keys)} {key}")
                seen.add(key)
        for i, item in enumerate(value):
            server_side_rules(schema.get("items"), item, f"{path}[{i}]", errors)


def custom_resource_errors(doc, schemas):
    schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is None:
        return [f"no CRD in deploy/crds/ defines {doc.get('apiVersion')} {doc.get('kind')}"]
    validator = jsonschema.Draft7Validator(strict(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
    if not errors:
        server_side_rules(schema, doc, "", errors)
    return errors


# ---------------------------------------------------------------------------------------------------------
# Negative cases: each must be refused with the given words
# ---------------------------------------------------------------------------------------------------------


def broken_resources(examples):
    route = next(d for d in examples if d["kind"] == "TrafficRoute")
    dp = next(d for d in examples if d["kind"] == "DestinationPolicy")
    authz = next(d for d in examples if d["kind"] == "AuthorizationPolicy")
    cases = []

    def case(base, words, change):
        doc = copy.deepcopy(base)
        change(doc)
        cases.append((words, doc))

    canary = lambda d: next(h for h in d["spec"]["http"] if len(h.get("route", [])) == 2)  # noqa: E731
    case(route, "all weights are zero", lambda d: [r.update(weight=0) for r in canary(d)["route"]])
    case(route, "exactly one of route, redirect", lambda d: canary(d).update(redirect={"uri": "/v2"}))
    case(route, "exactly one of route, redirect", lambda d: d["spec"]["http"].append({"name": "nothing"}))
    case(
        route,
        "exactly one of exact, prefix",
        lambda d: d["spec"]["http"][0]["match"][0]["headers"]["x-user-group"].update(prefix="be"),
    )
    case(route, "exactly one of exact, prefix", lambda d: d["spec"]["http"][0]["match"][0].update(uri={}))
    case(route, "does not match", lambda d: canary(d).update(timeout="10"))
    case(route, "is less than the minimum", lambda d: canary(d)["route"][0]["destination"].update(port=0))
    case(route, "is less than the minimum", lambda d: canary(d)["retries"].update(attempts=-1))
    case(route, "non-empty", lambda d: d["spec"].update(hosts=[]))
    # Bounds (control/api/src/bounds.rs): durations, counts, weights and string lengths.
    case(route, "must be at most 24h", lambda d: canary(d).update(timeout="25h"))
    case(route, "must be at most 24h", lambda d: canary(d).update(timeout="99999999999999999999s"))
    case(route, "is too long", lambda d: canary(d).update(timeout="1" * 40 + "s"))
    case(route, "is greater than the maximum", lambda d: canary(d)["retries"].update(attempts=51))
    case(route, "is greater than the maximum", lambda d: canary(d)["route"][0].update(weight=1000001))
    case(route, "is too long", lambda d: d["spec"]["hosts"].append("h" * 254))
    case(
        route,
        "is too long",
        lambda d: d["spec"]["http"][0]["match"][0]["headers"]["x-user-group"].update(exact="a" * 1025),
    )
    case(route, "must be one of 301", lambda d: d["spec"]["http"].append({"redirect": {"redirectCode": 304}}))
    case(route, "Additional properties", lambda d: canary(d).update(weights=[90, 10]))
    case(dp, "is not one of", lambda d: d["spec"]["loadBalancer"].update(simple="FASTEST"))
    case(dp, "is greater than the maximum", lambda d: d["spec"]["outlierDetection"].update(maxEjectionPercent=101))
    case(dp, "must be at most 24h", lambda d: d["spec"]["outlierDetection"].update(baseEjectionTime="1441m"))
    case(dp, "duplicate name", lambda d: d["spec"]["subsets"].append({"name": "v1", "labels": {"version": "x"}}))
    case(authz, "is not one of", lambda d: d["spec"].update(action="MAYBE"))
    case(authz, "does not match", lambda d: d["spec"]["rules"][0]["from"][0]["source"].update(principals=["a*b"]))
    case(authz, "is greater than the maximum", lambda d: d["spec"]["rules"][0]["to"][0]["operation"].update(ports=[70000]))
    return cases


# ---------------------------------------------------------------------------------------------------------


def monitor_errors(doc):
    """A PodMonitor / ServiceMonitor must select the node proxies and scrape their named metrics port."""
    errors = []
    spec = doc.get("spec", {})
    if spec.get("selector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") != "strait-proxy":
        errors.append("spec.selector must match app.kubernetes.io/name: strait-proxy")
    endpoints = spec.get("podMetricsEndpoints" if doc["kind"] == "PodMonitor" else "endpoints") or []
    if not endpoints or any(e.get("port") != "metrics" or e.get("path", "/metrics") != "/metrics" for e in endpoints):
        errors.append("every endpoint must scrape port 'metrics' at /metrics")
    return errors


def exported_families():
    """The metric families the node proxy registers (proxy/src/telemetry/metrics.rs, FAMILIES)."""
    source = open(os.path.join(DEPLOY, "..", "proxy", "src", "telemetry", "metrics.rs")).read()
    block = source.split("pub const FAMILIES: &[&str] = &[", 1)[1].split("];", 1)[0]
    return set(re.findall(r'"([a-z_]+)"', block))


def check_dashboards():
    """Dashboards parse, and every metric their queries name is one the proxy exports."""
    families = exported_families()
    checked = 0
    for path in sorted(glob.glob(os.path.join(DEPLOY, OPTIONAL, "*.json"))):
        rel = os.path.relpath(path, DEPLOY)
        try:
            dashboard = json.load(open(path))
        except ValueError as e:
            fail(rel, f"not JSON: {e}")
            continue
        exprs = [t.get("expr", "") for p in dashboard.get("panels", []) for t in p.get("targets", [])]
        exprs += [str(v.get("query", "")) for v in dashboard.get("templating", {}).get("list", [])]
        if not exprs:
            fail(rel, "no queries")
        # Every $variable a query names is one the dashboard defines (or one of Grafana's own), and panel ids
        # are unique (Grafana keys panel state by them).
        defined = {v.get("name") for v in dashboard.get("templating", {}).get("list", [])}
        for expr in exprs:
            for var in re.findall(r"\$(?:\{)?([A-Za-z_][A-Za-z0-9_]*)", expr):
                if var not in defined and not var.startswith("__"):
                    fail(rel, f"query uses ${var}, which no templating variable defines: {expr}")
        ids = [p.get("id") for p in dashboard.get("panels", [])]
        if len(ids) != len(set(ids)):
            fail(rel, f"panel ids repeat: {sorted(ids, key=str)}")
        for expr in exprs:
            for name in re.findall(r"\b((?:istio|strait)_[a-z_]+)", expr):
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                if name not in families and base not in families:
                    fail(rel, f"query uses {name}, which the proxy does not export: {expr}")
        checked += 1
    return checked


def main():
    schemas = crd_schemas()
    if len(schemas) != 3:
        fail("deploy/crds", f"expected the 3 Strait CRDs, found {sorted(k for _, k in schemas)}")
    checked = 0
    examples = []
    for rel in manifest_files():
        try:
            docs = documents(os.path.join(DEPLOY, rel))
        except yaml.YAMLError as e:
            fail(rel, f"not YAML: {e}")
            continue
        for i, doc in enumerate(docs):
            where = f"{rel}[{i}] {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
            if doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc.get("kind") in MONITOR_KINDS:
                for e in monitor_errors(doc):
                    fail(where, e)
            elif str(doc.get("apiVersion", "")).startswith("strait.dev/"):
                examples.append(doc)
                for e in custom_resource_errors(doc, schemas):
                    fail(where, e)
            else:
                try:
                    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(where, f"{'.'.join(map(str, e.path))}: {e.message}")
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                    fail(where, f"no Kubernetes {KUBERNETES_VERSION} schema: {e}")
            checked += 1

    if examples:
        for words, doc in broken_resources(examples):
            errors = custom_resource_errors(doc, schemas)
            if not any(words in e for e in errors):
                fail("negative case", f"expected {words!r} for {doc['kind']}: got {errors or 'no error'}")
            checked += 1
    else:
        fail("deploy/examples", "no Strait resources found")

    kustomization = yaml.safe_load(open(os.path.join(DEPLOY, "kustomization.yaml")))
    listed = kustomization.get("resources", [])
    for rel in listed:
        if not os.path.exists(os.path.join(DEPLOY, rel)):
            fail("kustomization.yaml", f"lists {rel}, which does not exist")
    for rel in manifest_files():
        # uninstall/ is applied by hand after the mesh is deleted, never with it.
        # components/ are kustomize Components a user adds (their kustomization.yaml is not a manifest).
        optional = any(rel.startswith(d + os.sep) for d in ("examples", OPTIONAL, "uninstall", "components"))
        if not optional and rel not in listed:
            fail("kustomization.yaml", f"does not list {rel}")

    checked += check_dashboards()

    for p in problems:
        print(f"deploy: {p}", file=sys.stderr)
    print(f"deploy: {checked} manifests and negative cases checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
