package iptables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/redirect"
)

// iptables-nft makes a table (`table ip nat`, `table ip6 mangle`, …) and a
// built-in chain as a base chain when the first rule goes in, and never
// deletes them: iptables-restore has no command for either. Left behind after
// detour's rules are gone, the empty base chains still hook every packet of
// the namespace into netfilter (conntrack and NAT run for each new connection)
// and the namespace no longer lists what it did before the install. So when a
// transaction has taken the last of detour's hooks out of a built-in chain,
// that chain is deleted, and then its table when no chain is left in it, over
// netlink with no child process. Each deletion is a transaction of its own
// whose message carries NLM_F_NONREC: the kernel refuses (EBUSY) to delete a
// chain that holds a rule or a table that holds a chain or a set, so a chain
// or table another tool has a rule, chain or set in, also one it added since
// it was observed, is kept as it is.

// emptiedChains returns, by table, the built-in chains that held our hooks in
// from and hold none in to, with tables the family's tables as observed
// before the transaction. A chain whose policy is not ACCEPT is left out: it
// changes packets without a rule, and is not detour's to remove.
func emptiedChains(from, to owned, tables []*saveTable) map[string][]string {
	out := map[string][]string{}
	for _, t := range tables {
		had, ok := from[t.name]
		if !ok {
			continue
		}
		for _, c := range t.chains {
			if c.policy != "ACCEPT" || !hooks(had, c.name) || hooks(to[t.name], c.name) {
				continue
			}
			out[t.name] = append(out[t.name], c.name)
		}
	}
	return out
}

// hooks reports whether t has a hook of ours in the built-in chain.
func hooks(t *ownedTable, chain string) bool {
	return t != nil && slices.ContainsFunc(t.Hooks, func(r Rule) bool { return r.Chain == chain })
}

// deleteEmptied deletes each chain of chains (by table) that holds nothing,
// then each of those tables that holds nothing, in the calling thread's
// network namespace (the one Engine entered). It returns what it deleted.
func deleteEmptied(f redirect.Family, chains map[string][]string) (deleted []string, err error) {
	family := uint8(unix.NFPROTO_IPV4)
	if f == redirect.IPv6 {
		family = unix.NFPROTO_IPV6
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open nfnetlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 5}); err != nil {
		return nil, fmt.Errorf("set nfnetlink receive timeout: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("bind nfnetlink socket: %w", err)
	}
	// kept: the kernel refused, or it is gone already.
	kept := func(err error) bool { return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.ENOENT) }
	for _, table := range tableOrder {
		names, ok := chains[table]
		if !ok {
			continue
		}
		for _, c := range names {
			err := transact(fd, unix.NFT_MSG_DELCHAIN, family, []nlattr{{unix.NFTA_CHAIN_TABLE, table}, {unix.NFTA_CHAIN_NAME, c}})
			if kept(err) {
				continue
			}
			if err != nil {
				return deleted, fmt.Errorf("delete chain %s %s: %w", table, c, err)
			}
			deleted = append(deleted, table+" "+c)
		}
		err := transact(fd, unix.NFT_MSG_DELTABLE, family, []nlattr{{unix.NFTA_TABLE_NAME, table}})
		if kept(err) {
			continue
		}
		if err != nil {
			return deleted, fmt.Errorf("delete table %s: %w", table, err)
		}
		deleted = append(deleted, table)
	}
	return deleted, nil
}

// transact runs one nftables transaction of one deletion that the kernel
// makes only when what it deletes is empty (NLM_F_NONREC).
func transact(fd int, msg uint16, family uint8, attrs []nlattr) error {
	var b batch
	b.add(unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
	b.add(unix.NFNL_SUBSYS_NFTABLES<<8|msg, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_NONREC, family, 0, attrs)
	b.add(unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
	if err := unix.Sendto(fd, b.buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send nftables transaction: %w", err)
	}
	return b.answers(fd)
}

type nlattr struct {
	typ   uint16
	value string // NUL-terminated on the wire
}

// batch is one nfnetlink transaction, the messages numbered from 1.
type batch struct {
	buf  []byte
	acks []uint32 // the sequence numbers that ask for an acknowledgement
}

func (b *batch) add(typ, flags uint16, family uint8, resID uint16, attrs []nlattr) {
	seq := uint32(len(b.acks) + 1)
	start := len(b.buf)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0) // length, set below
	b.buf = binary.NativeEndian.AppendUint16(b.buf, typ)
	b.buf = binary.NativeEndian.AppendUint16(b.buf, flags)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, seq)
	b.buf = binary.NativeEndian.AppendUint32(b.buf, 0) // port id: the kernel's
	b.buf = append(b.buf, family, unix.NFNETLINK_V0)
	b.buf = binary.BigEndian.AppendUint16(b.buf, resID)
	for _, a := range attrs {
		n := unix.SizeofNlAttr + len(a.value) + 1
		b.buf = binary.NativeEndian.AppendUint16(b.buf, uint16(n))
		b.buf = binary.NativeEndian.AppendUint16(b.buf, a.typ)
		b.buf = append(b.buf, a.value...)
		b.buf = append(b.buf, 0)
		for len(b.buf)%4 != 0 {
			b.buf = append(b.buf, 0)
		}
	}
	binary.NativeEndian.PutUint32(b.buf[start:], uint32(len(b.buf)-start))
	if flags&unix.NLM_F_ACK != 0 {
		b.acks = append(b.acks, seq)
	} else {
		b.acks = append(b.acks, 0)
	}
}

// answers reads the kernel's answers until every message that asked for an
// acknowledgement has one, and returns the first error answered.
func (b *batch) answers(fd int) error {
	waiting := map[uint32]bool{}
	for _, seq := range b.acks {
		if seq != 0 {
			waiting[seq] = true
		}
	}
	buf := make([]byte, 4096)
	for len(waiting) > 0 {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read nftables answer: %w", err)
		}
		for msg := buf[:n]; len(msg) >= unix.NLMSG_HDRLEN; {
			size := int(binary.NativeEndian.Uint32(msg))
			if size < unix.NLMSG_HDRLEN || size > len(msg) {
				return fmt.Errorf("read nftables answer: a message of %d bytes in %d", size, len(msg))
			}
			typ := binary.NativeEndian.Uint16(msg[4:])
			seq := binary.NativeEndian.Uint32(msg[8:])
			if typ == unix.NLMSG_ERROR && size >= unix.NLMSG_HDRLEN+4 {
				if code := int32(binary.NativeEndian.Uint32(msg[unix.NLMSG_HDRLEN:])); code < 0 {
					return unix.Errno(-code)
				}
				delete(waiting, seq)
			}
			msg = msg[min((size+3)&^3, len(msg)):]
		}
	}
	return nil
}
