package redirect

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

// stubDriver is a Driver that holds what the test says and answers Explain
// with a fixed verdict when explains is set.
type stubDriver struct {
	name     Backend
	ready    error
	have     stubInstalled
	verdict  KernelVerdict
	explains bool
}

type stubInstalled struct{ empty bool }

func (f stubInstalled) Empty() bool           { return f.empty }
func (f stubInstalled) Lines(Family) []string { return nil }
func (f stubInstalled) Text(Family) string    { return "" }
func (f stubInstalled) Foreign() bool         { return false }
func (f stubInstalled) Conflict() error       { return nil }

func (d *stubDriver) Name() Backend                  { return d.name }
func (d *stubDriver) Ready(context.Context) error    { return d.ready }
func (d *stubDriver) Render(Plan) (Rendering, error) { return Rendering{}, nil }
func (d *stubDriver) Observe(context.Context) (Installed, error) {
	return d.have, nil
}
func (d *stubDriver) Apply(context.Context, Plan, Installed) (bool, error) { return false, nil }
func (d *stubDriver) Remove(context.Context, Installed) error              { return nil }

// explainingDriver adds the optional Explainer.
type explainingDriver struct{ *stubDriver }

func (d explainingDriver) Explain(have Installed, c Conn) (KernelVerdict, error) {
	return d.verdict, nil
}

func TestExplainWith(t *testing.T) {
	t.Parallel()
	conn := Conn{Direction: DirOutbound, Protocol: TCP, Dst: netip.MustParseAddr("192.0.2.1"), Port: 80}
	redirected := KernelVerdict{Captured: true, Port: 15001, Rule: "a rule"}
	empty := &stubDriver{name: BackendIPTablesLegacy, have: stubInstalled{empty: true}}
	tests := []struct {
		name    string
		drivers []Driver
		want    KernelVerdict
		err     error
	}{
		{"nothing installed", []Driver{empty, &stubDriver{name: BackendNFTables, have: stubInstalled{empty: true}}}, KernelVerdict{}, ErrNotInstalled},
		{"the installed one explains", []Driver{empty, explainingDriver{&stubDriver{name: BackendNFTables, verdict: redirected}}},
			KernelVerdict{Backend: BackendNFTables, Captured: true, Port: 15001, Rule: "a rule"}, nil},
		{"installed but cannot explain", []Driver{empty, &stubDriver{name: BackendEBPF}}, KernelVerdict{Backend: BackendEBPF}, ErrNotSupported},
		{"not ready is passed over", []Driver{&stubDriver{name: BackendEBPF, ready: ErrNotSupported}, explainingDriver{&stubDriver{name: BackendIPTablesNFT, verdict: redirected}}},
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
