package nftables

import (
	"context"

	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/redirect"
)

var _ redirect.Glancer = (*Driver)(nil)

// Glance reports whether detour's table is in the namespace
// (redirect.Glancer): one netlink dump of the table names, without reading
// the table or asking whether nf_tables works (an error says it cannot tell).
func (d *Driver) Glance(ctx context.Context) (bool, error) {
	s, err := d.open()
	if err != nil {
		return true, err
	}
	defer s.Close()
	tables, err := listTables(s)
	if err != nil {
		return true, err
	}
	for _, t := range tables {
		if t.family == unix.NFPROTO_INET && t.name == d.table() {
			return true, nil
		}
	}
	return false, nil
}
