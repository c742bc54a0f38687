package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Validate reports every invalid value in c, each as a *FieldError (joined with
// errors.Join). A Config that passes Validate can be planned and applied.
// Values set through Set and Decode are already well-formed; Validate also checks
// what no single field can: values that conflict with each other. At most
// maxValidateErrors errors are kept, each quoting its value bounded
// (BoundedValue), and the rest counted: a config of thousands of bad entries
// (a 256 KB annotation holds that many) gives an error of a few kilobytes.
func (c Config) Validate() error {
	var errs []error
	more := 0
	bad := func(field, value, reason string) {
		if len(errs) == maxValidateErrors {
			more++
			return
		}
		errs = append(errs, &FieldError{Field: field, Value: BoundedValue(value), Reason: reason})
	}
	port := func(field string, p uint16) {
		if p == 0 {
			bad(field, "0", "is not a port (1-65535)")
		}
	}
	ranges := func(field string, rs []PortRange) {
		for i, r := range rs {
			if r.First == 0 || r.Last < r.First {
				bad(fmt.Sprintf("%s[%d]", field, i), r.String(), "is not a port or port range (80, 1000-2000)")
			}
		}
	}
	ids := func(field string, rs []IDRange) {
		for i, r := range rs {
			if r.Last < r.First {
				bad(fmt.Sprintf("%s[%d]", field, i), r.String(), "is an id range whose end is below its start")
			} else if r.Last > MaxID {
				bad(fmt.Sprintf("%s[%d]", field, i), r.String(), "is not a numeric id or id range (0-4294967294)")
			}
		}
	}
	if c.Proxy.UID > MaxID {
		bad("proxy.uid", strconv.FormatUint(uint64(c.Proxy.UID), 10), "is not a numeric id (0-4294967294; names are not looked up)")
	}
	if c.Proxy.GID != nil && *c.Proxy.GID > MaxID {
		bad("proxy.gid", strconv.FormatUint(uint64(*c.Proxy.GID), 10), "is not a numeric id (0-4294967294; names are not looked up)")
	}

	port("proxy.inboundPort", c.Proxy.InboundPort)
	port("proxy.outboundPort", c.Proxy.OutboundPort)
	if c.Proxy.InboundPort != 0 && c.Proxy.InboundPort == c.Proxy.OutboundPort {
		bad("proxy.outboundPort", strconv.Itoa(int(c.Proxy.OutboundPort)), "is also proxy.inboundPort; the proxy needs two ports")
	}
	// The proxy binds the passthrough source, and install puts it on lo.
	unbindable := func(a netip.Addr) bool {
		return a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	const notBindable = "is not an address the proxy can bind (not unspecified, multicast or broadcast)"
	if a := c.Proxy.InboundPassthroughSource.IPv4; !a.Is4() {
		bad("proxy.inboundPassthroughSource.ipv4", a.String(), "is not an IPv4 address")
	} else if unbindable(a) {
		bad("proxy.inboundPassthroughSource.ipv4", a.String(), notBindable)
	}
	if a := c.Proxy.InboundPassthroughSource.IPv6; !a.Is6() || a.Is4In6() {
		bad("proxy.inboundPassthroughSource.ipv6", a.String(), "is not an IPv6 address")
	} else if unbindable(a) {
		bad("proxy.inboundPassthroughSource.ipv6", a.String(), notBindable)
	}
	if _, err := parseEnum(string(c.Mode), modes); err != nil {
		bad("mode", string(c.Mode), err.(*FieldError).Reason)
	}
	switch c.Backend {
	case BackendAuto, BackendIPTables, BackendIPTablesLegacy, BackendIPTablesNFT, BackendNFTables, BackendEBPF:
	default:
		_, err := parseEnum(string(c.Backend), backends)
		bad("backend", string(c.Backend), err.(*FieldError).Reason)
	}
	if c.Backend == BackendEBPF && c.Mode == ModeTProxy {
		bad("mode", string(c.Mode), "is not available with backend ebpf (it redirects at connect() time, where there is no packet to deliver transparently)")
	}
	if c.EBPF.Accelerate && c.Backend != BackendEBPF {
		bad("ebpf.accelerate", "true", "needs backend ebpf (--ebpf-accelerate is an option of the eBPF backend; backend is "+strconv.Quote(string(c.Backend))+")")
	}
	if _, err := parseEnum(string(c.IPFamilies), families); err != nil {
		bad("ipFamilies", string(c.IPFamilies), err.(*FieldError).Reason)
	}

	ranges("inbound.includePorts", c.Inbound.IncludePorts)
	ranges("inbound.excludePorts", c.Inbound.ExcludePorts)
	ranges("outbound.includePorts", c.Outbound.IncludePorts)
	ranges("outbound.excludePorts", c.Outbound.ExcludePorts)
	ids("outbound.excludeUIDs", c.Outbound.ExcludeUIDs)
	ids("outbound.excludeGIDs", c.Outbound.ExcludeGIDs)
	for i, p := range c.Inbound.ExcludeSourceCIDRs {
		if !p.IsValid() {
			bad(fmt.Sprintf("inbound.excludeSourceCIDRs[%d]", i), p.String(), "is not a CIDR")
		}
	}
	for _, list := range []struct {
		field string
		cidrs []netip.Prefix
	}{
		{"outbound.includeCIDRs", c.Outbound.IncludeCIDRs},
		{"outbound.excludeCIDRs", c.Outbound.ExcludeCIDRs},
	} {
		for i, p := range list.cidrs {
			if !p.IsValid() {
				bad(fmt.Sprintf("%s[%d]", list.field, i), p.String(), "is not a CIDR")
			}
		}
	}
	for i, r := range c.Outbound.ExcludePortsForUIDs {
		field := fmt.Sprintf("outbound.excludePortsForUIDs[%d]", i)
		if r.Protocol != TCP && r.Protocol != UDP {
			bad(field, r.String(), "has protocol "+strconv.Quote(string(r.Protocol))+", not tcp or udp")
		}
		if len(r.Ports) == 0 || len(r.UIDs) == 0 {
			bad(field, r.String(), "needs at least one port and one uid")
		}
		ranges(field+".ports", r.Ports)
		ids(field+".uids", r.UIDs)
	}

	if _, err := parseEnum(string(c.DNS.Capture), dnsCapture); err != nil {
		bad("dns.capture", string(c.DNS.Capture), err.(*FieldError).Reason)
	}
	if c.DNS.Capture != DNSCaptureOff {
		port("dns.port", c.DNS.Port)
		if c.DNS.Port == c.Proxy.InboundPort || c.DNS.Port == c.Proxy.OutboundPort {
			bad("dns.port", strconv.Itoa(int(c.DNS.Port)), "is also a proxy TCP port; DNS needs its own port")
		}
		if c.DNS.Capture == DNSCaptureResolvConf && c.DNS.ResolvConf == "" {
			bad("dns.resolvConf", "", "is empty; dns.capture resolvconf needs a resolv.conf file")
		}
	}
	// The kernel's LOG target keeps 29 bytes with the terminating NUL.
	if len(c.Log.Prefix) > 28 {
		bad("log.prefix", c.Log.Prefix, "is longer than 28 characters")
	}
	// It is written into iptables-restore input: one printable ASCII line.
	if strings.IndexFunc(c.Log.Prefix, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
		bad("log.prefix", c.Log.Prefix, "holds a character that is not printable ASCII")
	}
	if more > 0 {
		errs = append(errs, fmt.Errorf("… and %d more errors (only the first %d are shown)", more, maxValidateErrors))
	}
	return errors.Join(errs...)
}

// maxValidateErrors bounds the errors Validate reports in full.
const maxValidateErrors = 20
