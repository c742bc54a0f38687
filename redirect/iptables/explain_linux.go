package iptables

import (
	"fmt"

	"github.com/detour-mesh/detour/redirect"
)

// Explain implements redirect.Explainer: what the rules of the connection's
// family that Observe read (have) do with c. It follows the connection through
// the family's whole iptables-save output, not only detour's rules.
func (d *Driver) Explain(have redirect.Installed, c redirect.Conn) (redirect.KernelVerdict, error) {
	f := familyOfConn(c)
	fo := asInstalled(have, d.Backend).obs(f)
	if fo.err != nil {
		return redirect.KernelVerdict{Backend: d.Backend}, fmt.Errorf("read %s %s rules: %w", d.Backend, f, fo.err)
	}
	return explainSave(d.Backend, fo.save, c)
}
