package excerpt_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/detour-mesh/detour/internal/excerpt"
)

// TestOf: a text up to the bound is quoted whole; a longer one as its first
// bytes (never half a UTF-8 character) and its size.
func TestOf(t *testing.T) {
	for _, tc := range []struct {
		name, s string
		max     int
		want    string
	}{
		{"short", "abc", 5, "abc"},
		{"exactly the bound", "abcde", 5, "abcde"},
		{"longer", "abcdefgh", 5, "abcde… (8 bytes)"},
		{"cut in a character", "abcdé", 5, "abcd… (6 bytes)"},
		{"empty", "", 5, ""},
	} {
		if got := excerpt.Of(tc.s, tc.max); got != tc.want {
			t.Errorf("%s: Of(%q, %d) = %q, want %q", tc.name, tc.s, tc.max, got, tc.want)
		}
	}
	big := strings.Repeat("y", 3_000_000)
	if got := excerpt.Of(big, 200); len(got) > 250 || !utf8.ValidString(got) || !strings.HasSuffix(got, "… (3000000 bytes)") {
		t.Errorf("Of(3 MB, 200) = %d bytes (%.60q…), want its first 200 bytes and its size", len(got), got)
	}
}
