#!/usr/bin/env bash
# Build the control-plane binaries this project tests against, from Go modules, once.
#
#   kube-apiserver, kube-controller-manager, kubectl  <- k8s.io/kubernetes (staging modules replaced)
#   etcd                                              <- go.etcd.io/etcd/server/v3 (wrapper module)
#   helm                                              <- helm.sh/helm/v3 (wrapper module)
#
# Everything lands in $FMOP_CACHE (default ~/.cache/fm-operator), outside the repository, and a
# binary that already exists with the right version stamp is not rebuilt. Only the Go module proxy
# is contacted. The first run takes a while (see README); later runs return in seconds.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
CACHE="${FMOP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fm-operator}"
BIN="$CACHE/bin"
SRC="$CACHE/src"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
mkdir -p "$BIN" "$SRC"

log() { printf '[build-tools] %s\n' "$*" >&2; }
stamp_ok() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$BIN/.$1.version"; }

build_kubernetes() {
  local want="$K8S_VERSION"
  if stamp_ok kube-apiserver "$want" && stamp_ok kube-controller-manager "$want" && stamp_ok kubectl "$want"; then
    log "kubernetes $want: cached"; return
  fi
  local dir="$SRC/kubernetes-$want" minor="${want#v1.}"; minor="${minor%%.*}"
  local staging="v0.${want#v1.}"
  mkdir -p "$dir"
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
  cat >"$dir/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true; cd "$dir" && go mod tidy)
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$want -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
  ld="$ld -X k8s.io/client-go/pkg/version.gitVersion=$want -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    log "kubernetes $want: building $cmd (slow the first time)"
    (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$BIN/$cmd" "k8s.io/kubernetes/cmd/$cmd")
    stamp "$cmd" "$want"
  done
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

# Third-party CRDs the operator writes, taken from the projects' own Go module zips (never committed).
ARGO_VERSION="${ARGO_VERSION:-v3.7.6}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.17.0}"
GATEWAY_API_VERSION="${GATEWAY_API_VERSION:-v1.4.0}"
PROM_OPERATOR_VERSION="${PROM_OPERATOR_VERSION:-v0.88.0}"
CRDS="$CACHE/crds"

fetch_crds() {
  local want="argo=$ARGO_VERSION kserve=$KSERVE_VERSION gateway=$GATEWAY_API_VERSION prometheus-operator=$PROM_OPERATOR_VERSION"
  if [ "$(cat "$CRDS/.version" 2>/dev/null)" = "$want" ]; then log "third-party CRDs: cached"; return; fi
  local dir="$SRC/crd-fetch"
  mkdir -p "$dir" && rm -rf "$CRDS.tmp" && mkdir -p "$CRDS.tmp"
  printf 'module fmop.local/crd-fetch\n\ngo 1.24\n' >"$dir/go.mod"
  moddir() { (cd "$dir" && go mod download -json "$1") | python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])'; }
  local argo kserve gw promop
  argo="$(moddir "github.com/argoproj/argo-workflows/v3@$ARGO_VERSION")"
  kserve="$(moddir "github.com/kserve/kserve@$KSERVE_VERSION")"
  gw="$(moddir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
  promop="$(moddir "github.com/prometheus-operator/prometheus-operator@$PROM_OPERATOR_VERSION")"
  # "full" variants carry the complete OpenAPI schema, so the server validates what we write.
  cp "$argo/manifests/base/crds/full/argoproj.io_workflows.yaml" \
     "$argo/manifests/base/crds/full/argoproj.io_workflowtemplates.yaml" "$CRDS.tmp/"
  cp "$kserve/config/crd/full/serving.kserve.io_inferenceservices.yaml" \
     "$kserve/config/crd/full/serving.kserve.io_servingruntimes.yaml" \
     "$kserve/config/crd/full/serving.kserve.io_clusterservingruntimes.yaml" "$CRDS.tmp/"
  cp "$gw/config/crd/standard/"gateway.networking.k8s.io_{gatewayclasses,gateways,httproutes,referencegrants}.yaml "$CRDS.tmp/"
  cp "$promop/example/prometheus-operator-crd-full/monitoring.coreos.com_servicemonitors.yaml" \
     "$promop/example/prometheus-operator-crd-full/monitoring.coreos.com_prometheusrules.yaml" "$CRDS.tmp/"
  chmod u+w "$CRDS.tmp"/*
  echo "$want" >"$CRDS.tmp/.version"
  rm -rf "$CRDS" && mv "$CRDS.tmp" "$CRDS"
  log "third-party CRDs: $(ls "$CRDS" | wc -l) files in $CRDS"
}

start=$(date +%s)
fetch_crds
build_etcd
build_helm
build_kubernetes
log "done in $(( $(date +%s) - start ))s; binaries in $BIN"
