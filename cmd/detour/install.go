package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/detour-mesh/detour/redirect"
)

type installOptions struct {
	in      planInput
	dryRun  bool
	output  string
	persist persistOptions
}

func newInstallCmd(s streams, g *globalOptions) *cobra.Command {
	o := &installOptions{}
	cmd := &cobra.Command{
		Use:   "install [flags]",
		Short: "Install the redirection into the sidecar (plan, observe, apply)",
		Long: `Install plans the rules for the configuration, reads what the network namespace
already holds and applies the difference — one iptables-restore per IP family, one
nftables netlink batch, or the eBPF maps' changed entries — and nothing when the rules
are already in place. Installing with another backend than the one holding detour's
rules switches: the new rules first, then the old ones removed. On a host (no --netns), the ports sshd listens on
and the port of the SSH session you are connected through are excluded from inbound
capture unless --capture-ssh is given.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.in.fromEnv()
			return runInstall(cmd.Context(), o, g, s)
		},
	}
	fs := cmd.Flags()
	g.later(cmd, func() { o.in.bind(fs) })
	fs.BoolVar(&o.dryRun, "dry-run", false, "print the plan and change nothing")
	output(fs, &o.output)
	fs.BoolVar(&o.persist.enabled, "persist", false, persistUsage)
	return cmd
}

func runInstall(ctx context.Context, o *installOptions, g *globalOptions, s streams) error {
	if err := checkOutput(o.output); err != nil {
		return err
	}
	if err := checkPersist(o.persist, o.in.netns, g.cgroup, o.dryRun); err != nil {
		return err
	}
	p, err := o.in.load(ctx, g, s)
	if err != nil {
		return err
	}
	plan := p.plan
	if o.dryRun {
		return printPlan(s, p.eng, plan, o.output)
	}
	res, err := p.eng.Install(ctx, plan)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if o.output == "json" {
		err = writeJSON(s, struct {
			redirect.Result
			Config   redirect.Config `json:"config"`
			SSHPorts []uint16        `json:"sshPortsExcluded,omitempty"`
		}{res, plan.Config, p.sshPorts})
	} else {
		_, err = fmt.Fprint(s.out, summary(plan.Config, res, p.sshPorts)+installNotes(plan))
	}
	if err != nil || !o.persist.enabled {
		return err
	}
	// The unit installs plan.Config: the SSH port excluded now stays excluded at boot.
	return persist(ctx, o.persist, plan.Config, textOut(s, o.output))
}

// summary is the one screen install prints: what is captured, where it goes and
// what is left alone.
func summary(c redirect.Config, r redirect.Result, sshPorts []uint16) string {
	var b strings.Builder
	fams := make([]string, len(r.Families))
	for i, f := range r.Families {
		fams[i] = string(f)
	}
	how := fmt.Sprintf("%s; %s; mode %s", r.Backend, strings.Join(fams, ", "), c.Mode)
	if r.Changed {
		fmt.Fprintf(&b, "detour installed (%s)\n", how)
		if len(r.Replaced) > 0 {
			fmt.Fprintf(&b, "  switched from %s: the new rules were applied first, then the old ones removed\n", joinBackends(r.Replaced))
		}
	} else {
		fmt.Fprintf(&b, "no changes: detour was already installed as planned (%s)\n", how)
	}
	row := func(name, what string, notes ...string) {
		fmt.Fprintf(&b, "  %-9s %s\n", name, what)
		for _, n := range notes {
			if n != "" {
				fmt.Fprintf(&b, "  %-9s   %s\n", "", n)
			}
		}
	}
	if c.Outbound.Enabled {
		o := c.Outbound
		row("outbound", fmt.Sprintf("TCP → :%d  %s, %s", c.Proxy.OutboundPort,
			selection("ports", "all ports", o.IncludePorts, o.ExcludePorts),
			cidrSelection(o.IncludeCIDRs, o.ExcludeCIDRs)),
			"left alone: "+strings.Join(outboundExempt(c), ", "))
	} else {
		row("outbound", "not captured (outbound.enabled is false)")
	}
	if c.Inbound.Enabled {
		in := c.Inbound
		note := ""
		if len(sshPorts) > 0 {
			note = fmt.Sprintf("%s excluded: SSH (--capture-ssh captures it)", joinPorts(sshPorts))
		}
		src := ""
		if len(in.ExcludeSourceCIDRs) > 0 {
			src = "; sources except " + joinPrefixes(in.ExcludeSourceCIDRs)
		}
		mode := ""
		if c.Mode == redirect.ModeTProxy {
			mode = " (TPROXY: the proxy sees client addresses)"
		}
		row("inbound", fmt.Sprintf("TCP → :%d  %s%s%s", c.Proxy.InboundPort,
			selection("ports", "all ports", in.IncludePorts, in.ExcludePorts), src, mode), note)
	} else {
		row("inbound", "not captured (inbound.enabled is false)")
	}
	switch c.DNS.Capture {
	case redirect.DNSCaptureAll:
		row("dns", fmt.Sprintf("UDP/53 → :%d  every destination (TCP/53 follows outbound)", c.DNS.Port))
	case redirect.DNSCaptureResolvConf:
		row("dns", fmt.Sprintf("UDP/53 → :%d  the nameservers in %s (TCP/53 follows outbound)", c.DNS.Port, c.DNS.ResolvConf))
	default:
		row("dns", "not captured (dns.capture is off)")
	}
	if c.EBPF.Accelerate {
		row("sockets", "accelerated: app-proxy bytes go socket to socket (sk_msg)",
			"a proxy that relays with splice(2) does not receive them (docs/ebpf.md)")
	}
	if longLists(c) {
		row("lists", "shortened here (detour plan lists every one)")
	}
	if r.Processes > 0 {
		row("cost", fmt.Sprintf("%d child processes", r.Processes))
	}
	for _, l := range r.Leftovers {
		fmt.Fprintf(&b, "removed what was left behind: %s\n", l)
	}
	return b.String()
}

// installNotes are the plan's notes — settings that do nothing, as `detour
// plan` prints them — one line each (a family's notes name the family).
func installNotes(p redirect.Plan) string {
	var b strings.Builder
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "  %-9s %s\n", "note", n)
	}
	for _, fc := range p.Capture.Families {
		for _, n := range fc.Notes {
			fmt.Fprintf(&b, "  %-9s %s\n", "note", n)
		}
	}
	return b.String()
}

func selection[T fmt.Stringer](noun, all string, include, exclude []T) string {
	switch {
	case len(include) > 0:
		return "only " + noun + " " + joinStrings(include)
	case len(exclude) > 0:
		return all + " except " + joinStrings(exclude)
	}
	return all
}

func cidrSelection(include, exclude []netip.Prefix) string {
	switch {
	case len(include) > 0:
		return "only to " + joinPrefixes(include)
	case len(exclude) > 0:
		return "any address except " + joinPrefixes(exclude)
	}
	return "any address"
}

func outboundExempt(c redirect.Config) []string {
	out := []string{"proxy uid " + strconv.FormatUint(uint64(c.Proxy.UID), 10)}
	if c.Proxy.GID != nil {
		out = append(out, "proxy gid "+strconv.FormatUint(uint64(*c.Proxy.GID), 10))
	}
	out = append(out, "loopback")
	if len(c.Outbound.ExcludeUIDs) > 0 {
		out = append(out, "uids "+joinStrings(c.Outbound.ExcludeUIDs))
	}
	if len(c.Outbound.ExcludeGIDs) > 0 {
		out = append(out, "gids "+joinStrings(c.Outbound.ExcludeGIDs))
	}
	for _, r := range c.Outbound.ExcludePortsForUIDs {
		if len(r.Ports) > summaryListMax || len(r.UIDs) > summaryListMax {
			out = append(out, fmt.Sprintf("%s ports %s for uids %s", r.Protocol, joinStrings(r.Ports), joinStrings(r.UIDs)))
			continue
		}
		out = append(out, r.String())
	}
	return out
}

func joinPorts(ports []uint16) string {
	parts := make([]string, len(ports))
	for i, p := range ports {
		parts[i] = strconv.Itoa(int(p))
	}
	if len(parts) == 1 {
		return "port " + parts[0] + " is"
	}
	return "ports " + strings.Join(parts, ",") + " are"
}

// summaryListMax is how many entries of a list the summary shows: it is one
// screen, and a list of 10,000 CIDRs made one line of 160 KB of it.
const summaryListMax = 5

// joinStrings joins a list for the summary: its first summaryListMax entries
// and how many more there are (longLists says when the hint to plan is due).
func joinStrings[T fmt.Stringer](items []T) string {
	shown := items[:min(len(items), summaryListMax)]
	parts := make([]string, len(shown))
	for i, it := range shown {
		parts[i] = it.String()
	}
	s := strings.Join(parts, ",")
	if more := len(items) - len(shown); more > 0 {
		s += fmt.Sprintf(" and %d more", more)
	}
	return s
}

// longLists reports whether the summary shortened a list.
func longLists(c redirect.Config) bool {
	for _, n := range []int{len(c.Outbound.IncludePorts), len(c.Outbound.ExcludePorts),
		len(c.Outbound.IncludeCIDRs), len(c.Outbound.ExcludeCIDRs),
		len(c.Outbound.ExcludeUIDs), len(c.Outbound.ExcludeGIDs),
		len(c.Inbound.IncludePorts), len(c.Inbound.ExcludePorts), len(c.Inbound.ExcludeSourceCIDRs)} {
		if n > summaryListMax {
			return true
		}
	}
	for _, r := range c.Outbound.ExcludePortsForUIDs {
		if len(r.Ports) > summaryListMax || len(r.UIDs) > summaryListMax {
			return true
		}
	}
	return false
}

func joinPrefixes(ps []netip.Prefix) string { return joinStrings(ps) }

func writeJSON(s streams, v any) error {
	enc := json.NewEncoder(s.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func joinBackends(bs []redirect.Backend) string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return strings.Join(out, ", ")
}
