"""Traefik (built from its Go module), the local data plane, run out of cluster beside the node.

It reads what the operator writes, through two providers against the local API server:
`kubernetesCRD` (IngressRoute, TraefikService weighted round robin and mirroring) and
`kubernetesGateway` (HTTPRoute weighted backendRefs, attached to the Gateway made here). Both send
requests straight to the pods in the Services' EndpointSlices (there is no kube-proxy), so pod
addresses on the node bridge are what it reaches.

Traefik logs in with its own ServiceAccount, bound to the ClusterRoles Traefik documents for the two
providers (docs/content/reference/dynamic-configuration/kubernetes-{crd,gateway}-rbac.yml in its
module), not with the admin token. One entry point carries traffic (`web`); a second one (`traefik`)
serves /ping, the raw API (/api/http/routers, /api/http/services) and Prometheus /metrics, with
per-service labels (`traefik_service_requests_total{service=...}`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from fmdev.local.common import THIRD_PARTY_CRDS, ClusterError, binary, free_port, wait_http
from fmdev.local.handle import Handle


NAMESPACE = "traefik"
SERVICE_ACCOUNT = "traefik"
GATEWAY_CLASS = "traefik"
CONTROLLER_NAME = "traefik.io/gateway-controller"
# The Gateway every HTTPRoute attaches to: parentRefs [{name: GATEWAY_NAME, namespace: GATEWAY_NAMESPACE}].
GATEWAY_NAME = "fmop-gateway"
GATEWAY_NAMESPACE = NAMESPACE
GATEWAY_LISTENER = "web"
# Latency buckets (seconds) for traefik_service_request_duration_seconds: finer than Traefik's default
# (0.1, 0.3, 1.2, 5), so a p99 against a 1 s threshold can be told from 300 ms.
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
# The CRDs Traefik's informers list; without them the providers never sync.
NEEDED_CRDS = ["traefikservices.traefik.io.yaml", "ingressroutes.traefik.io.yaml", "middlewares.traefik.io.yaml",
               "gateway.networking.k8s.io_httproutes.yaml", "gateway.networking.k8s.io_grpcroutes.yaml",
               "gateway.networking.k8s.io_backendtlspolicies.yaml"]


@dataclass(frozen=True)
class Endpoints:
    """Where Traefik listens. `web` is the traffic entry point (send Host headers that routes match)."""

    web: str  # http://ADDR:PORT
    api: str  # http://ADDR:PORT: /ping, /api/http/routers, /api/http/services
    port: int  # the web entry point's port, which is also the Gateway listener's port

    @property
    def metrics(self) -> str:
        return f"{self.api}/metrics"


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


# Traefik v3.6's documented RBAC for each provider, rule for rule (the pods rule is only for OTel).
CRD_PROVIDER_RULES = [
    _rule([""], ["services", "secrets", "nodes", "configmaps"], ["get", "list", "watch"]),
    _rule([""], ["pods"], ["get"]),
    _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
    _rule(["extensions", "networking.k8s.io"], ["ingresses", "ingressclasses"], ["get", "list", "watch"]),
    _rule(["extensions", "networking.k8s.io"], ["ingresses/status"], ["update"]),
    _rule(["traefik.io"], ["middlewares", "middlewaretcps", "ingressroutes", "traefikservices", "ingressroutetcps",
                           "ingressrouteudps", "tlsoptions", "tlsstores", "serverstransports", "serverstransporttcps"],
          ["get", "list", "watch"]),
]
_GATEWAY_KINDS = ["gatewayclasses", "gateways", "httproutes", "grpcroutes", "tcproutes", "tlsroutes", "referencegrants",
                  "backendtlspolicies"]
GATEWAY_PROVIDER_RULES = [
    _rule([""], ["namespaces"], ["list", "watch"]),
    _rule([""], ["pods"], ["get"]),
    _rule([""], ["services", "secrets", "configmaps"], ["get", "list", "watch"]),
    _rule(["discovery.k8s.io"], ["endpointslices"], ["list", "watch"]),
    _rule(["gateway.networking.k8s.io"], _GATEWAY_KINDS, ["get", "list", "watch"]),
    _rule(["gateway.networking.k8s.io"], [f"{k}/status" for k in _GATEWAY_KINDS], ["update"]),
]


def rbac() -> list[dict[str, Any]]:
    """The namespace, Traefik's ServiceAccount, and one ClusterRole (+ binding) per provider."""
    objs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}},
    ]
    for provider, rules in (("crd", CRD_PROVIDER_RULES), ("gateway", GATEWAY_PROVIDER_RULES)):
        name = f"fmop-traefik-{provider}"
        objs += [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
             "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]},
        ]
    return objs


def gateway(port: int) -> list[dict[str, Any]]:
    """The GatewayClass Traefik claims and the one Gateway, listening on the web entry point's port
    (Traefik maps a listener to the entry point whose address ends in that port), open to routes
    from every namespace."""
    return [
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
         "spec": {"controllerName": CONTROLLER_NAME}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
         "spec": {"gatewayClassName": GATEWAY_CLASS,
                  "listeners": [{"name": GATEWAY_LISTENER, "protocol": "HTTP", "port": port,
                                 "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
    ]


def static_config(server: str, ca_file: str, token_file: str, address: str, web_port: int, api_port: int) -> dict[str, Any]:
    """Traefik's static configuration (its --configFile)."""
    kube = {"endpoint": server, "token": token_file, "certAuthFilePath": ca_file}
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {"web": {"address": f"{address}:{web_port}"}, "traefik": {"address": f"{address}:{api_port}"}},
        # allowEmptyServices: a Service whose endpoints are all unready (a Triton pod failing its
        # probe under load) leaves an empty pool answering 503; without it Traefik drops the whole
        # IngressRoute and the stable's share answers 404 too (Traefik's Helm chart defaults to
        # true since its 31.0.0 for this reason)
        "providers": {"kubernetesCRD": {**kube, "allowEmptyServices": True},
                      "kubernetesGateway": {**kube, "statusAddress": {"ip": address}}},
        "metrics": {"prometheus": {"entryPoint": "traefik", "addEntryPointsLabels": True, "addRoutersLabels": True,
                                   "addServicesLabels": True, "buckets": BUCKETS}},
        "ping": {"entryPoint": "traefik"},
        "api": {"insecure": True, "dashboard": False},
        "log": {"level": "INFO"},
    }


def _check_crds() -> None:
    have = {p.name for p in THIRD_PARTY_CRDS.glob("*.yaml")}
    missing = [n for n in NEEDED_CRDS if n not in have]
    if missing:
        raise ClusterError(f"Traefik needs CRDs missing from {THIRD_PARTY_CRDS}: {', '.join(missing)}; "
                           "run `make setup` (hack/build-tools.sh fetches them from the modules)")


def start(cluster: Handle, timeout: float = 120.0) -> Endpoints:
    """Start Traefik (after the CRDs are installed) and wait until its Gateway is Programmed."""
    _check_crds()
    exe = binary("traefik")
    address = cluster.address
    web_port, api_port = free_port(address), free_port(address)
    cluster.apply(rbac(), "Traefik's namespace, ServiceAccount and ClusterRoles")
    token = cluster.kubectl("create", "token", SERVICE_ACCOUNT, "-n", NAMESPACE, "--duration=8760h").stdout.strip()
    home = cluster.workdir / "traefik"
    home.mkdir(exist_ok=True)
    token_file = home / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    config = home / "traefik.yaml"
    config.write_text(yaml.safe_dump(static_config(cluster.server, str(cluster.ca_file), str(token_file), address,
                                                   web_port, api_port)))
    cluster.apply(gateway(web_port), "Traefik's GatewayClass and Gateway")
    cluster.sup.spawn("traefik", [exe, f"--configFile={config}"])
    ends = Endpoints(web=f"http://{address}:{web_port}", api=f"http://{address}:{api_port}", port=web_port)
    wait_http(f"{ends.api}/ping", timeout, lambda b: b.strip() == b"OK", "Traefik /ping",
              alive=lambda: cluster.sup.check_alive("traefik"))
    # The Gateway provider syncs and reports status through the ServiceAccount: Programmed proves both.
    done = cluster.kubectl("wait", "-n", GATEWAY_NAMESPACE, f"gateway/{GATEWAY_NAME}", "--for=condition=Programmed",
                           f"--timeout={timeout:.0f}s", check=False)
    if done.returncode:
        cluster.sup.check_alive("traefik")
        raise ClusterError(f"Gateway {GATEWAY_NAMESPACE}/{GATEWAY_NAME} not Programmed by Traefik: {done.stderr.strip()}; "
                           f"last lines of {cluster.workdir / 'traefik.log'}:\n{cluster.log_tail('traefik')}")
    return ends
