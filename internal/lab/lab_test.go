//go:build linux

package lab

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/internal/privtest"
)

func newLab(t *testing.T) *Lab {
	t.Helper()
	privtest.Require(t, "ip")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := New(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

func serve(t *testing.T, n *NetNS, name string, addr netip.AddrPort, opts ServeOptions) *Server {
	t.Helper()
	s, err := n.Serve(name, addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func seed(t *testing.T) *Rand {
	s := uint64(time.Now().UnixNano())
	t.Logf("random seed %d", s)
	return NewRand(s)
}

// Every random address of the remote ranges, in both families, reaches the remote
// namespace's wildcard server untouched, and the server sees the pod as the peer.
func TestRemoteRangesReachRemote(t *testing.T) {
	l := newLab(t)
	r := seed(t)
	ctx := context.Background()
	for _, f := range Families {
		port := r.Port()
		s := serve(t, l.Remote, "remote", netip.AddrPortFrom(f.Unspecified(), port), ServeOptions{})
		for range 20 {
			to := netip.AddrPortFrom(r.RemoteAddr(f), port)
			got, err := l.Pod.Dial(ctx, DialOptions{To: to})
			if err != nil {
				t.Fatal(err)
			}
			if got.Server != "remote" || got.Local != to || got.Original != to || got.Peer.Addr() != PodAddr(f) {
				t.Errorf("dial %s: got %s, want server=remote local=%s peer=%s", to, got, to, PodAddr(f))
			}
		}
		if s.Accepted() != 20 {
			t.Errorf("%s: remote server accepted %d connections, want 20", f, s.Accepted())
		}
	}
}

// The remote can dial the pod from any address it owns, and the pod answers it.
func TestRemoteDialsPodFromItsRanges(t *testing.T) {
	l := newLab(t)
	r := seed(t)
	ctx := context.Background()
	for _, f := range Families {
		port := r.Port()
		serve(t, l.Pod, "app", netip.AddrPortFrom(f.Unspecified(), port), ServeOptions{})
		for range 10 {
			from := r.RemoteAddr(f)
			to := netip.AddrPortFrom(PodAddr(f), port)
			got, err := l.Remote.Dial(ctx, DialOptions{To: to, From: from, FreeBind: true})
			if err != nil {
				t.Fatal(err)
			}
			if got.Server != "app" || got.Local != to || got.Peer.Addr() != from {
				t.Errorf("dial %s from %s: got %s", to, from, got)
			}
		}
	}
}

// Nothing listens on the pod's loopback for the remote, and a dial to a closed
// port is refused rather than hanging.
func TestClosedPortIsRefused(t *testing.T) {
	l := newLab(t)
	r := seed(t)
	for _, f := range Families {
		_, err := l.Pod.Dial(context.Background(), DialOptions{To: netip.AddrPortFrom(r.RemoteAddr(f), r.Port())})
		if !IsRefused(err) {
			t.Errorf("%s: dial to a closed port: got %v, want connection refused", f, err)
		}
	}
}

// The responder answers from the address it was queried at, and reports it.
func TestDNSAnswersFromQueriedAddress(t *testing.T) {
	l := newLab(t)
	r := seed(t)
	ctx := context.Background()
	for _, f := range Families {
		port := r.Port()
		d, err := l.Remote.ServeDNS("remote-dns", netip.AddrPortFrom(f.Unspecified(), port), nil)
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			to := netip.AddrPortFrom(r.RemoteAddr(f), port)
			got, err := l.Pod.QueryDNS(ctx, QueryOptions{To: to})
			if err != nil {
				t.Fatal(err)
			}
			if got.Server != "remote-dns" || got.Local != to || got.From != to || got.Peer.Addr() != PodAddr(f) {
				t.Errorf("query %s: got %s", to, got)
			}
		}
		if d.Answered() != 10 {
			t.Errorf("%s: answered %d, want 10", f, d.Answered())
		}
	}
}

// A REDIRECT rule in the pod (our own namespace) is seen by the server as a
// rewritten destination with the original one recovered, in both families.
func TestOriginalDstAfterRedirect(t *testing.T) {
	privtest.Require(t, "iptables-nft", "ip6tables-nft")
	l := newLab(t)
	r := seed(t)
	ctx := context.Background()
	proxy := r.Port()
	for _, f := range Families {
		serve(t, l.Pod, "proxy", netip.AddrPortFrom(f.Unspecified(), proxy), ServeOptions{})
		cmd := "iptables-nft"
		if f == IPv6 {
			cmd = "ip6tables-nft"
		}
		if _, err := l.Pod.Run(ctx, cmd, "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-o", "eth0", "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(proxy))); err != nil {
			t.Fatal(err)
		}
		for range 10 {
			to := netip.AddrPortFrom(r.RemoteAddr(f), r.Port())
			got, err := l.Pod.Dial(ctx, DialOptions{To: to})
			if err != nil {
				t.Fatal(err)
			}
			if got.Server != "proxy" || got.Original != to || got.Local.Port() != proxy || !got.Redirected() {
				t.Errorf("dial %s: got %s, want the proxy with original %s", to, got, to)
			}
		}
	}
}

// A client thread with a uid/gid is matched by owner rules exactly as a real process
// running as that uid/gid (setpriv), and root's is not.
func TestCredMatchesOwnerRules(t *testing.T) {
	privtest.Require(t, "iptables-nft", "ip6tables-nft", "setpriv", "bash")
	l := newLab(t)
	r := seed(t)
	ctx := context.Background()
	proxy := r.Port()
	uid, gid := r.Uint32(2000, 60000), r.Uint32(2000, 60000)
	for _, f := range Families {
		serve(t, l.Pod, "proxy", netip.AddrPortFrom(f.Unspecified(), proxy), ServeOptions{})
		cmd := "iptables-nft"
		if f == IPv6 {
			cmd = "ip6tables-nft"
		}
		for _, m := range [][]string{{"--uid-owner", strconv.Itoa(int(uid))}, {"--gid-owner", strconv.Itoa(int(gid))}} {
			args := append([]string{"-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-m", "owner"}, m...)
			args = append(args, "-j", "REDIRECT", "--to-ports", strconv.Itoa(int(proxy)))
			if _, err := l.Pod.Run(ctx, cmd, args...); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range Families {
		port := r.Port()
		serve(t, l.Remote, "remote", netip.AddrPortFrom(f.Unspecified(), port), ServeOptions{})
		cases := []struct {
			name string
			cred *Cred
			want string
		}{
			{"root", nil, "remote"},
			{"uid", &Cred{UID: uid, GID: 1}, "proxy"},
			{"gid", &Cred{UID: 1, GID: gid}, "proxy"},
			{"other", &Cred{UID: 1, GID: 1}, "remote"},
		}
		for _, c := range cases {
			to := netip.AddrPortFrom(r.RemoteAddr(f), port)
			got, err := l.Pod.Dial(ctx, DialOptions{To: to, Cred: c.cred})
			if err != nil {
				t.Fatalf("%s %s: %v", f, c.name, err)
			}
			if got.Server != c.want || got.Original != to {
				t.Errorf("%s %s: thread dial %s: got %s, want server %s", f, c.name, to, got, c.want)
			}
			// The same dial from a real process.
			host := to.Addr().String()
			script := "exec 3<>/dev/tcp/" + host + "/" + strconv.Itoa(int(port)) + " && head -n1 <&3"
			out, err := l.Pod.Command(ctx, c.cred, "bash", "-c", script).Output()
			if err != nil {
				t.Fatalf("%s %s: process dial %s: %v", f, c.name, to, err)
			}
			var pr Reply
			if err := json.Unmarshal(out, &pr); err != nil {
				t.Fatalf("%s %s: process dial %s: %v: %q", f, c.name, to, err, out)
			}
			if pr.Server != c.want || pr.Original != to {
				t.Errorf("%s %s: process dial %s: got %s, want server %s", f, c.name, to, pr, c.want)
			}
		}
	}
}

// Close deletes both namespaces, and RemoveLeftovers finds labs by prefix.
func TestCloseAndLeftovers(t *testing.T) {
	privtest.Require(t, "ip")
	ctx := context.Background()
	prefix := "dt-labtest" + strconv.Itoa(os.Getpid())
	l, err := New(ctx, Options{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(l.Pod.Name, prefix+"-") || !strings.HasSuffix(l.Remote.Name, "-remote") {
		t.Errorf("names %s, %s: want prefix %s", l.Pod.Name, l.Remote.Name, prefix)
	}
	gone, err := RemoveLeftovers(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if len(gone) != 2 {
		t.Errorf("RemoveLeftovers removed %v, want the lab's two namespaces", gone)
	}
	for _, n := range []*NetNS{l.Pod, l.Remote} {
		if _, err := os.Stat(n.Path); !os.IsNotExist(err) {
			t.Errorf("%s still exists: %v", n.Path, err)
		}
	}
	if err := l.Close(); err != nil {
		t.Errorf("Close after removal: %v", err)
	}
}
