package redirect

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"
)

// TestAppendJSON: AppendJSON writes what json.Marshal writes, for the
// defaults, the presets, the zero config and random configs that set every
// field (a field missing from AppendJSON, or written differently, fails).
func TestAppendJSON(t *testing.T) {
	t.Parallel()
	configs := map[string]Config{"default": Default(), "zero": {}}
	for _, p := range Presets {
		c, err := Preset(p)
		if err != nil {
			t.Fatal(err)
		}
		configs["preset "+p] = c
	}
	for seed := range uint64(300) {
		var c Config
		fill(rand.New(rand.NewPCG(seed, 7)), reflect.ValueOf(&c).Elem())
		configs[fmt.Sprint("random ", seed)] = c
	}
	for name, c := range configs {
		want, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.AppendJSON(nil); string(got) != string(want) {
			t.Errorf("%s:\n got %s\nwant %s", name, got, want)
		}
	}
}

// awkward are strings that encoding/json escapes in every way it does.
var awkward = []string{"", "detour", "/etc/resolv.conf", `a"b\c`, "<&>", "\x00\x01\x1f\x7f", "\b\f\n\r\t", "é\u2028\u2029😀", "\xff\xfeinvalid\xc3", "x\xe2\x80"}

// fill sets v (and everything below it) to random values, non-zero more
// often than not.
func fill(r *rand.Rand, v reflect.Value) {
	switch v.Type() {
	case reflect.TypeFor[netip.Addr]():
		addrs := []netip.Addr{{}, netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("::ffff:192.0.2.1"), netip.MustParseAddr("fe80::1%eth0")}
		v.Set(reflect.ValueOf(addrs[r.IntN(len(addrs))]))
		return
	case reflect.TypeFor[netip.Prefix]():
		prefixes := []netip.Prefix{{}, netip.MustParsePrefix("203.0.113.0/24"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("0.0.0.0/0")}
		v.Set(reflect.ValueOf(prefixes[r.IntN(len(prefixes))]))
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		for i := range v.NumField() {
			fill(r, v.Field(i))
		}
	case reflect.Pointer:
		if r.IntN(3) > 0 {
			v.Set(reflect.New(v.Type().Elem()))
			fill(r, v.Elem())
		}
	case reflect.Slice:
		switch n := r.IntN(5); n {
		case 0: // nil
		case 1:
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
		default:
			v.Set(reflect.MakeSlice(v.Type(), n-1, n-1))
			for i := range n - 1 {
				fill(r, v.Index(i))
			}
		}
	case reflect.String:
		v.SetString(awkward[r.IntN(len(awkward))])
	case reflect.Bool:
		v.SetBool(r.IntN(2) == 1)
	case reflect.Uint16, reflect.Uint32:
		vals := []uint64{0, 1, 53, 15001, 65535, 4294967295}
		v.SetUint(vals[r.IntN(len(vals))] & (1<<(8*v.Type().Size()) - 1))
	default:
		panic("fill: add a case for " + v.Type().String())
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range awkward {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendJSONString(nil, s); string(got) != string(want) {
			t.Fatalf("%q:\n got %s\nwant %s", s, got, want)
		}
	})
}
