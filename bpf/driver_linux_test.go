package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/redirect"
)

// TestDriver runs the Driver as Engine does, on a thread inside the
// namespace: observe, apply, observe equals render, apply again changes
// nothing, explain quotes the entry, remove leaves nothing.
func TestDriver(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ctx := context.Background()
	d := NewDriver(DriverOptions{Loader: Options{PinDir: l.pinDir, Root: l.cgroup}})
	cfg := redirect.Default()
	cfg.IPFamilies = redirect.IPFamiliesDual
	cfg.Outbound.ExcludePorts = []redirect.PortRange{{First: 5432, Last: 5432}}

	// Inbound needs an inbound backend: refused, nothing changed.
	plan, err := redirect.NewPlan(cfg, redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	inNS(t, l.ns, func() error {
		have, err := d.Observe(ctx)
		if err != nil {
			return err
		}
		if _, err := d.Apply(ctx, plan, have); !errors.Is(err, redirect.ErrNotSupported) {
			t.Errorf("Apply with inbound.enabled = %v, want ErrNotSupported", err)
		}
		return nil
	})
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused Apply left pins: %v", err)
	}

	// With inbound disabled, an inbound backend that cannot work here (a
	// kernel without nf_tables) is not needed.
	d = NewDriver(DriverOptions{Loader: Options{PinDir: l.pinDir, Root: l.cgroup}, Inbound: noInbound{}})
	// A fresh install whose inbound share fails leaves nothing.
	inNS(t, l.ns, func() error {
		have, err := d.Observe(ctx)
		if err != nil {
			return err
		}
		if changed, err := d.Apply(ctx, plan, have); !errors.Is(err, errNoInbound) || changed {
			t.Errorf("Apply with a failing inbound backend = %v, %v; want its error and no change", changed, err)
		}
		return nil
	})
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an install whose inbound share failed left pins: %v", err)
	}
	cfg.Inbound.Enabled = false
	if plan, err = redirect.NewPlan(cfg, redirect.Facts{IPv6: true}); err != nil {
		t.Fatal(err)
	}
	r, err := d.Render(plan)
	if err != nil {
		t.Fatal(err)
	}
	inNS(t, l.ns, func() error {
		have, err := d.Observe(ctx)
		if err != nil {
			return err
		}
		if !have.Empty() {
			t.Fatalf("Observe before install: not empty: %v", have.Lines(redirect.IPv4))
		}
		if changed, err := d.Apply(ctx, plan, have); err != nil || !changed {
			t.Fatalf("Apply = %v, %v", changed, err)
		}
		if have, err = d.Observe(ctx); err != nil {
			return err
		}
		for _, f := range []redirect.Family{redirect.IPv4, redirect.IPv6} {
			fr, _ := r.Family(f)
			if diff := cmp.Diff(fr.Lines, have.Lines(f)); diff != "" {
				t.Errorf("%s: installed lines differ from the rendering (-render +installed):\n%s", f, diff)
			}
		}
		if changed, err := d.Apply(ctx, plan, have); err != nil || changed {
			t.Errorf("second Apply = %v, %v; want no change", changed, err)
		}
		for _, tc := range []struct {
			conn     redirect.Conn
			captured bool
			rule     string
		}{
			{redirect.Conn{Protocol: redirect.TCP, Dst: netip.MustParseAddr("198.51.100.1"), Port: 80, UID: 1000}, true, "config flags=out4,out6 proxy_uid=5678 proxy_gid=- outbound_port=15001 dns_port=0"},
			{redirect.Conn{Protocol: redirect.TCP, Dst: netip.MustParseAddr("2001:db8::1"), Port: 5432, UID: 1000}, false, "ports outbound 5432"},
		} {
			v, err := d.Explain(have, tc.conn)
			if err != nil {
				t.Fatal(err)
			}
			if v.Captured != tc.captured || v.Rule != tc.rule {
				t.Errorf("Explain(%v) = %+v, want captured %v by %q", tc.conn, v, tc.captured, tc.rule)
			}
		}
		if err := d.Remove(ctx, have); err != nil {
			return err
		}
		if have, err = d.Observe(ctx); err != nil {
			return err
		}
		if !have.Empty() {
			t.Errorf("Observe after Remove: not empty")
		}
		return d.Remove(ctx, have)
	})
	if _, err := os.Stat(l.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pins after Remove: %v", err)
	}
}

// noInbound is an inbound backend that cannot work here: every method fails.
type noInbound struct{}

var errNoInbound = errors.New("nf_tables: protocol not supported")

func (noInbound) Name() redirect.Backend { return redirect.BackendNFTables }
func (noInbound) Ready(context.Context) error {
	return fmt.Errorf("%w: %w", redirect.ErrNotSupported, errNoInbound)
}
func (noInbound) Observe(context.Context) (redirect.Installed, error) { return nil, errNoInbound }
func (noInbound) Apply(context.Context, redirect.Plan, redirect.Installed) (bool, error) {
	return false, errNoInbound
}
func (noInbound) Remove(context.Context, redirect.Installed) error { return errNoInbound }
func (noInbound) Render(redirect.Plan) (redirect.Rendering, error) {
	return redirect.Rendering{}, errNoInbound
}
