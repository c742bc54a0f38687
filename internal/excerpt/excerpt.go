package excerpt

import (
	"fmt"
	"strings"
)

// Of is s to quote: s itself when at most n bytes long, or else its first
// n bytes (less a character cut in two) and its size, as in
// "yyyy… (3000000 bytes)".
func Of(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return fmt.Sprintf("%s… (%d bytes)", strings.ToValidUTF8(s[:n], ""), len(s))
}
