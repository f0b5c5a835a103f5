// fmop-cri: the few CRI calls the local node needs for a clean shutdown, spoken to containerd over
// its CRI socket with Kubernetes' own CRI client (k8s.io/cri-client), so no crictl is needed.
//
//	fmop-cri --endpoint unix:///path/containerd.sock pods      # list pod sandboxes
//	fmop-cri --endpoint unix:///path/containerd.sock rm-pods   # stop (CNI teardown) and remove all
//
// Stopping a sandbox through CRI is what runs the CNI DEL, so the pod's network namespace, veth and
// IP lease go away with it; killing container processes directly would leave them behind.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	remote "k8s.io/cri-client/pkg"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func main() {
	endpoint := flag.String("endpoint", "", "CRI endpoint, e.g. unix:///run/fmop/containerd.sock")
	timeout := flag.Duration("timeout", 60*time.Second, "overall timeout")
	flag.Parse()
	if *endpoint == "" || flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: fmop-cri --endpoint unix:///path/to/containerd.sock pods|rm-pods")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	rs, err := remote.NewRemoteRuntimeService(ctx, *endpoint, 10*time.Second, nil, false)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fmop-cri: connecting to %s: %v\n", *endpoint, err)
		os.Exit(1)
	}
	pods, err := rs.ListPodSandbox(ctx, &runtimeapi.PodSandboxFilter{})
	if err != nil {
		fmt.Fprintf(os.Stderr, "fmop-cri: listing pod sandboxes: %v\n", err)
		os.Exit(1)
	}
	switch flag.Arg(0) {
	case "pods":
		for _, p := range pods {
			fmt.Printf("%s\t%s/%s\t%s\n", p.Id, p.Metadata.Namespace, p.Metadata.Name, p.State)
		}
	case "rm-pods":
		failed := 0
		for _, p := range pods {
			name := p.Metadata.Namespace + "/" + p.Metadata.Name
			if err := rs.StopPodSandbox(ctx, p.Id); err != nil {
				fmt.Fprintf(os.Stderr, "fmop-cri: stopping %s: %v\n", name, err)
				failed++
				continue
			}
			if err := rs.RemovePodSandbox(ctx, p.Id); err != nil {
				fmt.Fprintf(os.Stderr, "fmop-cri: removing %s: %v\n", name, err)
				failed++
				continue
			}
			fmt.Printf("removed %s\n", name)
		}
		if failed > 0 {
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "fmop-cri: unknown command %q (pods, rm-pods)\n", flag.Arg(0))
		os.Exit(2)
	}
}
