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
