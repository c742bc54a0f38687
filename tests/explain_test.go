//go:build linux

package tests

import (
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/detour-mesh/detour/internal/lab"
)

// explainBackends are the backends whose installed state `detour explain`
// reads (an Explainer); for the others the scenarios log that explain was not
// checked.
var explainBackends = map[string]bool{nft: true, legacy: true, nftNative: true, ebpfBackend: true}

// explainsPerExpectation bounds the explain runs per expectation of a test:
// every scenario runs many random cases, and explain is a process that reads
// every iptables table; the first cases (root and an app user alternate)
// represent the expectation.
const explainsPerExpectation = 2

// explainState is what a pod knows for L14: the flags of its current install.
type explainState struct {
	installed bool
	args      []string // install's extra flags
	counts    *sync.Map
}

// explainView is the part of `detour explain -o json` the scenarios check.
type explainView struct {
	Captured   bool   `json:"captured"`
	Port       uint16 `json:"port"`
	AnsweredBy string `json:"answeredBy"`
	Agree      bool   `json:"agree"`
	Config     struct {
		Captured bool   `json:"captured"`
		Port     uint16 `json:"port"`
		Reason   struct {
			Field string `json:"field"`
			Text  string `json:"text"`
		} `json:"reason"`
	} `json:"config"`
	Kernel *struct {
		Rule      string `json:"rule"`
		Uncertain string `json:"uncertain"`
	} `json:"kernel"`
	Differences []string `json:"differences"`
	Installed   bool     `json:"installed"`
	Live        *struct {
		Probed      bool   `json:"probed"`
		Arrived     bool   `json:"arrived"`
		OriginalDst string `json:"originalDst"`
		Agrees      bool   `json:"agrees"`
		Error       string `json:"error"`
	} `json:"live"`
}

// explainConn runs `detour explain` for a connection a scenario just made and
// checks L14: the installed state's verdict is what the real connection did
// (want is the server that answered), the configuration agrees with it, and
// the reason says what decided.
func (p *pod) explainConn(why string, inbound bool, proto string, to netip.AddrPort, from netip.Addr, cred *lab.Cred, want string) {
	p.t.Helper()
	if !p.ex.installed || p.ex.counts == nil {
		return
	}
	key := p.t.Name() + "\x00" + why
	n, _ := p.ex.counts.LoadOrStore(key, new(int))
	if *n.(*int) >= explainsPerExpectation {
		return
	}
	*n.(*int)++
	if !explainBackends[p.v.backend] {
		p.t.Logf("%s: explain not checked: backend %s has no explainer", why, p.v.backend)
		return
	}
	var env []string
	args := []string{"explain", "-o", "json", "--to", to.String()}
	for _, a := range append(p.flags(), p.ex.args...) {
		// In explain --inbound and --outbound are directions; the capture
		// switches go through the environment.
		if k, v, ok := strings.Cut(a, "="); ok && (k == "--inbound" || k == "--outbound") {
			env = append(env, "DETOUR_"+strings.ToUpper(k[2:])+"="+v)
			continue
		}
		args = append(args, a)
	}
	if proto == "udp" {
		args = append(args, "--udp")
	}
	if inbound {
		if !from.IsValid() {
			from = lab.RemoteLinkAddr(p.v.family)
		}
		args = append(args, "--inbound", "--from", from.String())
	} else {
		uid, gid := uint32(0), uint32(0)
		if cred != nil {
			uid, gid = cred.UID, cred.GID
		}
		args = append(args, "--uid", strconv.Itoa(int(uid)), "--gid", strconv.Itoa(int(gid)))
		if from.IsValid() {
			args = append(args, "--from", from.String())
		}
	}
	r := p.detourCmd(env, args...)
	if r.code != 0 {
		p.t.Errorf("%s: L14 explain failed:\n%s", why, r)
		return
	}
	var e explainView
	if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
		p.t.Errorf("%s: L14 explain output: %v\n%s", why, err, r)
		return
	}
	captured, port := false, uint16(0)
	switch want {
	case srvOutbound:
		captured, port = true, p.outPort
	case srvInbound:
		captured, port = true, p.inPort
	case dnsProxy:
		captured, port = true, p.dnsPort
	}
	switch {
	case e.AnsweredBy != "kernel" || e.Kernel == nil:
		p.t.Errorf("%s: L14 explain did not answer from the installed rules:\n%s", why, r)
	case e.Captured != captured || e.Port != port:
		p.t.Errorf("%s: L14 explain says captured %v port %d (%s), the connection reached %s:\n%s", why, e.Captured, e.Port, e.Kernel.Rule, want, r)
	case !e.Agree:
		p.t.Errorf("%s: L14 explain says the installed rules differ from the configuration they were installed with: %q\n%s", why, e.Differences, r)
	case e.Config.Reason.Text == "":
		p.t.Errorf("%s: L14 explain names no reason:\n%s", why, r)
	default:
		p.t.Logf("%s: L14 explain agrees: captured %v port %d by %q (%s: %s)", why, e.Captured, e.Port, e.Kernel.Rule, e.Config.Reason.Field, e.Config.Reason.Text)
	}
}

// explain runs `detour explain -o json` in the pod with the pod's flags and
// extra ones.
func (p *pod) explain(extra ...string) (explainView, result) {
	p.t.Helper()
	r := p.detour(p.withFlags("explain", append([]string{"-o", "json"}, extra...)...)...)
	var e explainView
	if r.code == 0 || r.code == 4 {
		if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
			p.t.Fatalf("explain output: %v\n%s", err, r)
		}
	}
	return e, r
}

// TestExplainDrift covers L14's drift cases: when what is installed is not what
// the configuration says — a rule deleted by hand, another tool's rule that
// comes first, a configuration that changed since the install — the verdict
// follows the kernel, which the real connection confirms, and says where it
// differs. With nothing installed explain exits 4.
func TestExplainDrift(t *testing.T) {
	t.Parallel()
	matrix(t, func(t *testing.T, v variant) {
		p := newPod(t, v)
		p.startProxies()
		app := &lab.Cred{UID: 60100, GID: 60100}
		dst := p.remoteDest()
		asApp := []string{"--to", dst.String(), "--uid", "60100", "--gid", "60100"}

		e, r := p.explain(asApp...)
		if r.code != 4 || e.Installed || e.Kernel != nil || !e.Config.Captured {
			t.Errorf("nothing installed: want exit 4 with the configuration's answer (captured):\n%s", r)
		}

		p.install()
		p.ex.installed = false // the checks below are explicit
		if e, r := p.explain(asApp...); r.code != 0 || !e.Captured || !e.Agree {
			t.Fatalf("installed as configured: want captured and agreeing:\n%s", r)
		}

		p.run("hand-deleted rule", func(p *pod) {
			skipHandEdit(p)
			redirect := []string{"DETOUR_OUT_REDIRECT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(p.outPort))}
			p.iptablesRun(append([]string{"-t", "nat", "-D"}, redirect...)...)
			defer p.iptablesRun(append([]string{"-t", "nat", "-A"}, redirect...)...)
			p.outbound("the redirect rule is gone", lab.DialOptions{To: dst, Cred: app}, srvRemote)
			e, r := p.explain(asApp...)
			if r.code != 0 || e.Captured || e.Agree || len(e.Differences) == 0 || !e.Config.Captured {
				p.t.Errorf("want the kernel's verdict (left alone) and the difference from the configuration (captured):\n%s", r)
			}
		})
		p.run("foreign rule first", func(p *pod) {
			skipHandEdit(p)
			p.iptablesRun("-t", "nat", "-I", "OUTPUT", "1", "-d", dst.Addr().String(), "-p", "tcp", "-j", "ACCEPT")
			defer p.iptablesRun("-t", "nat", "-D", "OUTPUT", "-d", dst.Addr().String(), "-p", "tcp", "-j", "ACCEPT")
			p.outbound("another tool's ACCEPT comes first", lab.DialOptions{To: dst, Cred: app}, srvRemote)
			e, r := p.explain(asApp...)
			if r.code != 0 || e.Captured || e.Agree || e.Kernel == nil || !strings.Contains(e.Kernel.Rule, "-j ACCEPT") || !strings.Contains(e.Kernel.Rule, dst.Addr().String()) {
				p.t.Errorf("want left alone by the foreign ACCEPT rule:\n%s", r)
			}
		})
		p.run("stale configuration", func(p *pod) {
			// The configuration now excludes the port; what is installed still
			// captures it, and so does the kernel.
			p.outbound("installed without the exclusion", lab.DialOptions{To: dst, Cred: app}, srvOutbound)
			e, r := p.explain(append(asApp, "--exclude-outbound-ports", strconv.Itoa(int(dst.Port())))...)
			if r.code != 0 || !e.Captured || e.Port != p.outPort || e.Agree || e.Config.Captured || e.Config.Reason.Field != "outbound.excludePorts" {
				p.t.Errorf("want captured (the kernel) against outbound.excludePorts (the configuration):\n%s", r)
			}
		})
		p.uninstall()
		if _, r := p.explain(asApp...); r.code != 4 {
			t.Errorf("after uninstall: want exit 4:\n%s", r)
		}
	})
}

// skipHandEdit skips a drift case that edits iptables rules by hand when the
// variant is nftables: the nftables driver's drift is covered by check (L8
// skips the same way) and by redirect/nftables' netlink tests.
func skipHandEdit(p *pod) {
	p.t.Helper()
	switch p.v.backend {
	case nftNative:
		p.t.Skip("hand edits of iptables rules: not an nftables scenario")
	case ebpfBackend:
		p.t.Skip("hand edits of iptables rules: the ebpf backend holds none (its drift is L8: check sees its inbound table changed)")
	}
}

// iptablesRun runs the variant's iptables command in the pod (a hand edit).
func (p *pod) iptablesRun(args ...string) {
	p.t.Helper()
	if out, err := p.lab.Pod.Run(p.ctx, p.iptables(), append([]string{"-w", "5"}, args...)...); err != nil {
		p.t.Fatalf("%s %s: %v\n%s", p.iptables(), strings.Join(args, " "), err, out)
	}
}

// TestExplainLive proves explain's verdict on a real connection (--live): with
// the proxy not running, explain listens on the port itself and dials as the
// user asked about.
func TestExplainLive(t *testing.T) {
	t.Parallel()
	matrix(t, func(t *testing.T, v variant) {
		p := newPod(t, v)
		p.install()
		dst := p.remoteDest()
		e, r := p.explain("--live", "--timeout", "1s", "--to", dst.String(), "--uid", "60100", "--gid", "60100")
		if r.code != 0 || e.Live == nil || !e.Live.Probed || !e.Live.Arrived || e.Live.OriginalDst != dst.String() || !e.Live.Agrees {
			t.Errorf("an app user's connection: want it to arrive on the outbound port with original destination %s:\n%s", dst, r)
		}
		e, r = p.explain("--live", "--timeout", "1s", "--to", dst.String(), "--uid", strconv.Itoa(int(p.uid)))
		if r.code != 0 || e.Captured || e.Live == nil || !e.Live.Probed || e.Live.Arrived || !e.Live.Agrees {
			t.Errorf("the proxy's own connection: want it not to arrive on the outbound port:\n%s", r)
		}
		switch v.backend {
		case nftNative:
			t.Log("the foreign-ACCEPT case is iptables-only: in nftables an accept in another table's base chain does not stop detour's chain at the same hook")
			return
		case ebpfBackend:
			t.Log("the foreign-ACCEPT case is iptables-only: the ebpf backend redirects at connect(), before any netfilter rule")
			return
		}
		// A connection the rules capture but the configuration asked about
		// says otherwise: --live sides with the kernel, and exits 5 only when
		// the probe contradicts the verdict.
		p.iptablesRun("-t", "nat", "-I", "OUTPUT", "1", "-d", dst.Addr().String(), "-p", "tcp", "-j", "ACCEPT")
		e, r = p.explain("--live", "--timeout", "1s", "--to", dst.String(), "--uid", "60100", "--gid", "60100")
		if r.code != 0 || e.Captured || e.Live == nil || e.Live.Arrived || !e.Live.Agrees {
			t.Errorf("a foreign ACCEPT first: want the kernel's verdict (left alone), proved:\n%s", r)
		}
	})
}
