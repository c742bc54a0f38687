package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Options name a lab. The zero value makes "dt-<random>-pod" and "dt-<random>-remote".
type Options struct {
	// Prefix starts both namespace names; "dt" when empty. Leftovers of a crashed run
	// can be found (and removed with RemoveLeftovers) by it.
	Prefix string
	// PodRole and RemoteRole end the names; "pod" and "remote" when empty.
	PodRole, RemoteRole string
}

// Lab is a pod namespace and a remote namespace joined by a veth pair (see the package
// documentation for the addresses and routes).
type Lab struct {
	Pod, Remote *NetNS
}

// New builds a lab. On error nothing is left behind.
func New(ctx context.Context, opts Options) (_ *Lab, err error) {
	if opts.Prefix == "" {
		opts.Prefix = "dt"
	}
	if opts.PodRole == "" {
		opts.PodRole = "pod"
	}
	if opts.RemoteRole == "" {
		opts.RemoteRole = "remote"
	}
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	id := opts.Prefix + "-" + hex.EncodeToString(b) + "-"
	l := &Lab{}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()
	if l.Pod, err = CreateNetNS(ctx, id+opts.PodRole); err != nil {
		return l, err
	}
	if l.Remote, err = CreateNetNS(ctx, id+opts.RemoteRole); err != nil {
		return l, err
	}
	// Without duplicate address detection the link-local addresses are usable at
	// once; otherwise the first IPv6 neighbor solicitations wait for DAD and the first
	// connection of a test takes seconds.
	for _, n := range []*NetNS{l.Pod, l.Remote} {
		if err := n.Sysctl("net/ipv6/conf/default/accept_dad", "0"); err != nil {
			return l, err
		}
	}
	// The veth pair is created inside the pod namespace with its peer placed straight
	// into the remote one: the root namespace never sees either end.
	if err := l.Pod.IPBatch(ctx, "link add eth0 type veth peer name eth0 netns "+l.Remote.Name); err != nil {
		return l, err
	}
	remote := []string{
		"addr add " + RemoteIPv4.String() + "/24 dev eth0",
		"addr add " + RemoteIPv6.String() + "/64 dev eth0 nodad",
		"link set eth0 up",
	}
	for _, f := range Families {
		for _, p := range RemoteRanges[f] {
			remote = append(remote, "route add local "+p.String()+" dev lo")
		}
	}
	if err := l.Remote.IPBatch(ctx, remote...); err != nil {
		return l, err
	}
	pod := []string{
		"addr add " + PodIPv4.String() + "/24 dev eth0",
		"addr add " + PodIPv6.String() + "/64 dev eth0 nodad",
		"link set eth0 up",
	}
	for _, f := range Families {
		for _, p := range RemoteRanges[f] {
			pod = append(pod, "route add "+p.String()+" via "+RemoteLinkAddr(f).String()+" dev eth0")
		}
		// Like a real pod, every destination is routable; whatever the remote does
		// not own dies there (it has no route anywhere else).
		pod = append(pod, "route add default via "+RemoteLinkAddr(f).String()+" dev eth0")
	}
	if err := l.Pod.IPBatch(ctx, pod...); err != nil {
		return l, err
	}
	return l, nil
}

// Close stops every server of the lab and deletes both namespaces. Safe to repeat
// and on a partly built lab.
func (l *Lab) Close() error {
	var errs []error
	for _, n := range []*NetNS{l.Pod, l.Remote} {
		if n != nil {
			errs = append(errs, n.Close())
		}
	}
	return errors.Join(errs...)
}

// RemoveLeftovers deletes the named network namespaces whose name starts with
// prefix+"-", the remains of a run that was killed before it could clean up. It
// returns the names it deleted.
func RemoveLeftovers(ctx context.Context, prefix string) ([]string, error) {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	var gone []string
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix+"-") {
			continue
		}
		if _, err := runIP(ctx, "", "netns", "delete", filepath.Base(e.Name())); err != nil {
			errs = append(errs, err)
			continue
		}
		gone = append(gone, e.Name())
	}
	return gone, errors.Join(errs...)
}
