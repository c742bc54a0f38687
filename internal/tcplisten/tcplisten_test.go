package tcplisten

import (
	"net"
	"strconv"
	"testing"
	"time"
)

// TestListen: 0.0.0.0 takes IPv4 and not IPv6 (net.Listen("tcp") took
// both and said [::]); [::] and an empty host take both; what the listener
// says and Families agree with what a client can reach.
func TestListen(t *testing.T) {
	t.Parallel()
	if ln, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	} else {
		ln.Close()
	}
	tests := []struct {
		name, addr     string
		wantHost       string
		families       string
		reach4, reach6 bool
	}{
		{"ipv4 wildcard", "0.0.0.0:0", "0.0.0.0", "ipv4", true, false},
		{"ipv4 loopback", "127.0.0.1:0", "127.0.0.1", "ipv4", true, false},
		{"ipv6 wildcard", "[::]:0", "::", "ipv4,ipv6", true, true},
		{"empty host", ":0", "::", "ipv4,ipv6", true, true},
		{"ipv6 loopback", "[::1]:0", "::1", "ipv6", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ln, err := Listen(tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			a := ln.Addr().(*net.TCPAddr)
			if got := a.IP.String(); got != tc.wantHost {
				t.Errorf("Addr() = %s, want host %s", a, tc.wantHost)
			}
			if got := Families(ln.Addr()); got != tc.families {
				t.Errorf("Families = %q, want %q", got, tc.families)
			}
			for _, c := range []struct {
				to   string
				want bool
			}{{"127.0.0.1", tc.reach4}, {"::1", tc.reach6}} {
				conn, err := net.DialTimeout("tcp", net.JoinHostPort(c.to, strconv.Itoa(a.Port)), 2*time.Second)
				if err == nil {
					conn.Close()
				}
				if (err == nil) != c.want {
					t.Errorf("dial %s: %v; want reachable %v", c.to, err, c.want)
				}
			}
		})
	}
}
