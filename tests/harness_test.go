//go:build linux

package tests

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/detour-mesh/detour/internal/lab"
	"github.com/detour-mesh/detour/internal/privtest"
)

// The backends every scenario runs on, by their --backend name.
const (
	nft       = "iptables-nft"
	legacy    = "iptables-legacy"
	nftNative = "nftables"
)

var backends = []string{nft, legacy, nftNative, ebpfBackend}

// backendKind is what the harness knows of one backend of the matrix: the
// tools a test namespace needs for it, and how to dump its state (every table,
// both families, comments and counters removed) for the before/after
// snapshots. Adding a backend to the matrix is its name in backends and an
// entry here (the iptables-specific helpers — save, restore, ours — are used
// by the scenarios that seed or inspect iptables rules directly).
type backendKind struct {
	tools []string
	dump  func(p *pod) string
}

var backendKinds = map[string]backendKind{
	nft:    iptablesKind(nft),
	legacy: iptablesKind(legacy),
	// nftables installs over netlink: the pod needs no tool for it. The
	// snapshot reads the whole ruleset with nft (every table, native or
	// iptables-nft's; counters zeroed).
	nftNative: {tools: []string{"nft"}, dump: func(p *pod) string { return "== nft list ruleset\n" + nftRuleset(p) }},
	// ebpf: its state is the pins of the pod's own pin directory (links
	// and maps; the inbound table is in the nftables dump). The backend
	// needs no tool; the harness reads the inbound table with nft. Its
	// scenarios need a cgroup v2 hierarchy (ebpfEnv skips without one).
	ebpfBackend: {tools: []string{"nft"}, dump: func(p *pod) string {
		var b strings.Builder
		b.WriteString("== ebpf pins\n")
		if len(p.env) > 0 {
			dir := pinDir(p.env)
			for _, l := range pinsLeft(p.t, p.env) {
				b.WriteString(strings.TrimPrefix(l, dir+"/") + "\n")
			}
		}
		return b.String()
	}},
}

func iptablesKind(name string) backendKind {
	return backendKind{
		tools: []string{name + "-save", name + "-restore", ip6(name) + "-save", ip6(name) + "-restore"},
		dump: func(p *pod) string {
			var b strings.Builder
			for _, f := range lab.Families {
				fmt.Fprintf(&b, "== %s %s\n%s", name, f, normalize(p.save(name, f)))
			}
			return b.String()
		},
	}
}

// kind returns the harness's knowledge of a backend of the matrix.
func kind(t testing.TB, backend string) backendKind {
	k, ok := backendKinds[backend]
	if !ok {
		t.Fatalf("tests/harness_test.go: backend %s is in backends but not in backendKinds", backend)
	}
	return k
}

// Names of the lab servers; a Reply's Server says which one answered.
const (
	srvOutbound = "outbound"   // the stand-in proxy on the outbound port (pod)
	srvInbound  = "inbound"    // the stand-in proxy on the inbound port (pod)
	srvRemote   = "remote"     // the real destination in the remote namespace
	srvApp      = "app"        // the workload's own server (pod)
	dnsProxy    = "dns-proxy"  // the proxy's DNS port (pod)
	dnsRemote   = "remote-dns" // a real nameserver on port 53 (remote)
	dnsLocal    = "local-dns"  // a nameserver on the pod's loopback (127.0.0.53:53)
)

// variant is one cell of the scenario matrix.
type variant struct {
	family  lab.Family
	backend string
	mode    string // "redirect" or "tproxy"
}

func (v variant) String() string { return fmt.Sprintf("%s/%s/%s", v.family, v.backend, v.mode) }

// matrix runs fn for every family and backend as parallel subtests named
// family/backend, in REDIRECT mode.
func matrix(t *testing.T, fn func(t *testing.T, v variant)) {
	matrixModes(t, []string{"redirect"}, fn)
}

// matrixModes runs fn for every family, backend and mode. With one mode the mode
// is not part of the subtest name.
func matrixModes(t *testing.T, modes []string, fn func(t *testing.T, v variant)) {
	for _, f := range lab.Families {
		t.Run(string(f), func(t *testing.T) {
			for _, b := range backends {
				t.Run(b, func(t *testing.T) {
					if len(modes) == 1 {
						t.Parallel()
						fn(t, variant{family: f, backend: b, mode: modes[0]})
						return
					}
					for _, m := range modes {
						t.Run(m, func(t *testing.T) {
							t.Parallel()
							fn(t, variant{family: f, backend: b, mode: m})
						})
					}
				})
			}
		})
	}
}

// cases is how many random cases a scenario dials per expectation.
func cases() int {
	if n, err := strconv.Atoi(os.Getenv("DETOUR_E2E_CASES")); err == nil && n > 0 {
		return n
	}
	return 16
}

var (
	seedOnce sync.Once
	seed     uint64
)

// rand returns the test's random source: a run-wide seed (DETOUR_E2E_SEED replays
// one) mixed with the test's name, so one test can be replayed alone.
func rand(t *testing.T) *lab.Rand {
	seedOnce.Do(func() {
		seed = uint64(time.Now().UnixNano())
		if s, err := strconv.ParseUint(os.Getenv("DETOUR_E2E_SEED"), 10, 64); err == nil {
			seed = s
		}
	})
	h := fnv.New64a()
	h.Write([]byte(t.Name()))
	t.Logf("DETOUR_E2E_SEED=%d", seed)
	return lab.NewRand(seed ^ h.Sum64())
}

// knownFailures are subtests (path.Match patterns of t.Name()) that fail because of a
// known defect outside the tests, each listed under "Known failures" in
// docs/scenarios.md with its details. They skip with the reason, unless
// DETOUR_E2E_KNOWN_FAILURES=run, which runs them to see whether they still fail.
var knownFailures = map[string]string{}

// backendLimits are subtests (path.Match patterns of t.Name()) that a
// backend cannot do by design, with the reason; each is listed in
// docs/scenarios.md. They always skip, with the reason.
var backendLimits = map[string]map[string]string{
	ebpfBackend: {
		"TestInbound/*/*/ebpf/tproxy":    "the ebpf backend redirects at connect() time and has no TPROXY mode (mode tproxy is invalid with it, exit 2)",
		"TestLifecycle/L1/*/ebpf/tproxy": "the ebpf backend has no TPROXY mode (mode tproxy is invalid with it, exit 2)",
		"TestLifecycle/L3/*/ebpf/tproxy": "the ebpf backend has no TPROXY mode (mode tproxy is invalid with it, exit 2)",
		"TestLifecycle/L8/*/ebpf/tproxy": "the ebpf backend has no TPROXY mode (mode tproxy is invalid with it, exit 2)",
		"TestLifecycle/L5/*/ebpf":        "L5 is stickiness between iptables-legacy and iptables-nft and switching between them; auto never picks ebpf for a fresh install and keeps it once installed by name (docs/ebpf.md)",
		"TestLifecycle/L7/ipv6/ebpf":     "L7 is an ip6tables tool that cannot install IPv6 rules; the ebpf backend runs no tool (its maps hold both families, its inbound table is one netlink batch)",
		// The netfilter backends leave whatever leaves over lo alone; a
		// connect() hook sees only the destination, and a pod's own
		// non-loopback address is redirected like any other (exclude it
		// with outbound.excludeCIDRs where it matters).
		"TestOutbound/O9/*/ebpf/own-address":            "connections to the pod's own non-loopback address are redirected like any destination (connect() hooks cannot tell a local address)",
		"TestOutbound/O10/*/ebpf/direct-to-own-address": "a direct connection to the pod's own non-loopback address on the outbound port is redirected like any destination (connect() hooks cannot tell a local address); the proxy's own dials and loopback are untouched",
	},
}

// skipLimit skips t when its backend cannot do it, with the reason.
func skipLimit(t *testing.T, backend string) {
	t.Helper()
	for pattern, reason := range backendLimits[backend] {
		if ok, _ := path.Match(pattern, t.Name()); ok {
			t.Skip("not possible with backend " + backend + ", see docs/scenarios.md: " + reason)
		}
	}
}

// skipKnown skips t when it is a known failure.
func skipKnown(t *testing.T) {
	t.Helper()
	if os.Getenv("DETOUR_E2E_KNOWN_FAILURES") == "run" {
		return
	}
	for pattern, reason := range knownFailures {
		if ok, _ := path.Match(pattern, t.Name()); ok {
			t.Skip("known failure, see docs/scenarios.md: " + reason)
		}
	}
}

// pod is one lab (a pod and a remote namespace) with detour's settings for it.
type pod struct {
	t   *testing.T
	v   variant
	ctx context.Context
	lab *lab.Lab
	rnd *lab.Rand

	uid                      uint32 // the proxy's uid
	inPort, outPort, dnsPort uint16
	// env is the environment of every detour command of the pod: the
	// pin directory and cgroup of the eBPF backend's pods (ebpfEnv).
	env []string

	ex explainState // what `detour explain` needs to check L14
}

// newPod builds a lab for the variant, with random proxy ports and proxy uid. The lab
// is removed when the test ends.
func newPod(t *testing.T, v variant) *pod {
	t.Helper()
	skipKnown(t)
	skipLimit(t, v.backend)
	privtest.Require(t, append([]string{"ip", "setpriv"}, kind(t, v.backend).tools...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	l, err := lab.New(ctx, lab.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("remove lab: %v", err)
		}
	})
	r := rand(t)
	r.Reserve(53, 15001, 15006, 15053)
	p := &pod{t: t, v: v, ctx: ctx, lab: l, rnd: r,
		uid:    r.Uint32(1000, 60000),
		inPort: r.Port(), outPort: r.Port(), dnsPort: r.Port(),
		ex: explainState{counts: &sync.Map{}},
	}
	if v.backend == ebpfBackend {
		p.env = ebpfEnv(t)
	}
	return p
}

// run runs fn as a subtest that shares the pod (and reports on the subtest).
func (p *pod) run(name string, fn func(p *pod)) {
	p.t.Run(name, func(t *testing.T) {
		skipKnown(t)
		skipLimit(t, p.v.backend)
		sub := *p
		sub.t = t
		fn(&sub)
	})
}

// ip6 returns the IPv6 command of an iptables backend: ip6tables-nft, ip6tables-legacy.
func ip6(backend string) string { return strings.Replace(backend, "iptables", "ip6tables", 1) }

// cmd returns the backend's command for the variant's family ("iptables-nft", …).
func (p *pod) iptables() string {
	if p.v.family == lab.IPv6 {
		return ip6(p.v.backend)
	}
	return p.v.backend
}

// proxyCred is the proxy's owner: its uid with an unrelated gid.
func (p *pod) proxyCred() *lab.Cred { return &lab.Cred{UID: p.uid, GID: p.uid + 1} }

// appCred is a random workload user that nothing excludes.
func (p *pod) appCred() *lab.Cred {
	for {
		c := &lab.Cred{UID: p.rnd.Uint32(60001, 65000), GID: p.rnd.Uint32(60001, 65000)}
		if c.UID != p.uid {
			return c
		}
	}
}

// startProxies starts the stand-in proxy's inbound and outbound listeners (wildcard
// address of the variant's family; transparent in TPROXY mode).
func (p *pod) startProxies() {
	p.t.Helper()
	opts := lab.ServeOptions{Transparent: p.v.mode == "tproxy"}
	for name, port := range map[string]uint16{srvOutbound: p.outPort, srvInbound: p.inPort} {
		if _, err := p.lab.Pod.Serve(name, netip.AddrPortFrom(p.v.family.Unspecified(), port), opts); err != nil {
			p.t.Fatal(err)
		}
	}
}

// flags are the config flags every install, check and validate of the pod passes.
func (p *pod) flags() []string { return p.flagsWith(p.v.backend) }

// flagsWith is flags with another --backend.
func (p *pod) flagsWith(backend string) []string {
	return []string{
		"--backend", backend, "--mode", p.v.mode,
		"--proxy-uid", strconv.Itoa(int(p.uid)),
		"--inbound-port", strconv.Itoa(int(p.inPort)),
		"--outbound-port", strconv.Itoa(int(p.outPort)),
		"--dns-port", strconv.Itoa(int(p.dnsPort)),
	}
}

// result is what a detour command did.
type result struct {
	args           []string
	code           int
	stdout, stderr string
}

func (r result) String() string {
	return fmt.Sprintf("detour %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// detourCmd runs the built detour with args (the subcommand first) and extra
// environment, inside the pod namespace through --netns. The lock wait is
// raised from the default 10s: iptables-legacy's xtables lock is one file for
// the whole machine, and the suite installs into dozens of namespaces at once.
func (p *pod) detourCmd(env []string, args ...string) result {
	p.t.Helper()
	args = append([]string{args[0], "--netns", p.lab.Pod.Name, "--lock-wait", "60s"}, args[1:]...)
	return runDetour(p.t, p.ctx, append(slices.Clone(p.env), env...), args...)
}

func runDetour(t *testing.T, ctx context.Context, env []string, args ...string) result {
	t.Helper()
	return runDetourStdin(t, ctx, env, "", args...)
}

// runDetourStdin is runDetour with stdin as the command's standard input
// (none when it is "").
func runDetourStdin(t *testing.T, ctx context.Context, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, detourBin, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.Exited():
		r.code = ee.ExitCode()
	default:
		t.Fatalf("run detour %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return r
}

// detour runs a detour subcommand in the pod namespace.
func (p *pod) detour(args ...string) result {
	p.t.Helper()
	return p.detourCmd(nil, args...)
}

// withFlags returns sub followed by the pod's config flags and extra.
func (p *pod) withFlags(sub string, extra ...string) []string {
	return append(append([]string{sub}, p.flags()...), extra...)
}

// install runs `detour install` with the pod's flags and extra ones; it must succeed.
func (p *pod) install(extra ...string) result {
	p.t.Helper()
	r := p.detour(p.withFlags("install", extra...)...)
	if r.code != 0 {
		p.t.Fatalf("install failed:\n%s", r)
	}
	p.ex.installed, p.ex.args = true, extra
	return r
}

// uninstall runs `detour uninstall`; it must succeed.
func (p *pod) uninstall() result {
	p.t.Helper()
	r := p.detour("uninstall")
	if r.code != 0 {
		p.t.Fatalf("uninstall failed:\n%s", r)
	}
	p.ex.installed = false
	return r
}

// remoteAddr is a random address of the remote namespace in the variant's family.
func (p *pod) remoteAddr() netip.Addr { return p.rnd.RemoteAddr(p.v.family) }

// remotePort starts a remote server on a new random port (every address of the
// family) and returns the port.
func (p *pod) remotePort() uint16 {
	p.t.Helper()
	port := p.rnd.Port()
	p.remoteOn(port)
	return port
}

// remoteOn starts a remote server on port (every address of the family).
func (p *pod) remoteOn(port uint16) {
	p.t.Helper()
	if _, err := p.lab.Remote.Serve(srvRemote, netip.AddrPortFrom(p.v.family.Unspecified(), port), lab.ServeOptions{}); err != nil {
		p.t.Fatal(err)
	}
}

// remoteDest is a random remote address with a server on a new random port.
func (p *pod) remoteDest() netip.AddrPort {
	return netip.AddrPortFrom(p.remoteAddr(), p.remotePort())
}

// appPort starts the workload's server on bind (the wildcard when invalid) and a new
// random port, and returns the port.
func (p *pod) appPort(bind netip.Addr) uint16 {
	p.t.Helper()
	if !bind.IsValid() {
		bind = p.v.family.Unspecified()
	}
	port := p.rnd.Port()
	if _, err := p.lab.Pod.Serve(srvApp, netip.AddrPortFrom(bind, port), lab.ServeOptions{}); err != nil {
		p.t.Fatal(err)
	}
	return port
}

// podAddr is the pod's address in the variant's family.
func (p *pod) podAddr() netip.Addr { return lab.PodAddr(p.v.family) }

// passthroughSource is 127.0.0.6 or ::6, the proxy's source towards the app.
func (p *pod) passthroughSource() netip.Addr {
	if p.v.family == lab.IPv6 {
		return netip.MustParseAddr("::6")
	}
	return netip.MustParseAddr("127.0.0.6")
}

// outbound dials from the pod and checks which server answered.
func (p *pod) outbound(why string, o lab.DialOptions, want string) {
	p.t.Helper()
	p.expect(p.lab.Pod, why, o, want)
}

// inbound dials from the remote and checks which server answered.
func (p *pod) inbound(why string, o lab.DialOptions, want string) {
	p.t.Helper()
	o.FreeBind = true
	p.expect(p.lab.Remote, why, o, want)
}

// expect dials o.To from n and checks the answer: the named server answered, it
// recovered the dialed destination, a server reached untouched saw the dialed
// address itself, a TPROXY'd inbound connection kept its destination, and a bound
// source is the peer the server saw.
func (p *pod) expect(n *lab.NetNS, why string, o lab.DialOptions, want string) {
	p.t.Helper()
	got, err := n.Dial(p.ctx, o)
	if err != nil {
		p.t.Errorf("%s: want %s to answer, got %v", why, want, err)
		return
	}
	if got.Server != want {
		p.t.Errorf("%s: %s: answered by %s, want %s (%s)", why, o, got.Server, want, got)
		return
	}
	if got.Original != o.To {
		p.t.Errorf("%s: %s: %s recovered original destination %s, want %s (%s)", why, o, want, got.Original, o.To, got)
	}
	untouched := want == srvRemote || want == srvApp
	if (untouched || (want == srvInbound && p.v.mode == "tproxy")) && got.Local != o.To {
		p.t.Errorf("%s: %s: %s saw the connection arrive at %s, want %s untouched (%s)", why, o, want, got.Local, o.To, got)
	}
	if untouched && got.Redirected() {
		p.t.Errorf("%s: %s: connection to %s was NATed (%s)", why, o, want, got)
	}
	if o.From.IsValid() && got.Peer.Addr() != o.From {
		p.t.Errorf("%s: %s: %s saw peer %s, want source %s (%s)", why, o, want, got.Peer, o.From, got)
	}
	if n == p.lab.Pod || n == p.lab.Remote {
		p.explainConn(why, n == p.lab.Remote, "tcp", o.To, o.From, o.Cred, want)
	}
}

// refused dials o.To from n and expects the connection to be refused.
func (p *pod) refused(n *lab.NetNS, why string, o lab.DialOptions) {
	p.t.Helper()
	got, err := n.Dial(p.ctx, o)
	if !lab.IsRefused(err) {
		p.t.Errorf("%s: %s: want connection refused, got %s, %v", why, o, got, err)
	}
}

// startDNS starts the proxy's DNS port in the pod and a nameserver on port 53 of
// every remote address.
func (p *pod) startDNS() {
	p.t.Helper()
	if _, err := p.lab.Pod.ServeDNS(dnsProxy, netip.AddrPortFrom(p.v.family.Unspecified(), p.dnsPort), p.proxyCred()); err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.lab.Remote.ServeDNS(dnsRemote, netip.AddrPortFrom(p.v.family.Unspecified(), 53), nil); err != nil {
		p.t.Fatal(err)
	}
}

// query sends a DNS query from the pod and checks which responder answered and that
// the answer came from the queried address.
func (p *pod) query(why string, o lab.QueryOptions, want string) {
	p.t.Helper()
	got, err := p.lab.Pod.QueryDNS(p.ctx, o)
	if err != nil {
		p.t.Errorf("%s: want %s to answer, got %v", why, want, err)
		return
	}
	if got.Server != want {
		p.t.Errorf("%s: %s: answered by %s, want %s (%s)", why, o, got.Server, want, got)
		return
	}
	if got.From != o.To {
		p.t.Errorf("%s: %s: the answer came from %s, want the queried address %s (%s)", why, o, got.From, o.To, got)
	}
	if want != dnsProxy && got.Local != o.To {
		p.t.Errorf("%s: %s: %s received the query at %s, want %s untouched (%s)", why, o, want, got.Local, o.To, got)
	}
	p.explainConn(why, false, "udp", o.To, o.From, o.Cred, want)
}

// The text of the namespace's firewall and routing state.

// save returns `<cmd>-save` output of one backend and family in the pod namespace.
func (p *pod) save(backend string, f lab.Family) string {
	p.t.Helper()
	cmd := backend
	if f == lab.IPv6 {
		cmd = ip6(backend)
	}
	out, err := p.lab.Pod.Run(p.ctx, cmd+"-save")
	if err != nil {
		p.t.Fatal(err)
	}
	return out
}

var (
	counters    = regexp.MustCompile(`\[\d+:\d+\]`)
	nftCounters = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)

// nftRuleset is `nft list ruleset` in the pod namespace, counters zeroed.
func nftRuleset(p *pod) string {
	p.t.Helper()
	out, err := p.lab.Pod.Run(p.ctx, "nft", "list", "ruleset")
	if err != nil {
		p.t.Fatal(err)
	}
	return nftCounters.ReplaceAllString(out, "counter packets 0 bytes 0")
}

// detourState is what of detour's the variant's backend holds in family f,
// one line a rule or chain: iptables-save lines of its chains and hooks, for
// nftables the lines of `table inet detour` (both families share it, so
// f is ignored), for ebpf the pins of the pod's pin directory and the lines
// of its inbound table, `table inet detour_ebpf_inbound`.
func (p *pod) detourState(backend string, f lab.Family) []string {
	p.t.Helper()
	table := "detour"
	var lines []string
	switch backend {
	case nftNative:
	case ebpfBackend:
		table = "detour_ebpf_inbound"
		for _, pin := range pinsLeft(p.t, p.env) {
			lines = append(lines, "pin "+pin)
		}
	default:
		return ours(p.save(backend, f))
	}
	out, err := p.lab.Pod.Run(p.ctx, "nft", "list", "table", "inet", table)
	if err != nil {
		if strings.Contains(out+err.Error(), "No such file") {
			return lines
		}
		p.t.Fatal(err)
	}
	// Each line names the chain or set it is in, so a rule twice in one
	// chain shows as a duplicate and the same rule in two chains does not.
	block := ""
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || l == "}":
		case strings.HasSuffix(l, "{") && (strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "set ") || strings.HasPrefix(l, "table ")):
			block = strings.TrimSuffix(l, " {")
			lines = append(lines, block)
		default:
			lines = append(lines, block+": "+l)
		}
	}
	return lines
}

// normalize drops comment lines and zeroes packet counters of iptables-save output.
func normalize(save string) string {
	var b strings.Builder
	for _, line := range strings.Split(save, "\n") {
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		b.WriteString(counters.ReplaceAllString(line, "[0:0]"))
		b.WriteByte('\n')
	}
	return b.String()
}

// snapshot is every piece of state detour may touch in the pod namespace: every
// backend of the matrix (backendKinds' dump: for iptables, both families, every
// table), the addresses (detour puts ::6 on lo), policy routing rules and every
// routing table.
func (p *pod) snapshot() string {
	p.t.Helper()
	var b strings.Builder
	for _, bk := range backends {
		k := kind(p.t, bk)
		// Another backend's state is dumped where its tools are here (the
		// variant's own tools newPod required).
		if bk != p.v.backend && slices.ContainsFunc(k.tools, func(tool string) bool { _, err := exec.LookPath(tool); return err != nil }) {
			continue
		}
		b.WriteString(k.dump(p))
	}
	for _, c := range [][]string{
		{"ip", "-o", "addr", "show"},
		{"ip", "-4", "rule"}, {"ip", "-6", "rule"},
		{"ip", "-4", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
	} {
		out, err := p.lab.Pod.Run(p.ctx, c[0], c[1:]...)
		if err != nil {
			p.t.Fatal(err)
		}
		fmt.Fprintf(&b, "== %s\n%s", strings.Join(c, " "), out)
	}
	return b.String()
}

// withoutEmptyTables drops from a snapshot the iptables tables (and, in the
// nft ruleset, the tables) that hold nothing but built-in chains with policy
// ACCEPT and no rule. Such a table is what merely using
// a table leaves behind (a legacy table, once loaded in a namespace, stays), and it
// changes no packet.
func withoutEmptyTables(snapshot string) string {
	var out, block []string
	in, inNft := false, false
	for _, line := range strings.Split(snapshot, "\n") {
		switch {
		case strings.HasPrefix(line, "table "):
			// `nft list ruleset`: a table whose chains hold no rule (what
			// iptables-nft leaves behind) is dropped likewise.
			inNft, block = true, []string{line}
		case inNft && line == "}":
			block = append(block, line)
			empty := true
			for _, l := range block[1 : len(block)-1] {
				t := strings.TrimSpace(l)
				empty = empty && (t == "" || t == "}" || strings.HasPrefix(t, "chain ") || (strings.HasPrefix(t, "type ") && strings.HasSuffix(t, "policy accept;")))
			}
			if !empty {
				out = append(out, block...)
			}
			inNft = false
		case inNft:
			block = append(block, line)
		case strings.HasPrefix(line, "*"):
			in, block = true, []string{line}
		case in && line == "COMMIT":
			block = append(block, line)
			empty := true
			for _, l := range block[1 : len(block)-1] {
				f := strings.Fields(l)
				empty = empty && len(f) >= 2 && strings.HasPrefix(f[0], ":") && f[1] == "ACCEPT"
			}
			if !empty {
				out = append(out, block...)
			}
			in = false
		case in:
			block = append(block, line)
		default:
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// ours returns the lines of a save output that belong to detour: its chains
// (DETOUR_…) and the rules that jump to them or carry its comment.
func ours(save string) []string {
	var out []string
	for _, line := range strings.Split(save, "\n") {
		if strings.Contains(line, "DETOUR") || strings.Contains(strings.ToLower(line), "detour") {
			out = append(out, line)
		}
	}
	return out
}

// diffLines returns a line diff of want and got for failure messages (- want, + got).
func diffLines(want, got string) string {
	return cmp.Diff(strings.Split(want, "\n"), strings.Split(got, "\n"))
}

// csv joins values for a list flag.
func csv(items ...any) string {
	parts := make([]string, len(items))
	for i, it := range items {
		parts[i] = fmt.Sprint(it)
	}
	return strings.Join(parts, ",")
}

// subnet returns a random prefix of the given length inside the family's remote
// ranges.
func subnet(r *lab.Rand, f lab.Family, bits int) netip.Prefix {
	return netip.PrefixFrom(r.RemoteAddr(f), bits).Masked()
}

// addrOutside returns a random remote address of the family in none of prefixes.
func addrOutside(r *lab.Rand, f lab.Family, prefixes ...netip.Prefix) netip.Addr {
	for {
		a := r.RemoteAddr(f)
		if !slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return a
		}
	}
}

// portOutside returns a new random port in none of the ranges [lo, hi].
func portOutside(r *lab.Rand, ranges ...[2]uint16) uint16 {
	for {
		p := r.Port()
		if !slices.ContainsFunc(ranges, func(rg [2]uint16) bool { return rg[0] <= p && p <= rg[1] }) {
			return p
		}
	}
}

// portRange reserves n consecutive free ports and returns the first and last.
func portRange(r *lab.Rand, n int) [2]uint16 {
	first, last := r.PortRange(n)
	return [2]uint16{first, last}
}

// rangeFlag formats a port range for a list flag: "1000-1002".
func rangeFlag(rg [2]uint16) string { return fmt.Sprintf("%d-%d", rg[0], rg[1]) }

// inRange returns a random port of rg.
func inRange(r *lab.Rand, rg [2]uint16) uint16 { return rg[0] + uint16(r.IntN(int(rg[1]-rg[0])+1)) }
