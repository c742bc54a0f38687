package backends

import "context"

// Glance is the nftables Driver's, and also "maybe" where a cgroup scope's
// inbound table is: the network-namespace scope removes one whose scope is
// gone (bpf.InboundTables).
func (d ebpfInbound) Glance(ctx context.Context) (bool, error) {
	if maybe, err := d.Driver.Glance(ctx); maybe || err != nil {
		return maybe, err
	}
	have, err := d.Driver.Observe(ctx)
	if err != nil {
		return true, err
	}
	return len(d.CgroupTables(have)) > 0, nil
}
