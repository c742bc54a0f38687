package main

import (
	"net/netip"
	"testing"
)

// TestParseProcAddr reads addresses as /proc/net/tcp and tcp6 print them.
func TestParseProcAddr(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"0100007F:3A99":                         "127.0.0.1:15001",
		"0A00020F:9C40":                         "15.2.0.10:40000",
		"00000000000000000000000001000000:3A99": "[::1]:15001",
		"0000000000000000FFFF00000A00020F:1F90": "15.2.0.10:8080",
		"B80D0120000000000000000001000000:0050": "[2001:db8::1]:80",
	} {
		got, err := parseProcAddr(in)
		if err != nil || got != netip.MustParseAddrPort(want) {
			t.Errorf("parseProcAddr(%s) = %v, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0100007F", "0100007G:0050", "01:0050", "0100007F:XYZ"} {
		if _, err := parseProcAddr(bad); err == nil {
			t.Errorf("parseProcAddr(%q) accepted it", bad)
		}
	}
}
