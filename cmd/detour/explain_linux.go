package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

// localAddrs are the addresses of the namespace at nsPath ("" = ours).
func localAddrs(nsPath string) (map[netip.Addr]bool, error) {
	out := map[netip.Addr]bool{}
	err := onThread(nsPath, nil, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					out[ip.Unmap()] = true
				}
			}
		}
		return nil
	})
	return out, err
}

// liveProbe opens the connection for real, as validate's probes do: it
// listens on the proxy port the verdict names (the outbound port when the
// verdict is "left alone") and dials --to as the connection's uid and gid.
func liveProbe(ctx context.Context, p planned, conn redirect.Conn, e explanation, timeout time.Duration) *liveOutcome {
	port := e.Port
	if !e.Captured {
		port = p.plan.Config.Proxy.OutboundPort
	}
	out := &liveOutcome{Port: port}
	root := os.Geteuid() == 0
	if !root && (conn.UID != uint32(os.Geteuid()) || conn.GID != uint32(os.Getegid())) {
		out.Error = fmt.Sprintf("connecting as uid %d gid %d needs root", conn.UID, conn.GID)
		return out
	}
	fam := redirect.IPv4
	if conn.Dst.Is6() {
		fam = redirect.IPv6
	}
	pr := probe{family: fam, dst: netip.AddrPortFrom(conn.Dst, conn.Port), uid: conn.UID, gid: conn.GID, become: root}
	got, err := runProbe(ctx, p.nsPath, port, pr, timeout)
	switch {
	case errors.Is(err, errPortInUse):
		out.Error = fmt.Sprintf("port %d is in use (is the proxy running?); --live listens there itself", port)
		return out
	case errors.Is(err, errNoRoute):
		out.Error = fmt.Sprintf("no route to %s in this namespace", conn.Dst)
		return out
	}
	out.Probed = true
	if err != nil {
		out.Error = err.Error()
		out.NoAnswer = errors.Is(err, errNoAnswer)
	} else {
		out.Arrived, out.OriginalDst = true, got.dst.String()
	}
	out.Agrees = !out.NoAnswer && out.Arrived == e.Captured && (!out.Arrived || got.dst == pr.dst)
	return out
}
