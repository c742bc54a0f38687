package bpf

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/redirect"
)

func TestBlocks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		first, last uint64
		width       int
		want        string
	}{
		{"single", 80, 80, 16, "80"},
		{"aligned", 1024, 2047, 16, "1024-2047"},
		{"unaligned", 3000, 5000, 16, "3000-3007 3008-3071 3072-4095 4096-4607 4608-4863 4864-4991 4992-4999 5000"},
		{"all ports", 0, 65535, 16, "0-65535"},
		{"all ids", 0, 1<<32 - 1, 32, "0-4294967295"},
		{"top id", 1<<32 - 1, 1<<32 - 1, 32, "4294967295"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			bs := blocks(tc.first, tc.last, tc.width)
			var got []string
			next := tc.first
			for _, b := range bs {
				got = append(got, b.String())
				if uint64(b.first) != next {
					t.Errorf("block %s does not follow %d", b, next)
				}
				next = uint64(b.last()) + 1
			}
			if next != tc.last+1 {
				t.Errorf("blocks end at %d, want %d", next-1, tc.last)
			}
			if diff := cmp.Diff(tc.want, strings.Join(got, " ")); diff != "" {
				t.Errorf("blocks (-want +got):\n%s", diff)
			}
			if len(bs) > 2*tc.width {
				t.Errorf("%d blocks, want at most %d", len(bs), 2*tc.width)
			}
		})
	}
}

// TestRuleMasks checks the per-uid port rules against Decide for every uid and
// port near the rules' edges: the trie answers with the longest block only, so
// each block must carry every rule that covers it.
func TestRuleMasks(t *testing.T) {
	t.Parallel()
	rules := []redirect.UIDPortRule{
		{Protocol: redirect.TCP, Ports: []redirect.PortRange{{First: 3000, Last: 5000}}, UIDs: []redirect.IDRange{{First: 100, Last: 200}}},
		{Protocol: redirect.TCP, Ports: []redirect.PortRange{{First: 4096, Last: 4096}}, UIDs: []redirect.IDRange{{First: 150, Last: 150}, {First: 7, Last: 7}}},
	}
	var uidSets, portSets [][]block
	for _, r := range rules {
		var ub, pb []block
		for _, u := range r.UIDs {
			ub = append(ub, idBlocks(u)...)
		}
		for _, p := range r.Ports {
			pb = append(pb, portBlocks(p)...)
		}
		uidSets, portSets = append(uidSets, ub), append(portSets, pb)
	}
	um, pm := masks(uidSets, 32), masks(portSets, 16)
	longest := func(m map[block]uint64, v uint32) uint64 {
		best, bits := uint64(0), -1
		for b, mask := range m {
			if b.first <= v && v <= b.last() && b.bits > bits {
				best, bits = mask, b.bits
			}
		}
		return best
	}
	for _, uid := range []uint32{6, 7, 8, 99, 100, 149, 150, 151, 200, 201} {
		for _, port := range []uint16{2999, 3000, 4095, 4096, 4097, 5000, 5001} {
			want := false
			for _, r := range rules {
				for _, pr := range r.Ports {
					for _, ur := range r.UIDs {
						want = want || (pr.Contains(port) && ur.Contains(uid))
					}
				}
			}
			got := longest(um, uid)&longest(pm, uint32(port)) != 0
			if got != want {
				t.Errorf("uid %d port %d: exempt = %v, want %v", uid, port, got, want)
			}
		}
	}
}

func TestRender(t *testing.T) {
	t.Parallel()
	gid := uint32(5679)
	cfg := redirect.Default()
	cfg.IPFamilies = redirect.IPFamiliesDual
	cfg.Proxy.GID = &gid
	cfg.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	cfg.Outbound.ExcludePorts = []redirect.PortRange{{First: 5432, Last: 5432}}
	cfg.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 1000, Last: 1003}}
	cfg.DNS.Capture = redirect.DNSCaptureAll
	c, err := redirect.NewCapture(cfg, redirect.Facts{IPv6: true})
	if err != nil {
		t.Fatal(err)
	}
	e, err := render(7, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"config flags=out4,out6,proxy_gid,dns4,dns6,dns_all proxy_uid=5678 proxy_gid=5679 outbound_port=15001 dns_port=15053",
		"cidrs4 203.0.113.0/24",
		"cidrs6 2001:db8::/32",
		"ids exempt_uid 1000-1003",
		"ports outbound 5432",
	}
	if diff := cmp.Diff(want, e.lines()); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
	for k := range e.ids {
		if k.Cfg != 7 {
			t.Errorf("id entry under config %d, want 7", k.Cfg)
		}
	}

	// More per-uid port rules than one mask holds is an error naming the field.
	cfg = redirect.Default()
	for i := range MaxUIDPortRules + 1 {
		cfg.Outbound.ExcludePortsForUIDs = append(cfg.Outbound.ExcludePortsForUIDs, redirect.UIDPortRule{
			Protocol: redirect.TCP, Ports: []redirect.PortRange{{First: 80, Last: 80}}, UIDs: []redirect.IDRange{{First: uint32(i), Last: uint32(i)}}})
	}
	c, err = redirect.NewCapture(cfg, redirect.Facts{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := render(1, c); err == nil || !strings.Contains(err.Error(), "outbound.excludePortsForUIDs") {
		t.Errorf("render with %d rules = %v, want an error naming outbound.excludePortsForUIDs", MaxUIDPortRules+1, err)
	}
}
