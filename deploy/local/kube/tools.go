//go:build tools

// Package tools pins the programs this module builds (go build k8s.io/kubernetes/cmd/NAME): the API
// server for the dry-run, and the rest of a one-node cluster for deploy/local/cluster.sh.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
