//go:build linux

package nftables

import (
	"testing"

	"github.com/detour-mesh/detour/internal/plancases"
	"github.com/detour-mesh/detour/redirect"
)

// The configurations of redirect's TestPlan goldens (redirect/plan_test.go),
// under the same names, so both backends' renderings of one configuration
// sit side by side.

// The shared configurations (internal/plancases) under this package's names.
var (
	dualStack = plancases.DualStack
	v4Only    = plancases.V4Only
	resolvers = plancases.Resolvers
)

func cfgWith(t testing.TB, preset string, sets ...string) redirect.Config {
	t.Helper()
	return plancases.Config(t, preset, sets...)
}

type planCase struct {
	name   string
	preset string
	sets   []string
	facts  redirect.Facts
}

func planCases() []planCase {
	var out []planCase
	for _, c := range plancases.All() {
		out = append(out, planCase{name: c.Name, preset: c.Preset, sets: c.Sets, facts: c.Facts})
	}
	return out
}
