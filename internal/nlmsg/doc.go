// Package nlmsg is the few netlink requests detour makes without a netlink
// library: one blocking socket of the calling thread's network namespace,
// a request and its answer (a dump's messages or an acknowledgement), an
// nfnetlink transaction of one message, and attributes. The redirect
// package's TPROXY routing and lo addresses (rtnetlink) and the iptables
// backend's deletion of emptied tables (nf_tables) use it; a general client
// would cost every start of detour and detour-cni its package initialization
// and a receive buffer on the goroutine's stack (docs/startup.md).
//
// It must not import other detour packages.
package nlmsg
