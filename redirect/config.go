package redirect

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Config describes what to capture. It is the one model shared by the CLI flags,
// config files, environment variables, the CNI annotations and the control plane's
// per-workload settings, so the installed redirection and the Envoy listeners can
// never disagree on ports. The zero value is not useful: start from Default or
// Preset and apply documents and fields on top.
type Config struct {
	Proxy              Proxy      `json:"proxy"`
	Mode               Mode       `json:"mode"`
	Backend            Backend    `json:"backend"`
	EBPF               EBPF       `json:"ebpf"`
	IPFamilies         IPFamilies `json:"ipFamilies"`
	Inbound            Inbound    `json:"inbound"`
	Outbound           Outbound   `json:"outbound"`
	DNS                DNS        `json:"dns"`
	DropInvalidPackets bool       `json:"dropInvalidPackets"`
	Log                Log        `json:"log"`
}

// Proxy describes the sidecar: who it runs as and where it listens.
type Proxy struct {
	// UID is the sidecar's user. Its traffic is never redirected outbound.
	UID uint32 `json:"uid"`
	// GID, when set, excludes the sidecar's group too.
	GID *uint32 `json:"gid"`
	// InboundPort receives redirected inbound connections.
	InboundPort uint16 `json:"inboundPort"`
	// OutboundPort receives redirected outbound connections.
	OutboundPort uint16 `json:"outboundPort"`
	// InboundPassthroughSource is the source address the proxy uses when it hands an
	// inbound connection to the local app; such connections are never recaptured.
	InboundPassthroughSource AddressPair `json:"inboundPassthroughSource"`
}

// AddressPair holds one address per IP family.
type AddressPair struct {
	IPv4 netip.Addr `json:"ipv4"`
	IPv6 netip.Addr `json:"ipv6"`
}

// Inbound selects the connections to the workload that go to Proxy.InboundPort.
type Inbound struct {
	Enabled bool `json:"enabled"`
	// IncludePorts, when not empty, limits capture to these destination ports.
	IncludePorts []PortRange `json:"includePorts"`
	// ExcludePorts are never captured, unless also listed in IncludePorts.
	ExcludePorts []PortRange `json:"excludePorts"`
	// ExcludeSourceCIDRs are clients whose connections reach the app directly.
	ExcludeSourceCIDRs []netip.Prefix `json:"excludeSourceCIDRs"`
}

// Outbound selects the connections from the workload that go to Proxy.OutboundPort.
type Outbound struct {
	Enabled bool `json:"enabled"`
	// IncludePorts, when not empty, limits capture to these destination ports.
	IncludePorts []PortRange `json:"includePorts"`
	// ExcludePorts are never captured, unless also listed in IncludePorts.
	ExcludePorts []PortRange `json:"excludePorts"`
	// IncludeCIDRs, when not empty, limits capture to these destinations.
	IncludeCIDRs []netip.Prefix `json:"includeCIDRs"`
	// ExcludeCIDRs are never captured, unless also covered by IncludeCIDRs.
	ExcludeCIDRs []netip.Prefix `json:"excludeCIDRs"`
	// ExcludeUIDs and ExcludeGIDs are owners whose traffic is never captured.
	ExcludeUIDs []IDRange `json:"excludeUIDs"`
	ExcludeGIDs []IDRange `json:"excludeGIDs"`
	// ExcludePortsForUIDs exempt some ports of some users only.
	ExcludePortsForUIDs []UIDPortRule `json:"excludePortsForUIDs"`
}

// DNS selects the DNS queries that go to DNS.Port.
type DNS struct {
	Capture DNSCapture `json:"capture"`
	Port    uint16     `json:"port"`
	// ResolvConf names the file whose nameservers are captured with DNSCaptureResolvConf.
	ResolvConf string `json:"resolvConf"`
	// ConntrackZoneSplit keeps the proxy's and the app's UDP/53 flows in separate
	// conntrack zones, so a 4-tuple reused by both cannot skip the DNS proxy.
	ConntrackZoneSplit bool `json:"conntrackZoneSplit"`
}

// EBPF holds the options of backend ebpf only; setting one with another
// backend is invalid (Validate).
type EBPF struct {
	// Accelerate hands the bytes between the app and the proxy from socket
	// to socket (sockops + sk_msg) instead of through the loopback TCP stack.
	// Off by default: those bytes bypass the socket's TCP receive queue, so a
	// proxy that relays with splice(2) never receives them (docs/ebpf.md).
	Accelerate bool `json:"accelerate"`
}

// Log turns on kernel logging of captured connections.
type Log struct {
	Enabled bool   `json:"enabled"`
	Prefix  string `json:"prefix"`
}

// Mode is how connections are handed to the proxy.
type Mode string

const (
	// ModeRedirect rewrites the destination (nat REDIRECT); the proxy reads the
	// original destination with SO_ORIGINAL_DST.
	ModeRedirect Mode = "redirect"
	// ModeTProxy delivers inbound connections unchanged to a transparent listener
	// (mangle TPROXY and policy routing), so the proxy sees the client's address.
	ModeTProxy Mode = "tproxy"
)

// Backend is the kernel mechanism that carries the redirection.
type Backend string

const (
	BackendAuto           Backend = "auto"
	BackendIPTables       Backend = "iptables"
	BackendIPTablesLegacy Backend = "iptables-legacy"
	BackendIPTablesNFT    Backend = "iptables-nft"
	BackendNFTables       Backend = "nftables"
	BackendEBPF           Backend = "ebpf"
)

// IPFamilies says which IP families are captured.
type IPFamilies string

const (
	// IPFamiliesAuto captures IPv4, and IPv6 whenever the network namespace has it.
	IPFamiliesAuto IPFamilies = "auto"
	IPFamiliesIPv4 IPFamilies = "ipv4"
	IPFamiliesIPv6 IPFamilies = "ipv6"
	IPFamiliesDual IPFamilies = "dual"
)

// DNSCapture says which DNS queries are captured.
type DNSCapture string

const (
	DNSCaptureOff DNSCapture = "off"
	// DNSCaptureResolvConf captures UDP/53 to the nameservers listed in DNS.ResolvConf.
	DNSCaptureResolvConf DNSCapture = "resolvconf"
	// DNSCaptureAll captures every UDP/53 query.
	DNSCaptureAll DNSCapture = "all"
)

var (
	modes      = []Mode{ModeRedirect, ModeTProxy}
	backends   = []Backend{BackendAuto, BackendIPTables, BackendIPTablesLegacy, BackendIPTablesNFT, BackendNFTables, BackendEBPF}
	families   = []IPFamilies{IPFamiliesAuto, IPFamiliesIPv4, IPFamiliesIPv6, IPFamiliesDual}
	dnsCapture = []DNSCapture{DNSCaptureOff, DNSCaptureResolvConf, DNSCaptureAll}
)

// Default returns the built-in configuration (the one DESIGN.md shows).
func Default() Config {
	return Config{
		Proxy: Proxy{
			UID:          5678,
			InboundPort:  15006,
			OutboundPort: 15001,
			InboundPassthroughSource: AddressPair{
				IPv4: netip.MustParseAddr("127.0.0.6"),
				IPv6: netip.MustParseAddr("::6"),
			},
		},
		Mode:       ModeRedirect,
		Backend:    BackendAuto,
		IPFamilies: IPFamiliesAuto,
		Inbound:    Inbound{Enabled: true},
		Outbound:   Outbound{Enabled: true},
		DNS: DNS{
			Capture:            DNSCaptureOff,
			Port:               15053,
			ResolvConf:         "/etc/resolv.conf",
			ConntrackZoneSplit: true,
		},
		Log: Log{Prefix: "detour"},
	}
}

// Presets lists the names Preset accepts.
var Presets = []string{"istio", "kuma"}

// Preset returns the default configuration adjusted for drop-in parity with
// another mesh's sidecar.
func Preset(name string) (Config, error) {
	c := Default()
	switch name {
	case "istio":
		c.Proxy.UID = 1337
		// 15008 is Istio's HBONE tunnel port, which istio-iptables always
		// exempts from inbound capture; the others are its default
		// excludeInboundPorts (metrics, health, the agent).
		c.Inbound.ExcludePorts = []PortRange{{15008, 15008}, {15090, 15090}, {15021, 15021}, {15020, 15020}}
	case "kuma":
		c.Proxy.UID = 5678
	default:
		return Config{}, &FieldError{Field: "preset", Value: name, Reason: "is not one of " + strings.Join(Presets, ", ")}
	}
	return c, nil
}

// PortRange is an inclusive range of TCP or UDP ports; a single port has First == Last.
type PortRange struct {
	First, Last uint16
}

// String returns "80" or "1000-2000".
func (r PortRange) String() string {
	if r.First == r.Last {
		return strconv.Itoa(int(r.First))
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Contains reports whether port p is in the range.
func (r PortRange) Contains(p uint16) bool { return r.First <= p && p <= r.Last }

// MarshalJSON writes a single port as a number and a range as a string.
func (r PortRange) MarshalJSON() ([]byte, error) {
	if r.First == r.Last {
		return []byte(strconv.Itoa(int(r.First))), nil
	}
	return []byte(strconv.Quote(r.String())), nil
}

// UnmarshalJSON accepts what MarshalJSON writes.
func (r *PortRange) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := ParsePortRange(s)
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// IDRange is an inclusive range of numeric user or group ids.
type IDRange struct {
	First, Last uint32
}

// String returns "106" or "106-108".
func (r IDRange) String() string {
	if r.First == r.Last {
		return strconv.FormatUint(uint64(r.First), 10)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// Contains reports whether id is in the range.
func (r IDRange) Contains(id uint32) bool { return r.First <= id && id <= r.Last }

// MarshalJSON writes a single id as a number and a range as a string.
func (r IDRange) MarshalJSON() ([]byte, error) {
	if r.First == r.Last {
		return []byte(r.String()), nil
	}
	return []byte(strconv.Quote(r.String())), nil
}

// UnmarshalJSON accepts what MarshalJSON writes.
func (r *IDRange) UnmarshalJSON(b []byte) error {
	v, err := ParseIDRange(strings.Trim(string(b), `"`))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// Protocol is a transport protocol in a UIDPortRule.
type Protocol string

const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// UIDPortRule exempts traffic of some users to some ports of one protocol:
// "tcp:53,3000-5000:106-108" exempts TCP to port 53 and ports 3000–5000 sent by
// uids 106 to 108.
type UIDPortRule struct {
	Protocol Protocol
	Ports    []PortRange
	UIDs     []IDRange
}

// String returns the rule in its "proto:ports:uids" form.
func (r UIDPortRule) String() string {
	return string(r.Protocol) + ":" + joinRanges(r.Ports) + ":" + joinRanges(r.UIDs)
}

// MarshalText writes the "proto:ports:uids" form.
func (r UIDPortRule) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText reads the "proto:ports:uids" form.
func (r *UIDPortRule) UnmarshalText(b []byte) error {
	v, err := ParseUIDPortRule(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

func joinRanges[T fmt.Stringer](rs []T) string {
	parts := make([]string, len(rs))
	for i, r := range rs {
		parts[i] = r.String()
	}
	return strings.Join(parts, ",")
}
