package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
)

type explainOptions struct {
	in         planInput
	to         string
	from       string
	uid, gid   string
	tcp, udp   bool
	inbound    bool
	outbound   bool
	configOnly bool
	live       bool
	timeout    time.Duration
	output     string
	mesh       string
	nodeID     string
	cp         *delegator // finds detour-cp for --mesh
}

func newExplainCmd(s streams, g *globalOptions, d *delegator) *cobra.Command {
	o := &explainOptions{cp: d}
	// --inbound and --outbound say which way the connection goes here; the
	// fields inbound.enabled and outbound.enabled come from --config and
	// DETOUR_INBOUND / DETOUR_OUTBOUND.
	o.in.config.noFlag = map[string]bool{"inbound": true, "outbound": true}
	cmd := &cobra.Command{
		Use:   "explain --to ADDR:PORT [--uid N] [--gid N] [--tcp|--udp] | --inbound --to ADDR:PORT [--from ADDR]",
		Short: "Say what happens to one connection and which setting and rule decide it",
		Long: `Explain answers "is this connection captured, and why?" for one connection: an
outbound one that a process running as --uid/--gid opens to --to, or (--inbound) one
that a client at --from opens to --to, an address of the workload.

It gives the configuration's answer (the same flags, files and environment as install)
with the config field and value that decide it, and the answer of what is installed in
the namespace, with the rule that decides it there. When the two differ (drift, a rule
deleted by hand, another tool's rule that comes first) the verdict follows what is
installed and says where it differs. --live also opens a real connection to prove it.

Here --inbound and --outbound give the direction; the settings inbound.enabled and
outbound.enabled come from --config files or DETOUR_INBOUND / DETOUR_OUTBOUND.

Exit codes: 0 answered, 2 invalid input, 4 nothing of detour's is installed (the
configuration's answer is still printed; --config-only does not read the namespace).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.in.fromEnv()
			return runExplain(cmd.Context(), o, g, s)
		},
	}
	g.later(cmd, func() { o.in.bind(cmd.Flags()) })
	fs := cmd.Flags()
	fs.StringVar(&o.to, "to", "", "the connection's destination, ADDR:PORT ([ADDR]:PORT for IPv6)")
	fs.Var(nonEmpty{p: &o.from}, "from", "the source address: for --inbound the client's (default 203.0.113.100, or 2001:db8::100 for an IPv6 --to); outbound, the address the socket binds (the proxy's 127.0.0.6 towards the app)")
	fs.Var(nonEmpty{p: &o.uid}, "uid", "outbound: the uid of the process that connects (default: yours)")
	fs.Var(nonEmpty{p: &o.gid}, "gid", "outbound: its primary gid (default: the --uid value, or yours without --uid)")
	fs.BoolVar(&o.tcp, "tcp", false, "a TCP connection (the default)")
	fs.BoolVar(&o.udp, "udp", false, "a UDP query (only UDP/53 is ever captured, as DNS)")
	fs.BoolVar(&o.inbound, "inbound", false, "a connection to the workload from --from, instead of one it opens")
	fs.BoolVar(&o.outbound, "outbound", false, "a connection the workload opens (the default)")
	fs.BoolVar(&o.configOnly, "config-only", false, "answer from the configuration only; do not read what is installed")
	fs.BoolVar(&o.live, "live", false, "also open the connection for real, as that uid, and report where it arrived (outbound TCP; also while the proxy owns the port)")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Second, "--live: how long the probe connection may take ("+minProbeTimeout.String()+" to "+maxProbeTimeout.String()+")")
	fs.StringVar(&o.mesh, "mesh", "", "answer for the workload --node-id of this mesh file: its transparentProxy is the configuration (instead of --preset/--config; a setting's own flag still overrides it), and the Envoy listener, filter chain and cluster are added (runs detour-cp)")
	fs.StringVar(&o.nodeID, "node-id", "", "--mesh: the workload's node id")
	output(fs, &o.output)
	return cmd
}

// Default inbound clients: documentation addresses (RFC 5737, RFC 3849).
var defaultFrom = map[bool]netip.Addr{
	false: netip.MustParseAddr("203.0.113.100"),
	true:  netip.MustParseAddr("2001:db8::100"),
}

// explainRequest is the connection explain was asked about, validated.
type explainRequest struct {
	conn       redirect.Conn
	defaultIDs bool // uid/gid are the caller's, not given
	fromGiven  bool
}

// parseExplainRequest checks the flags that describe the connection. Every
// error names the flag and the value (exit 2).
func parseExplainRequest(o *explainOptions, euid, egid uint32) (explainRequest, error) {
	var req explainRequest
	if o.to == "" {
		return req, usageError("--to: missing; give the connection's destination as ADDR:PORT")
	}
	dst, err := netip.ParseAddrPort(o.to)
	if err != nil || dst.Port() == 0 {
		return req, usageError("--to: %q is not ADDR:PORT (an IP address and a port 1-65535; [ADDR]:PORT for IPv6)", o.to)
	}
	if o.tcp && o.udp {
		return req, usageError("--udp: cannot be combined with --tcp")
	}
	for name, v := range map[string]bool{"inbound": o.inbound, "outbound": o.outbound} {
		if o.in.config.flags != nil && o.in.config.flags.Changed(name) && !v {
			// install's --inbound=false turns capture off; here the flag is a
			// direction, and a silently ignored false would answer for a
			// configuration the user did not ask about.
			return req, usageError("--%s=false: in explain --%s gives the connection's direction; set %s.enabled with DETOUR_%s=false or --config", name, name, name, strings.ToUpper(name))
		}
	}
	if o.inbound && o.outbound {
		return req, usageError("--inbound: cannot be combined with --outbound")
	}
	c := redirect.Conn{Direction: redirect.DirOutbound, Protocol: redirect.TCP, Dst: dst.Addr().Unmap().WithZone(""), Port: dst.Port()}
	if o.udp {
		c.Protocol = redirect.UDP
	}
	if o.inbound {
		switch {
		case o.udp:
			return req, usageError("--udp: inbound capture is TCP only; drop --udp or --inbound")
		case o.uid != "" || o.gid != "":
			return req, usageError("--uid/--gid: an inbound connection has no local user; drop them or --inbound")
		case o.live:
			return req, usageError("--live: probes outbound TCP only; drop --live or --inbound")
		}
		c.Direction = redirect.DirInbound
		c.Src = defaultFrom[c.Dst.Is6()]
		if o.from != "" {
			src, err := netip.ParseAddr(o.from)
			if err != nil {
				return req, usageError("--from: %q is not an IP address", o.from)
			}
			c.Src, req.fromGiven = src.Unmap().WithZone(""), true
		}
		if c.Src.Is4() != c.Dst.Is4() {
			return req, usageError("--from: %s is not of the family of --to %s", c.Src, c.Dst)
		}
		req.conn = c
		return req, nil
	}
	if o.from != "" {
		src, err := netip.ParseAddr(o.from)
		if err != nil {
			return req, usageError("--from: %q is not an IP address", o.from)
		}
		c.Src = src.Unmap().WithZone("")
		if c.Src.Is4() != c.Dst.Is4() {
			return req, usageError("--from: %s is not of the family of --to %s", c.Src, c.Dst)
		}
	}
	if o.live && o.udp {
		return req, usageError("--live: probes outbound TCP only; drop --live or --udp")
	}
	c.UID, c.GID, req.defaultIDs = euid, egid, true
	if o.uid != "" {
		n, err := strconv.ParseUint(o.uid, 10, 32)
		if err != nil {
			return req, usageError("--uid: %q is not a numeric uid", o.uid)
		}
		c.UID, c.GID, req.defaultIDs = uint32(n), uint32(n), false
	}
	if o.gid != "" {
		n, err := strconv.ParseUint(o.gid, 10, 32)
		if err != nil {
			return req, usageError("--gid: %q is not a numeric gid", o.gid)
		}
		c.GID = uint32(n)
	}
	req.conn = c
	return req, nil
}

// explanation is `detour explain -o json`. Field names are stable; docs/explain.md
// documents them.
type explanation struct {
	Connection redirect.Conn `json:"connection"`
	// Captured, To and Port are the verdict: the installed state's when it was
	// read (AnsweredBy "kernel"), the configuration's otherwise ("config").
	Captured   bool   `json:"captured"`
	To         string `json:"to,omitempty"`
	Port       uint16 `json:"port,omitempty"`
	AnsweredBy string `json:"answeredBy"`
	// Config is the configuration's verdict and the setting that decides it.
	Config redirect.Verdict `json:"config"`
	// Installed says whether anything of detour's is installed (false also
	// with --config-only, when it was not read).
	Installed bool                    `json:"installed"`
	Kernel    *redirect.KernelVerdict `json:"kernel,omitempty"`
	// Agree says whether the installed state does what the configuration
	// says; Differences say where not.
	Agree       bool         `json:"agree"`
	Differences []string     `json:"differences,omitempty"`
	Live        *liveOutcome `json:"live,omitempty"`
	// Envoy is the proxy's side (--mesh): where the control plane's listeners
	// send the connection; nil when not asked or not captured.
	Envoy *envoyRoute `json:"envoy,omitempty"`
	// Notes say what the answer assumed (the default user, the default client).
	Notes []string `json:"notes,omitempty"`
}

// liveOutcome is what the --live probe saw.
type liveOutcome struct {
	// Probed is false when the probe could not run (Error says why: the
	// proxy port is in use, no route, not root); the other fields then say
	// nothing.
	Probed bool `json:"probed"`
	// Arrived is true when the connection arrived on Port, the proxy port it
	// listened on, with OriginalDst as its original destination.
	Arrived     bool   `json:"arrived"`
	Port        uint16 `json:"port"`
	OriginalDst string `json:"originalDst,omitempty"`
	// Error says why it did not arrive (a timeout, refused, no route).
	Error string `json:"error,omitempty"`
	// NoAnswer: the connection was neither answered nor refused within
	// --timeout. That proves no verdict (left alone and dropped on its way
	// looks the same as captured and then dropped), so Agrees is false and
	// explain exits 6.
	NoAnswer bool `json:"noAnswer,omitempty"`
	// Agrees says the probe did what the verdict says.
	Agrees bool `json:"agrees"`
}

func runExplain(ctx context.Context, o *explainOptions, g *globalOptions, s streams) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	if err := checkProbeTimeout(o.timeout); err != nil {
		return err
	}
	if (o.mesh == "") != (o.nodeID == "") {
		return usageError("--mesh and --node-id: give both or neither")
	}
	if o.live && o.configOnly {
		return usageError("--live: cannot be combined with --config-only")
	}
	req, err := parseExplainRequest(o, uint32(os.Geteuid()), uint32(os.Getegid()))
	if err != nil {
		return err
	}
	var overrides []string
	if o.mesh != "" {
		// The workload's own transparentProxy, as the control plane
		// resolves it for its listeners, is the configuration asked about.
		doc, err := o.runCP(ctx, "control-plane", "transparent-proxy", "--config", o.mesh, "--node-id", o.nodeID)
		if err != nil {
			return err
		}
		o.in.config.base = doc
		o.in.config.baseSource = fmt.Sprintf("--mesh (workload %s's transparentProxy in %s)", o.nodeID, o.mesh)
		overrides = o.in.config.overrides()
	}
	p, err := o.in.load(ctx, g, s)
	if err != nil {
		return err
	}
	capture := p.plan.Capture
	conn := req.conn
	local, err := localAddrs(p.nsPath)
	if err != nil {
		return fmt.Errorf("read the namespace's addresses: %w", err)
	}
	if conn.Direction == redirect.DirOutbound {
		conn.ToSelf = !conn.Dst.IsLoopback() && local[conn.Dst]
		if conn.ToSelf && !conn.Src.IsValid() {
			conn.Src = conn.Dst // over lo the kernel picks the destination itself as the source
		}
	} else {
		conn.ToSelf = local[conn.Dst]
	}
	e := explanation{Connection: conn, Config: capture.Decide(conn), AnsweredBy: "config"}
	e.Captured, e.To, e.Port = e.Config.Captured, e.Config.To, e.Config.Port
	if o.mesh != "" {
		note := fmt.Sprintf("the configuration is workload %s's transparentProxy in %s", o.nodeID, o.mesh)
		if len(overrides) > 0 {
			note += ", with " + strings.Join(overrides, ", ") + " over it"
		}
		e.Notes = append(e.Notes, note)
	}
	if req.defaultIDs && conn.Direction == redirect.DirOutbound {
		e.Notes = append(e.Notes, fmt.Sprintf("uid %d gid %d are yours; --uid and --gid ask about another user", conn.UID, conn.GID))
	}
	if conn.Direction == redirect.DirInbound && !req.fromGiven {
		e.Notes = append(e.Notes, fmt.Sprintf("the client %s is a documentation address; --from asks about another", conn.Src))
	}
	if conn.Direction == redirect.DirInbound && !conn.ToSelf {
		e.Notes = append(e.Notes, fmt.Sprintf("%s is not an address of this namespace", conn.Dst))
	}
	var notInstalled error
	if !o.configOnly {
		kv, err := p.eng.Explain(ctx, conn)
		switch {
		case errors.Is(err, redirect.ErrNotInstalled):
			notInstalled = err
		case err != nil && os.Geteuid() != 0:
			return fmt.Errorf("explain: read the installed rules (root needed; --config-only answers without them): %w", err)
		case err != nil:
			return fmt.Errorf("explain: %w", err)
		default:
			e.Installed, e.Kernel = true, &kv
			e.Differences = compareVerdicts(e.Config, kv)
			if kv.Uncertain != "" {
				break // the configuration's answer stands, with the doubt said
			}
			e.AnsweredBy, e.Captured, e.Port, e.To = "kernel", kv.Captured, kv.Port, ""
			switch {
			case kv.Captured && e.Config.Captured && kv.Port == e.Config.Port:
				e.To = e.Config.To
			case kv.Captured:
				e.To = portRole(capture, kv.Port)
			}
		}
	}
	e.Agree = e.Installed && len(e.Differences) == 0
	if o.live {
		// The eBPF cgroup scope redirects only sockets made below its
		// cgroup: the live connection (and its listener) must be there.
		if g.cgroup != "" {
			if err := joinCgroup(g.cgroup); err != nil {
				e.Live = &liveOutcome{Error: "the connection must be opened below the cgroup it checks: " + err.Error()}
			}
		} else if root := g.ebpfRootToJoin(p.plan.Config.Backend); root != "" {
			if err := joinCgroup(root); err != nil {
				e.Live = &liveOutcome{Error: "the connection must be opened below DETOUR_EBPF_CGROUP_ROOT, where the eBPF backend's programs attach: " + err.Error()}
			}
		}
		if e.Live == nil {
			e.Live = liveProbe(ctx, p, conn, e, o.timeout)
		}
	}
	if o.mesh != "" && e.Captured && (e.To == "outbound" || e.To == "inbound") {
		rt, err := o.envoyRoute(ctx, conn, e.To == "inbound")
		if err != nil {
			return err
		}
		e.Envoy = rt
	}
	if o.output == "json" {
		if err := writeJSON(s, e); err != nil {
			return err
		}
	} else if err := writeExplanation(s.out, e, o.configOnly); err != nil {
		return err
	}
	if e.Live != nil && e.Live.NoAnswer {
		return withCode(exitNoAnswer, errors.New("explain: the live connection got no answer within --timeout, which proves the verdict neither right nor wrong"))
	}
	if e.Live != nil && e.Live.Probed && !e.Live.Agrees {
		return withCode(exitNotValid, errors.New("explain: the live connection did not do what the verdict says"))
	}
	if notInstalled != nil {
		return withCode(exitAbsent, errors.New("nothing of detour's is installed in this namespace: the answer above is the configuration's (--config-only asks only the configuration)"))
	}
	return nil
}

// portRole names what a port of the configuration is for.
func portRole(c redirect.Capture, port uint16) string {
	for _, fc := range c.Families {
		switch port {
		case fc.Proxy.OutboundPort:
			return "outbound"
		case fc.Proxy.InboundPort:
			return "inbound"
		}
		if fc.DNS != nil && port == fc.DNS.Port {
			return "dns"
		}
	}
	return "another port"
}

// compareVerdicts says where the installed state does not do what the
// configuration says.
func compareVerdicts(cfg redirect.Verdict, kv redirect.KernelVerdict) []string {
	var out []string
	switch {
	case kv.Uncertain != "":
		out = append(out, "cannot tell what the installed rules do: "+kv.Uncertain)
	case cfg.Captured && !kv.Captured:
		out = append(out, fmt.Sprintf("the configuration sends it to port %d (%s), but the installed state leaves it alone%s", cfg.Port, cfg.Reason, atRule(kv)))
	case !cfg.Captured && kv.Captured:
		out = append(out, fmt.Sprintf("the configuration leaves it alone (%s), but the installed state sends it to port %d%s", cfg.Reason, kv.Port, atRule(kv)))
	case cfg.Captured && kv.Port != cfg.Port:
		out = append(out, fmt.Sprintf("the configuration sends it to port %d, the installed state to port %d%s", cfg.Port, kv.Port, atRule(kv)))
	}
	return out
}

func atRule(kv redirect.KernelVerdict) string {
	if kv.Rule == "" {
		return " (no rule matches it)"
	}
	return ": " + kv.Rule
}

func verdictText(captured bool, to string, port uint16) string {
	if !captured {
		return "left alone"
	}
	switch to {
	case "outbound", "inbound":
		return fmt.Sprintf("redirected to the %s port %d", to, port)
	case "dns":
		return fmt.Sprintf("redirected to the DNS port %d", port)
	}
	return fmt.Sprintf("redirected to port %d", port)
}

func connText(c redirect.Conn) string {
	proto := strings.ToUpper(string(c.Protocol))
	dst := netip.AddrPortFrom(c.Dst, c.Port)
	if c.Direction == redirect.DirInbound {
		return fmt.Sprintf("inbound %s %s -> %s", proto, c.Src, dst)
	}
	s := fmt.Sprintf("outbound %s to %s as uid %d gid %d", proto, dst, c.UID, c.GID)
	if c.ToSelf {
		s += " (an address of this namespace: over lo)"
	}
	return s
}

// writeExplanation is the text form: the verdict first, then the
// configuration's reason, the installed state's rule, and any difference.
func writeExplanation(w io.Writer, e explanation, configOnly bool) error {
	var b strings.Builder
	fmt.Fprintf(&b, "connection: %s\n", connText(e.Connection))
	fmt.Fprintf(&b, "verdict:    %s", verdictText(e.Captured, e.To, e.Port))
	switch {
	case e.Kernel != nil && e.Kernel.Uncertain != "":
		b.WriteString(" (by the configuration; what is installed cannot be told, see below)\n")
	case e.Installed && e.Agree:
		b.WriteString(" (the installed rules and the configuration agree)\n")
	case e.Installed:
		b.WriteString(" (what is installed does; the configuration differs)\n")
	case configOnly:
		b.WriteString(" (by the configuration; the installed state was not read)\n")
	default:
		b.WriteString(" (by the configuration; nothing of detour's is installed)\n")
	}
	fmt.Fprintf(&b, "config:     %s: %s\n", verdictText(e.Config.Captured, e.Config.To, e.Config.Port), e.Config.Reason)
	if k := e.Kernel; k != nil {
		rule := k.Rule
		if rule == "" {
			rule = "no rule matches it"
		}
		what := verdictText(k.Captured, e.To, k.Port)
		if k.Uncertain != "" {
			what = "cannot tell"
		}
		fmt.Fprintf(&b, "installed:  %s (%s): %s\n", what, k.Backend, rule)
		switch k.Action {
		case "jump":
			if e.Agree {
				b.WriteString("            (no rule of the chain it jumps to matches)\n")
			} else {
				b.WriteString("            (no rule of the chain it jumps to matches: is one missing?)\n")
			}
		case "drop":
			b.WriteString("            (dropped)\n")
		case "dnat":
			b.WriteString("            (sent elsewhere by DNAT, not to the proxy)\n")
		}
		for i, step := range k.Path {
			lead := "  via       "
			if i > 0 {
				lead = "            "
			}
			fmt.Fprintf(&b, "%s%s\n", lead, step)
		}
	}
	for _, d := range e.Differences {
		fmt.Fprintf(&b, "differs:    %s\n", d)
	}
	if len(e.Differences) > 0 && e.Kernel != nil && e.Kernel.Uncertain == "" && e.Kernel.Foreign {
		b.WriteString("            (another tool's rule: `detour check` compares only detour's own rules and does not report it)\n")
	} else if len(e.Differences) > 0 && e.Kernel != nil && e.Kernel.Uncertain == "" {
		b.WriteString("            (`detour check` with the same configuration lists every difference)\n")
	}
	if l := e.Live; l != nil {
		switch {
		case !l.Probed:
			fmt.Fprintf(&b, "live:       not probed: %s\n", l.Error)
		case l.Arrived:
			fmt.Fprintf(&b, "live:       arrived on port %d with original destination %s", l.Port, l.OriginalDst)
		default:
			fmt.Fprintf(&b, "live:       did not arrive on port %d: %s", l.Port, l.Error)
		}
		switch {
		case !l.Probed:
		case l.NoAnswer:
			b.WriteString(" (neither as the verdict says nor otherwise: proven neither)\n")
		case l.Agrees:
			b.WriteString(" (as the verdict says)\n")
		default:
			b.WriteString(" (NOT as the verdict says)\n")
		}
	}
	if r := e.Envoy; r != nil {
		fmt.Fprintf(&b, "envoy:      listener %s, filter chain %s, cluster %s", r.Listener, r.FilterChain, r.Cluster)
		switch {
		case r.Refused:
			b.WriteString(" (refused: no endpoints)")
		case r.Passthrough:
			b.WriteString(" (passthrough: on to where it was dialed)")
		}
		b.WriteString("\n")
	}
	for _, n := range e.Notes {
		fmt.Fprintf(&b, "note:       %s\n", n)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// envoyRoute is `detour-cp control-plane route`'s answer.
type envoyRoute struct {
	Listener    string `json:"listener"`
	FilterChain string `json:"filterChain"`
	Cluster     string `json:"cluster"`
	Passthrough bool   `json:"passthrough"`
	Refused     bool   `json:"refused"`
}

// envoyRoute asks detour-cp which listener, filter chain and cluster the
// control plane serves for the connection: the control plane's code stays out
// of this binary.
func (o *explainOptions) envoyRoute(ctx context.Context, c redirect.Conn, inbound bool) (*envoyRoute, error) {
	args := []string{"control-plane", "route", "--config", o.mesh, "--node-id", o.nodeID, "--to", netip.AddrPortFrom(c.Dst, c.Port).String()}
	if inbound {
		args = append(args, "--inbound")
	}
	out, err := o.runCP(ctx, args...)
	if err != nil {
		return nil, err
	}
	var rt envoyRoute
	if err := json.Unmarshal(out, &rt); err != nil {
		return nil, fmt.Errorf("read %s control-plane route: %w", cpBinary, err)
	}
	return &rt, nil
}

// runCP runs detour-cp for --mesh and returns its standard output; its exit 2
// (a bad mesh file, an unknown node id) is explain's.
func (o *explainOptions) runCP(ctx context.Context, args ...string) ([]byte, error) {
	path, err := o.cp.find(cpBinary)
	if err != nil {
		return nil, fmt.Errorf("--mesh is answered by %s: %w", cpBinary, err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(stderr.String()), "detour:"))
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == exitUsage {
			return nil, usageError("--mesh %s --node-id %s: %s", o.mesh, o.nodeID, msg)
		}
		return nil, fmt.Errorf("%s %s: %w: %s", cpBinary, strings.Join(args[:2], " "), err, msg)
	}
	return stdout.Bytes(), nil
}
