package webhook

import (
	"bytes"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/detour-mesh/detour/controlplane"
	"github.com/detour-mesh/detour/inject"
)

// Bootstrap renders an injected sidecar's Envoy bootstrap with
// controlplane.Bootstrap (so it is validated like the served resources), as
// compact JSON for Envoy's --config-yaml (JSON is YAML).
func Bootstrap(r inject.BootstrapRequest) ([]byte, error) {
	b, err := controlplane.Bootstrap(controlplane.BootstrapOptions{
		NodeID:       r.NodeID,
		ControlPlane: r.ControlPlane,
		AdminAddress: r.AdminAddress,
		ReadyAddress: r.ReadyAddress,
		Config:       r.Config,
	})
	if err != nil {
		return nil, err
	}
	js, err := protojson.MarshalOptions{}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("render bootstrap: %w", err)
	}
	// protojson adds random spaces to discourage byte comparisons; compact it
	// so that the same pod always gets the same bytes.
	return compactJSON(js)
}

func compactJSON(b []byte) ([]byte, error) {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, fmt.Errorf("render bootstrap: %w", err)
	}
	return buf.Bytes(), nil
}
