package bpf

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/detour-mesh/detour/redirect"
)

// TestMapDriftIsSeenAndRepaired edits and deletes entries of detour's pinned
// maps by hand, as someone with bpftool would: the config, a CIDR trie, the
// port and id tries, the enrolment; and unpins a program's link. Each time `check` (Engine.Check) reports
// drift naming the entry, `status` (Engine.Status) says the maps differ from
// what detour wrote, and a re-install restores them (check in sync again,
// status without the note, the connection redirected as planned).
func TestMapDriftIsSeenAndRepaired(t *testing.T) {
	l := newLab(t)
	enter(t, l.cgroup)
	ctx := context.Background()
	eng := l.engine(t, "")
	cfg := outboundConfig()
	cfg.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8:dead::/48")}
	cfg.Outbound.ExcludePorts = []redirect.PortRange{{First: 5432, Last: 5432}}
	cfg.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 4242, Last: 4242}}
	plan, err := redirect.NewPlan(cfg, redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := eng.Install(ctx, plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := eng.Uninstall(ctx); err != nil {
			t.Errorf("uninstall: %v", err)
		}
		if left, _ := filepath.Glob(filepath.Join(l.pinDir, "*")); len(left) != 0 {
			t.Errorf("uninstall left pins: %q", left)
		}
	})
	var cookie uint64
	inNS(t, l.ns, func() (err error) { cookie, err = CurrentNetns(); return err })
	pinned := func(name string) *ebpf.Map {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(filepath.Join(l.pinDir, "maps", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	scopes, configs := pinned("scopes"), pinned("configs")
	cidrs4, cidrs6, ids, ports := pinned("cidrs4"), pinned("cidrs6"), pinned("ids"), pinned("ports")
	var id uint32
	if err := scopes.Lookup(cookie, &id); err != nil {
		t.Fatalf("the namespace is not enrolled: %v", err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	status := func() string {
		t.Helper()
		st, err := eng.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Rules[redirect.IPv4] + st.Rules[redirect.IPv6]
	}
	inSync := func(when string) {
		t.Helper()
		if d, err := eng.Check(ctx, plan); err != nil || !d.Empty() {
			t.Fatalf("check %s: %v, want in sync:\n%s", when, err, d)
		}
		if s := status(); strings.Contains(s, "drift") {
			t.Errorf("status %s says drift:\n%s", when, s)
		}
	}
	// The proxy sees where the app's connection went: redirected as planned
	// or, with the enrolment gone, not at all.
	p := startProxy(t, l.ns, int(cfg.Proxy.OutboundPort))
	redirected := func() bool {
		t.Helper()
		_, err := dial(t, l.ns, "198.51.100.7:80")
		if err == nil {
			if got := p.next(t); got != "198.51.100.7:80" {
				t.Errorf("SO_ORIGINAL_DST = %s, want 198.51.100.7:80", got)
			}
		}
		return err == nil
	}
	inSync("right after install")
	if !redirected() {
		t.Fatal("the install does not redirect")
	}

	for _, c := range []struct {
		what   string
		edit   func()
		diff   string // a line of check's diff
		status string // in status's drift note
		off    bool   // the edit stops redirection
		then   func() // runs after the edit, before the checks
	}{
		{
			what: "changed the config's outbound port",
			edit: func() {
				var v detourCfg
				must(configs.Lookup(id, &v))
				v.OutPort++
				must(configs.Put(id, v))
			},
			diff:   "-config flags=",
			status: "the entries of config",
		},
		{
			what: "deleted the config",
			edit: func() { must(configs.Delete(id)) },
			diff: "+config flags=", status: "the entries of config", off: true,
		},
		{
			what: "deleted an IPv4 CIDR",
			edit: func() {
				a := netip.MustParseAddr("203.0.113.0").As4()
				k := detourCidr4Key{Prefixlen: 32 + 24, Cfg: id}
				k.Addr = uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
				must(cidrs4.Delete(k))
			},
			diff: "+cidrs4 203.0.113.0/24", status: "the entries of config",
		},
		{
			what: "added an IPv6 CIDR",
			edit: func() {
				e := newEntries()
				e.putPrefix(id, netip.MustParsePrefix("2001:db8:bad::/48"))
				for k, v := range e.cidrs6 {
					must(cidrs6.Put(k, v))
				}
			},
			diff: "-cidrs6 2001:db8:bad::/48", status: "the entries of config",
		},
		{
			what: "deleted an excluded port and an excluded uid",
			edit: func() {
				for _, m := range []*ebpf.Map{ports, ids} {
					var k, next []byte
					it := m.Iterate()
					var v []byte
					for it.Next(&k, &v) {
						next = append([]byte(nil), k...)
					}
					must(it.Err())
					must(m.Delete(next))
				}
			},
			diff: "+ports outbound 5432", status: "the entries of config",
		},
		{
			what: "unpinned the connect4 link",
			edit: func() {
				_, dir, err := New(Options{PinDir: l.pinDir, Root: l.cgroup}).Key(Scope{Netns: cookie})
				must(err)
				must(os.Remove(filepath.Join(l.pinDir, "links", dir, "detour_connect4")))
			},
			diff: "+program connect4 attach cgroup/connect4", status: "programs not attached: connect4",
		},
		{
			what: "deleted the enrolment",
			edit: func() { must(scopes.Delete(cookie)) },
			diff: "-scopes: no entry for this scope", status: "the scopes map has no entry for this scope", off: true,
			// Another namespace enrolled meanwhile gets another config id:
			// the repair below takes this one back.
			then: func() {
				other := newLabNS(t)
				var c2 uint64
				inNS(t, other, func() (err error) { c2, err = CurrentNetns(); return err })
				ld := New(Options{PinDir: l.pinDir, Root: l.cgroup})
				if _, err := ld.Apply(Scope{Netns: c2}, testCapture(t, nil)); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() {
					if err := ld.Remove(Scope{Netns: c2}); err != nil {
						t.Errorf("remove the other namespace: %v", err)
					}
				})
				var id2 uint32
				must(scopes.Lookup(c2, &id2))
				if id2 == id {
					t.Errorf("a namespace enrolled while this one's enrolment was deleted got its config id %d", id)
				}
			},
		},
		{
			what: "pointed the enrolment at another config",
			edit: func() { must(scopes.Put(cookie, id+7)) },
			diff: "-scopes: this scope points at config", status: "the scopes map points this scope at config", off: true,
		},
	} {
		c.edit()
		if c.then != nil {
			c.then()
		}
		d, err := eng.Check(ctx, plan)
		if err != nil || d.Empty() || !strings.Contains(d.String(), c.diff) {
			t.Errorf("check after someone %s: %v, want drift showing %q:\n%s", c.what, err, c.diff, d)
		}
		if s := status(); !strings.Contains(s, "# ebpf: drift: "+c.status) {
			t.Errorf("status after someone %s: want a drift note %q:\n%s", c.what, c.status, s)
		}
		if c.off && redirected() {
			t.Errorf("after someone %s, connections are still redirected", c.what)
		}
		res, err := eng.Install(ctx, plan)
		if err != nil || !res.Changed {
			t.Fatalf("re-install after someone %s = %+v, %v; want it to change the maps back", c.what, res, err)
		}
		inSync("after the re-install that repaired what someone " + c.what)
		var now uint32
		if err := scopes.Lookup(cookie, &now); err != nil || now != id {
			t.Errorf("after the repair, the enrolment is config %d (%v), want %d", now, err, id)
		}
		if !redirected() {
			t.Errorf("after the re-install that repaired what someone %s, connections are not redirected", c.what)
		}
	}
}
