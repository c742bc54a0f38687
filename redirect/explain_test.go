package redirect

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

// fakeDriver is a Driver that holds what the test says and answers Explain
// with a fixed verdict when explains is set.
type fakeDriver struct {
	name     Backend
	ready    error
	have     fakeInstalled
	verdict  KernelVerdict
	explains bool
}

type fakeInstalled struct{ empty bool }

func (f fakeInstalled) Empty() bool           { return f.empty }
func (f fakeInstalled) Lines(Family) []string { return nil }
func (f fakeInstalled) Text(Family) string    { return "" }
func (f fakeInstalled) Foreign() bool         { return false }
func (f fakeInstalled) Conflict() error       { return nil }

func (d *fakeDriver) Name() Backend                  { return d.name }
func (d *fakeDriver) Ready(context.Context) error    { return d.ready }
func (d *fakeDriver) Render(Plan) (Rendering, error) { return Rendering{}, nil }
func (d *fakeDriver) Observe(context.Context) (Installed, error) {
	return d.have, nil
}
func (d *fakeDriver) Apply(context.Context, Plan, Installed) (bool, error) { return false, nil }
func (d *fakeDriver) Remove(context.Context, Installed) error              { return nil }

// explainingDriver adds the optional Explainer.
type explainingDriver struct{ *fakeDriver }

func (d explainingDriver) Explain(have Installed, c Conn) (KernelVerdict, error) {
	return d.verdict, nil
}

func TestExplainWith(t *testing.T) {
	t.Parallel()
	conn := Conn{Direction: DirOutbound, Protocol: TCP, Dst: netip.MustParseAddr("192.0.2.1"), Port: 80}
	redirected := KernelVerdict{Captured: true, Port: 15001, Rule: "a rule"}
	empty := &fakeDriver{name: BackendIPTablesLegacy, have: fakeInstalled{empty: true}}
	tests := []struct {
		name    string
		drivers []Driver
		want    KernelVerdict
		err     error
	}{
		{"nothing installed", []Driver{empty, &fakeDriver{name: BackendNFTables, have: fakeInstalled{empty: true}}}, KernelVerdict{}, ErrNotInstalled},
		{"the installed one explains", []Driver{empty, explainingDriver{&fakeDriver{name: BackendNFTables, verdict: redirected}}},
			KernelVerdict{Backend: BackendNFTables, Captured: true, Port: 15001, Rule: "a rule"}, nil},
		{"installed but cannot explain", []Driver{empty, &fakeDriver{name: BackendEBPF}}, KernelVerdict{Backend: BackendEBPF}, ErrNotSupported},
		{"not ready is passed over", []Driver{&fakeDriver{name: BackendEBPF, ready: ErrNotSupported}, explainingDriver{&fakeDriver{name: BackendIPTablesNFT, verdict: redirected}}},
			KernelVerdict{Backend: BackendIPTablesNFT, Captured: true, Port: 15001, Rule: "a rule"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := explainWith(context.Background(), tt.drivers, conn)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if got.Backend != tt.want.Backend || got.Captured != tt.want.Captured || got.Port != tt.want.Port || got.Rule != tt.want.Rule {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
