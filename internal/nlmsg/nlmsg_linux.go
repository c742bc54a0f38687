package nlmsg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrDumpInterrupted is a dump the kernel marked inconsistent
// (NLM_F_DUMP_INTR): something changed while it was read.
var ErrDumpInterrupted = errors.New("netlink dump interrupted by a change; run it again")

// recvSize is the receive buffer's size: the kernel sizes a dump's message to
// the buffer the first read gives (at most 32 KiB).
const recvSize = 32 << 10

// Conn is a netlink socket of the calling thread's network namespace that one
// observe, or one change, makes every request on. It is blocking and outside
// Go's poller, as the requests are few and answered at once.
type Conn struct {
	fd  int
	seq uint32
	buf []byte // the receive buffer, on the heap: only the pages an answer fills are touched
}

// Open opens and binds a netlink socket of protocol (unix.NETLINK_ROUTE,
// unix.NETLINK_NETFILTER) in the calling thread's namespace.
func Open(protocol int) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, protocol)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Conn{fd: fd}, nil
}

// Close closes the socket.
func (c *Conn) Close() { unix.Close(c.fd) }

// FD is the socket, for an ioctl on it.
func (c *Conn) FD() int { return c.fd }

// Dump sends a dump request (typ, body: the family header and attributes)
// and returns the data of the answer's messages up to NLMSG_DONE.
func (c *Conn) Dump(typ uint16, body []byte) ([][]byte, error) {
	return c.do(typ, unix.NLM_F_DUMP, true, body)
}

// Change sends a request that changes something (typ, flags, body: the family
// header and attributes) and waits for the kernel's acknowledgement. A kernel
// error is its syscall.Errno.
func (c *Conn) Change(typ uint16, flags uint16, body []byte) error {
	_, err := c.do(typ, flags|unix.NLM_F_ACK, false, body)
	return err
}

// Transact runs one nf_tables transaction of one message (typ, flags, body:
// the nfgenmsg header and attributes) and waits for the kernel's
// acknowledgement of it.
func (c *Conn) Transact(typ uint16, flags uint16, body []byte) error {
	// The transaction's begin and end carry the message's sequence number
	// too, so that an error the kernel answers to either is read as its.
	c.seq++
	nfgen := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES} // res_id big-endian
	req := appendMessage(nil, unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, c.seq, nfgen)
	req = appendMessage(req, typ, flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK, c.seq, body)
	req = appendMessage(req, unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, c.seq, nfgen)
	_, err := c.exchange(req, false)
	return err
}

// appendMessage appends a message of typ, flags and seq around body to b.
func appendMessage(b []byte, typ, flags uint16, seq uint32, body []byte) []byte {
	var h [unix.SizeofNlMsghdr]byte
	binary.NativeEndian.PutUint32(h[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	return append(append(b, h[:]...), body...)
}

// do sends one request and reads its answer: a dump's messages, or the
// acknowledgement of a change.
func (c *Conn) do(typ uint16, flags uint16, dump bool, body []byte) ([][]byte, error) {
	c.seq++
	return c.exchange(appendMessage(nil, typ, flags|unix.NLM_F_REQUEST, c.seq, body), dump)
}

// exchange sends req and reads the answers to the request numbered c.seq.
func (c *Conn) exchange(req []byte, dump bool) ([][]byte, error) {
	if err := unix.Sendto(c.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	if c.buf == nil {
		c.buf = make([]byte, recvSize)
	}
	var out [][]byte
	interrupted := false
	for {
		n, _, rflags, _, err := unix.Recvmsg(c.fd, c.buf, nil, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return nil, err
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return nil, fmt.Errorf("netlink answer longer than %d bytes", len(c.buf))
		}
		b := c.buf[:n]
		for len(b) >= unix.SizeofNlMsghdr {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			if l < unix.SizeofNlMsghdr || l > len(b) {
				return nil, fmt.Errorf("netlink message of %d bytes in an answer of %d", l, len(b))
			}
			mtyp := binary.NativeEndian.Uint16(b[4:])
			mflags := binary.NativeEndian.Uint16(b[6:])
			seq := binary.NativeEndian.Uint32(b[8:])
			data := b[unix.SizeofNlMsghdr:l]
			b = b[min(align(l), len(b)):]
			if seq != c.seq {
				continue // an answer to an earlier request
			}
			if mflags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch mtyp {
			case unix.NLMSG_ERROR, unix.NLMSG_DONE:
				var code int32
				if len(data) >= 4 {
					code = int32(binary.NativeEndian.Uint32(data))
				}
				if code != 0 {
					return nil, syscall.Errno(-code)
				}
				if mtyp == unix.NLMSG_ERROR && dump {
					continue // an acknowledgement inside a dump
				}
				if interrupted {
					return nil, ErrDumpInterrupted
				}
				return out, nil
			default:
				if dump {
					// copied: the next read reuses the buffer
					out = append(out, append([]byte(nil), data...))
				}
			}
		}
	}
}

func align(n int) int { return (n + 3) &^ 3 }

// Attrs appends attributes to a request's body.
type Attrs []byte

// Add appends an attribute.
func (a Attrs) Add(typ uint16, data []byte) Attrs {
	var h [4]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	a = append(a, h[:]...)
	a = append(a, data...)
	for len(a)%4 != 0 {
		a = append(a, 0)
	}
	return a
}

// U32 appends an attribute of a host-order 32-bit value.
func (a Attrs) U32(typ uint16, v uint32) Attrs {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return a.Add(typ, b[:])
}

// String appends an attribute of a NUL-terminated string.
func (a Attrs) String(typ uint16, s string) Attrs {
	return a.Add(typ, append([]byte(s), 0))
}

// EachAttr calls fn with each attribute of b (the part of a message after its
// family header).
func EachAttr(b []byte, fn func(typ uint16, data []byte)) error {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		if l < 4 || l > len(b) {
			return fmt.Errorf("netlink attribute of %d bytes in %d", l, len(b))
		}
		fn(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[4:l])
		b = b[min(align(l), len(b)):]
	}
	return nil
}

// U32Attr is an attribute's host-order 32-bit value (0 when it is shorter).
func U32Attr(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	return binary.NativeEndian.Uint32(b)
}
