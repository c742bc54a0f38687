package xds

import (
	"testing"
	"time"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/types/known/anypb"
)

// Contract tests: what the ADS server (ads.go) and servingCache (cache.go)
// rely on in go-control-plane's subscriptions, checked against the library
// alone (the gRPC transport is detour's own: h2_test.go tests what it
// guarantees). When an upgrade of go-control-plane changes one of these
// behaviours, the test says
// which assumption broke and where it is relied on, instead of a server test
// failing somewhere downstream.

// testTimeout bounds every wait of these tests.
const testTimeout = 20 * time.Second

// nonCanonicalCluster is a valid Cluster encoding that a re-marshal would
// change: its name field twice (the last one wins).
func nonCanonicalCluster() *anypb.Any {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "not-this")
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, "a")
	return &anypb.Any{TypeUrl: resourcev3.ClusterType, Value: b}
}

// TestContractSotWSubscription: go-control-plane's SotW subscription, as
// adsStream.sotwRequest keeps it and servingCache reads it.
func TestContractSotWSubscription(t *testing.T) {
	t.Parallel()
	sub := stream.NewSotwSubscription(nil, true)
	if !sub.IsWildcard() {
		t.Fatal("CONTRACT: a first SotW request without names is not a wildcard subscription (legacy wildcard; ads.go)")
	}
	sub.SetReturnedResources(map[string]string{returnedAll: "v1"})
	sub.SetResourceSubscription(nil)
	if !sub.IsWildcard() || sub.ReturnedResources()[returnedAll] != "v1" {
		t.Errorf("CONTRACT: an ACK without names changed the subscription (wildcard %v, returned %v); servingCache's returnedAll entry (cache.go) must stay",
			sub.IsWildcard(), sub.ReturnedResources())
	}
	// A request naming resources drops the names it does not ask for,
	// returnedAll included: the stream then counts as knowing nothing.
	sub.SetResourceSubscription([]string{"a"})
	if sub.IsWildcard() {
		t.Error("CONTRACT: a request naming resources is still wildcard")
	}
	if _, kept := sub.ReturnedResources()[returnedAll]; kept {
		t.Errorf("CONTRACT: a named request kept the %q entry of the returned resources (%v); servingCache.missing relies on its removal (cache.go)",
			returnedAll, sub.ReturnedResources())
	}
	if _, ok := sub.SubscribedResources()["a"]; !ok || len(sub.SubscribedResources()) != 1 {
		t.Errorf("CONTRACT: subscribed resources %v, want [a]", sub.SubscribedResources())
	}
	sub.SetResourceSubscription([]string{"*"})
	if !sub.IsWildcard() || len(sub.SubscribedResources()) != 0 {
		t.Errorf("CONTRACT: [*] is wildcard %v with names %v, want wildcard and none", sub.IsWildcard(), sub.SubscribedResources())
	}
	// The map of a full response is shared by every stream of that version
	// (servedType.returned); adsStream.sotwRequest copies it only when the
	// subscription could change it: never on a legacy wildcard ACK (above)
	// nor on a request with "*".
	shared := map[string]string{returnedAll: "v1"}
	sub.SetReturnedResources(shared)
	sub.SetResourceSubscription([]string{"*", "a"})
	if shared[returnedAll] != "v1" {
		t.Errorf("CONTRACT: a request with * changed the returned map in place (%v); the map may be shared between streams (ads.go)", shared)
	}
	// The cache keeps the subscription it is given by value: a copy taken
	// before SetReturnedResources keeps its map.
	held := cachev3.Subscription(sub)
	sub.SetReturnedResources(map[string]string{returnedAll: "v2"})
	if held.ReturnedResources()[returnedAll] == "v2" {
		t.Error("CONTRACT: SetReturnedResources changed a copy of the subscription; a watch's subscription must not change under it (ads.go)")
	}
}

// TestContractDeltaSubscription: go-control-plane's delta subscription, as
// adsStream.deltaRequest keeps it and servingCache reads it.
func TestContractDeltaSubscription(t *testing.T) {
	t.Parallel()
	sub := stream.NewDeltaSubscription(nil, nil, nil, true)
	if !sub.IsWildcard() {
		t.Fatal("CONTRACT: a delta request without subscriptions is not wildcard")
	}
	sub.SetReturnedResources(map[string]string{returnedAll: "token"})
	sub.UpdateResourceSubscriptions(nil, nil)
	if sub.ReturnedResources()[returnedAll] != "token" {
		t.Errorf("CONTRACT: an ACK changed the delta subscription's returned resources to %v, want the cache's NextVersionMap {%q: token} (cache.go, sentType)",
			sub.ReturnedResources(), returnedAll)
	}
	// Unsubscribing a name subscribed explicitly while wildcard writes ""
	// for it, so that it is sent again on a later subscription.
	sub.UpdateResourceSubscriptions([]string{"*", "a"}, nil)
	if !sub.IsWildcard() {
		t.Error("CONTRACT: subscribing [*, a] is not wildcard")
	}
	sub.UpdateResourceSubscriptions(nil, []string{"a"})
	if v, ok := sub.ReturnedResources()["a"]; !ok || v != "" {
		t.Errorf("CONTRACT: after unsubscribing %q while wildcard its returned version is %q (present %v), want \"\" (cache.go relies on it)", "a", v, ok)
	}
	sub.UpdateResourceSubscriptions(nil, []string{"*"})
	if sub.IsWildcard() {
		t.Error("CONTRACT: unsubscribing * leaves the stream wildcard")
	}
	initial := stream.NewDeltaSubscription([]string{"a"}, nil, map[string]string{"a": "h1"}, true)
	if initial.IsWildcard() || initial.ReturnedResources()["a"] != "h1" {
		t.Errorf("CONTRACT: a first request naming a with initial version h1: wildcard %v, returned %v", initial.IsWildcard(), initial.ReturnedResources())
	}
}
