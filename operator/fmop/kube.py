"""The one place that talks to the Kubernetes API (apart from kopf itself)."""

from __future__ import annotations

from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from fmop.api import GROUP, VERSION


class KubeUnavailable(RuntimeError):
    """The API server could not be read; worth a retry."""


def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Reader:
    """Reads our custom objects; a missing object is None, an unreachable server an exception."""

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: Any = self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
            return dict(obj)
        except ApiException as err:
            if err.status == 404:
                return None
            raise KubeUnavailable(f"GET {plural}.{GROUP} {namespace}/{name}: HTTP {err.status} {err.reason}") from err
        except OSError as err:  # urllib3 connection errors derive from OSError
            raise KubeUnavailable(f"GET {plural}.{GROUP} {namespace}/{name}: {err}") from err


class Workflows:
    """Argo Workflows owned by one of our objects: list by labels, server-side apply, delete, a step's log tail."""

    GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "workflows"
    FIELD_MANAGER = "fm-operator"

    def __init__(self, api: client.ApiClient) -> None:
        self._custom = client.CustomObjectsApi(api)
        self._core = client.CoreV1Api(api)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            if err.status == 404:
                return None
            raise KubeUnavailable(f"{what}: HTTP {err.status} {err.reason} {err.body or ''}"[:1000]) from err
        except OSError as err:
            raise KubeUnavailable(f"{what}: {err}") from err

    def list(self, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        got = self._call(f"LIST workflows.argoproj.io in {namespace} ({selector})", self._custom.list_namespaced_custom_object,
                         self.GROUP, self.VERSION, namespace, self.PLURAL, label_selector=selector)
        return list((got or {}).get("items") or [])

    def apply(self, wf: dict[str, Any]) -> None:
        ns, name = wf["metadata"]["namespace"], wf["metadata"]["name"]
        self._call(f"APPLY workflows.argoproj.io {ns}/{name}", self._custom.patch_namespaced_custom_object,
                   self.GROUP, self.VERSION, ns, self.PLURAL, name, wf,
                   field_manager=self.FIELD_MANAGER, force=True, _content_type="application/apply-patch+yaml")

    def delete(self, namespace: str, name: str) -> None:
        self._call(f"DELETE workflows.argoproj.io {namespace}/{name}", self._custom.delete_namespaced_custom_object,
                   self.GROUP, self.VERSION, namespace, self.PLURAL, name, propagation_policy="Background")

    def step_log_tail(self, namespace: str, workflow: str, node_id: str, lines: int = 20) -> str:
        """The main container's last lines of the pod that ran node `node_id`; empty when it is gone."""
        pods = self._call(f"LIST pods of workflow {namespace}/{workflow}", self._core.list_namespaced_pod, namespace,
                          label_selector=f"workflows.argoproj.io/workflow={workflow}")
        for pod in (pods.items if pods else []):
            if (pod.metadata.annotations or {}).get("workflows.argoproj.io/node-id") == node_id:
                text = self._call(f"LOG pod {namespace}/{pod.metadata.name}", self._core.read_namespaced_pod_log,
                                  pod.metadata.name, namespace, container="main", tail_lines=lines)
                return str(text or "")
        return ""
