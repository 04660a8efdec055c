"""The official ``kubernetes`` client, built once for every Kubernetes adapter (the KUBERNETES
validator and the Kubernetes Secret store). ``kubernetes`` is imported lazily, here and in those
adapters only.
"""

from __future__ import annotations

from typing import Any

from ca_core.errors import ConfigError


def api_client(kubeconfig: str | None) -> Any:
    """A ``kubernetes.client.ApiClient`` from ``kubeconfig`` (a file) or, when None, the
    in-cluster service account. The client does no retries of its own (callers bound each call
    with a timeout and decide what to retry). Raises ConfigError when neither configuration can
    be loaded. Nothing is contacted yet."""
    import yaml
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, KeyError) as e:
        where = f"--kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster configuration"
        hint = "" if kubeconfig else " (outside a cluster, give --kubeconfig)"
        raise ConfigError(f"cannot load {where}: {e}{hint}") from None
    configuration.retries = False  # one attempt per call: the timeout is the bound
    return client.ApiClient(configuration)
