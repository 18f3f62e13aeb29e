//go:build tools

// Package tools pins the program this module builds (go build k8s.io/kubernetes/cmd/kube-apiserver).
package tools

import _ "k8s.io/kubernetes/cmd/kube-apiserver"
