package lab

import (
	"math/rand/v2"
	"net/netip"
	"sync"
)

// Family is an IP family of the lab.
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

// Families lists both families, IPv4 first.
var Families = []Family{IPv4, IPv6}

// TCP and UDP return the Go network names of the family ("tcp4", "udp6", …).
func (f Family) TCP() string { return "tcp" + f.digit() }
func (f Family) UDP() string { return "udp" + f.digit() }

func (f Family) digit() string {
	if f == IPv6 {
		return "6"
	}
	return "4"
}

// Loopback is 127.0.0.1 or ::1.
func (f Family) Loopback() netip.Addr {
	if f == IPv6 {
		return netip.IPv6Loopback()
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// Unspecified is 0.0.0.0 or ::.
func (f Family) Unspecified() netip.Addr {
	if f == IPv6 {
		return netip.IPv6Unspecified()
	}
	return netip.IPv4Unspecified()
}

// Of returns the family of a.
func Of(a netip.Addr) Family {
	if a.Is4() || a.Is4In6() {
		return IPv4
	}
	return IPv6
}

// The lab's fixed addresses.
var (
	PodIPv4    = netip.MustParseAddr("203.0.113.2")
	PodIPv6    = netip.MustParseAddr("2001:db8:1::2")
	RemoteIPv4 = netip.MustParseAddr("203.0.113.1")
	RemoteIPv6 = netip.MustParseAddr("2001:db8:1::1")

	// RemoteRanges are owned by the remote namespace and routed to it from the pod.
	RemoteRanges = map[Family][]netip.Prefix{
		IPv4: {netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("198.51.100.0/24")},
		IPv6: {netip.MustParsePrefix("2001:db8:ffff::/48")},
	}
)

// PodAddr returns the pod's address of the family.
func PodAddr(f Family) netip.Addr {
	if f == IPv6 {
		return PodIPv6
	}
	return PodIPv4
}

// RemoteLinkAddr returns the remote's address on the veth link.
func RemoteLinkAddr(f Family) netip.Addr {
	if f == IPv6 {
		return RemoteIPv6
	}
	return RemoteIPv4
}

// Rand hands out random addresses and ports, never the same port twice. It is safe
// for concurrent use. Tests seed it and log the seed so a failure can be replayed.
type Rand struct {
	mu    sync.Mutex
	r     *rand.Rand
	ports map[uint16]bool
}

// NewRand returns a Rand seeded with seed.
func NewRand(seed uint64) *Rand {
	return &Rand{r: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), ports: map[uint16]bool{}}
}

// Reserve marks ports as taken so Port never returns them.
func (r *Rand) Reserve(ports ...uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range ports {
		r.ports[p] = true
	}
}

// PortRange returns n consecutive ports that were not returned before, and reserves
// them.
func (r *Rand) PortRange(n int) (first, last uint16) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		p := 1024 + r.r.IntN(32768-1024-n)
		free := true
		for i := range n {
			free = free && !r.ports[uint16(p+i)]
		}
		if free {
			for i := range n {
				r.ports[uint16(p+i)] = true
			}
			return uint16(p), uint16(p + n - 1)
		}
	}
}

// Port returns a random port in 1024–32767, below Linux's ephemeral range so that it
// never collides with a client's source port, and not returned before.
func (r *Rand) Port() uint16 {
	r.mu.Lock()
	defer r.mu.Unlock()
	for {
		p := uint16(1024 + r.r.IntN(32768-1024))
		if !r.ports[p] {
			r.ports[p] = true
			return p
		}
	}
}

// IntN returns a random int in [0, n).
func (r *Rand) IntN(n int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.r.IntN(n)
}

// In returns a random host address inside p (neither the network nor, for IPv4, the
// broadcast address).
func (r *Rand) In(p netip.Prefix) netip.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	p = p.Masked()
	b := p.Addr().AsSlice()
	hostBits := len(b)*8 - p.Bits()
	for {
		out := append([]byte(nil), b...)
		for i := range hostBits {
			bit := len(out)*8 - 1 - i
			if r.r.IntN(2) == 1 {
				out[bit/8] |= 1 << (7 - bit%8)
			}
		}
		a, _ := netip.AddrFromSlice(out)
		if a == p.Addr() || (a.Is4() && hostBits > 0 && isBroadcast(out, hostBits)) {
			if hostBits <= 1 {
				return a
			}
			continue
		}
		return a
	}
}

func isBroadcast(b []byte, hostBits int) bool {
	for i := range hostBits {
		bit := len(b)*8 - 1 - i
		if b[bit/8]&(1<<(7-bit%8)) == 0 {
			return false
		}
	}
	return true
}

// RemoteAddr returns a random address owned by the remote namespace.
func (r *Rand) RemoteAddr(f Family) netip.Addr {
	ranges := RemoteRanges[f]
	return r.In(ranges[r.IntN(len(ranges))])
}

// Uint32 returns a random number in [lo, hi].
func (r *Rand) Uint32(lo, hi uint32) uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return lo + uint32(r.r.IntN(int(hi-lo+1)))
}
