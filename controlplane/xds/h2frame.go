package xds

import (
	"encoding/binary"
	"strconv"

	"golang.org/x/net/http2"
)

// HTTP/2 framing (RFC 9113) as the transport (h2conn.go) reads and writes it.

const (
	frameHeaderLen = 9
	// maxReadFrame is the largest frame payload a peer may send: HTTP/2's
	// default SETTINGS_MAX_FRAME_SIZE, which the transport does not raise.
	maxReadFrame = 16 << 10
	// maxFrameSizeLimit is the largest SETTINGS_MAX_FRAME_SIZE a peer may set.
	maxFrameSizeLimit = 1<<24 - 1
	// defaultWindow is HTTP/2's initial flow-control window.
	defaultWindow = 65535
	maxWindow     = 1<<31 - 1
	// defaultTableSize is HTTP/2's initial SETTINGS_HEADER_TABLE_SIZE.
	defaultTableSize = 4096
)

const (
	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

// connError ends a connection with GOAWAY.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return "http2 connection error " + e.code.String() + ": " + e.reason
}

// appendFrameHeader appends a frame header.
func appendFrameHeader(b []byte, length int, t http2.FrameType, flags uint8, stream uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(t), flags,
		byte(stream>>24)&0x7f, byte(stream>>16), byte(stream>>8), byte(stream))
}

func appendWindowUpdate(b []byte, stream uint32, inc uint32) []byte {
	b = appendFrameHeader(b, 4, http2.FrameWindowUpdate, 0, stream)
	return binary.BigEndian.AppendUint32(b, inc&0x7fffffff)
}

func appendRSTStream(b []byte, stream uint32, code http2.ErrCode) []byte {
	b = appendFrameHeader(b, 4, http2.FrameRSTStream, 0, stream)
	return binary.BigEndian.AppendUint32(b, uint32(code))
}

func appendGoAway(b []byte, lastStream uint32, code http2.ErrCode, debug string) []byte {
	b = appendFrameHeader(b, 8+len(debug), http2.FrameGoAway, 0, 0)
	b = binary.BigEndian.AppendUint32(b, lastStream&0x7fffffff)
	b = binary.BigEndian.AppendUint32(b, uint32(code))
	return append(b, debug...)
}

func appendPing(b []byte, flags uint8, data [8]byte) []byte {
	b = appendFrameHeader(b, 8, http2.FramePing, flags, 0)
	return append(b, data[:]...)
}

// appendSetting appends one setting of a SETTINGS frame's payload.
func appendSetting(b []byte, id http2.SettingID, v uint32) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(id))
	return binary.BigEndian.AppendUint32(b, v)
}

// HPACK: the response's header blocks are fixed literals, without the
// dynamic table (so no encoder state per connection): ":status: 200" is the
// static table's entry 8; the others are literals never indexed.

// appendHPACKInt appends i with an n-bit prefix whose other bits are first.
func appendHPACKInt(b []byte, first byte, n uint, i uint64) []byte {
	limit := uint64(1)<<n - 1
	if i < limit {
		return append(b, first|byte(i))
	}
	b = append(b, first|byte(limit))
	i -= limit
	for i >= 128 {
		b = append(b, byte(i&0x7f|0x80))
		i >>= 7
	}
	return append(b, byte(i))
}

func appendHPACKString(b []byte, s string) []byte {
	b = appendHPACKInt(b, 0, 7, uint64(len(s)))
	return append(b, s...)
}

// appendHPACKLiteral appends a literal header field never indexed, with a
// literal name.
func appendHPACKLiteral(b []byte, name, value string) []byte {
	b = append(b, 0x10)
	b = appendHPACKString(b, name)
	return appendHPACKString(b, value)
}

// tableSizeZero is a dynamic table size update to 0 (RFC 7541 §6.3): it
// starts the first header block written after the peer changed
// SETTINGS_HEADER_TABLE_SIZE, which the peer's decoder requires when the
// size was lowered (§4.2); 0 is within any size, and the blocks use no
// dynamic table.
var tableSizeZero = []byte{0x20}

// responseHeaders is the header block of every gRPC response.
var responseHeaders = appendHPACKLiteral([]byte{0x88}, "content-type", "application/grpc")

// trailerBlock is the header block of a call's end: its trailers, or, when
// headersSent is false, a trailers-only response with the given HTTP status.
func trailerBlock(headersSent bool, httpStatus int, code uint32, msg string) []byte {
	var b []byte
	if !headersSent {
		if httpStatus == 200 {
			b = append(b, responseHeaders...)
		} else {
			b = appendHPACKLiteral(b, ":status", strconv.Itoa(httpStatus))
			b = appendHPACKLiteral(b, "content-type", "application/grpc")
		}
	}
	b = appendHPACKLiteral(b, "grpc-status", strconv.FormatUint(uint64(code), 10))
	if msg != "" {
		b = appendHPACKLiteral(b, "grpc-message", percentEncode(msg, maxStatusMessage))
	}
	return b
}

// maxStatusMessage bounds grpc-message, so that a header block fits in one
// frame of the smallest size a peer may set.
const maxStatusMessage = 8 << 10

// percentEncode encodes msg as gRPC's grpc-message: bytes outside printable
// ASCII, and '%', as %XX, up to max bytes.
func percentEncode(msg string, max int) string {
	const hex = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(msg) && len(b) < max; i++ {
		c := msg[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&0xf])
	}
	return string(b)
}
