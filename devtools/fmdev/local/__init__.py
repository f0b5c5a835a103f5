"""The embedded runtime: a real single-node Kubernetes on this machine, for tests, the demo and people.

    control plane   etcd, kube-apiserver, kube-controller-manager, kube-scheduler   (controlplane.py)
    node            containerd + runc + CNI bridge from Debian, kubelet              (node.py)
    images          debootstrap + buildah, imported into the node's containerd       (images.py)
    controllers     the real KServe controller manager and Argo workflow-controller (kserve.py, argo.py)

Every binary is built from its Go module by `hack/build-tools.sh` into the cache (default
~/.cache/fm-operator). `python -m fmdev up|down|status` drives it; `cluster.py` ties it together.
None of this ships in the operator image: the operator never knows whether it talks to this or to a
real cluster.
"""
