package iptables

import (
	"context"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// TestStrayRoutingOfOurs: a rule and routes carrying detour's protocol (215) that no plan of detour's makes — what an older or
// interrupted detour could leave — are shown by status as detour's, in the
// text form status has always used, and uninstall removes exactly them: the
// same-looking state of someone else (another protocol) stays.
func TestStrayRoutingOfOurs(t *testing.T) {
	t.Parallel()
	ns, e := newNS(t)
	for _, c := range [][]string{
		{"ip", "-4", "rule", "add", "fwmark", "0x4000/0x4000", "lookup", "2000", "priority", "2001", "protocol", "215"},
		{"ip", "-6", "rule", "add", "fwmark", "0x4000/0x4000", "lookup", "2000", "priority", "2001", "protocol", "215"},
		{"ip", "-4", "rule", "add", "fwmark", "0x4000/0x4000", "lookup", "2000", "priority", "2001", "protocol", "static"},
		{"ip", "-4", "route", "add", "local", "192.0.2.0/24", "dev", "lo", "table", "2000", "proto", "215"},
		{"ip", "-6", "route", "add", "local", "2001:db8:7::/64", "dev", "lo", "table", "2000", "proto", "215"},
		{"ip", "-4", "route", "add", "local", "198.51.100.0/24", "dev", "lo", "table", "2000", "proto", "static"},
	} {
		ns.Run(t, c...)
	}
	st, err := e.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[redirect.Family][]string{
		redirect.IPv4: {
			"# routing: ip -4 rule add fwmark 0x4000/0x4000 lookup 2000 priority 2001 protocol 215",
			"# routing: {Ifindex: 1 Dst: 192.0.2.0/24 Src: <nil> Gw: <nil> Flags: [] Table: 2000 Realm: 0} (table 2000)",
		},
		redirect.IPv6: {
			"# routing: ip -6 rule add fwmark 0x4000/0x4000 lookup 2000 priority 2001 protocol 215",
			"# routing: {Ifindex: 1 Dst: 2001:db8:7::/64 Src: <nil> Gw: <nil> Flags: [] Table: 2000 Realm: 0} (table 2000)",
		},
	}
	for f, lines := range want {
		for _, l := range lines {
			if !strings.Contains(st.Rules[f], l+"\n") {
				t.Errorf("status %s lacks %q:\n%s", f, l, st.Rules[f])
			}
		}
	}
	if !st.Installed {
		t.Errorf("status: Installed = false with state of ours there")
	}

	mustUninstall(t, e)
	all := ns.Run(t, "ip", "-4", "rule") + ns.Run(t, "ip", "-6", "rule") +
		ns.Run(t, "ip", "-4", "route", "show", "table", "2000") + ns.Run(t, "ip", "-6", "route", "show", "table", "2000")
	if strings.Contains(all, "proto 215") || strings.Contains(all, "192.0.2.0/24") || strings.Contains(all, "2001:db8:7::") {
		t.Errorf("uninstall left state of ours:\n%s", all)
	}
	for _, keep := range []string{"2001:\tfrom all fwmark 0x4000/0x4000 lookup 2000 proto static", "local 198.51.100.0/24 dev lo proto static"} {
		if !strings.Contains(all, keep) {
			t.Errorf("uninstall removed someone else's %q:\n%s", keep, all)
		}
	}
	if st, err := e.Status(context.Background()); err != nil || st.Installed {
		t.Errorf("status after uninstall = %+v, %v", st, err)
	}
}
