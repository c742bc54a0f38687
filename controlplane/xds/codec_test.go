package xds

import (
	"bytes"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

// TestCodecDiscoveryResponses checks that discovery responses decode to the
// message marshalled, byte for byte as long as proto.Marshal's.
func TestCodecDiscoveryResponses(t *testing.T) {
	t.Parallel()
	large := bytes.Repeat([]byte("listener"), 64) // 512 B
	small := []byte("tiny")
	withUnknown := &anypb.Any{TypeUrl: resourcev3.ListenerType, Value: large}
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendTag(nil, 9, protowire.VarintType))
	withUnknown.ProtoReflect().SetUnknown(protowire.AppendVarint(withUnknown.ProtoReflect().GetUnknown(), 1))
	shared := &anypb.Any{TypeUrl: resourcev3.ListenerType, Value: large}
	tests := []struct {
		name string
		msg  proto.Message
	}{
		{name: "sotw", msg: &discoveryv3.DiscoveryResponse{
			VersionInfo: "v1", TypeUrl: resourcev3.ListenerType, Nonce: "7",
			ControlPlane: &corev3.ControlPlane{Identifier: "detour"},
			Resources: []*anypb.Any{shared, {TypeUrl: resourcev3.ListenerType, Value: small}, withUnknown,
				{Value: large}, shared, {TypeUrl: resourcev3.ListenerType}},
		}},
		{name: "sotw-empty", msg: &discoveryv3.DiscoveryResponse{VersionInfo: "v1", TypeUrl: resourcev3.ListenerType}},
		{name: "delta", msg: &discoveryv3.DeltaDiscoveryResponse{
			SystemVersionInfo: "v2", TypeUrl: resourcev3.ClusterType, Nonce: "3",
			RemovedResources: []string{"gone"},
			Resources: []*discoveryv3.Resource{
				{Name: "a", Version: "h1", Resource: shared},
				{Name: "b", Version: "h2", Aliases: []string{"b2"}, Ttl: durationpb.New(5e9), Resource: shared},
				{Name: "c", Version: "h3", Resource: &anypb.Any{TypeUrl: resourcev3.ClusterType, Value: small}},
				{Name: "d", Version: "h4"},
				{Name: "f", Version: "h6", Resource: &anypb.Any{TypeUrl: resourcev3.ClusterType}},
				{Name: "e", Version: "h5", Resource: withUnknown},
			},
		}}, // b has more than a name and version: marshalled whole
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := newXDSCodec(nil).Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			defer r.release()
			got := tt.msg.ProtoReflect().New().Interface()
			if err := proto.Unmarshal(r.data, got); err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, tt.msg) {
				t.Errorf("decoded %v\nwant %v", got, tt.msg)
			}
			want, err := proto.Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.data) != len(want) {
				t.Errorf("encoded %d bytes, proto.Marshal gives %d", len(r.data), len(want))
			}
		})
	}
}

// TestCodecPacing checks what a push worker waits for (pace.go): the flight
// of a response large enough to be pooled — SotW or delta — finishes when
// the response is released (written or dropped), not before; a small one's
// at once.
func TestCodecPacing(t *testing.T) {
	t.Parallel()
	value := bytes.Repeat([]byte("listener"), 256) // 2 KiB: above poolThreshold
	a := &anypb.Any{TypeUrl: resourcev3.ListenerType, Value: value}
	tests := []struct {
		name   string
		msg    proto.Message
		pooled bool
	}{
		{"sotw", &discoveryv3.DiscoveryResponse{VersionInfo: "v1", TypeUrl: resourcev3.ListenerType, Resources: []*anypb.Any{a}}, true},
		{"delta", &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v1", TypeUrl: resourcev3.ListenerType,
			Resources: []*discoveryv3.Resource{{Name: "l", Version: "h", Resource: a}}}, true},
		{"sotw-small", &discoveryv3.DiscoveryResponse{VersionInfo: "v1", TypeUrl: resourcev3.ListenerType}, false},
		{"delta-small", &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "v1", TypeUrl: resourcev3.ListenerType,
			Resources: []*discoveryv3.Resource{{Name: "l", Version: "h", Resource: &anypb.Any{TypeUrl: resourcev3.ListenerType}}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fs := &flights{}
			f := fs.expect(tt.msg)
			r, err := newXDSCodec(fs).Marshal(tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			written := func() bool {
				select {
				case <-f.done:
					return true
				default:
					return false
				}
			}
			if got := written(); got == tt.pooled {
				t.Fatalf("flight finished before the response was released: %v, want %v", got, !tt.pooled)
			}
			if r.pooled() != tt.pooled {
				t.Errorf("pooled %v, want %v", r.pooled(), tt.pooled)
			}
			r.release()
			if !written() {
				t.Fatal("flight not finished once the response was released")
			}
		})
	}
}
