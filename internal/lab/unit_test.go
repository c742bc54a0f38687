package lab

import (
	"net/netip"
	"testing"
)

func TestDNSRoundTrip(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		txt  string
	}{
		{"short", `{"server":"x"}`},
		{"empty", ""},
		{"long", string(make([]byte, 600))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := dnsQuery(4242, "lab.detour.test")
			a, err := dnsAnswer(q, tt.txt)
			if err != nil {
				t.Fatal(err)
			}
			got, err := dnsTXT(a, 4242)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.txt {
				t.Errorf("got %q, want %q", got, tt.txt)
			}
			if _, err := dnsTXT(a, 4243); err == nil {
				t.Error("a wrong id was accepted")
			}
			if _, err := dnsTXT(q, 4242); err == nil {
				t.Error("a query was accepted as an answer")
			}
		})
	}
}

func TestRandIn(t *testing.T) {
	t.Parallel()
	r := NewRand(1)
	tests := []struct {
		name   string
		prefix netip.Prefix
	}{
		{"v4 /24", netip.MustParsePrefix("192.0.2.0/24")},
		{"v4 /30", netip.MustParsePrefix("198.51.100.4/30")},
		{"v6 /48", netip.MustParsePrefix("2001:db8:ffff::/48")},
	}
	for _, tt := range tests {
		seen := map[netip.Addr]bool{}
		for range 200 {
			a := r.In(tt.prefix)
			if !tt.prefix.Contains(a) || a == tt.prefix.Addr() {
				t.Fatalf("%s: %s is not a host address of %s", tt.name, a, tt.prefix)
			}
			if hostMask := byte(0xff >> (tt.prefix.Bits() - 24)); a.Is4() && a.As4()[3]&hostMask == hostMask {
				t.Fatalf("%s: %s is the broadcast address", tt.name, a)
			}
			seen[a] = true
		}
		if len(seen) < 2 {
			t.Errorf("%s: only %d distinct addresses", tt.name, len(seen))
		}
	}
}

func TestRandPortUnique(t *testing.T) {
	t.Parallel()
	r := NewRand(2)
	r.Reserve(15001, 15006)
	seen := map[uint16]bool{15001: true, 15006: true}
	for range 5000 {
		p := r.Port()
		if seen[p] || p < 1024 || p >= 32768 {
			t.Fatalf("port %d repeated or out of range", p)
		}
		seen[p] = true
	}
}
