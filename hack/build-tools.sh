#!/usr/bin/env bash
# Build the control-plane binaries this project tests against, from Go modules, once.
#
#   kube-apiserver, kube-controller-manager,
#   kube-scheduler, kubelet, kubectl                  <- k8s.io/kubernetes (staging modules replaced)
#   fmop-cri (hack/fmop-cri, our own)                 <- k8s.io/cri-client, in the same wrapper module
#   etcd                                              <- go.etcd.io/etcd/server/v3 (wrapper module)
#   helm                                              <- helm.sh/helm/v3 (wrapper module)
#   kserve-manager                                    <- github.com/kserve/kserve/cmd/manager
#   workflow-controller, argoexec                     <- github.com/argoproj/argo-workflows/v3
#   prometheus                                        <- github.com/prometheus/prometheus (Debian's
#                                                        package is built without kubernetes_sd)
#   traefik                                           <- github.com/traefik/traefik/v3 (wrapper module)
#
# Everything lands in $FMOP_CACHE (default ~/.cache/fm-operator), outside the repository, and a
# binary that already exists with the right version stamp is not rebuilt. Only the Go module proxy
# is contacted. The first run takes a while (see README); later runs return in seconds.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
CACHE="${FMOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fm-operator}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
mkdir -p "$BIN" "$SRC"

log() { printf '[build-tools] %s\n' "$*" >&2; }
stamp_ok() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

K8S_CMDS="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

build_kubernetes() {
  local want="$K8S_VERSION" cri_sum all_ok=1
  cri_sum="$(sha256sum "$HERE/fmop-cri/main.go" | cut -c1-16)"
  for cmd in $K8S_CMDS; do stamp_ok "$cmd" "$want" || all_ok=0; done
  stamp_ok fmop-cri "$want-$cri_sum" || all_ok=0
  if [ "$all_ok" = 1 ]; then log "kubernetes $want: cached"; return; fi
  local dir="$SRC/kubernetes-$want" minor="${want#v1.}"; minor="${minor%%.*}"
  local staging="v0.${want#v1.}"
  mkdir -p "$dir/cmd/fmop-cri"
  cp "$HERE/fmop-cri/main.go" "$dir/cmd/fmop-cri/main.go"
  local tools
  tools="$(printf '//go:build tools\n\npackage tools\n\nimport (\n'; for cmd in $K8S_CMDS; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done; printf ')\n')"
  if [ "$(cat "$dir/tools.go" 2>/dev/null)" != "$tools" ] || [ ! -f "$dir/go.sum" ]; then
    log "kubernetes $want: writing wrapper module (staging modules at $staging)"
    # The staging modules are the '=> ./staging/...' replace lines of k8s.io/kubernetes' own go.mod.
    local upstream
    upstream="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$want" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
    {
      echo "module fmop.local/kubernetes-tools"
      echo
      echo "go $(awk '/^go /{print $2; exit}' "$upstream")"
      echo
      echo "require k8s.io/kubernetes $want"
      echo
      grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream" \
        | awk -v v="$staging" '{print "replace " $1 " => " $1 " " v}'
    } >"$dir/go.mod"
    echo "$tools" >"$dir/tools.go"
    (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true; cd "$dir" && go mod tidy)
  fi
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$want -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$want -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in $K8S_CMDS; do
    stamp_ok "$cmd" "$want" && continue
    log "kubernetes $want: building $cmd (slow the first time)"
    (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd")
    stamp "$cmd" "$want"
  done
  if ! stamp_ok fmop-cri "$want-$cri_sum"; then
    log "fmop-cri: building (CRI client for the local node's clean shutdown)"
    (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/fmop-cri" ./cmd/fmop-cri)
    stamp fmop-cri "$want-$cri_sum"
  fi
}

# A wrapper module that requires $1@$2 and carries the module's own replace and exclude lines, both
# the single-line form and `replace ( ... )` blocks (Prometheus and Traefik use blocks), so that
# `go build` resolves exactly as the project's own build does. A dependency's replace lines are
# ignored by Go, so without them Prometheus builds against the real klog instead of klog-gokit and
# fails ("undefined: klog.ClampLevel"). Replaces by local path (=> ./x) are not carried: a module
# zip has no such folder, and the caller must handle them.
wrapper_module() {
  local dir="$1" mod="$2" ver="$3" upstream
  mkdir -p "$dir"
  [ -f "$dir/go.sum" ] && grep -q "^require $mod $ver\$" "$dir/go.mod" 2>/dev/null && return
  upstream="$(cd "$dir" && printf 'module fmop.local/probe\n\ngo 1.24\n' >go.mod && go mod download -json "$mod@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module fmop.local/$(basename "$dir")"
    echo
    echo "go $(awk '/^go /{print $2; exit}' "$upstream")"
    echo
    echo "require $mod $ver"
    echo
    awk '/^(replace|exclude) \($/ {b=$1; next}
         b && /^\)/ {b=""; next}
         b && NF && !/^[ \t]*\/\// {sub(/^[ \t]+/, ""); print b " " $0; next}
         /^(replace|exclude) [^(]/ {print}' "$upstream" | grep -Ev '=> \.{1,2}/' || true
  } >"$dir/go.mod"
}

build_kserve() {
  if stamp_ok kserve-manager "$KSERVE_VERSION"; then log "kserve $KSERVE_VERSION: cached"; return; fi
  local dir="$SRC/kserve-$KSERVE_VERSION"
  wrapper_module "$dir" github.com/kserve/kserve "$KSERVE_VERSION"
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/kserve/kserve/cmd/manager"\n' >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
  log "kserve $KSERVE_VERSION: building the controller manager"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/kserve-manager" github.com/kserve/kserve/cmd/manager)
  stamp kserve-manager "$KSERVE_VERSION"
}

build_argo() {
  if stamp_ok workflow-controller "$ARGO_VERSION" && stamp_ok argoexec "$ARGO_VERSION"; then log "argo $ARGO_VERSION: cached"; return; fi
  local dir="$SRC/argo-$ARGO_VERSION" mod="github.com/argoproj/argo-workflows/v3"
  wrapper_module "$dir" "$mod" "$ARGO_VERSION"
  printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s/cmd/workflow-controller"\n\t_ "%s/cmd/argoexec"\n)\n' "$mod" "$mod" >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
  # Upstream's workflow/executor/osspecific/signal_linux.go is a symlink to signal_darwin.go, and Go
  # module zips drop symlinks, so the module as served lacks it ("undefined: Setpgid"). Build from a
  # vendor tree (Go refuses overlays into the module cache) with exactly that symlink restored.
  (cd "$dir" && go mod vendor)
  ln -sfn signal_darwin.go "$dir/vendor/$mod/workflow/executor/osspecific/signal_linux.go"
  local ld="-s -w -X $mod.version=$ARGO_VERSION -X $mod.gitTag=$ARGO_VERSION -X $mod.gitTreeState=clean"
  for cmd in workflow-controller argoexec; do
    log "argo $ARGO_VERSION: building $cmd"
    (cd "$dir" && go build -mod=vendor -trimpath -ldflags "$ld" -o "$BIN/$cmd" "$mod/cmd/$cmd")
    stamp "$cmd" "$ARGO_VERSION"
  done
}

# Traefik, the local data plane (reads the HTTPRoutes and TraefikServices the operator writes).
# v3.7.x does not build from the proxy: its go.mod replaces a nested module (dynamic/ext) that the
# module zip lacks.
build_traefik() {
  if stamp_ok traefik "$TRAEFIK_VERSION"; then log "traefik $TRAEFIK_VERSION: cached"; return; fi
  local dir="$SRC/traefik-$TRAEFIK_VERSION" mod="github.com/traefik/traefik/v3"
  wrapper_module "$dir" "$mod" "$TRAEFIK_VERSION"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/traefik"\n' "$mod" >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
  log "traefik $TRAEFIK_VERSION: building (slow the first time)"
  (cd "$dir" && go build -trimpath -ldflags "-s -w -X $mod/pkg/version.Version=$TRAEFIK_VERSION -X $mod/pkg/version.BuildDate=1970-01-01T00:00:00Z" -o "$BIN/traefik" "$mod/cmd/traefik")
  stamp traefik "$TRAEFIK_VERSION"
}

build_etcd() {
  if stamp_ok etcd "$ETCD_VERSION"; then log "etcd $ETCD_VERSION: cached"; return; fi
  local dir="$SRC/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  # `go install go.etcd.io/etcd/server/v3@...` refuses modules with replace directives; a wrapper
  # module that requires the server module builds the same binary.
  cat >"$dir/go.mod" <<MOD
module fmop.local/etcd-tools

go 1.24

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  (cd "$dir" && go mod tidy)
  log "etcd $ETCD_VERSION: building"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  stamp etcd "$ETCD_VERSION"
}

build_helm() {
  if stamp_ok helm "$HELM_VERSION"; then log "helm $HELM_VERSION: cached"; return; fi
  local dir="$SRC/helm-$HELM_VERSION"
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<MOD
module fmop.local/helm-tools

go 1.24

require helm.sh/helm/v3 $HELM_VERSION
MOD
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import _ "helm.sh/helm/v3/cmd/helm"
GO
  (cd "$dir" && go mod tidy)
  # Helm's Makefile stamps the Kubernetes version its client-go speaks (major+1 of v0.x) so that
  # .Capabilities.KubeVersion and `helm lint` see a real version.
  local cg kmin
  cg="$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/client-go)"
  kmin="$(echo "$cg" | cut -d. -f2)"
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  ld="$ld -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$kmin"
  ld="$ld -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kmin"
  log "helm $HELM_VERSION: building"
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$BIN/helm" helm.sh/helm/v3/cmd/helm)
  stamp helm "$HELM_VERSION"
}

# Prometheus with its Kubernetes service discovery, which the Debian package leaves out; the local
# monitoring (fmop.local.monitoring) discovers predictor pods with it. No web UI assets (the HTTP API
# is all the operator and tests use). Module v0.X.Y is Prometheus 2.X.Y.
PROMETHEUS_VERSION="${PROMETHEUS_VERSION:-v0.54.1}"
build_prometheus() {
  if stamp_ok prometheus "$PROMETHEUS_VERSION"; then log "prometheus $PROMETHEUS_VERSION: cached"; return; fi
  local dir="$SRC/prometheus-$PROMETHEUS_VERSION" mod="github.com/prometheus/prometheus"
  wrapper_module "$dir" "$mod" "$PROMETHEUS_VERSION"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd/prometheus"\n' "$mod" >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
  local v="2.${PROMETHEUS_VERSION#v0.}"
  local ld="-s -w -X github.com/prometheus/common/version.Version=$v -X github.com/prometheus/common/version.Branch=module"
  log "prometheus $PROMETHEUS_VERSION: building"
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$BIN/prometheus" "$mod/cmd/prometheus")
  stamp prometheus "$PROMETHEUS_VERSION"
}

# Third-party CRDs the operator writes, taken from the projects' own Go module zips (never committed).
ARGO_VERSION="${ARGO_VERSION:-v3.7.6}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.17.0}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.4.0}"
PROM_OPERATOR_VERSION="${PROM_OPERATOR_VERSION:-v0.88.0}"
ISTIO_API_VERSION="${ISTIO_API_VERSION:-v1.29.3}"
TRAEFIK_VERSION="${TRAEFIK_VERSION:-v3.6.12}"
CRDS="$CACHE/crds"
KSERVE_CONFIG="$CACHE/kserve"

# One file per CustomResourceDefinition of a multi-document YAML file, named after the CRD.
split_crds() {
  python3 - "$1" "$2" <<'PY'
import pathlib, re, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for doc in re.split(r"(?m)^---\s*$", src.read_text()):
    if re.search(r"(?m)^kind: CustomResourceDefinition\s*$", doc):
        name = re.search(r"(?m)^  name: (\S+)\s*$", doc).group(1)  # metadata.name (spec.names is "names:")
        (out / f"{name}.yaml").write_text(doc.strip() + "\n")
PY
}

fetch_crds() {
  # Bump the layout tag when the set of files changes, so a cached copy is refreshed.
  local want="layout=3 argo=$ARGO_VERSION kserve=$KSERVE_VERSION gateway=$GATEWAY_API_VERSION prometheus-operator=$PROM_OPERATOR_VERSION istio-api=$ISTIO_API_VERSION traefik=$TRAEFIK_VERSION"
  if [ "$(cat "$CRDS/.version" 2>/dev/null)" = "$want" ]; then log "third-party CRDs: cached"; return; fi
  local dir="$SRC/crd-fetch"
  mkdir -p "$dir" && rm -rf "$CRDS.tmp" "$KSERVE_CONFIG.tmp" && mkdir -p "$CRDS.tmp" "$KSERVE_CONFIG.tmp"
  printf 'module fmop.local/crd-fetch\n\ngo 1.24\n' >"$dir/go.mod"
  moddir() { (cd "$dir" && go mod download -json "$1") | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])'; }
  local argo kserve gw promop istio traefik
  argo="$(moddir "github.com/argoproj/argo-workflows/v3@$ARGO_VERSION")"
  kserve="$(moddir "github.com/kserve/kserve@$KSERVE_VERSION")"
  gw="$(moddir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
  promop="$(moddir "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION")"
  istio="$(moddir "istio.io/api@$ISTIO_API_VERSION")"
  traefik="$(moddir "github.com/traefik/traefik/v3@$TRAEFIK_VERSION")"
  # "full" variants carry the complete OpenAPI schema, so the server validates what we write.
  # All eight Argo CRDs: the controller watches every one of them (task results, task sets, ...).
  cp "$argo"/manifests/base/crds/full/argoproj.io_*.yaml "$CRDS.tmp/"
  # Every KServe CRD the controller manager's informers list (localmodel, clusterstoragecontainer,
  # llmisvc included); the conversion-webhook patches are kustomize inputs, not CRDs.
  find "$kserve/config/crd/full" -name 'serving.kserve.io_*.yaml' -exec cp {} "$CRDS.tmp/" \;
  # The whole Gateway API standard channel (Traefik's gateway provider needs GRPCRoute and
  # BackendTLSPolicy too, or its informers fail).
  cp "$gw"/config/crd/standard/gateway.networking.k8s.io_*.yaml "$CRDS.tmp/"
  cp "$promop/example/prometheus-operator-crd-full/monitoring.coreos.com_servicemonitors.yaml" \
     "$promop/example/prometheus-operator-crd-full/monitoring.coreos.com_prometheusrules.yaml" "$CRDS.tmp/"
  # Istio (VirtualService and friends) and Traefik (TraefikService, IngressRoute, ...: its CRD provider
  # lists all of them) ship their CRDs as one multi-document file each; the cluster installs one CRD
  # per file, so split them, named <plural>.<group>.yaml.
  split_crds "$istio/kubernetes/customresourcedefinitions.gen.yaml" "$CRDS.tmp"
  split_crds "$traefik/docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml" "$CRDS.tmp"
  # KServe's own configuration: the inferenceservice-config ConfigMap, its webhook registrations and
  # its Triton ClusterServingRuntime; fmop.local adapts them to the local node at start-up.
  cp "$kserve/config/configmap/inferenceservice.yaml" "$kserve/config/webhook/manifests.yaml" \
     "$kserve/config/runtimes/kserve-tritonserver.yaml" "$KSERVE_CONFIG.tmp/"
  chmod u+w "$CRDS.tmp"/* "$KSERVE_CONFIG.tmp"/*
  echo "$want" >"$CRDS.tmp/.version"
  rm -rf "$CRDS" "$KSERVE_CONFIG" && mv "$CRDS.tmp" "$CRDS" && mv "$KSERVE_CONFIG.tmp" "$KSERVE_CONFIG"
  log "third-party CRDs: $(ls "$CRDS" | wc -l) files in $CRDS; KServe config in $KSERVE_CONFIG"
}

# The Kubernetes pause container, compiled from the pause.c that ships in the k8s.io/kubernetes
# module (build/pause/linux), statically, so the sandbox image is one small binary.
build_pause() {
  if stamp_ok pause "$K8S_VERSION"; then log "pause $K8S_VERSION: cached"; return; fi
  command -v gcc >/dev/null || { log "pause: gcc is required (apt-get install gcc libc6-dev)"; exit 1; }
  local k8s
  k8s="$(cd "$SRC/kubernetes-$K8S_VERSION" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
  gcc -Os -static -Wall -Werror -DVERSION="$K8S_VERSION" -o "$BIN/pause" "$k8s/build/pause/linux/pause.c"
  strip "$BIN/pause"
  stamp pause "$K8S_VERSION"
  log "pause $K8S_VERSION: built"
}

start=$(date +%s)
fetch_crds
build_etcd
build_helm
build_kubernetes
build_pause
build_kserve
build_argo
build_prometheus
build_traefik
log "done in $(( $(date +%s) - start ))s; binaries in $BIN"
