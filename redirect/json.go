package redirect

import (
	"encoding"
	"strconv"
	"unicode/utf8"
)

// AppendJSON appends c as encoding/json's Marshal writes it, byte for byte,
// without reflection: the CNI plugin records the config of every ADD, and
// encoding/json's first encode of a struct type builds its field tables by
// reflection, which costs each short-lived process page faults.
// TestAppendJSON checks it against json.Marshal for configs with every field
// set, so a field added to Config without being added here fails it.
func (c *Config) AppendJSON(b []byte) []byte {
	b = append(b, `{"proxy":{"uid":`...)
	b = strconv.AppendUint(b, uint64(c.Proxy.UID), 10)
	b = append(b, `,"gid":`...)
	if c.Proxy.GID == nil {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendUint(b, uint64(*c.Proxy.GID), 10)
	}
	b = append(b, `,"inboundPort":`...)
	b = strconv.AppendUint(b, uint64(c.Proxy.InboundPort), 10)
	b = append(b, `,"outboundPort":`...)
	b = strconv.AppendUint(b, uint64(c.Proxy.OutboundPort), 10)
	b = append(b, `,"inboundPassthroughSource":{"ipv4":`...)
	b = appendText(b, c.Proxy.InboundPassthroughSource.IPv4)
	b = append(b, `,"ipv6":`...)
	b = appendText(b, c.Proxy.InboundPassthroughSource.IPv6)
	b = append(b, `}},"mode":`...)
	b = AppendJSONString(b, string(c.Mode))
	b = append(b, `,"backend":`...)
	b = AppendJSONString(b, string(c.Backend))
	b = append(b, `,"ebpf":{"accelerate":`...)
	b = strconv.AppendBool(b, c.EBPF.Accelerate)
	b = append(b, `},"ipFamilies":`...)
	b = AppendJSONString(b, string(c.IPFamilies))
	b = append(b, `,"inbound":{"enabled":`...)
	b = strconv.AppendBool(b, c.Inbound.Enabled)
	b = append(b, `,"includePorts":`...)
	b = appendList(b, c.Inbound.IncludePorts, appendPortRange)
	b = append(b, `,"excludePorts":`...)
	b = appendList(b, c.Inbound.ExcludePorts, appendPortRange)
	b = append(b, `,"excludeSourceCIDRs":`...)
	b = appendList(b, c.Inbound.ExcludeSourceCIDRs, appendText)
	b = append(b, `},"outbound":{"enabled":`...)
	b = strconv.AppendBool(b, c.Outbound.Enabled)
	b = append(b, `,"includePorts":`...)
	b = appendList(b, c.Outbound.IncludePorts, appendPortRange)
	b = append(b, `,"excludePorts":`...)
	b = appendList(b, c.Outbound.ExcludePorts, appendPortRange)
	b = append(b, `,"includeCIDRs":`...)
	b = appendList(b, c.Outbound.IncludeCIDRs, appendText)
	b = append(b, `,"excludeCIDRs":`...)
	b = appendList(b, c.Outbound.ExcludeCIDRs, appendText)
	b = append(b, `,"excludeUIDs":`...)
	b = appendList(b, c.Outbound.ExcludeUIDs, appendIDRange)
	b = append(b, `,"excludeGIDs":`...)
	b = appendList(b, c.Outbound.ExcludeGIDs, appendIDRange)
	b = append(b, `,"excludePortsForUIDs":`...)
	b = appendList(b, c.Outbound.ExcludePortsForUIDs, func(b []byte, r UIDPortRule) []byte { return AppendJSONString(b, r.String()) })
	b = append(b, `},"dns":{"capture":`...)
	b = AppendJSONString(b, string(c.DNS.Capture))
	b = append(b, `,"port":`...)
	b = strconv.AppendUint(b, uint64(c.DNS.Port), 10)
	b = append(b, `,"resolvConf":`...)
	b = AppendJSONString(b, c.DNS.ResolvConf)
	b = append(b, `,"conntrackZoneSplit":`...)
	b = strconv.AppendBool(b, c.DNS.ConntrackZoneSplit)
	b = append(b, `},"dropInvalidPackets":`...)
	b = strconv.AppendBool(b, c.DropInvalidPackets)
	b = append(b, `,"log":{"enabled":`...)
	b = strconv.AppendBool(b, c.Log.Enabled)
	b = append(b, `,"prefix":`...)
	b = AppendJSONString(b, c.Log.Prefix)
	return append(b, "}}"...)
}

// appendPortRange is r's MarshalJSON, appended.
func appendPortRange(b []byte, r PortRange) []byte {
	if r.First == r.Last {
		return strconv.AppendUint(b, uint64(r.First), 10)
	}
	return AppendJSONString(b, r.String())
}

// appendIDRange is r's MarshalJSON, appended.
func appendIDRange(b []byte, r IDRange) []byte {
	if r.First == r.Last {
		return strconv.AppendUint(b, uint64(r.First), 10)
	}
	return AppendJSONString(b, r.String())
}

// appendList appends s as a JSON array (null when nil, as encoding/json).
func appendList[T any](b []byte, s []T, item func([]byte, T) []byte) []byte {
	if s == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, v := range s {
		if i > 0 {
			b = append(b, ',')
		}
		b = item(b, v)
	}
	return append(b, ']')
}

// appendText appends v's text form as a JSON string (netip.Addr and Prefix
// never fail to marshal).
func appendText[T encoding.TextMarshaler](b []byte, v T) []byte {
	t, _ := v.MarshalText()
	return AppendJSONString(b, string(t))
}

// AppendJSONString appends s as a JSON string the way encoding/json writes
// it: HTML-safe (<, > and & escaped), U+2028 and U+2029 escaped, invalid
// UTF-8 replaced by U+FFFD.
func AppendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
