package nftables

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	nft "github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"

	"github.com/detour-mesh/detour/internal/netns"
)

// socket is one NETLINK_NETFILTER socket of a Driver call, blocking and
// outside Go's network poller. github.com/mdlayher/socket (under
// mdlayher/netlink's own Dial, and so under google/nftables) starts a
// goroutine for every send and receive to watch a context, which on a
// short-lived process with a locked OS thread costs two thread wake-ups per
// system call; a netlink request to the kernel is answered before sendmsg
// returns, so blocking reads never wait for long. It serves both the
// mdlayher API (netlink.NewConn over it) and google/nftables (as the
// library's dial function), so one socket serves a whole Observe.
type socket struct {
	fd  int
	pid uint32 // the port id the kernel gave the socket
	seq uint32 // the sequence number of execute's last request
}

var _ netlink.Socket = (*socket)(nil)

// openSocket opens and binds a socket in the network namespace of netnsFd
// (0: the calling thread's).
func openSocket(netnsFd int) (*socket, error) {
	fd := -1
	err := netns.DoFd(netnsFd, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open nfnetlink socket: %w", err)
	}
	s := &socket{fd: fd}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		s.Close()
		return nil, fmt.Errorf("bind nfnetlink socket: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("read nfnetlink socket address: %w", err)
	}
	if nl, ok := sa.(*unix.SockaddrNetlink); ok {
		s.pid = nl.Pid
	}
	return s, nil
}

// execute sends one request (a dump, or one asking for an acknowledgement)
// and returns its answers up to the dump's end or the acknowledgement, those
// excluded; an error answer is returned as its errno.
func (s *socket) execute(m netlink.Message) ([]netlink.Message, error) {
	if s.seq == 0 {
		s.seq = uint32(time.Now().UnixNano())
	}
	s.seq++
	m.Header.Sequence, m.Header.PID = s.seq, s.pid
	m.Header.Length = uint32(unix.NLMSG_HDRLEN + len(m.Data))
	if err := s.SendMessages([]netlink.Message{m}); err != nil {
		return nil, err
	}
	var out []netlink.Message
	for {
		msgs, err := s.Receive()
		if err != nil {
			return nil, err
		}
		for _, r := range msgs {
			if r.Header.Sequence != m.Header.Sequence {
				continue // an answer to an earlier request
			}
			switch r.Header.Type {
			case netlink.Done, netlink.Error:
				return out, answerError(r)
			}
			out = append(out, r)
		}
	}
}

// answerError is the errno an NLMSG_ERROR (or NLMSG_DONE) answer carries; nil
// for an acknowledgement.
func answerError(m netlink.Message) error {
	if len(m.Data) < 4 {
		return nil
	}
	if code := int32(binary.NativeEndian.Uint32(m.Data)); code < 0 {
		return fmt.Errorf("netlink: %w", unix.Errno(-code))
	}
	return nil
}

// lib is a google/nftables Conn whose requests go over s (lasting: one
// netlink.Conn for all its calls, not one per call).
func (s *socket) lib() (*nft.Conn, error) {
	return nft.New(nft.AsLasting(), nft.WithTestDial(s.exchange))
}

// Close closes the socket.
func (s *socket) Close() error { return unix.Close(s.fd) }

// Send sends one message (netlink.Conn has set its length, sequence and pid).
func (s *socket) Send(m netlink.Message) error { return s.SendMessages([]netlink.Message{m}) }

// SendMessages sends msgs in one datagram.
// The datagram is written into one buffer of its final size: a batch is tens
// of KB, and growing it by appends (and marshalling each message into a
// buffer of its own first) touched about twice as many fresh heap pages,
// each a page fault in a process that lives for milliseconds.
func (s *socket) SendMessages(msgs []netlink.Message) error {
	size := 0
	for _, m := range msgs {
		size += int(m.Header.Length)
	}
	b := make([]byte, 0, size)
	for _, m := range msgs {
		var err error
		if b, err = appendMessage(b, m); err != nil {
			return err
		}
	}
	for {
		err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sendmsg: %w", err)
		}
		return nil
	}
}

// appendMessage appends m in its wire form (struct nlmsghdr in host byte
// order, then the payload) to b. Header.Length must be the header and
// payload's length and a multiple of 4, as netlink.Message.MarshalBinary
// requires.
func appendMessage(b []byte, m netlink.Message) ([]byte, error) {
	l := int(m.Header.Length)
	if l < unix.NLMSG_HDRLEN || l%unix.NLMSG_ALIGNTO != 0 || l < unix.NLMSG_HDRLEN+len(m.Data) {
		return nil, fmt.Errorf("netlink message length %d for %d bytes of payload", l, len(m.Data))
	}
	b = binary.NativeEndian.AppendUint32(b, m.Header.Length)
	b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Type))
	b = binary.NativeEndian.AppendUint16(b, uint16(m.Header.Flags))
	b = binary.NativeEndian.AppendUint32(b, m.Header.Sequence)
	b = binary.NativeEndian.AppendUint32(b, m.Header.PID)
	b = append(b, m.Data...)
	for range l - unix.NLMSG_HDRLEN - len(m.Data) {
		b = append(b, 0)
	}
	return b, nil
}

// Receive reads one datagram and splits it into messages.
func (s *socket) Receive() ([]netlink.Message, error) {
	// Peek at the datagram's size first (a refused message of a big batch
	// comes back whole in its error), then read it into a buffer of that
	// size, which the messages' data then point into.
	var hdr [unix.NLMSG_HDRLEN]byte
	n, err := s.recv(hdr[:], unix.MSG_PEEK|unix.MSG_TRUNC)
	if err != nil {
		return nil, err
	}
	b := make([]byte, n)
	if n, err = s.recv(b, 0); err != nil {
		return nil, err
	}
	return parseMessages(b[:n])
}

func (s *socket) recv(b []byte, flags int) (int, error) {
	for {
		n, _, err := unix.Recvfrom(s.fd, b, flags)
		switch {
		case err == unix.EINTR: // a signal (Go preempts with SIGURG); the socket's timeout makes it not restart
			continue
		case err == unix.EAGAIN:
			return 0, fmt.Errorf("recvmsg: %w", errTimeout)
		case err != nil:
			return 0, fmt.Errorf("recvmsg: %w", err)
		}
		return n, nil
	}
}

var errTimeout = errors.New("no answer from the kernel before the deadline")

// parseMessages splits a datagram into messages, whose data point into b.
func parseMessages(b []byte) ([]netlink.Message, error) {
	var out []netlink.Message
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, fmt.Errorf("recvmsg: a netlink message of %d bytes in %d", l, len(b))
		}
		out = append(out, netlink.Message{
			Header: netlink.Header{
				Length:   uint32(l),
				Type:     netlink.HeaderType(binary.NativeEndian.Uint16(b[4:])),
				Flags:    netlink.HeaderFlags(binary.NativeEndian.Uint16(b[6:])),
				Sequence: binary.NativeEndian.Uint32(b[8:]),
				PID:      binary.NativeEndian.Uint32(b[12:]),
			},
			Data: b[unix.NLMSG_HDRLEN:l:l],
		})
		b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
	}
	return out, nil
}

// SetDeadline bounds every later send and receive (the zero time: no bound).
func (s *socket) SetDeadline(t time.Time) error {
	if err := s.SetReadDeadline(t); err != nil {
		return err
	}
	return s.SetWriteDeadline(t)
}

// SetReadDeadline bounds every later receive.
func (s *socket) SetReadDeadline(t time.Time) error { return s.timeout(unix.SO_RCVTIMEO, t) }

// SetWriteDeadline bounds every later send.
func (s *socket) SetWriteDeadline(t time.Time) error { return s.timeout(unix.SO_SNDTIMEO, t) }

func (s *socket) timeout(opt int, t time.Time) error {
	var tv unix.Timeval
	if !t.IsZero() {
		tv = unix.NsecToTimeval(max(time.Until(t), time.Microsecond).Nanoseconds())
	}
	return unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, opt, &tv)
}

// sizeBuffers makes the socket's buffers hold size bytes of batch and its
// acknowledgements (ENOBUFS otherwise); as root past the system limits.
func (s *socket) sizeBuffers(size int) error {
	want := max(size+64<<10, 1<<20)
	for _, opt := range [][2]int{{unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}, {unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}} {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, opt[0], want); err != nil {
			if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, opt[1], want); err != nil {
				return fmt.Errorf("size netlink buffers to %d bytes: %w", want, err)
			}
		}
	}
	return nil
}

// exchange serves google/nftables (an nltest.Func): it sends the library's
// requests and returns every answer up to the end of each, a dump's DONE or
// an acknowledgement, with the pid the library's Conn expects. The library's
// read calls (GetSets, GetSetElements, ListChainsOfTableFamily) send one
// dump request each.
func (s *socket) exchange(reqs []netlink.Message) ([]netlink.Message, error) {
	if reqs == nil {
		return nil, io.EOF // no more answers
	}
	if err := s.SendMessages(reqs); err != nil {
		return nil, err
	}
	pending := map[uint32]bool{}
	for _, r := range reqs {
		if r.Header.Flags&(netlink.Dump|netlink.Acknowledge) != 0 {
			pending[r.Header.Sequence] = true
		}
	}
	var out []netlink.Message
	for len(pending) > 0 {
		msgs, err := s.Receive()
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if !pending[m.Header.Sequence] {
				continue // an answer to an earlier request
			}
			if m.Header.Type == netlink.Done || m.Header.Type == netlink.Error {
				delete(pending, m.Header.Sequence)
			}
			m.Header.PID = nltest.PID
			out = append(out, m)
		}
	}
	return out, nil
}
