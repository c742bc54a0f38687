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

// planCases are the shared configurations (internal/plancases).
func planCases() []plancases.Case { return plancases.All() }
