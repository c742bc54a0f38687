package nftables

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

func nlmsg(typ uint16, seq uint32, data []byte) []byte {
	b := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(data)+3)
	binary.NativeEndian.PutUint32(b, uint32(unix.NLMSG_HDRLEN+len(data)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_MULTI)
	binary.NativeEndian.PutUint32(b[8:], seq)
	binary.NativeEndian.PutUint32(b[12:], 7)
	b = append(b, data...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// TestParseMessages splits a datagram as the kernel writes it: messages
// padded to 4 bytes (the length field does not count the padding).
func TestParseMessages(t *testing.T) {
	t.Parallel()
	dgram := append(nlmsg(0xa00, 5, []byte{1, 2, 3, 4, 5}), nlmsg(unix.NLMSG_DONE, 5, []byte{0, 0, 0, 0})...)
	msgs, err := parseMessages(dgram)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2", len(msgs))
	}
	m := msgs[0]
	if m.Header.Type != 0xa00 || m.Header.Sequence != 5 || m.Header.PID != 7 || m.Header.Flags != netlink.Multi || !bytes.Equal(m.Data, []byte{1, 2, 3, 4, 5}) {
		t.Errorf("first message %+v", m)
	}
	if msgs[1].Header.Type != netlink.Done {
		t.Errorf("second message %+v, want DONE", msgs[1])
	}
	if answerError(msgs[1]) != nil {
		t.Errorf("a DONE with code 0 is an error: %v", answerError(msgs[1]))
	}
	for _, bad := range [][]byte{
		nlmsg(0xa00, 1, nil)[:unix.NLMSG_HDRLEN-1], // shorter than a header: ignored
	} {
		if msgs, err := parseMessages(bad); err != nil || len(msgs) != 0 {
			t.Errorf("parseMessages(%v) = %v, %v; want nothing", bad, msgs, err)
		}
	}
	long := nlmsg(0xa00, 1, []byte{1, 2, 3, 4})
	binary.NativeEndian.PutUint32(long, 64) // says more than there is
	short := nlmsg(0xa00, 1, nil)
	binary.NativeEndian.PutUint32(short, 8) // says less than a header
	for _, bad := range [][]byte{long, short} {
		if _, err := parseMessages(bad); err == nil {
			t.Errorf("parseMessages(%v) accepted a wrong length", bad)
		}
	}
}

func TestAnswerError(t *testing.T) {
	t.Parallel()
	code := make([]byte, 4)
	binary.NativeEndian.PutUint32(code, uint32(0xffffffff-uint32(unix.EEXIST)+1)) // -EEXIST
	err := answerError(netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: code})
	if err == nil || err.Error() != "netlink: "+unix.EEXIST.Error() {
		t.Errorf("answerError(-EEXIST) = %v", err)
	}
	if err := answerError(netlink.Message{Header: netlink.Header{Type: netlink.Error}, Data: make([]byte, 20)}); err != nil {
		t.Errorf("an acknowledgement is an error: %v", err)
	}
}
