package iptables

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math/bits"
	"os"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/redirect"
)

var _ redirect.Glancer = (*Driver)(nil)

// Glance tells without iptables-save whether the backend may hold anything
// of detour's in the namespace of the calling thread (redirect.Glancer).
// Whatever is there that is not an empty built-in chain — a rule, a user
// chain, ours or another tool's — makes it answer "maybe", and Observe (the
// save processes) tells exactly. It spawns nothing and writes nothing.
//
// iptables-legacy: /proc/thread-self/net/ip_tables_names (and ip6_) list the
// tables that exist in the namespace; for each, the kernel's table info
// (getsockopt IPT_SO_GET_INFO, what iptables-legacy reads first) counts its
// entries, which are one per built-in chain plus one when the table holds
// nothing else. Only tables that exist are asked: asking for a missing one
// would make the kernel create it.
//
// iptables-nft: its tables are nf_tables tables of the families ip and ip6;
// one netlink dump of their chains and, when there are any, one of their
// rules per family say whether they hold a DETOUR_ chain or any rule.
func (d *Driver) Glance(ctx context.Context) (bool, error) {
	d.detect.count(ctx) // the host-default check's `iptables -V`, when Drivers ran it
	if d.Backend == redirect.BackendIPTablesNFT {
		return glanceNFT()
	}
	return glanceLegacy()
}

// glanceLegacy: anything beyond empty built-in chains in a legacy table.
func glanceLegacy() (bool, error) {
	for _, f := range []struct {
		names string
		af    int
		level int
	}{
		{"/proc/thread-self/net/ip_tables_names", unix.AF_INET, unix.SOL_IP},
		{"/proc/thread-self/net/ip6_tables_names", unix.AF_INET6, unix.SOL_IPV6},
	} {
		b, err := os.ReadFile(f.names)
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Stat("/proc/thread-self/net"); serr != nil {
				return true, fmt.Errorf("read %s: %w", f.names, err)
			}
			continue // no ip_tables module: no legacy table in any namespace
		}
		if err != nil {
			return true, fmt.Errorf("read %s: %w", f.names, err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			table := strings.TrimSpace(sc.Text())
			if table == "" {
				continue
			}
			more, err := legacyTableHoldsMore(f.af, f.level, table)
			if err != nil || more {
				return true, err
			}
		}
	}
	return false, nil
}

// iptGetinfo is struct ipt_getinfo (and ip6t_getinfo) of linux/netfilter_ipv4/ip_tables.h.
type iptGetinfo struct {
	Name       [32]byte
	ValidHooks uint32
	HookEntry  [5]uint32
	Underflow  [5]uint32
	NumEntries uint32
	Size       uint32
}

// soGetInfo is IPT_SO_GET_INFO and IP6T_SO_GET_INFO (IPT_BASE_CTL).
const soGetInfo = 64

// legacyTableHoldsMore reports whether the existing legacy table holds more
// entries than its built-in chains' policies and the closing error entry.
func legacyTableHoldsMore(af, level int, table string) (bool, error) {
	fd, err := unix.Socket(af, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return true, fmt.Errorf("open raw socket to read table %s: %w", table, err)
	}
	defer unix.Close(fd)
	var info iptGetinfo
	if len(table) >= len(info.Name) {
		return true, fmt.Errorf("table name %q is too long", table)
	}
	copy(info.Name[:], table)
	size := uint32(unsafe.Sizeof(info))
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soGetInfo,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return true, fmt.Errorf("read info of table %s: %w", table, errno)
	}
	return info.NumEntries > uint32(bits.OnesCount32(info.ValidHooks))+1, nil
}

// glanceNFT: a DETOUR_ chain, or any rule, in a table of family ip or ip6.
func glanceNFT() (bool, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return true, fmt.Errorf("open nfnetlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return true, fmt.Errorf("bind nfnetlink socket: %w", err)
	}
	// A dump answers in datagrams of at most 32 KiB (the kernel sizes them
	// by the largest read buffer seen, up to that): one buffer of that size
	// serves every dump.
	buf := make([]byte, 32<<10)
	for _, fam := range []byte{unix.NFPROTO_IPV4, unix.NFPROTO_IPV6} {
		chains := 0
		ours := false
		err := dump(fd, buf, unix.NFT_MSG_GETCHAIN, fam, func(attrs []byte) {
			chains++
			if name, ok := attr(attrs, unix.NFTA_CHAIN_NAME); ok && bytes.HasPrefix(name, []byte(chainPrefix)) {
				ours = true
			}
		})
		if err != nil || ours {
			return true, err
		}
		if chains == 0 {
			continue
		}
		rules := 0
		if err := dump(fd, buf, unix.NFT_MSG_GETRULE, fam, func([]byte) { rules++ }); err != nil || rules > 0 {
			return true, err
		}
	}
	return false, nil
}

// dump sends one nf_tables dump request of family fam and calls each for
// the attributes of every object the kernel answers with, reading into buf.
func dump(fd int, buf []byte, msg uint16, fam byte, each func(attrs []byte)) error {
	seq := uint32(msg)<<8 | uint32(fam) // one request of each kind and family per socket
	req := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:], unix.NFNL_SUBSYS_NFTABLES<<8|msg)
	binary.NativeEndian.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:], seq)
	req[unix.NLMSG_HDRLEN] = fam
	req[unix.NLMSG_HDRLEN+1] = unix.NFNETLINK_V0
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send nf_tables dump request: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
		if err != nil {
			return fmt.Errorf("read nf_tables dump: %w", err)
		}
		if n > len(buf) {
			return fmt.Errorf("read nf_tables dump: a datagram of %d bytes in a buffer of %d", n, len(buf))
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("read nf_tables dump: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
						return fmt.Errorf("nf_tables dump: %w", unix.Errno(-code))
					}
				}
				return nil
			}
			if len(m.Data) >= 4 {
				each(m.Data[4:])
			}
		}
	}
}

// attr returns the payload of the first netlink attribute of type typ.
func attr(b []byte, typ uint16) ([]byte, bool) {
	for len(b) >= unix.SizeofNlAttr {
		l := int(binary.NativeEndian.Uint16(b))
		t := binary.NativeEndian.Uint16(b[2:]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < unix.SizeofNlAttr || l > len(b) {
			return nil, false
		}
		if t == typ {
			return b[unix.SizeofNlAttr:l], true
		}
		al := (l + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if al > len(b) {
			return nil, false
		}
		b = b[al:]
	}
	return nil, false
}
