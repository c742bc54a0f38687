package xtables

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// insertBefore puts lines in front of the first line that starts with anchor,
// as `iptables -I` or another tool's restore would.
func insertBefore(t *testing.T, save, anchor string, lines ...string) string {
	t.Helper()
	i := strings.Index(save, "\n"+anchor)
	if i < 0 {
		t.Fatalf("anchor %q not in save text", anchor)
	}
	return save[:i+1] + strings.Join(lines, "\n") + "\n" + save[i+1:]
}

func id(n uint32) *uint32 { return &n }

func outbound(proto, dst string, port uint16, uid uint32) Packet {
	d := netip.MustParseAddr(dst)
	p := Packet{Hook: Output, Proto: proto, Dst: d, DPort: port, UID: id(uid), GID: id(uid)}
	if d.IsLoopback() {
		p.Out, p.DstLocal, p.Src = Loopback, true, d
	}
	return p
}

func inbound(src, dst string, port uint16) Packet {
	return Packet{Hook: Prerouting, Proto: "tcp", Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), DPort: port, DstLocal: true}
}

func TestEvaluate(t *testing.T) {
	t.Parallel()
	v4 := read(t, "redirect-v4.save")
	v6 := read(t, "tproxy-v6.save")
	hairpin := outbound("tcp", "198.51.100.10", 8080, 5678)
	hairpin.Out, hairpin.DstLocal, hairpin.Src = Loopback, true, hairpin.Dst
	passthrough := hairpin
	passthrough.Src = netip.MustParseAddr("127.0.0.6")
	invalid := inbound("198.51.100.1", "198.51.100.10", 8080)
	invalid.CTState = "INVALID"
	established := inbound("2001:db8::1", "2001:db8::10", 8080)
	established.CTState = "ESTABLISHED"
	lo6 := inbound("2001:db8::1", "2001:db8::10", 8080)
	lo6.In = Loopback
	// A SYN whose 4-tuple finds the proxy's socket in TIME_WAIT (transparent),
	// and a later packet of a connection the proxy holds.
	reused := inbound("2001:db8::1", "2001:db8::10", 8080)
	reused.TransparentSocket = true
	held := established
	held.TransparentSocket = true
	tests := []struct {
		name    string
		save    string
		p       Packet
		outcome Outcome
		port    uint16
		decider string // "" = no rule decided
		unknown string // substring of Result.Unknown
	}{
		{name: "outbound captured", save: v4, p: outbound("tcp", "198.51.100.1", 80, 1000+500),
			outcome: Redirected, port: 15001, decider: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
		{name: "proxy uid", save: v4, p: outbound("tcp", "198.51.100.1", 80, 5678),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -m owner --uid-owner 5678 -j RETURN"},
		{name: "excluded uid range", save: v4, p: outbound("tcp", "198.51.100.1", 80, 1001),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -m owner --uid-owner 1000-1002 -j RETURN"},
		{name: "per-uid ports match", save: v4, p: outbound("tcp", "198.51.100.1", 3500, 107),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -p tcp -m multiport --dports 53,3000:5000 -m owner --uid-owner 106-108 -j RETURN"},
		{name: "per-uid ports other uid", save: v4, p: outbound("tcp", "198.51.100.1", 3500, 109),
			outcome: Redirected, port: 15001, decider: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
		{name: "excluded cidr", save: v4, p: outbound("tcp", "203.0.113.9", 80, 2000),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -d 203.0.113.0/24 -j RETURN"},
		{name: "excluded port", save: v4, p: outbound("tcp", "198.51.100.1", 5432, 2000),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -p tcp -m multiport --dports 5432 -j RETURN"},
		{name: "loopback", save: v4, p: outbound("tcp", "127.0.0.1", 80, 2000),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -o lo -j RETURN"},
		{name: "hairpin", save: v4, p: hairpin,
			outcome: Redirected, port: 15006, decider: "-A DETOUR_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"},
		{name: "passthrough source", save: v4, p: passthrough,
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN"},
		{name: "dns captured past a rate-limited LOG", save: v4, p: outbound("udp", "198.51.100.53", 53, 2000),
			outcome: Redirected, port: 15053, decider: "-A DETOUR_DNS_REDIRECT -p udp -j REDIRECT --to-ports 15053"},
		{name: "dns of the proxy past an unknown source port", save: v4, p: outbound("udp", "198.51.100.53", 53, 5678),
			outcome: Untouched, decider: "-A DETOUR_DNS -m owner --uid-owner 5678 -j RETURN"},
		{name: "udp not 53", save: v4, p: outbound("udp", "198.51.100.53", 5353, 2000), outcome: Untouched},
		{name: "inbound captured", save: v4, p: inbound("198.51.100.1", "198.51.100.10", 8080),
			outcome: Redirected, port: 15006, decider: "-A DETOUR_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006"},
		{name: "inbound loop guard", save: v4, p: inbound("198.51.100.1", "198.51.100.10", 15001),
			outcome: Untouched, decider: "-A DETOUR_INBOUND -p tcp -m tcp --dport 15001 -j RETURN"},
		{name: "inbound excluded source", save: v4, p: inbound("192.0.2.77", "198.51.100.10", 8080),
			outcome: Untouched, decider: "-A DETOUR_INBOUND -s 192.0.2.0/24 -j RETURN"},
		{name: "inbound excluded port range", save: v4, p: inbound("198.51.100.1", "198.51.100.10", 9050),
			outcome: Untouched, decider: "-A DETOUR_INBOUND -p tcp -m multiport --dports 22,9000:9100 -j RETURN"},
		{name: "inbound without a known source", save: v4, p: Packet{Hook: Prerouting, Proto: "tcp", DPort: 8080, DstLocal: true},
			outcome: Unknown, decider: "-A DETOUR_INBOUND -s 192.0.2.0/24 -j RETURN", unknown: "source address is not known"},
		{name: "forwarded is not local", save: v4, p: Packet{Hook: Prerouting, Proto: "tcp", Src: netip.MustParseAddr("198.51.100.1"), Dst: netip.MustParseAddr("203.0.113.1"), DPort: 80},
			outcome: Untouched},
		{name: "connmark of another connection does not match", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", "-A OUTPUT -p tcp -m connmark --mark 0x1/0x1 -j ACCEPT"),
			outcome: Redirected, port: 15001, decider: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
		{name: "mark saved on the connection then matched", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save: insertBefore(t, insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", "-A OUTPUT -p tcp -m connmark --mark 0x1/0x1 -j ACCEPT"),
				"COMMIT", "-A OUTPUT -p tcp -j MARK --set-xmark 0x1/0x1", "-A OUTPUT -p tcp -j CONNMARK --save-mark --nfmask 0x1 --ctmask 0x1"),
			outcome: Untouched, decider: "-A OUTPUT -p tcp -m connmark --mark 0x1/0x1 -j ACCEPT"},
		{name: "foreign ACCEPT jumps first", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", "-A OUTPUT -d 198.51.100.0/24 -p tcp -j ACCEPT"),
			outcome: Untouched, decider: "-A OUTPUT -d 198.51.100.0/24 -p tcp -j ACCEPT"},
		{name: "foreign chain that returns", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save: insertBefore(t, insertBefore(t, v4, ":DETOUR_DNS - [0:0]", ":MESH_OUT - [0:0]"), "-A OUTPUT -p tcp -m comment --comment detour",
				"-A OUTPUT -j MESH_OUT", "-A MESH_OUT -p tcp -m tcp --dport 22 -j ACCEPT", "-A MESH_OUT -j RETURN"),
			outcome: Redirected, port: 15001, decider: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
		{name: "foreign REDIRECT first", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", "-A OUTPUT -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9999"),
			outcome: Redirected, port: 9999, decider: "-A OUTPUT -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9999"},
		{name: "foreign DNAT first", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", "-A OUTPUT -p tcp -j DNAT --to-destination 192.0.2.9:8080"),
			outcome: DNATed, decider: "-A OUTPUT -p tcp -j DNAT --to-destination 192.0.2.9:8080"},
		{name: "unknown match first", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", `-A OUTPUT -m string --string "GET /" --algo bm --to 65535 -j ACCEPT`),
			outcome: Unknown, decider: `-A OUTPUT -m string --string "GET /" --algo bm --to 65535 -j ACCEPT`, unknown: "uses -m string --string GET /"},
		{name: "unknown match that a known condition rules out", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", `-A OUTPUT -p icmp -m string --string x --algo bm -j ACCEPT`),
			outcome: Redirected, port: 15001, decider: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
		{name: "unknown target", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", `-A OUTPUT -p tcp -j NFQUEUE --queue-num 3`),
			outcome: Unknown, decider: "-A OUTPUT -p tcp -j NFQUEUE --queue-num 3", unknown: "uses target NFQUEUE"},
		{name: "named interface cannot be told", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", `-A OUTPUT -o eth0 -j RETURN`),
			outcome: Unknown, decider: "-A OUTPUT -o eth0 -j RETURN", unknown: "interface name is not known"},
		{name: "named interface is not lo", p: outbound("tcp", "127.0.0.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", `-A OUTPUT -o eth0 -j ACCEPT`),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -o lo -j RETURN"},
		{name: "hand-deleted redirect rule", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    strings.Replace(v4, "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001\n", "", 1),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -p tcp -j DETOUR_OUT_REDIRECT"},
		{name: "raw notrack skips nat", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p udp -m comment --comment detour -j DETOUR_CT_OUTPUT", "-A OUTPUT -p tcp -j CT --notrack"),
			outcome: Untouched},
		{name: "policy drop", p: outbound("tcp", "127.0.0.1", 80, 2000),
			save:    strings.Replace(v4, "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]", "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT DROP [0:0]", 1),
			outcome: Dropped},
		{name: "goto ends the calling chain", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save: insertBefore(t, insertBefore(t, v4, ":DETOUR_DNS - [0:0]", ":OTHER - [0:0]"), "-A OUTPUT -p tcp -m comment --comment detour",
				"-A OUTPUT -p tcp -g OTHER", "-A OTHER -p udp -j ACCEPT"),
			outcome: Untouched, decider: "-A OUTPUT -p tcp -g OTHER"},
		{name: "negated owner", p: outbound("tcp", "198.51.100.1", 80, 2000),
			save:    insertBefore(t, v4, "-A OUTPUT -p tcp -m comment --comment detour", "-A OUTPUT -m owner ! --uid-owner 2000 -j ACCEPT"),
			outcome: Redirected, port: 15001, decider: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
		{name: "drop invalid", p: invalid,
			save:    insertBefore(t, v4, "-A PREROUTING -p tcp -m addrtype", "-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -m conntrack --ctstate INVALID -m comment --comment detour -j DROP"),
			outcome: Dropped, decider: "-A PREROUTING -p tcp -m addrtype --dst-type LOCAL -m conntrack --ctstate INVALID -m comment --comment detour -j DROP"},
		{name: "tproxy inbound", save: v6, p: inbound("2001:db8::1", "2001:db8::10", 8080),
			outcome: TProxied, port: 15006, decider: "-A DETOUR_TPROXY -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x2000/0x2000"},
		{name: "tproxy established", save: v6, p: established,
			outcome: Untouched, decider: "-A DETOUR_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"},
		{name: "tproxy reused 4-tuple", save: v6, p: reused,
			outcome: TProxied, port: 15006, decider: "-A DETOUR_TPROXY -p tcp -j TPROXY --on-port 15006 --on-ip :: --tproxy-mark 0x2000/0x2000"},
		{name: "tproxy held connection", save: v6, p: held,
			outcome: Untouched, decider: "-A DETOUR_DIVERT -j ACCEPT"},
		{name: "tproxy over lo", save: v6, p: lo6,
			outcome: Untouched, decider: "-A DETOUR_INBOUND -i lo -j RETURN"},
		{name: "include cidrs hit", save: v6, p: outbound("tcp", "2001:db8:3::1", 443, 2000),
			outcome: Redirected, port: 15001, decider: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
		{name: "include cidrs miss", save: v6, p: outbound("tcp", "2001:db8:4::1", 443, 2000),
			outcome: Untouched, decider: "-A DETOUR_OUTPUT -p tcp -m multiport --dports 80,443 -j DETOUR_OUT_CIDRS"},
		{name: "include ports miss", save: v6, p: outbound("tcp", "2001:db8:3::1", 8443, 2000),
			outcome: Untouched, decider: "-A OUTPUT -p tcp -m comment --comment detour -j DETOUR_OUTPUT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rs, err := Parse(tc.save)
			if err != nil {
				t.Fatal(err)
			}
			got := rs.Evaluate(tc.p)
			decider := ""
			if got.Decider != nil {
				decider = got.Decider.Text
			}
			if got.Outcome != tc.outcome || got.Port != tc.port || decider != tc.decider {
				t.Errorf("got %s port %d by %q (unknown %q), want %s port %d by %q\ntrace: %v",
					got.Outcome, got.Port, decider, got.Unknown, tc.outcome, tc.port, tc.decider, got.Trace)
			}
			if !strings.Contains(got.Unknown, tc.unknown) || (tc.unknown == "") != (got.Unknown == "") {
				t.Errorf("unknown = %q, want it to contain %q", got.Unknown, tc.unknown)
			}
		})
	}
}

func TestEvaluateTrace(t *testing.T) {
	t.Parallel()
	rs, err := Parse(read(t, "redirect-v4.save"))
	if err != nil {
		t.Fatal(err)
	}
	got := rs.Evaluate(outbound("tcp", "198.51.100.1", 80, 2000))
	want := []Step{
		{Table: "nat", Chain: "OUTPUT", Rule: "-A OUTPUT -p tcp -m comment --comment detour -j DETOUR_OUTPUT"},
		{Table: "nat", Chain: "DETOUR_OUTPUT", Rule: "-A DETOUR_OUTPUT -p tcp -j DETOUR_OUT_REDIRECT"},
		{Table: "nat", Chain: "DETOUR_OUT_REDIRECT", Rule: "-A DETOUR_OUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001"},
	}
	if diff := cmp.Diff(want, got.Trace); diff != "" {
		t.Errorf("trace (-want +got):\n%s", diff)
	}
}

func TestParse(t *testing.T) {
	t.Parallel()
	rs, err := Parse("*nat\n:OUTPUT ACCEPT [0:0]\n[3:180] -A OUTPUT -p tcp ! -d 10.0.0.0/8 -m comment --comment \"two words\" -m tcp ! --dport 22 -j REDIRECT --to-ports 15001\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	r := rs.Tables["nat"].Chains["OUTPUT"].Rules[0]
	want := &Rule{Table: "nat", Chain: "OUTPUT",
		Text: `-A OUTPUT -p tcp ! -d 10.0.0.0/8 -m comment --comment "two words" -m tcp ! --dport 22 -j REDIRECT --to-ports 15001`,
		Matches: []Match{
			{Option: Option{Name: "-p", Args: []string{"tcp"}}},
			{Option: Option{Negated: true, Name: "-d", Args: []string{"10.0.0.0/8"}}},
			{Module: "comment", Option: Option{Name: "--comment", Args: []string{"two words"}}},
			{Module: "tcp", Option: Option{Negated: true, Name: "--dport", Args: []string{"22"}}},
		},
		Target: "REDIRECT", Args: []Option{{Name: "--to-ports", Args: []string{"15001"}}}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("rule (-want +got):\n%s", diff)
	}
	for _, bad := range []struct{ name, text string }{
		{"rule outside a table", "-A OUTPUT -j ACCEPT\n"},
		{"undeclared chain", "*nat\n-A NOPE -j ACCEPT\nCOMMIT\n"},
		{"unterminated quote", "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -m comment --comment \"x -j ACCEPT\nCOMMIT\n"},
		{"option without module", "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT --dport 80 -j ACCEPT\nCOMMIT\n"},
	} {
		if _, err := Parse(bad.text); err == nil {
			t.Errorf("%s: Parse accepted %q", bad.name, bad.text)
		}
	}
}

// BenchmarkParseEvaluate is explain's own cost for one connection: parse one
// family's save output (detour's default rules with DNS and exclusions) and
// follow a packet through it.
func BenchmarkParseEvaluate(b *testing.B) {
	save, err := os.ReadFile("testdata/redirect-v4.save")
	if err != nil {
		b.Fatal(err)
	}
	p := outbound("tcp", "198.51.100.1", 80, 2000)
	for b.Loop() {
		rs, err := Parse(string(save))
		if err != nil {
			b.Fatal(err)
		}
		if rs.Evaluate(p).Outcome != Redirected {
			b.Fatal("not redirected")
		}
	}
}
