package controlplane

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/detour-mesh/detour/redirect"
)

// Mesh is everything the control plane serves from: the services a workload can
// reach, the workloads whose proxies connect, and what happens to connections to
// destinations the mesh does not know. A mesh file (DecodeMesh) and the
// Kubernetes source both produce one; Validate checks it as a whole.
type Mesh struct {
	// OutboundPolicy says where connections to unknown destinations go.
	OutboundPolicy OutboundPolicy
	// Services are reached through their virtual IPs.
	Services []Service
	// Workloads are the proxies this control plane serves, one per node id.
	Workloads []Workload
	// DNS is what the proxies' DNS listeners answer, for workloads whose
	// transparentProxy captures DNS.
	DNS DNS
	// AllowMassRemoval lets FileSource apply a change that removes more than
	// half of the served workloads, which it otherwise holds back as a likely
	// truncated or half-written file.
	AllowMassRemoval bool
	// Excluded are workloads the source left out because they cannot be
	// served (a pod with invalid annotations). They are not part of the mesh:
	// Validate ignores them, the server counts them
	// (detour_workloads_excluded) and lists them in /debug/nodes.
	Excluded []Excluded
}

// DNS configures the DNS listener served to every workload whose
// transparentProxy.dns.capture is not off: it answers the mesh's service names
// with their virtual IPs and forwards every other query.
type DNS struct {
	// Suffix: service <name> is answered as <name>.<suffix>; "" means
	// DefaultDNSSuffix.
	Suffix string
	// Upstreams receive every query that is not a service name; empty means the
	// nameservers of the proxy's own resolv.conf (which, in a pod or on a VM,
	// are the workload's: the ones the installer captured queries for).
	Upstreams []netip.AddrPort
}

// upstreams returns the upstreams w's proxy can reach: those of the families
// it reaches (families: its addresses, narrowed by its ipFamilies) and those
// on loopback. A workload with IPv6 addresses only cannot send to an IPv4
// resolver, and the other way round.
func (d DNS) upstreams(w *Workload) []netip.AddrPort {
	fam := families(w)
	out := make([]netip.AddrPort, 0, len(d.Upstreams))
	for _, u := range d.Upstreams {
		if a := u.Addr(); a.IsLoopback() || a.Is4() && fam.reach4 || a.Is6() && fam.reach6 {
			out = append(out, u)
		}
	}
	return out
}

// DefaultDNSSuffix is the suffix of service names when DNS.Suffix is empty:
// service "backend" is backend.mesh.
const DefaultDNSSuffix = "mesh"

func (d DNS) suffix() string {
	if d.Suffix == "" {
		return DefaultDNSSuffix
	}
	return d.Suffix
}

// Excluded is a workload a source could not serve, and why.
type Excluded struct {
	NodeID string `json:"nodeId"`
	Reason string `json:"reason"`
}

// OutboundPolicy is what a proxy does with a captured connection to a destination
// that is not a known service.
type OutboundPolicy string

const (
	// AllowAny forwards it to its original destination (the passthrough cluster).
	AllowAny OutboundPolicy = "allow-any"
	// RegistryOnly refuses it (the blackhole cluster).
	RegistryOnly OutboundPolicy = "registry-only"
)

// Protocol is the application protocol of a port.
type Protocol string

const (
	// ProtocolTCP is proxied as a byte stream (tcp_proxy).
	ProtocolTCP Protocol = "tcp"
	// ProtocolHTTP is proxied by Envoy's HTTP connection manager, so HTTP
	// requests are routed and observed individually.
	ProtocolHTTP Protocol = "http"
)

// Service is a set of endpoints reached through virtual IPs and ports.
type Service struct {
	// Name is unique in the mesh; it names the Envoy clusters and listeners.
	Name string
	// VirtualIPs are the addresses clients dial (IPv4 and/or IPv6).
	VirtualIPs []netip.Addr
	// Ports are the ports served on every virtual IP.
	Ports []ServicePort
	// Selector, when not empty, adds every workload whose labels include all of
	// these as an endpoint (on each port's TargetPort).
	Selector map[string]string
	// Endpoints are explicit backends, in addition to the selected workloads.
	Endpoints []Endpoint
}

// ServicePort is one port of a service.
type ServicePort struct {
	// Name identifies the port among the service's ports; it defaults to the
	// port number.
	Name string
	// Port is the port clients dial on the virtual IPs.
	Port uint16
	// TargetPort is the port the endpoints listen on; it defaults to Port.
	TargetPort uint16
	// Protocol is tcp (the default) or http.
	Protocol Protocol
}

// Endpoint is one backend address of a service.
type Endpoint struct {
	Address netip.Addr
	// TargetPorts overrides ServicePort.TargetPort for this endpoint, by port
	// name (Kubernetes named ports resolve per pod).
	TargetPorts map[string]uint16
}

// Workload is one proxied workload: a VM or a pod, served under its node id.
type Workload struct {
	// NodeID is the node.id its Envoy presents to the control plane.
	NodeID string
	// Addresses are the workload's own addresses. Their IP families decide which
	// families its listeners serve, and they are its endpoint addresses for
	// services that select it.
	Addresses []netip.Addr
	// Labels are matched by service selectors and sent as node metadata.
	Labels map[string]string
	// Inbound lists the ports the workload's app serves.
	Inbound []InboundPort
	// Reach names the services this workload may reach; "*" means all of them.
	Reach []string
	// TransparentProxy is the workload's redirection, the same Config that
	// `detour install` applies, so the listeners use the ports it captures to.
	TransparentProxy redirect.Config
}

// InboundPort maps a port of the workload's addresses to the local app.
type InboundPort struct {
	// Port is the port clients dial on the workload's address.
	Port uint16
	// AppPort is where the app listens on loopback; it defaults to Port.
	AppPort uint16
	// Protocol is tcp (the default) or http.
	Protocol Protocol
}

// ReachAll in Workload.Reach means every service of the mesh.
const ReachAll = "*"

// Validate reports every inconsistency of m, each as a *redirect.FieldError
// naming the mesh field (services[1].ports[0].port) and its value; the errors are
// joined and match redirect.ErrInvalid. A mesh that passes Validate can be
// turned into Envoy resources for every workload.
func (m *Mesh) Validate() error {
	var errs errorList
	bad := func(field, value, reason string) {
		errs.add(&redirect.FieldError{Field: field, Value: value, Reason: reason})
	}
	switch m.OutboundPolicy {
	case AllowAny, RegistryOnly:
	default:
		bad("outboundPolicy", string(m.OutboundPolicy), "is not one of allow-any, registry-only")
	}

	if m.DNS.Suffix != "" {
		if err := checkDNSName(m.DNS.Suffix); err != nil {
			bad("dns.suffix", m.DNS.Suffix, err.Error())
		}
	}
	for i, u := range m.DNS.Upstreams {
		if reason := unusableAddr(u.Addr()); reason != "" && !u.Addr().IsLoopback() {
			bad(fmt.Sprintf("dns.upstreams[%d]", i), u.String(), reason)
		} else if u.Port() == 0 {
			bad(fmt.Sprintf("dns.upstreams[%d]", i), u.String(), "has no port")
		}
	}
	services := make(map[string]int, len(m.Services))
	vipPorts := make(map[netip.AddrPort]string)
	for i, s := range m.Services {
		f := fmt.Sprintf("services[%d]", i)
		if err := checkName(s.Name); err != nil {
			bad(f+".name", s.Name, err.Error())
		} else if j, dup := services[s.Name]; dup {
			bad(f+".name", s.Name, fmt.Sprintf("is also the name of services[%d]", j))
		} else {
			services[s.Name] = i
		}
		if len(s.VirtualIPs) == 0 {
			bad(f+".virtualIPs", "", "is empty; a service needs at least one virtual IP")
		}
		for j, vip := range s.VirtualIPs {
			if reason := unusableAddr(vip); reason != "" {
				bad(fmt.Sprintf("%s.virtualIPs[%d]", f, j), vip.String(), reason)
			} else if k := slices.Index(s.VirtualIPs[:j], vip); k >= 0 {
				// Each virtual IP and port is one listener: a repeat made
				// two of one name, and every node that reaches the service
				// failed the build.
				bad(fmt.Sprintf("%s.virtualIPs[%d]", f, j), vip.String(), fmt.Sprintf("is also %s.virtualIPs[%d]", f, k))
			}
		}
		if len(s.Ports) == 0 {
			bad(f+".ports", "", "is empty; a service needs at least one port")
		}
		portNames := make(map[string]bool, len(s.Ports))
		portNumbers := make(map[uint16]bool, len(s.Ports))
		for j, p := range s.Ports {
			pf := fmt.Sprintf("%s.ports[%d]", f, j)
			if p.Port == 0 {
				bad(pf+".port", "0", "is not a port (1-65535)")
			} else if portNumbers[p.Port] {
				bad(pf+".port", strconv.Itoa(int(p.Port)), "is listed twice in this service")
			}
			portNumbers[p.Port] = true
			if p.TargetPort == 0 {
				bad(pf+".targetPort", "0", "is not a port (1-65535)")
			}
			if err := checkName(p.Name); err != nil {
				bad(pf+".name", p.Name, err.Error())
			} else if portNames[p.Name] {
				bad(pf+".name", p.Name, "is the name of another port of this service")
			}
			portNames[p.Name] = true
			if p.Protocol != ProtocolTCP && p.Protocol != ProtocolHTTP {
				bad(pf+".protocol", string(p.Protocol), "is not one of tcp, http")
			}
			for _, vip := range s.VirtualIPs {
				ap := netip.AddrPortFrom(vip, p.Port)
				if other, dup := vipPorts[ap]; dup && other != s.Name {
					bad(pf+".port", strconv.Itoa(int(p.Port)), fmt.Sprintf("on %s is also served by service %q", vip, other))
				}
				vipPorts[ap] = s.Name
			}
		}
		for j, e := range s.Endpoints {
			ef := fmt.Sprintf("%s.endpoints[%d]", f, j)
			if !e.Address.IsValid() || e.Address.IsUnspecified() || e.Address.IsMulticast() {
				bad(ef+".address", e.Address.String(), "is not a unicast IP address")
			}
			for _, name := range slices.Sorted(maps.Keys(e.TargetPorts)) {
				if !portNames[name] {
					bad(ef+".targetPorts."+name, strconv.Itoa(int(e.TargetPorts[name])), "names no port of this service")
				} else if e.TargetPorts[name] == 0 {
					bad(ef+".targetPorts."+name, "0", "is not a port (1-65535)")
				}
			}
		}
		for _, k := range slices.Sorted(maps.Keys(s.Selector)) {
			if k == "" {
				bad(f+".selector", s.Selector[k], "has an empty label key")
			}
		}
	}

	nodes := make(map[string]int, len(m.Workloads))
	for i, w := range m.Workloads {
		// Field names are made only for an error: a mesh of 10,000
		// workloads is validated on every change.
		f := func() string { return "workloads[" + strconv.Itoa(i) + "]" }
		if w.NodeID == "" || strings.TrimSpace(w.NodeID) != w.NodeID {
			bad(f()+".nodeId", w.NodeID, "is not a node id (non-empty, no surrounding spaces)")
		} else if j, dup := nodes[w.NodeID]; dup {
			bad(f()+".nodeId", w.NodeID, fmt.Sprintf("is also the node id of workloads[%d]", j))
		} else {
			nodes[w.NodeID] = i
		}
		if len(w.Addresses) == 0 {
			bad(f()+".addresses", "", "is empty; a workload needs at least one address")
		}
		for j, a := range w.Addresses {
			if reason := unusableAddr(a); reason != "" {
				bad(fmt.Sprintf("%s.addresses[%d]", f(), j), a.String(), reason)
			}
		}
		tp := w.TransparentProxy
		if err := tp.Validate(); err != nil {
			errs.add(prefixFieldErrors(f()+".transparentProxy.", err))
		}
		if tp.DNS.Capture != "" && tp.DNS.Capture != redirect.DNSCaptureOff {
			// Envoy's own queries are never captured: an upstream that is the
			// listener itself (dnsListener binds 127.0.0.1 and ::1) gets every
			// name that is not a service back, again and again.
			for j, u := range m.DNS.Upstreams {
				if u.Port() == tp.DNS.Port && (u.Addr() == netip.AddrFrom4([4]byte{127, 0, 0, 1}) || u.Addr() == netip.IPv6Loopback()) {
					bad(fmt.Sprintf("dns.upstreams[%d]", j), u.String(), fmt.Sprintf("is the DNS listener of %s (%s) itself (transparentProxy.dns.port %d): its queries would loop", f(), w.NodeID, tp.DNS.Port))
				}
			}
			// A proxy forwards only to the upstreams of the families it can
			// reach (upstreams); with none, every name outside the mesh fails.
			if len(m.DNS.Upstreams) > 0 && len(w.Addresses) > 0 && len(m.DNS.upstreams(&w)) == 0 {
				fam := families(&w)
				have := "IPv4"
				if fam.reach6 {
					have = "IPv6"
				}
				list := make([]string, len(m.DNS.Upstreams))
				for j, u := range m.DNS.Upstreams {
					list[j] = u.String()
				}
				bad("dns.upstreams", strings.Join(list, ", "), fmt.Sprintf("has no upstream %s (%s) can reach: it reaches %s only (its addresses and ipFamilies), so with transparentProxy.dns.capture %s every name outside the mesh would fail; add an %s upstream", f(), w.NodeID, have, tp.DNS.Capture, have))
			}
		}
		v4, v6 := addrFamilies(w.Addresses)
		switch tp.IPFamilies {
		case redirect.IPFamiliesIPv6, redirect.IPFamiliesDual:
			if !v6 {
				bad(f()+".transparentProxy.ipFamilies", string(tp.IPFamilies), "needs an IPv6 address in "+f()+".addresses")
			}
		}
		switch tp.IPFamilies {
		case redirect.IPFamiliesIPv4, redirect.IPFamiliesDual:
			if !v4 && len(w.Addresses) > 0 {
				bad(f()+".transparentProxy.ipFamilies", string(tp.IPFamilies), "needs an IPv4 address in "+f()+".addresses")
			}
		}
		inbound := make(map[uint16]bool, len(w.Inbound))
		for j, p := range w.Inbound {
			pf := func() string { return f() + ".inbound[" + strconv.Itoa(j) + "]" }
			switch {
			case p.Port == 0:
				bad(pf()+".port", "0", "is not a port (1-65535)")
			case inbound[p.Port]:
				bad(pf()+".port", strconv.Itoa(int(p.Port)), "is listed twice in this workload")
			case p.Port == tp.Proxy.InboundPort || p.Port == tp.Proxy.OutboundPort:
				bad(pf()+".port", strconv.Itoa(int(p.Port)), "is one of the proxy's own ports (transparentProxy.proxy)")
			}
			inbound[p.Port] = true
			if p.AppPort == 0 {
				bad(pf()+".appPort", "0", "is not a port (1-65535)")
			} else if p.AppPort == tp.Proxy.InboundPort || p.AppPort == tp.Proxy.OutboundPort {
				bad(pf()+".appPort", strconv.Itoa(int(p.AppPort)), "is one of the proxy's own ports (transparentProxy.proxy)")
			}
			if p.Protocol != ProtocolTCP && p.Protocol != ProtocolHTTP {
				bad(pf()+".protocol", string(p.Protocol), "is not one of tcp, http")
			}
		}
		for j, name := range w.Reach {
			if name == ReachAll {
				continue
			}
			if _, ok := services[name]; !ok {
				bad(fmt.Sprintf("%s.reach[%d]", f(), j), name, "is not the name of a service")
			}
		}
	}
	// A service name goes into the DNS table of every capturing workload
	// that may reach it, as <name>.<suffix>: one DNS cannot carry would be
	// answered for a question nobody can ask. Elsewhere (Envoy resource
	// names) '_' and long labels are fine, so only these are refused.
	if checkDNSName(m.DNS.suffix()) == nil {
		for i, s := range m.Services {
			if j, ok := services[s.Name]; !ok || j != i {
				continue
			}
			fqdn := strings.ToLower(s.Name) + "." + strings.ToLower(m.DNS.suffix())
			err := checkDNSName(fqdn)
			if err == nil {
				continue
			}
			for k, w := range m.Workloads {
				tp := w.TransparentProxy
				if tp.DNS.Capture == "" || tp.DNS.Capture == redirect.DNSCaptureOff || !tp.Outbound.Enabled || !slices.Contains(w.Reach, ReachAll) && !slices.Contains(w.Reach, s.Name) {
					continue
				}
				bad(fmt.Sprintf("services[%d].name", i), s.Name, fmt.Sprintf("would be in the DNS table of workloads[%d] (%s) (transparentProxy.dns.capture %s), but no query can ask for it: %s %s", k, w.NodeID, tp.DNS.Capture, fqdn, err))
				break
			}
		}
		// DNS names are case-insensitive: two services whose names differ
		// only in case are one name in a DNS table, which would answer
		// both services' virtual IPs.
		byFQDN := make(map[string][]int)
		for i, s := range m.Services {
			if j, ok := services[s.Name]; ok && j == i {
				fqdn := strings.ToLower(s.Name) + "." + strings.ToLower(m.DNS.suffix())
				byFQDN[fqdn] = append(byFQDN[fqdn], i)
			}
		}
		for _, fqdn := range slices.Sorted(maps.Keys(byFQDN)) {
			same := byFQDN[fqdn]
			if len(same) < 2 {
				continue
			}
			for k, w := range m.Workloads {
				tp := w.TransparentProxy
				if tp.DNS.Capture == "" || tp.DNS.Capture == redirect.DNSCaptureOff || !tp.Outbound.Enabled {
					continue
				}
				var reached []int
				for _, i := range same {
					if slices.Contains(w.Reach, ReachAll) || slices.Contains(w.Reach, m.Services[i].Name) {
						reached = append(reached, i)
					}
				}
				if len(reached) < 2 {
					continue
				}
				first := reached[0]
				for _, i := range reached[1:] {
					bad(fmt.Sprintf("services[%d].name", i), m.Services[i].Name, fmt.Sprintf("would share the name %s with services[%d] (%s) in the DNS table of workloads[%d] (%s) (transparentProxy.dns.capture %s): DNS names are case-insensitive, and the name would answer both services' virtual IPs", fqdn, first, m.Services[first].Name, k, w.NodeID, tp.DNS.Capture))
				}
				break
			}
		}
	}
	return errs.err()
}

// checkName accepts the names that are safe inside Envoy resource names and
// stats prefixes.
func checkName(s string) error {
	if s == "" {
		return errors.New("is empty")
	}
	if len(s) > 253 {
		return errors.New("is longer than 253 characters")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return fmt.Errorf("has %q; use letters, digits, '-', '.' and '_'", r)
		}
	}
	return nil
}

// checkDNSName accepts a DNS name: dot-separated labels of letters, digits
// and '-' (not at a label's ends), at most 63 characters each and 253 in all.
func checkDNSName(s string) error {
	if len(s) > 253 {
		return errors.New("is longer than 253 characters")
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return errors.New("is not a DNS name (labels of 1 to 63 characters, separated by single dots)")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("has label %q, which starts or ends with '-'", label)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("has %q; a DNS name has letters, digits, '-' and '.'", r)
			}
		}
	}
	return nil
}

func unusableAddr(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "is not an IP address"
	case a.Zone() != "":
		return "has a zone; use an address without one"
	case a.Is4In6():
		return "is an IPv4-mapped IPv6 address; write it as IPv4"
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback():
		return "is not a routable unicast address (loopback, unspecified and multicast are never captured)"
	}
	return ""
}

func addrFamilies(addrs []netip.Addr) (v4, v6 bool) {
	for _, a := range addrs {
		if a.Is4() {
			v4 = true
		} else if a.Is6() {
			v6 = true
		}
	}
	return v4, v6
}

// prefixFieldErrors puts prefix before the field of every *redirect.FieldError
// in err (a single one or an errors.Join of them).
func prefixFieldErrors(prefix string, err error) error {
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range joined.Unwrap() {
			out = append(out, prefixFieldErrors(prefix, e))
		}
		return errors.Join(out...)
	}
	var fe *redirect.FieldError
	if errors.As(err, &fe) {
		c := *fe
		c.Field = prefix + c.Field
		return &c
	}
	return fmt.Errorf("%s: %w", strings.TrimSuffix(prefix, "."), err)
}

// workload returns the workload with the given node id.
func (m *Mesh) workload(nodeID string) (*Workload, bool) {
	for i := range m.Workloads {
		if m.Workloads[i].NodeID == nodeID {
			return &m.Workloads[i], true
		}
	}
	return nil, false
}

// Workload returns the workload served under nodeID.
func (m *Mesh) Workload(nodeID string) (Workload, bool) {
	w, ok := m.workload(nodeID)
	if !ok {
		return Workload{}, false
	}
	return *w, true
}

func (s *Service) selects(w *Workload) bool {
	if len(s.Selector) == 0 {
		return false
	}
	for k, v := range s.Selector {
		if got, ok := w.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}
