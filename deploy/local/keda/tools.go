//go:build tools

// Package tools pins the programs this module builds (go build github.com/kedacore/keda/v2/cmd/NAME).
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
