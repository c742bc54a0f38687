package main

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestParseProcAddr reads addresses as /proc/net/tcp and tcp6 print them.
func TestParseProcAddr(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"0100007F:3A99":                         "127.0.0.1:15001",
		"0A00020F:9C40":                         "15.2.0.10:40000",
		"00000000000000000000000001000000:3A99": "[::1]:15001",
		"0000000000000000FFFF00000A00020F:1F90": "15.2.0.10:8080",
		"B80D0120000000000000000001000000:0050": "[2001:db8::1]:80",
	} {
		got, err := parseProcAddr(in)
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("parseProcAddr(%s) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007G:0050", "01:0050", "0100007F:XYZ"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q) accepted it", bad)
		}
	}
}

// TestValidateTellsNoAnswerFromBypass: a probe that gets no answer within
// --timeout is reported as such (TIMEOUT, exit 6), not as "not redirected"
// (exit 5), which validate keeps for what it proves: a probe answered by
// something else. Before 2026-12-05 both were exit 5, and so was a
// --timeout 1ms that timed the probe out before it was sent (now exit 2).
// The probe addresses are routed into a veth pair (both ends in the
// namespace, nobody there owns them), and a rule of another nftables table
// drops what is sent to them, as a blackholing network or firewall does.
func TestValidateTellsNoAnswerFromBypass(t *testing.T) {
	privtest.Require(t, "nft")
	ns := privtest.NetNS(t)
	ns.Run(t, "ip", "link", "add", "dt0", "type", "veth", "peer", "name", "dt1")
	ns.Run(t, "ip", "link", "set", "dt0", "up")
	ns.Run(t, "ip", "link", "set", "dt1", "up")
	ns.Run(t, "ip", "route", "add", "192.0.2.0/24", "dev", "dt0")
	ns.Run(t, "nft", "add table inet dttest")
	ns.Run(t, "nft", "add chain inet dttest out { type filter hook output priority 0 ; }")
	flags := []string{"--netns", ns.Path, "--ip-families", "ipv4", "--backend", "nftables"}
	validate := func(timeout string) (int, string, string) {
		t.Helper()
		return runCLI(t, append([]string{"validate", "--timeout", timeout}, flags...)...)
	}

	// Not installed, the probe is dropped on its way.
	ns.Run(t, "nft", "add rule inet dttest out ip daddr 192.0.2.0/24 drop")
	code, out, stderr := validate("200ms")
	if code != exitNoAnswer || !strings.Contains(out, "TIMEOUT ipv4: 192.0.2.1:15999") || !strings.Contains(out, "no answer within 200ms") ||
		strings.Contains(out, "FAIL") || !strings.Contains(stderr, "proves neither") {
		t.Errorf("validate, probe dropped on its way: exit %d, stdout %q, stderr %q; want exit %d and a TIMEOUT line", code, out, stderr, exitNoAnswer)
	}

	// Answered by something else (the namespace itself, owning the address
	// while nothing listens there): proven not redirected.
	ns.Run(t, "nft", "flush chain inet dttest out")
	ns.Run(t, "ip", "route", "del", "192.0.2.0/24", "dev", "dt0")
	ns.Run(t, "ip", "route", "add", "local", "192.0.2.0/24", "dev", "lo")
	code, out, stderr = validate("200ms")
	if code != exitNotValid || !strings.Contains(out, "FAIL ipv4: 192.0.2.1:15999") || !strings.Contains(out, "connection refused") {
		t.Errorf("validate, probe refused: exit %d, stdout %q, stderr %q; want exit %d and a FAIL line", code, out, stderr, exitNotValid)
	}
	ns.Run(t, "ip", "route", "del", "local", "192.0.2.0/24", "dev", "lo")
	ns.Run(t, "ip", "route", "add", "192.0.2.0/24", "dev", "dt0")

	// Installed: the floor of --timeout is enough for a redirected probe.
	if code, _, stderr := runCLI(t, append([]string{"install"}, flags...)...); code != 0 {
		t.Fatalf("install: exit %d: %s", code, stderr)
	}
	t.Cleanup(func() { runCLI(t, "uninstall", "--netns", ns.Path) })
	if code, out, stderr := validate(minProbeTimeout.String()); code != 0 || !strings.Contains(out, "ok   ipv4") {
		t.Errorf("validate --timeout %s, installed: exit %d, stdout %q, stderr %q; want exit 0", minProbeTimeout, code, out, stderr)
	}

	// Redirected, then dropped on the proxy port: no answer either, which is
	// why a timeout proves no bypass.
	ns.Run(t, "nft", "add rule inet dttest out tcp dport 15001 drop")
	code, out, stderr = validate("200ms")
	if code != exitNoAnswer || !strings.Contains(out, "TIMEOUT ipv4") || strings.Contains(out, "FAIL") {
		t.Errorf("validate, redirected then dropped: exit %d, stdout %q, stderr %q; want exit %d and a TIMEOUT line", code, out, stderr, exitNoAnswer)
	}
	// explain --live likewise: the verdict (captured) is neither proven nor
	// contradicted (it said "NOT as the verdict says", exit 5).
	code, out, stderr = runCLI(t, append([]string{"explain", "--live", "--timeout", "200ms", "--to", "192.0.2.1:80", "--uid", "60100", "--gid", "60100"}, flags...)...)
	if code != exitNoAnswer || !strings.Contains(out, "proven neither") || strings.Contains(out, "NOT as the verdict says") {
		t.Errorf("explain --live, redirected then dropped: exit %d, stdout %q, stderr %q; want exit %d, proven neither", code, out, stderr, exitNoAnswer)
	}
}

// TestValidateNamesLoopbackDown: in a namespace whose lo is down (a fresh `ip
// netns add` before `ip link set lo up`), install succeeds but a redirected
// connection is delivered over lo and dropped there: every probe timed out and
// validate asked whether something drops connections to the proxy port, never
// naming the cause. It now says lo is down and how to bring it up.
func TestValidateNamesLoopbackDown(t *testing.T) {
	privtest.Require(t, "nft")
	ns, flags := installedNS(t)
	ns.Run(t, "ip", "link", "set", "lo", "down")
	code, out, stderr := runCLI(t, append([]string{"validate", "--timeout", "300ms"}, flags...)...)
	if code != exitNoAnswer || !strings.Contains(out, "TIMEOUT ipv4") ||
		!strings.Contains(stderr, "lo is down in this namespace") || !strings.Contains(stderr, "ip link set lo up") {
		t.Errorf("validate with lo down: exit %d, stdout %q, stderr %q; want exit %d naming lo down and the fix", code, out, stderr, exitNoAnswer)
	}
	// With lo up again the same install validates.
	ns.Run(t, "ip", "link", "set", "lo", "up")
	if code, out, stderr := runCLI(t, append([]string{"validate", "--timeout", "300ms"}, flags...)...); code != 0 {
		t.Errorf("validate with lo up: exit %d, stdout %q, stderr %q; want 0", code, out, stderr)
	}
}

// installedNS is a new namespace with a default route (via 203.0.113.1, on a
// veth) and detour installed (IPv4, nftables), uninstalled when t ends; flags
// name it for the CLI.
func installedNS(t *testing.T) (privtest.NS, []string) {
	t.Helper()
	ns := privtest.NetNS(t)
	ns.Run(t, "ip", "link", "add", "dt0", "type", "veth", "peer", "name", "dt1")
	ns.Run(t, "ip", "link", "set", "dt0", "up")
	ns.Run(t, "ip", "link", "set", "dt1", "up")
	ns.Run(t, "ip", "addr", "add", "203.0.113.2/24", "dev", "dt0")
	ns.Run(t, "ip", "route", "add", "default", "via", "203.0.113.1")
	flags := []string{"--netns", ns.Path, "--ip-families", "ipv4", "--backend", "nftables"}
	if code, _, stderr := runCLI(t, append([]string{"install"}, flags...)...); code != 0 {
		t.Fatalf("install: exit %d: %s", code, stderr)
	}
	t.Cleanup(func() { runCLI(t, "uninstall", "--netns", ns.Path) })
	return ns, flags
}

// TestValidateRefusesACapturedProxy: while a proxy owns the outbound port,
// validate finds the probe held by the proxy's socket and said "ok" whoever
// owned that socket. A proxy that runs as another uid than proxy.uid (Envoy
// started as the wrong user) has its own upstream connections captured too:
// they come back to it, in a loop, and no connection of the app gets through —
// while validate said ok. It now fails (exit 5), naming both uids.
func TestValidateRefusesACapturedProxy(t *testing.T) {
	privtest.Require(t, "nft")
	ns, flags := installedNS(t)
	// proxyAs listens on the outbound port as uid (the listener's owner,
	// which its accepted connections inherit) and holds what it accepts.
	proxyAs := func(uid uint32) func() {
		var ln *net.TCPListener
		err := onThread(ns.Path, &probe{uid: uid, gid: uid}, func() error {
			var err error
			ln, err = net.ListenTCP("tcp4", &net.TCPAddr{Port: 15001})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			var held []net.Conn
			defer func() {
				for _, c := range held {
					c.Close()
				}
			}()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				held = append(held, c)
			}
		}()
		return func() { ln.Close() }
	}
	stop := proxyAs(1000)
	code, out, stderr := runCLI(t, append([]string{"validate", "--timeout", "1s"}, flags...)...)
	stop()
	if code != exitNotValid || !strings.Contains(out, "FAIL ipv4") || !strings.Contains(out, "uid 1000") ||
		!strings.Contains(stderr, "does not run as proxy.uid 5678") {
		t.Errorf("validate with the proxy running as uid 1000: exit %d, stdout %q, stderr %q; want exit %d naming uid 1000 and proxy.uid 5678", code, out, stderr, exitNotValid)
	}
	// Root's listener is warned about, not failed: a tool as root on the port
	// dials nothing (the end-to-end tests' stand-in proxies).
	stop = proxyAs(0)
	code, out, stderr = runCLI(t, append([]string{"validate", "--timeout", "1s"}, flags...)...)
	stop()
	if code != 0 || !strings.Contains(out, "warn ipv4: the socket on :15001 belongs to root (uid 0)") {
		t.Errorf("validate with the proxy running as root: exit %d, stdout %q, stderr %q; want exit 0 and a warning", code, out, stderr)
	}
	stop = proxyAs(5678)
	defer stop()
	if code, out, stderr := runCLI(t, append([]string{"validate", "--timeout", "1s"}, flags...)...); code != 0 || !strings.Contains(out, "held by the proxy's socket on :15001 (uid 5678)") {
		t.Errorf("validate with the proxy running as uid 5678: exit %d, stdout %q, stderr %q; want 0", code, out, stderr)
	}
}
