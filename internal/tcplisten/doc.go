// Package tcplisten listens on TCP addresses as they are written in detour's
// flags, and names the families a listener takes.
//
// Go's net.Listen("tcp", "0.0.0.0:p") opens an IPv6 socket that also takes
// IPv4 (IPV6_V6ONLY off), so it listens on every IPv6 address too and its
// Addr says [::]:p — neither what 0.0.0.0 means to an operator (Envoy,
// nginx: every IPv4 address) nor what was asked. Listen keeps an IPv4
// address to IPv4; [::] and an empty host stay every address of both
// families, as in Go.
//
// Privileges: none beyond those of the port (below 1024: CAP_NET_BIND_SERVICE).
// It must not import other detour packages.
package tcplisten
