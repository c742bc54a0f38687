package redirect

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/detour-mesh/detour/internal/netns"
	"github.com/detour-mesh/detour/internal/regularfile"
)

func (e *Engine) facts(_ context.Context, cfg Config) (Facts, error) {
	var f Facts
	err := netns.Do(e.NetNS, func() (err error) {
		if f.IPv6, err = hasIPv6(); err != nil || !f.IPv6 {
			return err
		}
		f.LoIPv6Disabled, err = loIPv6Disabled()
		return err
	})
	if err != nil {
		return f, err
	}
	if cfg.DNS.Capture == DNSCaptureResolvConf {
		if f.Nameservers, err = readNameservers(cfg.DNS.ResolvConf); err != nil {
			return f, err
		}
	}
	return f, nil
}

// loIPv6Disabled reports whether lo of the calling thread's namespace has
// IPv6 disabled.
func loIPv6Disabled() (bool, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read ipv6 state of lo: %w", err)
	}
	return strings.TrimSpace(string(b)) == "1", nil
}

// hasIPv6 reports whether any interface of the calling thread's network
// namespace has IPv6 enabled. net.ipv6.conf.all.disable_ipv6 is not the
// answer: writing it sets every interface, but an interface may turn IPv6 back
// on afterwards (all=1, eth0=0 leaves eth0 with IPv6). An interface whose
// disable_ipv6 is 0, or any address in if_inet6, means IPv6 traffic can flow.
// /proc/sys/net and /proc/thread-self/net follow the calling thread's
// namespace; both are missing when the kernel runs without IPv6.
func hasIPv6() (bool, error) {
	const conf = "/proc/sys/net/ipv6/conf"
	entries, err := os.ReadDir(conf)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read ipv6 state: %w", err)
	}
	for _, ent := range entries {
		if name := ent.Name(); name == "all" || name == "default" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(conf, ent.Name(), "disable_ipv6"))
		if errors.Is(err, os.ErrNotExist) {
			continue // the interface went away meanwhile
		}
		if err != nil {
			return false, fmt.Errorf("read ipv6 state of %s: %w", ent.Name(), err)
		}
		if strings.TrimSpace(string(b)) == "0" {
			return true, nil
		}
	}
	b, err := os.ReadFile("/proc/thread-self/net/if_inet6")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("read ipv6 addresses: %w", err)
	}
	return len(bytes.TrimSpace(b)) > 0, nil
}

// maxResolvConf bounds what readNameservers reads: a resolv.conf is a few
// hundred bytes; a path to something endless must not exhaust memory.
const maxResolvConf = 1 << 20

// readNameservers returns the nameserver addresses of a resolv.conf file, in
// order, without zones. Lines that are not valid nameserver lines are skipped,
// as the resolver skips them. A file that cannot be read, is not a regular
// file (a FIFO would block the command until someone writes to it, /dev/zero
// would never end) or is larger than maxResolvConf is invalid input: a
// *FieldError for dns.resolvConf with the path.
func readNameservers(path string) ([]netip.Addr, error) {
	invalid := func(reason string) error {
		return &FieldError{Field: "dns.resolvConf", Value: path, Reason: reason}
	}
	unreadable := func(err error) error {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err // the path is the value already
		}
		return invalid("cannot be read (dns.capture resolvconf reads its nameservers): " + err.Error())
	}
	f, err := regularfile.Open(path)
	if errors.Is(err, regularfile.ErrNotRegular) {
		return nil, invalid("is not a regular file (dns.capture resolvconf reads its nameservers from a resolv.conf file)")
	} else if err != nil {
		return nil, unreadable(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxResolvConf+1))
	if err != nil {
		return nil, unreadable(err)
	}
	if len(data) > maxResolvConf {
		return nil, invalid("is larger than 1 MiB; it is not a resolv.conf")
	}
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil {
			out = append(out, a.WithZone("").Unmap())
		}
	}
	return out, nil
}
