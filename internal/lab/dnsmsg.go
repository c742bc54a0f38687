package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// The lab speaks just enough DNS for a stub resolver to recognise its traffic: a
// query for one TXT record, answered with one TXT record holding a Reply as JSON.

const (
	dnsTypeTXT = 16
	dnsClassIN = 1
)

// dnsQuery builds a recursive query for the TXT record of name.
func dnsQuery(id uint16, name string) []byte {
	b := binary.BigEndian.AppendUint16(nil, id)
	b = append(b, 0x01, 0x00) // RD
	b = append(b, 0, 1, 0, 0, 0, 0, 0, 0)
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		b = append(b, byte(len(label)))
		b = append(b, label...)
	}
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, dnsTypeTXT)
	return binary.BigEndian.AppendUint16(b, dnsClassIN)
}

// dnsAnswer answers query with one TXT record holding txt (at most 255 bytes per
// string; longer text is split).
func dnsAnswer(query []byte, txt string) ([]byte, error) {
	qend, err := questionEnd(query)
	if err != nil {
		return nil, err
	}
	b := append([]byte(nil), query[:2]...)
	b = append(b, 0x81, 0x80) // QR RD RA, NOERROR
	b = append(b, 0, 1, 0, 1, 0, 0, 0, 0)
	b = append(b, query[12:qend]...)
	b = append(b, 0xc0, 12) // pointer to the question's name
	b = binary.BigEndian.AppendUint16(b, dnsTypeTXT)
	b = binary.BigEndian.AppendUint16(b, dnsClassIN)
	b = append(b, 0, 0, 0, 0) // TTL
	var rdata []byte
	for len(txt) > 0 {
		n := min(len(txt), 255)
		rdata = append(rdata, byte(n))
		rdata = append(rdata, txt[:n]...)
		txt = txt[n:]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(rdata)))
	return append(b, rdata...), nil
}

// questionEnd returns the offset just past the single question of a message.
func questionEnd(m []byte) (int, error) {
	if len(m) < 12 || binary.BigEndian.Uint16(m[4:6]) != 1 {
		return 0, errors.New("dns: not a single-question message")
	}
	i := 12
	for {
		if i >= len(m) {
			return 0, errors.New("dns: truncated question")
		}
		l := int(m[i])
		if l == 0 {
			i++
			break
		}
		if l&0xc0 != 0 {
			return 0, errors.New("dns: compressed question name")
		}
		i += 1 + l
	}
	if i+4 > len(m) {
		return 0, errors.New("dns: truncated question")
	}
	return i + 4, nil
}

// dnsTXT returns the text of the single TXT answer of a response with the given id.
func dnsTXT(m []byte, id uint16) (string, error) {
	if len(m) < 12 {
		return "", errors.New("dns: short response")
	}
	if got := binary.BigEndian.Uint16(m[0:2]); got != id {
		return "", fmt.Errorf("dns: response id %d, want %d", got, id)
	}
	if m[2]&0x80 == 0 || m[3]&0x0f != 0 || binary.BigEndian.Uint16(m[6:8]) != 1 {
		return "", fmt.Errorf("dns: not an answer with one record (flags %#x %#x)", m[2], m[3])
	}
	i, err := questionEnd(m)
	if err != nil {
		return "", err
	}
	i += 2 + 2 + 2 + 4 // name pointer, type, class, TTL
	if i+2 > len(m) {
		return "", errors.New("dns: truncated answer")
	}
	rdlen := int(binary.BigEndian.Uint16(m[i : i+2]))
	i += 2
	if i+rdlen > len(m) {
		return "", errors.New("dns: truncated answer")
	}
	rdata := m[i : i+rdlen]
	var sb strings.Builder
	for len(rdata) > 0 {
		n := int(rdata[0])
		if 1+n > len(rdata) {
			return "", errors.New("dns: truncated TXT string")
		}
		sb.Write(rdata[1 : 1+n])
		rdata = rdata[1+n:]
	}
	return sb.String(), nil
}
