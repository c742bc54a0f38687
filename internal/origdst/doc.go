// Package origdst reads the destination a redirected TCP connection was
// originally sent to (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST), as a proxy behind
// nat REDIRECT must. It needs no privileges; it works on Linux only (elsewhere it
// returns errors.ErrUnsupported). It must not import other detour packages.
package origdst
