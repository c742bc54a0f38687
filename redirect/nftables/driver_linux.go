package nftables

import (
	"context"
	"fmt"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// The nftables backend behind redirect's seam.
var (
	_ redirect.Driver    = (*Driver)(nil)
	_ redirect.Explainer = (*Driver)(nil)
	_ redirect.Installed = (*Observed)(nil)
)

// Name is redirect.BackendNFTables.
func (d *Driver) Name() redirect.Backend { return redirect.BackendNFTables }

// Observe reads detour's table (ObserveTable) as redirect.Installed.
func (d *Driver) Observe(ctx context.Context) (redirect.Installed, error) {
	o, err := d.ObserveTable(ctx)
	if err != nil {
		return nil, err
	}
	return o, nil
}

func observed(have redirect.Installed) (*Observed, error) {
	if have == nil {
		return &Observed{}, nil
	}
	o, ok := have.(*Observed)
	if !ok {
		return nil, fmt.Errorf("nftables: given what another backend observed (%T)", have)
	}
	return o, nil
}

// Apply renders p.Capture and applies it (ApplyRuleset).
func (d *Driver) Apply(ctx context.Context, p redirect.Plan, have redirect.Installed) (bool, error) {
	rs, err := Render(p.Capture)
	if err != nil {
		return false, err
	}
	o, err := observed(have)
	if err != nil {
		return false, err
	}
	return d.ApplyRuleset(ctx, rs, o)
}

// Remove deletes detour's table when have shows it.
func (d *Driver) Remove(ctx context.Context, have redirect.Installed) error {
	o, err := observed(have)
	if err != nil {
		return err
	}
	return d.RemoveTable(ctx, o)
}

// Render is p's table as `nft -f` commands, per family: the family's notes,
// then its share of the table (the table and the base chains are declared in
// every family's share).
func (d *Driver) Render(p redirect.Plan) (redirect.Rendering, error) {
	rs, err := Render(p.Capture)
	if err != nil {
		return redirect.Rendering{}, err
	}
	rs.Table = d.table()
	r := redirect.Rendering{Backend: redirect.BackendNFTables}
	for _, fc := range p.Capture.Families {
		var b strings.Builder
		for _, n := range fc.Notes {
			b.WriteString("# " + n + "\n")
		}
		lines := rs.Lines(fc.Family)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
		r.Families = append(r.Families, redirect.FamilyRendering{Family: fc.Family, Text: b.String(), Lines: lines})
	}
	return r, nil
}

// Text is family f's share of the observed table, one command a line.
func (o *Observed) Text(f redirect.Family) string {
	var b strings.Builder
	for _, l := range o.Lines(f) {
		b.WriteString(l + "\n")
	}
	return b.String()
}

// Conflict is nil: the table is detour's by its name, and whatever someone
// added to it is replaced by the next Apply (and shown as drift until then).
func (o *Observed) Conflict() error { return nil }

// Explain says what the observed table does with c, evaluating its rules in
// hook order; the deciding rule and the rules before it are quoted as `nft`
// commands. It refuses when the table holds what detour did not make.
func (d *Driver) Explain(have redirect.Installed, c redirect.Conn) (redirect.KernelVerdict, error) {
	kv := redirect.KernelVerdict{Backend: redirect.BackendNFTables}
	o, err := observed(have)
	if err != nil {
		return kv, err
	}
	out, err := o.explain(c)
	if err != nil {
		return kv, err
	}
	kv.Captured, kv.Port, kv.Action = out.captured, out.port, out.action
	prefix := "add rule inet " + d.table() + " "
	if out.rule != "" {
		kv.Rule = prefix + out.rule
	}
	for _, p := range out.path {
		kv.Path = append(kv.Path, prefix+p)
	}
	return kv, nil
}
