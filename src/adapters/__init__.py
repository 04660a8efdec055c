"""Everything that talks to something, one module per counterpart: the trust-bundle stores
(``adapters.stores``), the AWS client factory (``aws``), the Kubernetes API client and the
KUBERNETES validator's calls (``kube_api``), the JWKS key set (``jwks_source``), the cluster
domain's lookup (``cluster_domain``). Adapters import the core and their SDKs; they never import
``handlers`` (design §10)."""
