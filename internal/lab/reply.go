package lab

import (
	"fmt"
	"net/netip"
)

// Reply is what a lab server tells a client about the connection (or DNS query) it
// received.
type Reply struct {
	// Server is the name the server was started with.
	Server string `json:"server"`
	// Local is the server socket's local address: where the connection arrived.
	// Under TPROXY it is the destination the client dialed.
	Local netip.AddrPort `json:"local"`
	// Original is the destination recovered with SO_ORIGINAL_DST /
	// IP6T_SO_ORIGINAL_DST, or Local when the kernel has none (no conntrack entry).
	Original netip.AddrPort `json:"original"`
	// Peer is the client address the server saw.
	Peer netip.AddrPort `json:"peer"`
	// Client is the local address of the client's socket; Dial fills it in (it is
	// not part of what the server sends).
	Client netip.AddrPort `json:"-"`
}

// Redirected reports whether the destination was rewritten on the way (REDIRECT).
func (r Reply) Redirected() bool { return r.Original != r.Local }

func (r Reply) String() string {
	return fmt.Sprintf("server=%s local=%s original=%s peer=%s", r.Server, r.Local, r.Original, r.Peer)
}

// DNSReply is what a DNS client saw: the responder's Reply and the address the
// answer came from.
type DNSReply struct {
	Reply
	// From is the source address of the answer datagram.
	From netip.AddrPort `json:"from"`
}

func (r DNSReply) String() string {
	return fmt.Sprintf("%s from=%s", r.Reply, r.From)
}
