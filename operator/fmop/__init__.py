"""fm-operator: one foundation recommender, thin task adapters, safe rollouts on Kubernetes."""

__version__ = "0.1.0"
