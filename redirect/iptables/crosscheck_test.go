package iptables

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/redirect"
)

// This file checks Capture.Decide against detour's own rendered iptables rules
// without a kernel: for thousands of generated (config, connection) pairs, the
// connection's first packet walks the rendered raw, mangle and nat tables with
// internal/xtables (the evaluator behind `detour explain`, which knows nothing
// of Decide), and the two answers must agree. A rule the evaluator cannot
// decide fails the test, so no rule is silently skipped.
// TestDecisionMatchesPackets does the same on real packets, sampled.

// Addresses of the generated workload and its peers (TEST-NET only).
var (
	xPod4, xPod6   = netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8:1::10")
	xDsts          = mustAddrs("198.51.100.1", "198.51.100.7", "198.51.100.200", "203.0.113.9", "127.0.0.1", "127.0.0.53", "2001:db8:ff::1", "2001:db8:ff:1::7", "2001:db8:ff:2::9", "::1")
	xSrcs          = mustAddrs("198.51.100.9", "198.51.100.130", "192.0.2.1", "203.0.113.77", "2001:db8:ff::9", "2001:db8::1", "2001:db8:ff:1::9")
	xPorts         = []uint16{22, 53, 80, 81, 443, 8080, 8081, 9000, 9001, 15001, 15006, 15008, 15053}
	xOwners        = [][2]uint32{{1000, 1000}, {1001, 1000}, {1002, 2001}, {5678, 1000}, {1000, 2002}, {1003, 1003}, {0, 0}}
	xCIDRs         = []string{"198.51.100.0/25", "198.51.100.128/25", "198.51.100.7/32", "198.51.100.0/24", "203.0.113.0/24", "2001:db8:ff::/64", "2001:db8:ff:1::/64", "2001:db8:ff::/48", "2001:db8:ff:2::9/128"}
	xSrcCIDRs      = []string{"198.51.100.0/25", "198.51.100.128/25", "192.0.2.1/32", "2001:db8:ff::/64", "2001:db8::1/128", "2001:db8:ff::/48"}
	xNameservers   = mustAddrs("127.0.0.53", "198.51.100.1", "2001:db8:ff::1")
	xPassthroughs6 = []string{"::6", "::7"}
)

func mustAddrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func xPick[T any](rnd *rand.Rand, items []T) T { return items[rnd.IntN(len(items))] }

// xSome is a random non-empty subset joined with commas, or "" with
// probability 1-p.
func xSome[T any](rnd *rand.Rand, p float64, items []T) string {
	if rnd.Float64() >= p {
		return ""
	}
	var out []string
	for _, it := range items {
		if rnd.IntN(3) == 0 {
			out = append(out, fmt.Sprint(it))
		}
	}
	if len(out) == 0 {
		out = append(out, fmt.Sprint(xPick(rnd, items)))
	}
	return strings.Join(out, ",")
}

func xConfig(t *testing.T, rnd *rand.Rand) redirect.Config {
	t.Helper()
	ports := []string{"53", "80", "81", "443", "8080", "8081", "9000-9001", "15001", "15008"}
	sets := []string{
		"mode=" + xPick(rnd, []string{"redirect", "tproxy"}),
		"ipFamilies=" + xPick(rnd, []string{"auto", "ipv4", "ipv6", "dual"}),
		"outbound.includePorts=" + xSome(rnd, 0.3, ports),
		"outbound.excludePorts=" + xSome(rnd, 0.5, ports),
		"outbound.includeCIDRs=" + xSome(rnd, 0.3, xCIDRs),
		"outbound.excludeCIDRs=" + xSome(rnd, 0.5, xCIDRs),
		"outbound.excludeUIDs=" + xSome(rnd, 0.5, []string{"1001", "1002-1003", "0"}),
		"outbound.excludeGIDs=" + xSome(rnd, 0.3, []string{"2001", "1003"}),
		"inbound.includePorts=" + xSome(rnd, 0.3, ports),
		"inbound.excludePorts=" + xSome(rnd, 0.5, ports),
		"inbound.excludeSourceCIDRs=" + xSome(rnd, 0.5, xSrcCIDRs),
		"dns.capture=" + xPick(rnd, []string{"off", "all", "resolvconf"}),
		"dns.conntrackZoneSplit=" + xPick(rnd, []string{"true", "false"}),
		"dropInvalidPackets=" + xPick(rnd, []string{"true", "false"}),
		"log.enabled=" + xPick(rnd, []string{"true", "false"}),
		"proxy.inboundPassthroughSource.ipv6=" + xPick(rnd, xPassthroughs6),
	}
	if rnd.IntN(3) == 0 {
		sets = append(sets, "outbound.excludePortsForUIDs="+xPick(rnd, []string{"tcp:80,9000-9001:1000", "tcp:443:1000-1001,udp:53:1000", "udp:53,5353:1002", "udp:443:1000"}))
	}
	if rnd.IntN(3) == 0 {
		sets = append(sets, "proxy.gid=2002")
	}
	switch rnd.IntN(8) {
	case 0:
		sets = append(sets, "outbound.enabled=false")
	case 1:
		sets = append(sets, "inbound.enabled=false")
	}
	return cfgWith(t, "", sets...)
}

// xConn draws one connection.
func xConn(rnd *rand.Rand, fc redirect.FamilyCapture) redirect.Conn {
	v6 := fc.Family == redirect.IPv6
	pod := xPod4
	if v6 {
		pod = xPod6
	}
	family := func(as []netip.Addr) netip.Addr {
		for {
			if a := xPick(rnd, as); a.Is6() == v6 {
				return a
			}
		}
	}
	o := xPick(rnd, xOwners)
	port := xPick(rnd, xPorts)
	switch rnd.IntN(5) {
	case 0, 1: // outbound TCP
		return redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: family(xDsts), Port: port, UID: o[0], GID: o[1]}
	case 2: // the workload dialing its own address over lo (the proxy's hairpin, or the passthrough)
		src := pod
		if rnd.IntN(3) == 0 {
			src = fc.Proxy.Passthrough
		}
		return redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Src: src, Dst: pod, Port: port, UID: o[0], GID: o[1], ToSelf: true}
	case 3: // a UDP query
		dst := family(append(slices.Clone(xDsts), xNameservers...))
		if rnd.IntN(2) == 0 {
			port = 53
		}
		return redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.UDP, Dst: dst, Port: port, UID: o[0], GID: o[1]}
	}
	// inbound from a peer
	return redirect.Conn{Direction: redirect.DirInbound, Protocol: redirect.TCP, Src: family(xSrcs), Dst: pod, Port: port, ToSelf: true}
}

// TestDecideMatchesRendering: for a few thousand generated (config,
// connection) pairs, Capture.Decide's answer equals what the iptables
// rendering of the same Capture does with the connection's first packet. The
// seed is logged; DETOUR_DECISION_SEED=<seed> replays it.
func TestDecideMatchesRendering(t *testing.T) {
	t.Parallel()
	seed := uint64(rand.Int64())
	if s, err := strconv.ParseUint(os.Getenv("DETOUR_DECISION_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("DETOUR_DECISION_SEED=%d", seed)
	rnd := rand.New(rand.NewPCG(seed, 7))
	const configs, conns = 400, 12
	seen := map[string]int{}
	pairs := 0
	for range configs {
		cfg := xConfig(t, rnd)
		facts := redirect.Facts{IPv6: true, Nameservers: xNameservers}
		p, err := redirect.NewPlan(cfg, facts)
		if err != nil {
			t.Fatalf("NewPlan: %v", err)
		}
		rules := Rules(p.Capture)
		for i, fc := range p.Capture.Families {
			save := renderTables(rules[i].Tables)
			for range conns {
				conn := xConn(rnd, fc)
				got, err := explainSave(redirect.BackendIPTablesNFT, save, conn)
				if err != nil {
					t.Fatal(err)
				}
				want := p.Capture.Decide(conn)
				pairs++
				seen[fmt.Sprintf("%s %s %v", conn.Direction, conn.Protocol, want.Captured)]++
				if got.Uncertain != "" || got.Captured != want.Captured || (got.Captured && got.Port != want.Port) {
					t.Errorf("%+v under %s %s:\n  Decide: captured %v to port %d (%s)\n  rules:  captured %v (%s) to port %d by %q, uncertain %q\nconfig %+v\n%s",
						conn, cfg.Mode, fc.Family, want.Captured, want.Port, want.Reason, got.Captured, got.Action, got.Port, got.Rule, got.Uncertain, cfg, save)
					return
				}
			}
		}
	}
	t.Logf("%d pairs; outcomes %v", pairs, seen)
	for _, k := range []string{"outbound tcp true", "outbound tcp false", "inbound tcp true", "inbound tcp false", "outbound udp true", "outbound udp false"} {
		if seen[k] == 0 {
			t.Errorf("no pair was %q: the generator does not cover both outcomes (%v)", k, seen)
		}
	}
}
