package nftables

import (
	"bytes"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TestAppendMessageIsMarshalBinary: the batch SendMessages writes is the
// concatenation of the library's own encoding of each message, and a length
// the library refuses is refused.
func TestAppendMessageIsMarshalBinary(t *testing.T) {
	t.Parallel()
	var msgs []netlink.Message
	for i, data := range [][]byte{nil, {1, 2, 3, 4}, bytes.Repeat([]byte{0xab}, 40), {9, 8, 7, 6, 5, 4, 3, 2}} {
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{Length: uint32(unix.NLMSG_HDRLEN + len(data)), Type: netlink.HeaderType(0x0a00 + i),
				Flags: netlink.Request | netlink.Acknowledge, Sequence: uint32(1000 + i), PID: 42},
			Data: data,
		})
	}
	var want, got []byte
	for _, m := range msgs {
		mb, err := m.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, mb...)
		if got, err = appendMessage(got, m); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got, want) {
		t.Errorf("appendMessage:\n got %x\nwant %x", got, want)
	}
	bad := netlink.Message{Header: netlink.Header{Length: unix.NLMSG_HDRLEN + 3}, Data: []byte{1, 2, 3}}
	if _, err := bad.MarshalBinary(); err == nil {
		t.Fatal("MarshalBinary accepts an unaligned length: the check below proves nothing")
	}
	if _, err := appendMessage(nil, bad); err == nil {
		t.Error("appendMessage accepts an unaligned length")
	}
}
