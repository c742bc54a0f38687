package nftables

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	nft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/redirect"
)

// open opens the socket of one Driver call in the Driver's namespace.
func (d *Driver) open() (*socket, error) { return openSocket(d.opts.NetNSFd) }

// Ready reports whether nf_tables answers in the namespace.
func (d *Driver) Ready(ctx context.Context) error {
	s, err := d.open()
	if err != nil {
		return fmt.Errorf("%w: %w", redirect.ErrNotSupported, err)
	}
	defer s.Close()
	if _, err := listTables(s); err != nil {
		return fmt.Errorf("%w: the kernel's nf_tables does not answer (module nf_tables, and for detour's rules nft_chain_nat, nft_redir, nft_tproxy, nft_socket, nft_fib_inet, nft_ct, nft_limit, nft_log): %w", redirect.ErrNotSupported, err)
	}
	return nil
}

func nfgen(fam byte) []byte { return []byte{fam, unix.NFNETLINK_V0, 0, 0} }

type tableID struct {
	family byte
	name   string
}

func listTables(s *socket) ([]tableID, error) {
	msgs, err := s.execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETTABLE), Flags: netlink.Request | netlink.Dump},
		Data:   nfgen(unix.NFPROTO_UNSPEC),
	})
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	var out []tableID
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		attrs, err := netlink.UnmarshalAttributes(m.Data[4:])
		if err != nil {
			return nil, err
		}
		for _, a := range attrs {
			if a.Type == unix.NFTA_TABLE_NAME {
				out = append(out, tableID{family: m.Data[0], name: string(trimNUL(a.Data))})
			}
		}
	}
	return out, nil
}

// xtablesTable reports a table of iptables-nft (ip or ip6 filter, nat,
// mangle, raw, security).
func xtablesTable(t tableID) bool {
	if t.family != unix.NFPROTO_IPV4 && t.family != unix.NFPROTO_IPV6 {
		return false
	}
	switch t.name {
	case "filter", "nat", "mangle", "raw", "security":
		return true
	}
	return false
}

var familyNames = map[byte]string{unix.NFPROTO_INET: "inet", unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6", unix.NFPROTO_ARP: "arp", unix.NFPROTO_BRIDGE: "bridge", unix.NFPROTO_NETDEV: "netdev"}

// ObserveTable reads detour's table: chains (hooks and priorities decode
// exactly), sets and their elements (exact), and every rule's expressions as
// bytes, checked against the fingerprint its userdata carries.
func (d *Driver) ObserveTable(ctx context.Context) (*Observed, error) {
	s, err := d.open()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	tables, err := listTables(s)
	if err != nil {
		return nil, err
	}
	name := d.table()
	o := &Observed{v: view{table: name}, rs: Ruleset{Table: name}}
	for _, t := range tables {
		if t.family == unix.NFPROTO_INET && t.name == name {
			o.present = true
			continue
		}
		if t.family == unix.NFPROTO_INET && ownTable(t.name) {
			// another Driver's table of detour's (an eBPF scope's inbound
			// table): not another tool's
			o.siblings = append(o.siblings, t.name)
			continue
		}
		if xtablesTable(t) {
			// iptables-nft's own tables: its Driver judges them (they count
			// as other tools' state when they hold rules). Empty ones are
			// what any iptables-nft use leaves behind, detour's own install
			// and uninstall included, and must not make auto pick nftables.
			continue
		}
		o.foreign = append(o.foreign, familyNames[t.family]+" "+t.name)
	}
	slices.Sort(o.siblings)
	if !o.present {
		return o, nil
	}
	lc, err := s.lib()
	if err != nil {
		return nil, err
	}
	sets, err := lc.GetSets(table(name))
	if err != nil {
		return nil, fmt.Errorf("list sets of table inet %s: %w", name, err)
	}
	sort.SliceStable(sets, func(i, j int) bool { return sets[i].ID < sets[j].ID })
	for _, s := range sets {
		vs, set, err := observeSet(lc, s, name)
		if err != nil {
			return nil, err
		}
		o.v.sets = append(o.v.sets, vs)
		if set != nil {
			o.rs.Sets = append(o.rs.Sets, set)
		} else {
			o.problems = append(o.problems, vs.lines...)
		}
	}
	chains, err := lc.ListChainsOfTableFamily(nft.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list chains of table inet %s: %w", name, err)
	}
	rules, err := dumpRules(s, name)
	if err != nil {
		return nil, err
	}
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != name {
			continue
		}
		vc := viewChain{name: ch.Name, decl: "add chain inet " + name + " " + ch.Name}
		rc := &Chain{Name: ch.Name}
		if ch.Hooknum != nil {
			hook := map[nft.ChainHook]string{*nft.ChainHookPrerouting: "prerouting", *nft.ChainHookOutput: "output"}[*ch.Hooknum]
			if hook == "" {
				hook = fmt.Sprintf("hook%d", *ch.Hooknum)
			}
			var prio int32
			if ch.Priority != nil {
				prio = int32(*ch.Priority)
			}
			policy := "accept"
			if ch.Policy != nil && *ch.Policy == nft.ChainPolicyDrop {
				policy = "drop"
			}
			vc.decl = fmt.Sprintf("add chain inet %s %s { type %s hook %s priority %d; policy %s; }", name, ch.Name, ch.Type, hook, prio, policy)
			rc.Hook = &Hook{Type: string(ch.Type), Hook: hook, Priority: prio}
		} else {
			vc.fam = familyOfName(ch.Name)
			rc.Family = vc.fam
		}
		for _, r := range rules[ch.Name] {
			fam := vc.fam
			if fam == "" {
				fam = familyOfRule(r.text)
			}
			vc.rules = append(vc.rules, viewRule{fam: fam, text: r.text})
			o.unparsed = append(o.unparsed, unparsedRule{chain: rc, fam: fam, text: r.text})
		}
		o.v.chains = append(o.v.chains, vc)
		o.rs.Chains = append(o.rs.Chains, rc)
	}
	return o, nil
}

var kindByType = map[string]setKind{"ipv4_addr": kindIPv4, "ipv6_addr": kindIPv6, "inet_service": kindPort, "uid": kindUID, "gid": kindGID}

func observeSet(lc *nft.Conn, s *nft.Set, table string) (viewSet, *Set, error) {
	vs := viewSet{fam: familyOfName(s.Name)}
	kind, ok := kindByType[s.KeyType.Name]
	if !ok || !s.Interval {
		vs.lines = []string{fmt.Sprintf("add set inet %s %s { type %s; } # not a set detour makes", table, s.Name, s.KeyType.Name)}
		return vs, nil, nil
	}
	elems, err := lc.GetSetElements(s)
	if err != nil {
		return vs, nil, fmt.Errorf("list elements of set %s: %w", s.Name, err)
	}
	slices.SortStableFunc(elems, func(a, b nft.SetElement) int {
		if c := bytes.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		// At one key, an interval's end sorts before the next start.
		switch {
		case a.IntervalEnd && !b.IntervalEnd:
			return -1
		case !a.IntervalEnd && b.IntervalEnd:
			return 1
		}
		return 0
	})
	set := &Set{Name: s.Name, Kind: kind}
	w := kind.width()
	var open []byte
	for _, e := range elems {
		if len(e.Key) != w {
			continue // the kernel's zero-key interval end some tools add
		}
		if e.IntervalEnd {
			if open != nil {
				set.Elems = append(set.Elems, keyRange{open, prev(e.Key)})
				open = nil
			}
			continue
		}
		if open != nil { // a start without an end before the next start
			set.Elems = append(set.Elems, keyRange{open, open})
		}
		open = e.Key
	}
	if open != nil {
		set.Elems = append(set.Elems, keyRange{open, bytes.Repeat([]byte{0xff}, w)})
	}
	vs.lines = set.lines(table)
	return vs, set, nil
}

func prev(k []byte) []byte {
	n := slices.Clone(k)
	for i := len(n) - 1; i >= 0; i-- {
		n[i]--
		if n[i] != 0xff {
			break
		}
	}
	return n
}

type dumpedRule struct {
	handle uint64
	text   string
}

// dumpRules reads every rule of detour's table, by chain, in order. A rule's
// text is the one its userdata carries when its expressions still hash to the
// fingerprint stored with it; otherwise it says what is wrong, so it never
// equals a planned line.
func dumpRules(s *socket, table string) (map[string][]dumpedRule, error) {
	req, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")}})
	if err != nil {
		return nil, err
	}
	msgs, err := s.execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE), Flags: netlink.Request | netlink.Dump},
		Data:   append(nfgen(unix.NFPROTO_INET), req...),
	})
	if err != nil {
		return nil, fmt.Errorf("list rules of table inet %s: %w", table, err)
	}
	out := map[string][]dumpedRule{}
	var exprs [][]byte
	for _, m := range msgs {
		if len(m.Data) < 4 || m.Data[0] != unix.NFPROTO_INET {
			continue
		}
		var tbl, chain, ud []byte
		var r dumpedRule
		exprs = exprs[:0]
		it := attrs{b: m.Data[4:]}
		for {
			typ, data, ok := it.next()
			if !ok {
				break
			}
			switch typ &^ unix.NLA_F_NESTED {
			case unix.NFTA_RULE_TABLE:
				tbl = trimNUL(data)
			case unix.NFTA_RULE_CHAIN:
				chain = trimNUL(data)
			case unix.NFTA_RULE_HANDLE:
				if len(data) == 8 {
					r.handle = binary.BigEndian.Uint64(data)
				}
			case unix.NFTA_RULE_USERDATA:
				ud = data
			case unix.NFTA_RULE_EXPRESSIONS:
				list := attrs{b: data}
				for {
					_, e, ok := list.next()
					if !ok {
						break
					}
					exprs = append(exprs, e)
				}
				if list.err != nil {
					return nil, fmt.Errorf("list rules of table inet %s: %w", table, list.err)
				}
			}
		}
		if it.err != nil {
			return nil, fmt.Errorf("list rules of table inet %s: %w", table, it.err)
		}
		if string(tbl) != table {
			continue
		}
		r.text = ruleText(r.handle, exprs, ud)
		out[string(chain)] = append(out[string(chain)], r)
	}
	return out, nil
}

func ruleText(handle uint64, exprs [][]byte, ud []byte) string {
	tlv := parseUD(ud)
	text, fp := tlv[udText], tlv[udFingerprint]
	got, err := fingerprint(exprs)
	switch {
	case text == nil:
		return fmt.Sprintf("# rule handle %d was not made by detour (%d expressions)", handle, len(exprs))
	case err != nil:
		return fmt.Sprintf("# rule handle %d does not decode (%v): %s", handle, err, text)
	case !bytes.Equal(got, fp):
		return fmt.Sprintf("# rule handle %d was changed after detour made it: %s", handle, text)
	}
	return string(text)
}

// ApplyRuleset makes the namespace hold rs, given what ObserveTable returned: nothing
// is written when the observed table already equals the plan line by line
// (changed false). Otherwise one batch replaces the table — delete and
// create in the same transaction, so packets see the old table or the new
// one, never none — or, for an empty plan, deletes it. The batch deletes the
// table even when none was observed: a table that a concurrent run made
// meanwhile is replaced, never added to, so concurrent applies of one plan
// end in exactly one copy even without detour's lock.
func (d *Driver) ApplyRuleset(ctx context.Context, rs *Ruleset, have *Observed) (bool, error) {
	named := *rs
	named.Table = d.table() // the Driver's table, whatever rs was rendered for
	rs = &named
	if slices.Equal(have.Lines(""), rs.Lines("")) {
		return false, nil
	}
	msgs, err := rs.batch(!have.Empty() || !rs.Empty())
	if err != nil {
		return false, err
	}
	if len(msgs) == 0 {
		return false, nil
	}
	if err := d.send(ctx, msgs, true); err != nil {
		return false, err
	}
	d.log().Info("applied nftables table", "table", "inet "+rs.name(), "messages", len(msgs))
	return true, nil
}

// RemoveTable deletes detour's table (and so everything of detour's in nftables).
// Idempotent: nothing is written when have is empty.
func (d *Driver) RemoveTable(ctx context.Context, have *Observed) error {
	if have.Empty() {
		return nil
	}
	msgs, err := (&Ruleset{Table: d.table()}).batch(true)
	if err != nil {
		return err
	}
	return d.send(ctx, msgs, true)
}

// send sends msgs as one nfnetlink batch and waits for every message's
// acknowledgement. Without commit the batch ends without BATCH_END: the
// kernel validates every message and then aborts, writing nothing.
func (d *Driver) send(ctx context.Context, msgs []message, commit bool) error {
	s, err := d.open()
	if err != nil {
		return err
	}
	defer s.Close()
	size := 0
	for _, m := range msgs {
		size += 16 + len(m.msg.Data)
	}
	if err := s.sizeBuffers(size); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := s.SetDeadline(deadline); err != nil {
		return fmt.Errorf("set netlink deadline: %w", err)
	}
	seq := uint32(time.Now().UnixNano())
	batch := make([]netlink.Message, 0, len(msgs)+2)
	ctl := func(t int) netlink.Message {
		return netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(t), Flags: netlink.Request},
			Data: []byte{unix.NFPROTO_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES}}
	}
	batch = append(batch, ctl(unix.NFNL_MSG_BATCH_BEGIN))
	for _, m := range msgs {
		batch = append(batch, m.msg)
	}
	if commit {
		batch = append(batch, ctl(unix.NFNL_MSG_BATCH_END))
	}
	for i := range batch {
		h := &batch[i].Header
		h.Sequence, h.PID, h.Length = seq+uint32(i), s.pid, uint32(unix.NLMSG_HDRLEN+len(batch[i].Data))
	}
	if err := s.SendMessages(batch); err != nil {
		return fmt.Errorf("send nftables batch (%d messages, %d bytes): %w", len(msgs), size, err)
	}
	for acked := 0; acked < len(msgs); {
		replies, err := s.Receive()
		if err != nil {
			return d.explain(ctx, msgs, commit, err)
		}
		for _, r := range replies {
			if r.Header.Type != netlink.Error {
				continue
			}
			if err := answerError(r); err != nil {
				return d.explain(ctx, msgs, commit, err)
			}
			acked++
		}
	}
	return nil
}

// explain turns a refused batch into an error naming the refused message:
// it validates growing prefixes of the batch without committing (nothing is
// written) until one is refused.
func (d *Driver) explain(ctx context.Context, msgs []message, commit bool, err error) error {
	if errors.Is(err, unix.ENOBUFS) || !commit {
		return fmt.Errorf("apply nftables batch: %w", err)
	}
	for i := range msgs {
		if d.send(ctx, msgs[:i+1], false) != nil {
			return fmt.Errorf("apply nftables batch: the kernel refused %q: %w", msgs[i].what, err)
		}
	}
	return fmt.Errorf("apply nftables batch: %w", err)
}

// InetTables names the inet tables of the network namespace of netnsFd (0:
// the calling thread's): one netlink dump, reading nothing else. The lean
// detour looks with it for the eBPF backend's inbound tables, which it
// cannot read itself.
func InetTables(netnsFd int) ([]string, error) {
	s, err := openSocket(netnsFd)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	tables, err := listTables(s)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, t := range tables {
		if t.family == unix.NFPROTO_INET {
			out = append(out, t.name)
		}
	}
	return out, nil
}
