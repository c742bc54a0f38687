package xds

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/detour-mesh/detour/internal/privtest"
)

// TestTransportHeaderTableSize: a client that lowers
// SETTINGS_HEADER_TABLE_SIZE below 4096 (Envoy's
// http2_protocol_options.hpack_table_size; 0 is common) requires a dynamic
// table size update, at most its size, at the start of the first header
// block after the server's SETTINGS ACK (RFC 7541 §4.2): nghttp2 and oghttp2
// treat its absence as a COMPRESSION_ERROR. The next responses' blocks
// decode with the same decoder, as on the client's connection.
func TestTransportHeaderTableSize(t *testing.T) {
	t.Parallel()
	for _, size := range []uint32{0, 1024} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel()
			c := dialH2(t, tcpServe(t, NewServer(Options{})))
			settings := appendSetting(nil, http2.SettingHeaderTableSize, size)
			c.write(append(appendFrameHeader(nil, len(settings), http2.FrameSettings, 0, 0), settings...))
			dec := hpack.NewDecoder(4096, nil)
			acks := 0
			for id := uint32(1); id <= 3; id += 2 {
				var block bytes.Buffer
				enc := hpack.NewEncoder(&block)
				for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/" + healthService + "/Check"}, {":authority", "a"}, {"content-type", "application/grpc"}} {
					_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
				}
				c.write(append(appendFrameHeader(nil, block.Len(), http2.FrameHeaders, flagEndHeaders, id), block.Bytes()...))
				c.write(append(appendFrameHeader(nil, 5, http2.FrameData, flagEndStream, id), 0, 0, 0, 0, 0))
				blocks := 0
				for blocks < 2 { // the response's headers, then its trailers
					typ, flags, sid, payload, ok := c.next()
					if !ok {
						t.Fatalf("the connection ended before the response of stream %d", id)
					}
					if typ == http2.FrameSettings && flags&flagAck != 0 {
						if acks++; acks == 2 { // the first is the preface's
							dec.SetAllowedMaxDynamicTableSize(size)
						}
						continue
					}
					if typ != http2.FrameHeaders || sid != id {
						continue
					}
					if id == 1 && blocks == 0 {
						if acks < 2 {
							t.Fatal("the response's headers came before the SETTINGS ACK")
						}
						if v, ok := tableSizeUpdate(payload); !ok || v > uint64(size) {
							t.Fatalf("the first header block after SETTINGS_HEADER_TABLE_SIZE %d starts %#x: want a dynamic table size update to at most %d", size, payload[0], size)
						}
					}
					fields, err := dec.DecodeFull(payload)
					if err != nil {
						t.Fatalf("decode the header block of stream %d: %v", id, err)
					}
					if blocks == 1 && !hasField(fields, "grpc-status", "0") {
						t.Errorf("trailers of stream %d: %v, want grpc-status 0", id, fields)
					}
					blocks++
				}
			}
		})
	}
}

// TestTransportHeaderTableSizeWithNghttp: nghttp (nghttp2's client, as
// Envoy's nghttp2 codec decodes) with a header table of 0 and 1024 bytes
// checks the health service: it gets the response; without the dynamic
// table size update it ended the connection with COMPRESSION_ERROR and
// printed "Some requests were not processed". make deps-apt installs it.
func TestTransportHeaderTableSizeWithNghttp(t *testing.T) {
	t.Parallel()
	nghttp, err := exec.LookPath("nghttp")
	if err != nil {
		privtest.Skip(t, "needs nghttp on PATH (make deps-apt installs nghttp2-client)")
	}
	addr := tcpServe(t, NewServer(Options{}))
	req := filepath.Join(t.TempDir(), "request")
	if err := os.WriteFile(req, grpcMessage(t, &healthpb.HealthCheckRequest{}), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, size := range []string{"0", "1024"} {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		cmd := exec.CommandContext(ctx, nghttp, "-c", size, "-d", req, "-H", "content-type: application/grpc", "-H", "te: trailers",
			"http://"+addr+"/grpc.health.v1.Health/Check")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		var hr healthpb.HealthCheckResponse
		r := bytes.NewReader(out)
		if rerr := readGRPCMessage(r, &hr); err != nil || rerr != nil || hr.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING || r.Len() != 0 || stderr.Len() != 0 {
			t.Errorf("nghttp -c %s health Check: %v (%d bytes left), %v, %v; want NOT_SERVING alone (nghttp: %s)", size, hr.GetStatus(), r.Len(), err, rerr, stderr.String())
		}
	}
}

// tableSizeUpdate decodes the dynamic table size update that starts a header
// block (RFC 7541 §6.3: 001, then a 5-bit prefix integer); ok is false when
// the block starts with something else.
func tableSizeUpdate(block []byte) (v uint64, ok bool) {
	if len(block) == 0 || block[0]&0xe0 != 0x20 {
		return 0, false
	}
	v = uint64(block[0] & 0x1f)
	if v < 0x1f {
		return v, true
	}
	for i, b := range block[1:] {
		v += uint64(b&0x7f) << (7 * i)
		if b&0x80 == 0 {
			return v, true
		}
	}
	return 0, false
}

func hasField(fields []hpack.HeaderField, name, value string) bool {
	for _, f := range fields {
		if f.Name == name && f.Value == value {
			return true
		}
	}
	return false
}
