package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// ErrInvalid matches every error about invalid configuration (errors.Is).
// Callers map it to "invalid input" (the CLI's exit code 2); nothing is applied.
var ErrInvalid = errors.New("invalid configuration")

// FieldError names the configuration field, the value given for it and what is
// wrong: `outbound.excludePorts[2]: "70000" is not a port`.
type FieldError struct {
	Field  string // path such as "outbound.excludePorts[2]"; empty when not yet known
	Value  string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Field == "" {
		return fmt.Sprintf("%q %s", e.Value, e.Reason)
	}
	return fmt.Sprintf("%s: %q %s", e.Field, e.Value, e.Reason)
}

// Is makes every FieldError match ErrInvalid.
func (e *FieldError) Is(target error) bool { return target == ErrInvalid }

func invalid(value, reason string) *FieldError {
	return &FieldError{Value: value, Reason: reason}
}

// ParsePort parses a TCP or UDP port number, 1 to 65535.
func ParsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, invalid(s, "is not a port (1-65535)")
	}
	return uint16(n), nil
}

// ParsePortRange parses "80" or "1000-2000".
func ParsePortRange(s string) (PortRange, error) {
	first, last, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := ParsePort(first)
	if err != nil {
		return PortRange{}, invalid(s, "is not a port or port range (80, 1000-2000)")
	}
	if !isRange {
		return PortRange{a, a}, nil
	}
	b, err := ParsePort(last)
	if err != nil {
		return PortRange{}, invalid(s, "is not a port or port range (80, 1000-2000)")
	}
	if b < a {
		return PortRange{}, invalid(s, "is a port range whose end is below its start")
	}
	return PortRange{a, b}, nil
}

// MaxID is the highest user or group id: 4294967295, (uid_t)-1, means "no
// id" to the kernel (no process and no socket has it) and iptables' owner
// match refuses it.
const MaxID = 1<<32 - 2

// ParseID parses a numeric user or group id, 0 to MaxID. Names are refused on
// purpose: looking them up can hang for tens of seconds on hosts with remote
// user databases.
func ParseID(s string) (uint32, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil || n > MaxID {
		return 0, invalid(s, "is not a numeric id (0-4294967294; names are not looked up)")
	}
	return uint32(n), nil
}

// ParseIDRange parses "106" or "106-108".
func ParseIDRange(s string) (IDRange, error) {
	first, last, isRange := strings.Cut(strings.TrimSpace(s), "-")
	a, err := ParseID(first)
	if err != nil {
		return IDRange{}, invalid(s, "is not a numeric id or id range (106, 106-108)")
	}
	if !isRange {
		return IDRange{a, a}, nil
	}
	b, err := ParseID(last)
	if err != nil {
		return IDRange{}, invalid(s, "is not a numeric id or id range (106, 106-108)")
	}
	if b < a {
		return IDRange{}, invalid(s, "is an id range whose end is below its start")
	}
	return IDRange{a, b}, nil
}

// ParseCIDR parses "192.0.2.0/24", "2001:db8::/32" or a bare address, which
// stands for itself (/32 or /128). Host bits are cleared, as the kernel would.
func ParseCIDR(s string) (netip.Prefix, error) {
	t := strings.TrimSpace(s)
	var p netip.Prefix
	if strings.Contains(t, "/") {
		var err error
		if p, err = netip.ParsePrefix(t); err != nil {
			return netip.Prefix{}, invalid(s, "is not a CIDR (192.0.2.0/24, 2001:db8::/32)")
		}
	} else {
		a, err := netip.ParseAddr(t)
		if err != nil || a.Zone() != "" {
			return netip.Prefix{}, invalid(s, "is not a CIDR (192.0.2.0/24, 2001:db8::/32)")
		}
		p = netip.PrefixFrom(a, a.BitLen())
	}
	if p.Addr().Is4In6() {
		return netip.Prefix{}, invalid(s, "is an IPv4-mapped IPv6 CIDR; write it as IPv4")
	}
	return p.Masked(), nil
}

// ParseAddr parses one IP address without a zone.
func ParseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, invalid(s, "is not an IP address")
	}
	return a, nil
}

// ParseUIDPortRule parses "proto:ports:uids", for example "tcp:53,3000-5000:106-108".
func ParseUIDPortRule(s string) (UIDPortRule, error) {
	parts := strings.Split(strings.TrimSpace(s), ":")
	if len(parts) != 3 {
		return UIDPortRule{}, invalid(s, "is not proto:ports:uids (tcp:53,3000-5000:106-108)")
	}
	var r UIDPortRule
	switch Protocol(parts[0]) {
	case TCP, UDP:
		r.Protocol = Protocol(parts[0])
	default:
		return UIDPortRule{}, invalid(s, "has protocol "+strconv.Quote(parts[0])+", not tcp or udp")
	}
	for _, p := range strings.Split(parts[1], ",") {
		pr, err := ParsePortRange(p)
		if err != nil {
			return UIDPortRule{}, invalid(s, "has "+strconv.Quote(p)+", which is not a port or port range")
		}
		r.Ports = append(r.Ports, pr)
	}
	for _, u := range strings.Split(parts[2], ",") {
		ur, err := ParseIDRange(u)
		if err != nil {
			return UIDPortRule{}, invalid(s, "has "+strconv.Quote(u)+", which is not a numeric uid or uid range")
		}
		r.UIDs = append(r.UIDs, ur)
	}
	return r, nil
}

// parseBool accepts the spellings people write in YAML, flags and annotations.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return false, invalid(s, "is not a boolean (true, false)")
}

func parseEnum[T ~string](s string, allowed []T) (T, error) {
	t := strings.TrimSpace(s)
	names := make([]string, len(allowed))
	for i, a := range allowed {
		if string(a) == t {
			return a, nil
		}
		names[i] = string(a)
	}
	return "", invalid(s, "is not one of "+strings.Join(names, ", "))
}
