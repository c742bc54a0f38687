package cni

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/detour-mesh/detour/redirect"
)

// TestStateMarshal: the state file is what json.MarshalIndent writes (and
// load reads it back), for states with and without each optional part.
func TestStateMarshal(t *testing.T) {
	t.Parallel()
	gid := uint32(1337)
	istio, err := redirect.Preset("istio")
	if err != nil {
		t.Fatal(err)
	}
	istio.Proxy.GID = &gid
	istio.Outbound.ExcludeCIDRs = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	istio.Outbound.ExcludeUIDs = []redirect.IDRange{{First: 106, Last: 108}, {First: 0, Last: 0}}
	istio.Outbound.ExcludePortsForUIDs = []redirect.UIDPortRule{{Protocol: redirect.TCP, Ports: []redirect.PortRange{{First: 53, Last: 53}}, UIDs: []redirect.IDRange{{First: 106, Last: 106}}}}
	def := redirect.Default()
	states := []State{
		{},
		{ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/x", Reason: "not enabled (detour.io/redirect is not enabled)", Added: time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)},
		{ContainerID: "c<2>&", IfName: "eth0", Netns: "/proc/1/ns/net", Pod: &PodRef{Namespace: "ns", Name: "web"}, Redirect: true, Reason: "enabled by pod annotation", Config: &def, Added: time.Date(2030, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600))},
		{ContainerID: "c3\u2028\xff", IfName: "net1", Netns: "/run/netns/y", Pod: &PodRef{Namespace: "ns", Name: "db", UID: "uid-1"}, Redirect: true, Reason: "enabled by namespace label", Config: &istio, NetnsCookie: 1 << 40, PassthroughRoute: true, Added: time.Now()},
	}
	for i, st := range states {
		want, err := json.MarshalIndent(st, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		got, err := st.marshal()
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want)+"\n" {
			t.Errorf("state %d:\n got %s\nwant %s", i, got, want)
		}
	}
	// A field added to State must be added to marshal (and to a state
	// above that sets it): omitempty fields left unset would not show it.
	for typ, want := range map[reflect.Type]string{
		reflect.TypeFor[State]():  "containerID ifName netns pod,omitempty redirect reason config,omitempty netnsCookie,omitempty passthroughRoute,omitempty added",
		reflect.TypeFor[PodRef](): "namespace name uid,omitempty",
	} {
		var fields []string
		for f := range typ.Fields() {
			fields = append(fields, f.Tag.Get("json"))
		}
		if got := strings.Join(fields, " "); got != want {
			t.Errorf("%s's fields are %q, marshal writes %q: keep them in step", typ, got, want)
		}
	}
	if _, err := (State{Added: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}).marshal(); err == nil {
		t.Error("a time json cannot write was written")
	}
}
