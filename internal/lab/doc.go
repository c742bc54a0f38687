// Package lab builds throwaway network labs for detour's end-to-end tests and its
// demo: a "pod" network namespace and a "remote" network namespace joined by a veth
// pair, servers that answer with the original destination they recovered, a DNS
// responder, and clients that dial as a chosen uid/gid.
//
// # Topology
//
//	pod (eth0)                              remote (eth0)
//	203.0.113.2/24, 2001:db8:1::2/64  <->   203.0.113.1/24, 2001:db8:1::1/64
//	default routes via the remote           owns 192.0.2.0/24, 198.51.100.0/24 and
//	                                        2001:db8:ffff::/48 (local routes on lo)
//
// Any address in the remote ranges (RemoteAddr picks random ones) is routed from the
// pod to the remote namespace, which accepts it as its own, so a connection that is not
// redirected really reaches a server there. Like a real pod's, the pod's default
// routes make every destination routable; the remote has no route beyond the veth
// link, so nothing ever leaves the two namespaces. The root network namespace is never
// changed: the veth pair is created from inside the pod namespace with its peer placed
// directly in the remote one, and every address and route is set inside the two
// namespaces. Close (and Lab.Close on every path, also after a failure) removes both.
//
// # Servers and clients run in-process
//
// Sockets belong to the network namespace of the thread that created them. NetNS.Do
// runs a function on a fresh OS thread that has entered the namespace (setns); the
// thread is locked and never unlocked, so it is thrown away when the function returns
// and no other goroutine ever runs in the namespace by accident. Servers create their
// listening sockets that way and then serve from ordinary goroutines.
//
// Clients dial "as a uid/gid" by setting the thread's filesystem uid and gid
// (setfsuid/setfsgid, per thread) before creating the socket. That is exactly what the
// kernel's owner matches look at: xt_owner (iptables -m owner --uid-owner/--gid-owner)
// and nft's meta skuid/skgid compare the fsuid/fsgid of the credentials the socket's
// file was opened with. The thread keeps its root capabilities, which is what lets it
// enter the namespace (entering a namespace as a non-root user fails). A cross-check
// test dials from a real process started with setpriv as the same uid and expects the
// same result; Command builds such processes for the demo's sidecar.
//
// Servers reply to each TCP connection with one JSON line (Reply): their name, the
// socket's local address, the original destination they recovered (SO_ORIGINAL_DST /
// IP6T_SO_ORIGINAL_DST for REDIRECT, else the local address, which is the original
// destination under TPROXY) and the peer address they saw. The DNS responder answers a
// TXT query with the same JSON.
//
// Everything here needs root (CAP_SYS_ADMIN for setns, CAP_NET_ADMIN, CAP_SETUID for
// setfsuid). Only Linux is supported; elsewhere New returns errors.ErrUnsupported.
// The package runs `ip` (iproute2) and must not import the redirect engine: it is the
// independent witness of what the engine did.
package lab
